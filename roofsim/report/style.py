"""Colours and fonts shared by the charts, so one kind of thing has one colour across a report."""

from __future__ import annotations

from roofsim.families.registry import families, simplicity

FONT_FAMILY = '-apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif'


def font() -> dict:
    return {"family": FONT_FAMILY, "size": 12, "color": "#1f2933"}


# what binds an operator (roofline.rows: tensor, hbm, compute, launch) or a phase (PhaseStats.binding(): a trace
# resource, or the ceiling that holds most of its time)
BOUND_COLOURS = {
    "tensor": "#1f2933",
    "compute": "#495057",
    "hbm": "#2563eb",
    "launch": "#e03131",
    "h2d": "#e8590c",
    "d2h": "#a0522d",
    "cpu": "#087f5b",
    "cpu_ram": "#2f9e44",
    "cpu_compute": "#66a80f",
    "host": "#ae3ec9",
}

# span kinds of the Trace schema
SPAN_COLOURS = {
    "gemm": "#2f9e44",
    "attention": "#e03131",
    "vector": "#845ef7",
    "recompute": "#a0522d",
    "h2d": "#e8590c",
    "d2h": "#1c7ed6",
    "cpu_attention": "#d6336c",
    "cpu_gather": "#868e96",
    "sync": "#adb5bd",
    "issue": "#15aabf",
    "layer": "#ced4da",
}

# GPU memory kinds (MemorySample.gpu, MemoryUse.gpu)
MEMORY_COLOURS = {
    "weights": "#adb5bd",
    "kv_resident": "#e03131",
    "kv_buffers": "#e8590c",
    "activations": "#2f9e44",
    "logits": "#845ef7",
    "workspace": "#1c7ed6",
}
MEMORY_LABELS = {
    "weights": "weights",
    "kv_resident": "KV resident",
    "kv_buffers": "slot buffers",
    "activations": "activations",
    "logits": "logits",
    "workspace": "workspace",
    "kv": "KV",  # host kinds
    "pinned_rounding": "pinned rounding",
}
EXTRA_COLOURS = ["#15aabf", "#fab005", "#d6336c", "#66a80f", "#5c7cfa", "#495057"]

PRODUCER_COLOURS = {"predicted": "#1c7ed6", "measured": "#e8590c"}

# plan families by their rank in the registry's order of simplicity, so a newly registered family gets a colour
FAMILY_PALETTE = [
    "#1f2933",
    "#1c7ed6",
    "#e8590c",
    "#2f9e44",
    "#d6336c",
    "#845ef7",
    "#15aabf",
    "#5c7cfa",
    "#66a80f",
    "#a0522d",
    "#e03131",
    "#495057",
]


def family_colour(name: str) -> str:
    """The colour of a registered plan family (grey for a name the registry does not know)."""
    if name not in families():
        return "#888"
    return FAMILY_PALETTE[simplicity(name) % len(FAMILY_PALETTE)]
