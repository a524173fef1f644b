"""Validation view: predicted against measured per phase (prefill time, decode time per token, peak GPU memory)
for every configuration of a results directory, with the +-5% and +-10% bands.

A results directory (`validation/results/<gpu>/`) holds, per configuration, a predicted and a measured Trace
named `*predicted*.json` and `*measured*.json`, in a subfolder per configuration or side by side with a shared
name (`cfg-predicted.json`, `cfg-measured.json`), plain or gzip-compressed (`.json.gz`). Other JSON files
(probes, comparisons) are left alone."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from roofsim.families.registry import simplicity
from roofsim.report.page import Raw, esc, table
from roofsim.report.style import family_colour, font
from roofsim.trace import Comparison, Trace, compare, read_json_text, upgrade
from roofsim.units import fmt_bytes, fmt_seconds, fmt_tokens
from roofsim.validate import closing_numbers, summarize

METRICS = {  # label, chart unit, text format
    "prefill_s": ("prefill", "s", fmt_seconds),
    "decode_s_per_token": ("decode per token", "s", fmt_seconds),
    "peak_gpu_bytes": ("peak GPU memory", "GiB", fmt_bytes),
}
SCALE = {"s": 1.0, "GiB": 1 / 1024**3}
BANDS = (0.05, 0.10)
_ROLE = re.compile(r"predicted|measured", re.IGNORECASE)


@dataclass
class Pair:
    name: str
    predicted_path: Path
    measured_path: Path
    predicted: Trace
    measured: Trace
    comparison: Comparison


@dataclass
class Results:
    root: Path
    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _role(path: Path) -> str | None:
    name = path.name.lower()
    if "compar" in name:
        return None
    roles = {m.group(0).lower() for m in _ROLE.finditer(name)}
    return roles.pop() if len(roles) == 1 else None


def _read(path: Path, problems: list[str], root: Path) -> Trace | None:
    """The trace at `path` in the current schema (older files are upgraded as Trace.read does), or None with the
    problem said."""
    try:
        data = json.loads(read_json_text(path))
        if isinstance(data, dict) and isinstance(data.get("header"), dict):
            data = upgrade(data)
        return Trace.model_validate(data)
    except (ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        problems.append(f"{path.relative_to(root)}: not a roofsim trace ({first})")
        return None


def has_traces(root: str | Path) -> bool:
    """Whether a folder holds any predicted or measured trace (find_pairs' files) at all."""
    root = Path(root)
    return any(_role(p) for p in [*root.rglob("*.json"), *root.rglob("*.json.gz")])


def find_pairs(root: str | Path) -> Results:
    """Pair predicted and measured traces: alone in their folder, or by the name they share."""
    root = Path(root)
    out = Results(root)
    by_dir: dict[Path, dict[str, list[Path]]] = {}
    for path in sorted([*root.rglob("*.json"), *root.rglob("*.json.gz")]):
        role = _role(path)
        if role:
            by_dir.setdefault(path.parent, {"predicted": [], "measured": []})[role].append(path)
    for folder, files in sorted(by_dir.items()):
        preds, meas = files["predicted"], files["measured"]
        if len(preds) == 1 and len(meas) == 1:
            matches = [(preds[0], meas[0])]
        else:
            key = {p: _ROLE.sub("", p.name.lower()) for p in preds + meas}
            mkeys = {key[m]: m for m in meas}
            matches = [(p, mkeys[key[p]]) for p in preds if key[p] in mkeys]
        paired = {x for pair in matches for x in pair}
        for lone in [p for p in preds + meas if p not in paired]:
            out.problems.append(f"{lone.relative_to(root)}: no matching predicted/measured partner")
        several = len(matches) > 1
        for p, m in matches:
            pt, mt = _read(p, out.problems, root), _read(m, out.problems, root)
            if pt is None or mt is None:
                continue
            rel = folder.relative_to(root).as_posix()
            name = rel if rel != "." else ""
            if several or not name:
                stem = _ROLE.sub("", p.stem).strip("-_. ") or p.stem
                name = f"{name}/{stem}" if name else stem
            out.pairs.append(Pair(name, p, m, pt, mt, compare(pt, mt)))
    return out


def error_pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured in (None, 0):
        return None
    return 100.0 * (predicted - measured) / measured


def _err_cell(e: float | None) -> Raw:
    if e is None:
        return Raw("&ndash;")
    cls = "err-ok" if abs(e) <= 5 else "err-mid" if abs(e) <= 10 else "err-bad"
    return Raw(f'<span class="{cls}">{e:+.1f}%</span>')


def pairs_table(results: Results) -> Raw:
    rows = []
    for pr in results.pairs:
        h = pr.measured.header
        row: list = [pr.name, h.plan.family, h.plan.knobs(), fmt_tokens(h.workload.context)]
        for metric, (_, _, fmt) in METRICS.items():
            r = pr.comparison.row(metric)
            row += [
                fmt(r.predicted) if r.predicted is not None else None,
                fmt(r.measured) if r.measured is not None else None,
                _err_cell(error_pct(r.predicted, r.measured)),
            ]
        if not pr.measured.complete:
            row[0] = f"{pr.name} (incomplete: {pr.measured.error or 'stopped early'})"
        rows.append(row)
    headers = ["configuration", "family", "knobs", "context"]
    for _, (label, _, _) in METRICS.items():
        headers += [f"{label} predicted", "measured", "error"]
    return table(headers, rows, numeric=set(range(3, 3 + 1 + 3 * len(METRICS))))


def headline(results: Results) -> list[str]:
    """The numbers validation/summarize.py closes with and docs/validation.md quotes (roofsim.validate.summarize:
    one configuration per runs.json, its chosen plan), then each metric's bands over those same runs. A folder
    without runs.json (traces only): band_summary over every pair."""
    rows, line = summarize(results.root)
    counted = [r for r in rows if not r["failed"]]
    if not counted:
        return band_summary(results)
    k = closing_numbers(line)
    said = {
        "decode_p90_abs_err_pct": f"predicted in advance, decode per token error median "
        f"{k['decode_median_abs_err_pct']:.1f}%, p90 {k['decode_p90_abs_err_pct']:.1f}%",
        "prefill_p90_abs_err_pct": f"prefill error median {k['prefill_median_abs_err_pct']:.1f}%, p90 "
        f"{k['prefill_p90_abs_err_pct']:.1f}%",
        "mem_err_max_pct": f"peak GPU memory error at most {k['mem_err_max_pct']:.1f}%",
        "regret_max_pct": f"planner regret at most {k['regret_max_pct']:.1f}% (against the runners-up and each "
        "other family's best where measured)",
        "band_coverage_pct": f"the band holds {k['band_coverage_pct']:.1f}% of the measured times",
    }
    known = [
        text for key, text in said.items() if not math.isnan(k[key])
    ]  # nan: no planner config, no regret
    lines = [
        f"{int(k['n'])} configurations, each one's chosen plan, as validation/summarize.py counts them"
        + (f": {'; '.join(known)}." if known else ".")
    ]
    for metric, (label, _, _) in METRICS.items():
        errs = [
            r[metric][2]
            for r in counted
            if r[metric][2] is not None and (metric == "peak_gpu_bytes" or r["complete"])
        ]
        lines += _bands(label, errs)
    extra = len(results.pairs) - len(counted)
    if extra > 0:
        lines.append(
            f"The figure and the table also show {extra} more measured runs (the runners-up and other families' "
            "best plans a planner configuration measures for the regret), which the error figures above leave "
            "out and the band's coverage counts."
        )
    return lines


def _bands(label: str, errs: list[float]) -> list[str]:
    if not errs:
        return []
    within = ", ".join(f"{sum(abs(e) <= 100 * b for e in errs)} within {b:.0%}" for b in BANDS)
    worst = max(errs, key=abs)
    return [f"{label}: {len(errs)} configurations, {within}; worst {worst:+.1f}%"]


def band_summary(results: Results) -> list[str]:
    lines = []
    for metric, (label, _, _) in METRICS.items():
        errs = [
            e
            for pr in results.pairs
            if (e := error_pct(pr.comparison.row(metric).predicted, pr.comparison.row(metric).measured))
            is not None
        ]
        lines += _bands(label, errs)
    return lines


def scatter_figure(results: Results) -> go.Figure | None:
    """One panel per metric: predicted (y) against measured (x), log-log, y = x with the error bands."""
    metrics = [
        m
        for m in METRICS
        if any(
            (r := pr.comparison.row(m)).predicted and r.measured and r.predicted > 0 and r.measured > 0
            for pr in results.pairs
        )
    ]
    if not metrics:
        return None
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        subplot_titles=[esc(f"{METRICS[m][0]} ({METRICS[m][1]})") for m in metrics],
        horizontal_spacing=0.08,
    )
    shown: set[str] = set()
    for col, m in enumerate(metrics, start=1):
        label, unit, fmt = METRICS[m]
        pts = []
        for pr in results.pairs:
            r = pr.comparison.row(m)
            if r.predicted and r.measured and r.predicted > 0 and r.measured > 0:
                pts.append((pr, r.measured * SCALE[unit], r.predicted * SCALE[unit]))
        lo = min(min(x, y) for _, x, y in pts) / 1.5
        hi = max(max(x, y) for _, x, y in pts) * 1.5
        xs = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        for b, shade in zip(BANDS[::-1], ("rgba(250,176,5,0.13)", "rgba(47,158,68,0.18)"), strict=True):
            fig.add_trace(
                go.Scatter(
                    x=xs + xs[::-1],
                    y=[x * (1 + b) for x in xs] + [x * (1 - b) for x in xs[::-1]],
                    fill="toself",
                    fillcolor=shade,
                    line={"width": 0},
                    name=f"±{b:.0%}",
                    legendgroup=f"band{b}",
                    showlegend=col == 1,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                line={"color": "#52606d", "width": 1, "dash": "dot"},
                name="predicted = measured",
                legendgroup="diag",
                showlegend=col == 1,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        for fam in sorted({pr.measured.header.plan.family for pr, _, _ in pts}, key=simplicity):
            fp = [(pr, x, y) for pr, x, y in pts if pr.measured.header.plan.family == fam]
            fig.add_trace(
                go.Scatter(
                    x=[x for _, x, _ in fp],
                    y=[y for _, _, y in fp],
                    mode="markers",
                    name=esc(fam),
                    legendgroup=fam,
                    showlegend=fam not in shown,
                    marker={
                        "size": 10,
                        "color": family_colour(fam),
                        "line": {"width": 1, "color": "#fff"},
                    },
                    hovertext=[
                        f"<b>{esc(pr.name)}</b><br>{esc(label)}: predicted {esc(fmt(y / SCALE[unit]))}, "
                        f"measured {esc(fmt(x / SCALE[unit]))}"
                        f"<br>error {error_pct(y, x):+.1f}%"
                        for pr, x, y in fp
                    ],
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
            shown.add(fam)
        rng = [math.log10(lo), math.log10(hi)]
        axis = {"type": "log", "range": rng, "exponentformat": "SI"}
        fig.update_xaxes(title_text=esc(f"measured ({unit})"), row=1, col=col, **axis)
        fig.update_yaxes(title_text=esc(f"predicted ({unit})"), row=1, col=col, **axis)
    fig.update_layout(
        height=480,
        font=font(),
        template="plotly_white",
        margin={"t": 60, "l": 70, "r": 20, "b": 60},
    )
    return fig
