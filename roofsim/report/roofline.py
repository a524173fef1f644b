"""Roofline chart: each operator of a prefill chunk and of a decode step as a point (FLOPs per HBM byte,
attained FLOP/s = FLOPs / roofline time), under the ceilings that apply: tensor cores, HBM, PCIe H2D and D2H,
CPU RAM. Bandwidth ceilings are y = intensity x bandwidth (Williams et al., "Roofline", CACM 2009); an
operator whose operands cross PCIe or come from CPU RAM is held under that line instead of HBM's.

Where the analytic model's trace of the plan is given, each phase is also drawn as one point per byte stream it moves (FLOPs
per HBM byte, per H2D byte, per CPU-RAM byte), which shows which ceiling the whole step sits on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from roofsim import ops, roofline
from roofsim.report.page import esc
from roofsim.report.style import BOUND_COLOURS, font
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.specs.sourced import Sourced
from roofsim.trace import Trace
from roofsim.workload import Workload


@dataclass(frozen=True)
class Ceiling:
    name: str
    kind: str  # "compute" (FLOP/s) or "bandwidth" (bytes/s)
    value: float
    why: str  # how it was computed, and the provenance of its numbers


def _prov(s: Sourced) -> str:
    return s.provenance


def ceilings(gpu: GpuSpec, host: HostSpec | None) -> list[Ceiling]:
    """The ceilings of the roofline, each with the spec numbers it comes from."""
    c, m, e, link = gpu.compute, gpu.memory, gpu.efficiency, gpu.link
    out = [
        Ceiling(
            "tensor",
            "compute",
            gpu.tensor_flops,
            f"bf16 {c.bf16_tflops.value:g} TFLOP/s ({_prov(c.bf16_tflops)}) x GEMM efficiency "
            f"{e.gemm.value:g} ({_prov(e.gemm)})",
        ),
    ]
    if abs(gpu.attention_flops - gpu.tensor_flops) > 1e-6 * gpu.tensor_flops:
        out.append(
            Ceiling(
                "tensor (attention)",
                "compute",
                gpu.attention_flops,
                f"bf16 {c.bf16_tflops.value:g} TFLOP/s x attention efficiency {e.attention.value:g} "
                f"({_prov(e.attention)})",
            )
        )
    out += [
        Ceiling(
            "HBM",
            "bandwidth",
            gpu.hbm_bytes_per_s,
            f"{m.bandwidth_gbps.value:g} GB/s ({_prov(m.bandwidth_gbps)}) x memory efficiency "
            f"{e.memory.value:g} ({_prov(e.memory)})",
        ),
        Ceiling(
            "PCIe H2D",
            "bandwidth",
            link.h2d_gbps.value * 1e9,
            f"{link.name} H2D {link.h2d_gbps.value:g} GB/s ({_prov(link.h2d_gbps)})",
        ),
        Ceiling(
            "PCIe D2H",
            "bandwidth",
            link.d2h_gbps.value * 1e9,
            f"{link.name} D2H {link.d2h_gbps.value:g} GB/s ({_prov(link.d2h_gbps)})",
        ),
    ]
    if host is not None:
        out.append(
            Ceiling(
                "CPU RAM",
                "bandwidth",
                host.ram_bytes_per_s,
                f"{host.ram_bandwidth_gbps.value:g} GB/s ({_prov(host.ram_bandwidth_gbps)}) x efficiency "
                f"{host.ram_efficiency.value:g} ({_prov(host.ram_efficiency)})",
            )
        )
        out.append(
            Ceiling(
                "CPU attention scan",
                "bandwidth",
                host.cpu_attention_gbps.value * 1e9,
                f"KV bytes/s a many-threaded CPU attention kernel scans: {host.cpu_attention_gbps.value:g} GB/s "
                f"({_prov(host.cpu_attention_gbps)})",
            )
        )
    return out


CEILING_COLOURS = {
    "tensor": "#1f2933",
    "tensor (attention)": "#7b8794",
    "HBM": "#2563eb",
    "PCIe H2D": "#e8590c",
    "PCIe D2H": "#a0522d",
    "CPU RAM": "#2f9e44",
    "CPU attention scan": "#94d82d",
}


@dataclass(frozen=True)
class Point:
    name: str
    phase: str
    flops: float
    nbytes: float
    time_s: float
    bound: str
    per: str = "HBM"  # which bytes the intensity counts

    @property
    def intensity(self) -> float:
        return self.flops / self.nbytes

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.time_s


def prefill_chunk_of(work: Workload, plan) -> tuple[int, int]:
    """The prefill chunk the roofline shows, and the tokens cached before it: the last chunk, as `roofsim
    roofline` and `predict --roofline` print it (the one with the most attention)."""
    chunk = min(work.context, getattr(plan, "prefill_chunk", None) or work.context)
    return chunk, work.context - chunk


def operator_points(model: ModelSpec, gpu: GpuSpec, work: Workload, plan) -> tuple[list[Point], list[str]]:
    """Operators of one decoder layer for the last prefill chunk and for a decode step (plus the LM head);
    also the names of those with no FLOPs or no bytes, which a log-log chart cannot place (the all-reduces of a
    tensor-parallel plan, whose operators are one GPU's: its shard's)."""
    from roofsim.tensor_parallel import shard_model

    model = shard_model(model, getattr(plan, "tp", 1))
    chunk, cached = prefill_chunk_of(work, plan)
    phases = {
        "prefill": ops.layer_ops(model, chunk, cached, work.batch),
        "decode": ops.layer_ops(model, 1, work.context, work.batch) + ops.head_ops(model, work.batch),
    }
    points, skipped = [], []
    for phase, layer_ops in phases.items():
        for row in roofline.rows(layer_ops, gpu):
            if row.flops <= 0 or row.hbm_bytes <= 0 or row.time_s <= 0:
                skipped.append(f"{row.name} ({phase})")
                continue
            points.append(Point(row.name, phase, row.flops, row.hbm_bytes, row.time_s, row.bound))
    return points, skipped


def phase_points(pred: Trace) -> list[Point]:
    """Each phase as a whole: its FLOPs over its time, per byte of each stream it moves."""
    out = []
    for phase in ("prefill", "decode"):
        st = pred.summary.phase(phase)
        flops, time_s = st.flops or 0.0, st.time_s or 0.0
        if flops <= 0 or time_s <= 0:
            continue
        name = "whole prefill" if phase == "prefill" else "decode step"
        bound = st.binding()[0]
        for per, nbytes in (("HBM", st.hbm_bytes), ("H2D", st.h2d_bytes), ("CPU RAM", st.cpu_bytes)):
            if nbytes:
                out.append(Point(name, phase, flops, nbytes, time_s, bound, per))
    return out


def _si(x: float, unit: str) -> str:
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _secs(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _hover(p: Point) -> str:
    return (
        f"<b>{esc(p.name)}</b> ({esc(p.phase)})<br>FLOPs: {_si(p.flops, '')}<br>"
        f"{esc(p.per)} bytes: {_si(p.nbytes, 'B')}<br>intensity: {p.intensity:.3g} FLOP/B<br>"
        f"time: {_secs(p.time_s)}<br>attained: {_si(p.flops_per_s, 'FLOP/s')}<br>bound: {esc(p.bound)}"
    )


PHASE_SYMBOLS = {"prefill": "circle", "decode": "diamond"}
PER_SYMBOLS = {"HBM": "star", "H2D": "star-triangle-up", "CPU RAM": "star-square"}


def roofline_figure(
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec | None,
    work: Workload,
    plan,
    pred: Trace | None = None,
) -> tuple[go.Figure, list[str]]:
    """The chart, and the operators it could not place (no FLOPs or no bytes)."""
    points, skipped = operator_points(model, gpu, work, plan)
    whole = phase_points(pred) if pred is not None else []
    ceils = ceilings(gpu, host)
    peak = max(c.value for c in ceils if c.kind == "compute")
    intensities = [p.intensity for p in points + whole]
    ridges = [peak / c.value for c in ceils if c.kind == "bandwidth"]
    x0 = min(intensities + ridges) / 4
    x1 = max(intensities + ridges) * 4
    fig = go.Figure()
    for c in ceils:
        colour = CEILING_COLOURS.get(c.name, "#555")
        if c.kind == "compute":
            xs, ys = [x0, x1], [c.value, c.value]
            label = f"{c.name} {_si(c.value, 'FLOP/s')}"
        else:
            top = peak / c.value
            xs, ys = [x0, top], [x0 * c.value, peak]
            label = f"{c.name} {_si(c.value, 'B/s')}"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=esc(label),
                line={"color": colour, "width": 2, "dash": "dot" if c.name == "tensor (attention)" else None},
                hovertemplate=f"<b>{esc(c.name)}</b><br>{esc(c.why)}<extra></extra>",
                legendgroup="ceilings",
                legendgrouptitle_text="ceilings",
            )
        )
    for phase in ("prefill", "decode"):
        for bound in sorted({p.bound for p in points if p.phase == phase}):
            ps = [p for p in points if p.phase == phase and p.bound == bound]
            fig.add_trace(
                go.Scatter(
                    x=[p.intensity for p in ps],
                    y=[p.flops_per_s for p in ps],
                    mode="markers+text",
                    text=[esc(f"{p.name} ({phase})") if p.name == "attention" else "" for p in ps],
                    textposition="bottom center",
                    textfont={"size": 10, "color": "#52606d"},
                    name=esc(f"{phase}, {bound}-bound"),
                    marker={
                        "symbol": PHASE_SYMBOLS[phase],
                        "size": 10,
                        "color": BOUND_COLOURS.get(bound, "#888"),
                        "line": {"width": 1, "color": "#ffffff"},
                    },
                    hovertext=[_hover(p) for p in ps],
                    hoverinfo="text",
                    legendgroup="operators",
                    legendgrouptitle_text="operators (shape: phase, colour: bound)",
                )
            )
    for p in whole:
        fig.add_trace(
            go.Scatter(
                x=[p.intensity],
                y=[p.flops_per_s],
                mode="markers",
                name=esc(f"{p.name}, per {p.per} byte"),
                marker={
                    "symbol": PER_SYMBOLS[p.per],
                    "size": 15,
                    "color": "#f59f00" if p.phase == "decode" else "#845ef7",
                    "line": {"width": 1, "color": "#1f2933"},
                },
                hovertext=[_hover(p)],
                hoverinfo="text",
                legendgroup="phases",
                legendgrouptitle_text="whole phases",
            )
        )
    ys = [p.flops_per_s for p in points + whole] + [x0 * c.value for c in ceils if c.kind == "bandwidth"]
    chunk, cached = prefill_chunk_of(work, plan)
    fig.update_layout(
        title=esc(
            f"Roofline on {gpu.name}: one decoder layer, prefill chunk of {chunk:,} tokens after {cached:,} "
            f"cached, and a decode step at {work.context:,}"
        ),
        xaxis={
            "type": "log",
            "title": "arithmetic intensity (FLOP per byte)",
            "range": _log_range(x0, x1),
            "dtick": 1,
            "exponentformat": "SI",
        },
        yaxis={
            "type": "log",
            "title": "attained FLOP/s",
            "range": _log_range(min(ys) / 2, peak * 3),
            **_decade_ticks(min(ys) / 2, peak * 3, ""),
        },
        height=620,
        font=font(),
        legend={"groupclick": "toggleitem"},
        margin={"t": 60, "l": 70, "r": 20, "b": 60},
        template="plotly_white",
    )
    return fig, skipped


def _log_range(lo: float, hi: float) -> list[float]:
    return [math.log10(lo), math.log10(hi)]


def _decade_ticks(lo: float, hi: float, unit: str) -> dict:
    """Ticks at each power of ten, labelled with SI prefixes up to P (plotly's own stop at T)."""
    decades = [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    return {"tickvals": decades, "ticktext": [_si(d, unit).replace(" ", "") for d in decades]}
