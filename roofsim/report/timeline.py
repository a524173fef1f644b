"""Timeline (Gantt) per resource for one prefill chunk and one decode step: the middle prefill chunk and the
first decode step a trace kept spans for. With a measured trace, the predicted one is drawn on the same time
axis (seconds from the start of the step), row beside row, for the same chunk and step where the predicted
trace has it, else the nearest one it has.

A step can hold thousands of spans (a slot per layer per head group, in token blocks); past `MAX_BARS` per
trace and step, neighbouring spans of one resource and kind closer than a pixel's worth of time are merged,
and their hover says how many they hold."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roofsim.report.page import esc
from roofsim.report.style import PRODUCER_COLOURS, SPAN_COLOURS, font
from roofsim.trace import RESOURCES, Span, Trace

RESOURCE_LABELS = {
    "compute": "compute stream",
    "h2d": "H2D copy",
    "d2h": "D2H copy",
    "cpu": "CPU",
    "host": "host thread",
}
MAX_BARS = 2500


def steps_present(trace: Trace, phase: str) -> list[int]:
    return sorted({s.step for s in trace.spans if s.phase == phase})


def pick_step(trace: Trace, phase: str) -> int | None:
    """The middle prefill chunk, or the first decode step, among those the trace kept spans for."""
    steps = steps_present(trace, phase)
    if not steps:
        return None
    return steps[len(steps) // 2] if phase == "prefill" else steps[0]


def nearest_step(trace: Trace, phase: str, step: int) -> int | None:
    steps = steps_present(trace, phase)
    return min(steps, key=lambda s: (abs(s - step), s)) if steps else None


@dataclass
class Bar:
    resource: str
    kind: str
    start_s: float
    end_s: float
    count: int
    layers: tuple[int, int] | None
    slots: tuple[int, int] | None
    nbytes: float
    flops: float
    name: str | None


def _bar(s: Span) -> Bar:
    layer = (s.layer, s.layer) if s.layer is not None else None
    slot = (s.slot, s.slot) if s.slot is not None else None
    return Bar(s.resource, s.kind, s.start_s, s.end_s, 1, layer, slot, s.bytes, s.flops, s.name)


def _span_range(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def merge_bars(spans: list[Span], max_bars: int = MAX_BARS) -> list[Bar]:
    """Bars for `spans`, at most `max_bars` of them: neighbours of one resource and kind closer than a
    tolerance are merged, the tolerance doubling from 1/4000 of the step until they fit."""
    bars = [_bar(s) for s in sorted(spans, key=lambda s: (s.resource, s.kind, s.start_s))]
    if len(bars) <= max_bars:
        return bars
    t0 = min(b.start_s for b in bars)
    t1 = max(b.end_s for b in bars)
    tol = max(t1 - t0, 1e-12) / 4000
    while len(bars) > max_bars:
        merged: list[Bar] = []
        for b in bars:
            last = merged[-1] if merged else None
            if (
                last is not None
                and last.resource == b.resource
                and last.kind == b.kind
                and b.start_s - last.end_s <= tol
            ):
                last.end_s = max(last.end_s, b.end_s)
                last.count += b.count
                last.layers = _span_range(last.layers, b.layers)
                last.slots = _span_range(last.slots, b.slots)
                last.nbytes += b.nbytes
                last.flops += b.flops
                if last.name != b.name:
                    last.name = None
            else:
                merged.append(Bar(**vars(b)))
        bars = merged
        tol *= 2
    return bars


def _si(x: float, unit: str) -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _range_text(label: str, r: tuple[int, int] | None) -> str:
    if r is None:
        return ""
    return f"{label} {r[0]}" if r[0] == r[1] else f"{label}s {r[0]}-{r[1]}"


def time_unit(duration_s: float) -> tuple[float, str]:
    """Scale and name of the axis unit for a step this long."""
    if duration_s >= 2:
        return 1.0, "s"
    if duration_s >= 2e-3:
        return 1e3, "ms"
    return 1e6, "us"


def _dur(s: float) -> str:
    scale, unit = time_unit(s)
    return f"{s * scale:.4g} {unit}"


def _hover(b: Bar, t0: float, producer: str) -> str:
    parts = [f"<b>{esc(b.kind)}</b> on {esc(RESOURCE_LABELS.get(b.resource, b.resource))} ({esc(producer)})"]
    if b.name:
        parts.append(esc(b.name))
    where = ", ".join(x for x in (_range_text("layer", b.layers), _range_text("slot", b.slots)) if x)
    if where:
        parts.append(where)
    parts.append(f"start {_dur(b.start_s - t0)}, duration {_dur(b.end_s - b.start_s)}")
    if b.nbytes:
        parts.append(f"{_si(b.nbytes, 'B')} moved")
    if b.flops:
        parts.append(f"{_si(b.flops, 'FLOP')}")
    if b.count > 1:
        parts.append(f"{b.count} spans merged for drawing")
    return "<br>".join(parts)


@dataclass
class Lane:
    """One trace's spans for one step."""

    producer: str  # predicted or measured
    step: int
    spans: list[Span]

    @property
    def t0(self) -> float:
        return min(s.start_s for s in self.spans)

    @property
    def duration_s(self) -> float:
        return max(s.end_s for s in self.spans) - self.t0


