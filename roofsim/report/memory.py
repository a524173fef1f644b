"""GPU memory over time stacked by kind (weights, KV resident, slot buffers, activations, ...), one panel per
trace, and pinned host memory below. Samples are thinned to at most `MAX_SAMPLES` per trace, keeping in each
time bin the sample with the most GPU bytes so that peaks survive."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roofsim.report.page import esc
from roofsim.report.style import EXTRA_COLOURS, MEMORY_COLOURS, MEMORY_LABELS, PRODUCER_COLOURS, font
from roofsim.trace import MemorySample, Trace

GiB = 1024**3
MAX_SAMPLES = 1500
KIND_ORDER = list(MEMORY_COLOURS)


def thin(samples: list[MemorySample], max_samples: int = MAX_SAMPLES) -> list[MemorySample]:
    """At most about `max_samples`: per time bin the first sample and the one with the most GPU bytes."""
    if len(samples) <= max_samples:
        return list(samples)
    t0, t1 = samples[0].t_s, samples[-1].t_s
    bins = max_samples // 2
    width = (t1 - t0) / bins or 1.0
    keep: dict[int, list[MemorySample]] = {}
    for s in samples:
        b = min(int((s.t_s - t0) / width), bins - 1)
        kept = keep.setdefault(b, [s, s])
        if s.gpu_bytes > kept[1].gpu_bytes:
            kept[1] = s
    out: list[MemorySample] = []
    for b in sorted(keep):
        first, top = keep[b]
        out.append(first)
        if top is not first:
            out.append(top)
    if out[-1] is not samples[-1]:
        out.append(samples[-1])
    return out


def kinds_of(traces: list[Trace]) -> list[str]:
    seen = {k for t in traces for s in t.memory for k in s.gpu}
    return [k for k in KIND_ORDER if k in seen] + sorted(seen - set(KIND_ORDER))


def decode_start_s(trace: Trace) -> float | None:
    starts = [s.start_s for s in trace.spans if s.phase == "decode"]
    return min(starts) if starts else None


def memory_figure(
    traces: list[Trace], capacity_bytes: float | None = None, usable_bytes: float | None = None
) -> go.Figure | None:
    """None when no trace holds memory samples."""
    traces = [t for t in traces if t.memory]
    if not traces:
        return None
    kinds = kinds_of(traces)
    extra = {k: EXTRA_COLOURS[i % len(EXTRA_COLOURS)] for i, k in enumerate(kinds) if k not in MEMORY_COLOURS}
    host = [t for t in traces if any(s.pinned_host_bytes for s in t.memory) or t.summary.peak_host_bytes]
    titles = [f"GPU memory, {t.header.producer}" for t in traces]
    if host:
        titles.append("pinned host memory")
    n = len(titles)
    fig = make_subplots(
        rows=n,
        cols=1,
        subplot_titles=[esc(x) for x in titles],
        vertical_spacing=0.14 if n > 1 else 0.05,
        shared_xaxes=True,
        row_heights=[3] * len(traces) + ([1.6] if host else []),
    )
    for i, t in enumerate(traces, start=1):
        samples = thin(t.memory)
        xs = [s.t_s for s in samples]
        for k in kinds:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[s.gpu.get(k, 0.0) / GiB for s in samples],
                    name=esc(MEMORY_LABELS.get(k, k)),
                    legendgroup=k,
                    showlegend=i == 1,
                    stackgroup=f"gpu{i}",
                    line={"shape": "hv", "width": 0.5, "color": MEMORY_COLOURS.get(k, extra.get(k))},
                    hovertemplate=f"{esc(MEMORY_LABELS.get(k, k))}: %{{y:.3f}} GiB at %{{x:.4g}} s<extra></extra>",
                ),
                row=i,
                col=1,
            )
        for value, label, dash, where in (
            (usable_bytes, "usable", "dash", "bottom left"),
            (capacity_bytes, "capacity", "dot", "top left"),
        ):
            if value:
                fig.add_hline(
                    y=value / GiB,
                    line={"color": "#b42318", "dash": dash, "width": 1.2},
                    annotation_text=esc(f"{label} {value / GiB:.1f} GiB"),
                    annotation_position=where,
                    row=i,
                    col=1,
                )
        start = decode_start_s(t)
        if start is not None:
            fig.add_vline(
                x=start,
                line={"color": "#52606d", "dash": "dot", "width": 1},
                annotation_text="decode",
                annotation_position="top right",
                row=i,
                col=1,
            )
        fig.update_yaxes(title_text="GiB", rangemode="tozero", row=i, col=1)
        if i == n:
            fig.update_xaxes(title_text="s from the start of the run", row=i, col=1)
        else:
            fig.update_xaxes(showticklabels=True, row=i, col=1)
    if host:
        row = len(traces) + 1
        for t in host:
            samples = thin(t.memory)
            if any(s.pinned_host_bytes for s in samples):
                xs = [s.t_s for s in samples]
                ys = [s.pinned_host_bytes / GiB for s in samples]
                label = f"pinned host, {t.header.producer}"
            else:
                xs = [samples[0].t_s, samples[-1].t_s]
                ys = [t.summary.peak_host_bytes / GiB] * 2
                label = f"pinned host, {t.header.producer} (summary: held for the whole run)"
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=esc(label),
                    line={
                        "shape": "hv",
                        "color": PRODUCER_COLOURS.get(t.header.producer, "#555"),
                        "width": 2,
                    },
                    hovertemplate="%{y:.3f} GiB at %{x:.4g} s<extra></extra>",
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text="GiB", rangemode="tozero", row=row, col=1)
        fig.update_xaxes(title_text="s from the start of the run", row=row, col=1)
    fig.update_layout(
        height=260 + 300 * len(traces) + (180 if host else 0),
        font=font(),
        template="plotly_white",
        margin={"t": 50, "l": 70, "r": 20, "b": 50},
        legend={"title": {"text": "GPU memory by kind"}},
    )
    return fig
