"""Plan comparison: the planner's alternatives (or predict's best plan per family) with time, memory and the
binding resource, and a chart of score against peak GPU memory with the Pareto frontier (the plans no other
plan beats on both)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from roofsim.families.registry import simplicity
from roofsim.planner.search import Candidate, PlanResult, analytic_score, pareto
from roofsim.report.page import Raw, esc, table
from roofsim.report.style import family_colour, font
from roofsim.trace import Trace
from roofsim.units import fmt_bytes, fmt_seconds, fmt_tokens

GiB = 1024**3
SCORE_LABELS = {
    "decode": "decode time per token (s)",
    "decode-worst": "decode time per token at its band's upper end (s)",
    "prefill": "prefill time (s)",
    "e2e": "prefill + gen decode steps (s)",
    "throughput": "s per generated token across the batch",
    "max-context": "longest context that fits (tokens)",
}


@dataclass
class Alternatives:
    objective: str
    ranked: list[Candidate]  # feasible, best first
    infeasible: list[Trace]  # the analytic model's, of plans that do not fit
    front: list[Candidate]
    screened: int | None = None
    chosen: Candidate | None = None  # the plan the report shows in detail (default: the best)
    scored_apart: bool = True  # the score differs from the table's analytic times (simulated, e2e, ...)

    @property
    def best(self) -> Candidate | None:
        if self.chosen is not None:
            return self.chosen
        return self.ranked[0] if self.ranked else None


def from_plan_result(result: PlanResult) -> Alternatives:
    return Alternatives(result.objective, result.ranked, result.infeasible, result.pareto, result.screened)


def from_predictions(
    preds: list[Trace], chosen: Trace | None = None, objective: str = "decode"
) -> Alternatives:
    """predict's best plan per family, ranked by the analytic score of the objective."""
    feasible = sorted(
        (Candidate(p, analytic_score(p, objective)) for p in preds if p.feasible), key=lambda c: c.score
    )
    pick = next((c for c in feasible if c.prediction is chosen), None)
    infeasible = [p for p in preds if not p.feasible]
    return Alternatives(objective, feasible, infeasible, pareto(feasible), chosen=pick, scored_apart=False)


def _plan_key(c: Candidate) -> tuple:
    d = c.plan.model_dump()
    d.pop("prefill_chunk", None)
    return (c.plan.family, tuple(sorted((k, str(v)) for k, v in d.items())))