def lanes_for(traces: list[Trace], phase: str) -> list[Lane]:
    """One lane per trace, for the step picked from the reference trace (the measured one if any, else the
    first) and the nearest step the others kept."""
    if not traces:
        return []
    ref = next((t for t in traces if t.header.producer == "measured"), traces[0])
    step = pick_step(ref, phase)
    if step is None:
        return []
    out = []
    for t in traces:
        s = step if t is ref else nearest_step(t, phase, step)
        if s is None:
            continue
        spans = [x for x in t.spans if x.phase == phase and x.step == s]
        out.append(Lane(t.header.producer, s, spans))
    return out


def _step_title(phase: str, lanes: list[Lane], trace: Trace) -> str:
    work, plan = trace.header.workload, trace.header.plan
    steps = sorted({lane.step for lane in lanes})
    which = " / ".join(str(s) for s in steps)
    if phase == "prefill":
        chunk = min(work.context, plan.prefill_chunk or work.context)
        n = -(-work.context // chunk)
        cached = ", ".join(f"{min(s * chunk, work.context):,}" for s in steps)
        head = f"prefill chunk {which} of 0-{n - 1} ({chunk:,} tokens after {cached} cached)"
    else:
        head = f"decode step {which} (context {', '.join(f'{work.context + s:,}' for s in steps)})"
    times = ", ".join(f"{lane.producer} {_dur(lane.duration_s)}" for lane in lanes)
    return f"{head}: {times}"


def timeline_figure(traces: list[Trace]) -> go.Figure | None:
    """Gantt of the picked prefill chunk and decode step; None when no trace kept any spans."""
    panels = [(phase, lanes_for(traces, phase)) for phase in ("prefill", "decode")]
    panels = [(phase, lanes) for phase, lanes in panels if lanes]
    if not panels:
        return None
    several = len(traces) > 1
    rows_per_panel = []
    for _, lanes in panels:
        rows = []
        for r in RESOURCES:
            for lane in lanes:
                if any(s.resource == r for s in lane.spans):
                    label = RESOURCE_LABELS[r] + (f" · {lane.producer}" if several else "")
                    rows.append(label)
        rows_per_panel.append(rows)
    heights = [max(len(r), 1) for r in rows_per_panel]
    height = 180 + 34 * sum(heights) + 110 * len(panels)
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[esc(_step_title(phase, lanes, traces[0])) for phase, lanes in panels],
        row_heights=[h / sum(heights) for h in heights],
        vertical_spacing=min(0.3, 120 / height) if len(panels) > 1 else 0.08,
    )
    seen_kinds: set[str] = set()
    for i, (_, lanes) in enumerate(panels, start=1):
        scale, unit = time_unit(max(lane.duration_s for lane in lanes))
        for lane in lanes:
            t0 = lane.t0
            bars = merge_bars(lane.spans)
            by_kind: dict[str, list[Bar]] = {}
            for b in bars:
                by_kind.setdefault(b.kind, []).append(b)
            # whole-layer spans first, so finer spans on the same row draw over them
            for kind in sorted(by_kind, key=lambda k: (k != "layer", k)):
                kb = by_kind[kind]
                fig.add_trace(
                    go.Bar(
                        orientation="h",
                        y=[
                            RESOURCE_LABELS[b.resource] + (f" · {lane.producer}" if several else "")
                            for b in kb
                        ],
                        x=[(b.end_s - b.start_s) * scale for b in kb],
                        base=[(b.start_s - t0) * scale for b in kb],
                        name=esc(kind),
                        legendgroup=kind,
                        showlegend=kind not in seen_kinds,
                        marker={
                            "color": SPAN_COLOURS.get(kind, "#888"),
                            "opacity": 0.45 if kind == "layer" else 0.95,
                            "line": {"width": 0},
                        },
                        hovertext=[_hover(b, t0, lane.producer) for b in kb],
                        hoverinfo="text",
                        width=0.7,
                    ),
                    row=i,
                    col=1,
                )
                seen_kinds.add(kind)
        order = list(reversed(rows_per_panel[i - 1]))
        fig.update_yaxes(categoryorder="array", categoryarray=order, row=i, col=1)
        fig.update_xaxes(title_text=f"{unit} from the start of the step", row=i, col=1, rangemode="tozero")
        if several:
            for lane in lanes:
                fig.add_vline(
                    x=lane.duration_s * scale,
                    line={"color": PRODUCER_COLOURS.get(lane.producer, "#555"), "dash": "dash", "width": 1.5},
                    row=i,
                    col=1,
                )
    fig.update_layout(
        barmode="overlay",
        height=height,
        font=font(),
        template="plotly_white",
        legend={"title": {"text": "span kind"}},
        margin={"t": 50, "l": 150, "r": 20, "b": 50},
        hoverlabel={"align": "left"},
    )
    return fig