def distinct(cands: list[Candidate], n: int) -> list[Candidate]:
    """The best candidate of each distinct plan once the prefill chunk is set aside, best first."""
    seen, out = set(), []
    for c in cands:
        key = _plan_key(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
        if len(out) == n:
            break
    return out


def _score_text(alt: Alternatives, score: float) -> str:
    return fmt_tokens(int(-score)) if alt.objective == "max-context" else fmt_seconds(score)


def _bound(p: Trace, phase: str) -> str:
    name, share = p.summary.phase(phase).binding()
    return f"{name} {share:.0%}"


def _family(p: Trace) -> str:
    """The plan's family, marked ~ where attention sees only part of the context."""
    return p.plan.family + (" ~" if p.plan.approximate else "")


def alternatives_table(alt: Alternatives, n: int = 25) -> Raw:
    """The best of each distinct plan (prefill chunks folded together); Pareto: some chunk of it is on the
    frontier."""
    on_front = {_plan_key(c) for c in alt.front}
    rows = []
    for i, c in enumerate(distinct(alt.ranked, n), 1):
        p = c.prediction
        row = [
            i,
            _family(p),
            p.plan.knobs(),
            _score_text(alt, c.score),
            fmt_seconds(p.summary.prefill_s),
            fmt_seconds(p.summary.decode_s_per_token),
            fmt_bytes(p.summary.peak_gpu_bytes),
            fmt_bytes(p.summary.peak_host_bytes),
            _bound(p, "prefill"),
            _bound(p, "decode"),
            "simulated" if c.simulated is not None else "analytic",
            "yes" if _plan_key(c) in on_front else "",
        ]
        rows.append(row if alt.scored_apart else row[:3] + row[4:])
    headers = ["#", "family", "knobs", f"score: {alt.objective}", "prefill", "decode/token", "peak GPU"]
    headers += ["peak host", "bound prefill", "bound decode", "scored by", "Pareto"]
    if not alt.scored_apart:
        headers = headers[:3] + headers[4:]
        return table(headers, rows, numeric={0, 3, 4, 5, 6}, wrap={2})
    return table(headers, rows, numeric={0, 3, 4, 5, 6, 7}, wrap={2})


def pareto_table(alt: Alternatives) -> Raw | None:
    if not alt.front:
        return None
    rows = [
        [
            fmt_bytes(c.prediction.summary.peak_gpu_bytes),
            _score_text(alt, c.score),
            _family(c.prediction),
            c.plan.knobs(),
        ]
        for c in sorted(alt.front, key=lambda c: c.prediction.summary.peak_gpu_bytes)
    ]
    return table(["peak GPU", alt.objective, "family", "knobs"], rows, numeric={0, 1}, wrap={3})


def infeasible_table(alt: Alternatives) -> Raw | None:
    """Per family that has no fitting plan among the ranked ones: the closest miss and why."""
    fitting = {c.plan.family for c in alt.ranked}
    closest: dict[str, Trace] = {}
    for p in alt.infeasible:
        f = p.plan.family
        if f not in fitting and (
            f not in closest or p.summary.peak_gpu_bytes < closest[f].summary.peak_gpu_bytes
        ):
            closest[f] = p
    if not closest:
        return None
    rows = [
        [f, p.plan.knobs(), fmt_bytes(p.summary.peak_gpu_bytes), p.summary.reason or ""]
        for f, p in sorted(closest.items())
    ]
    return table(
        ["family", "closest knobs", "peak GPU", "why it does not fit"], rows, numeric={2}, wrap={1, 3}
    )


def _hover(c: Candidate, alt: Alternatives, tag: str = "") -> str:
    p, s = c.prediction, c.prediction.summary
    return (
        f"<b>{esc(p.plan.family)}</b> {esc(tag)}<br>{esc(p.plan.knobs())}<br>"
        f"{esc(alt.objective)}: {esc(_score_text(alt, c.score))}<br>prefill {esc(fmt_seconds(s.prefill_s))}, "
        f"decode {esc(fmt_seconds(s.decode_s_per_token))}/token<br>peak GPU {esc(fmt_bytes(s.peak_gpu_bytes))}, "
        f"host {esc(fmt_bytes(s.peak_host_bytes))}<br>bound: prefill {esc(_bound(p, 'prefill'))}, "
        f"decode {esc(_bound(p, 'decode'))}"
    )


def _y(alt: Alternatives, score: float) -> float:
    return -score if alt.objective == "max-context" else score


def pareto_figure(alt: Alternatives, gpu_limit_bytes: float | None = None) -> go.Figure:
    fig = go.Figure()
    families = sorted({c.plan.family for c in alt.ranked}, key=simplicity)
    for f in families:
        cs = [c for c in alt.ranked if c.plan.family == f]
        fig.add_trace(
            go.Scatter(
                x=[c.prediction.summary.peak_gpu_bytes / GiB for c in cs],
                y=[_y(alt, c.score) for c in cs],
                mode="markers",
                name=esc(f),
                marker={"color": family_colour(f), "size": 7, "opacity": 0.75},
                hovertext=[_hover(c, alt) for c in cs],
                hoverinfo="text",
            )
        )
    if alt.infeasible and alt.objective != "max-context":
        bad = alt.infeasible[:2000]
        fig.add_trace(
            go.Scatter(
                x=[p.summary.peak_gpu_bytes / GiB for p in bad],
                y=[analytic_score(p, alt.objective) for p in bad],
                mode="markers",
                name="does not fit",
                marker={
                    "color": "#adb5bd",
                    "symbol": "x-thin",
                    "size": 7,
                    "line": {"width": 1, "color": "#adb5bd"},
                },
                hovertext=[
                    f"<b>{esc(p.plan.family)}</b> (does not fit)<br>{esc(p.plan.knobs())}<br>"
                    f"{esc(p.summary.reason or '')}"
                    for p in bad
                ],
                hoverinfo="text",
                visible="legendonly" if len(bad) > 300 else True,
            )
        )
    if alt.front:
        front = sorted(alt.front, key=lambda c: c.prediction.summary.peak_gpu_bytes)
        fig.add_trace(
            go.Scatter(
                x=[c.prediction.summary.peak_gpu_bytes / GiB for c in front],
                y=[_y(alt, c.score) for c in front],
                mode="lines+markers",
                line={"shape": "hv", "color": "#1f2933", "width": 1.5},
                marker={"size": 9, "symbol": "circle-open", "color": "#1f2933"},
                name="Pareto frontier",
                hovertext=[_hover(c, alt, "(Pareto)") for c in front],
                hoverinfo="text",
            )
        )
    best = alt.best
    if best is not None:
        fig.add_trace(
            go.Scatter(
                x=[best.prediction.summary.peak_gpu_bytes / GiB],
                y=[_y(alt, best.score)],
                mode="markers",
                name="chosen plan",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "#fab005",
                    "line": {"width": 1, "color": "#1f2933"},
                },
                hovertext=[_hover(best, alt, "(chosen)")],
                hoverinfo="text",
            )
        )
    if gpu_limit_bytes:
        # on a log axis a shape takes the value, an annotation its log10
        x = gpu_limit_bytes / GiB
        fig.add_shape(
            type="line",
            xref="x",
            yref="paper",
            x0=x,
            x1=x,
            y0=0,
            y1=1,
            line={"color": "#b42318", "dash": "dash", "width": 1.2},
        )
        fig.add_annotation(
            x=math.log10(x),
            xref="x",
            y=1,
            yref="paper",
            text=esc(f"usable GPU memory {gpu_limit_bytes / GiB:.1f} GiB"),
            showarrow=False,
            xanchor="right",
            yanchor="bottom",
            font={"color": "#b42318"},
        )
    fig.update_layout(
        title=esc(f"{len(alt.ranked)} plans that fit, by {SCORE_LABELS.get(alt.objective, alt.objective)}"),
        xaxis={"title": "peak GPU memory (GiB, log scale)", "type": "log", "exponentformat": "SI"},
        yaxis={
            "title": SCORE_LABELS.get(alt.objective, alt.objective),
            "type": "log",
            "exponentformat": "SI",
        },
        height=560,
        font=font(),
        template="plotly_white",
        margin={"t": 60, "l": 70, "r": 20, "b": 60},
        legend={"title": {"text": "family"}},
    )
    return fig
