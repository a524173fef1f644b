"""Terminal tables for predictions and roofline rows (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from roofsim.roofline import RooflineRow
from roofsim.trace import Trace
from roofsim.units import fmt_bytes, fmt_seconds, fmt_tokens


def _fmt_flops(x: float) -> str:
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f}"


def bound_text(p: Trace, phase: str) -> str:
    name, share = p.summary.phase(phase).binding()
    return f"{name} {share:.0%}"


def predictions_table(preds: list[Trace], title: str, traces: list | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col, kw in [
        ("family", {}),
        ("knobs", {"overflow": "fold", "max_width": 40}),
        ("fits", {}),
        ("prefill", {"justify": "right"}),
        ("decode/token", {"justify": "right"}),
        ("peak GPU", {"justify": "right"}),
        ("peak host", {"justify": "right"}),
        ("bound prefill", {}),
        ("bound decode", {}),
    ] + ([("sim prefill", {"justify": "right"}), ("sim decode", {"justify": "right"})] if traces else []):
        t.add_column(col, **kw)
    for i, p in enumerate(preds):
        family = p.plan.family + (" ~" if p.plan.approximate else "")
        sim = []
        if traces:
            s = traces[i].summary
            sim = [
                fmt_seconds(s.prefill_s or float("nan")),
                fmt_seconds(s.decode_s_per_token or float("nan")),
            ]
        fits = "yes" if p.feasible else f"[red]no[/red]: {p.summary.reason}"
        t.add_row(
            family,
            p.plan.knobs(),
            fits,
            fmt_seconds(p.summary.prefill_s),
            fmt_seconds(p.summary.decode_s_per_token),
            fmt_bytes(p.summary.peak_gpu_bytes),
            fmt_bytes(p.summary.peak_host_bytes),
            bound_text(p, "prefill"),
            bound_text(p, "decode"),
            *sim,
        )
    if any(p.plan.approximate for p in preds):
        t.caption = "~ approximate: attends only part of the context (accuracy not modelled)"
    return t


def context_sweep_table(rows: list[tuple[int, Trace | None]], title: str) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("context", "best plan", "decode/token", "prefill", "peak GPU", "peak host", "bound decode"):
        t.add_column(col, justify="right" if col not in ("best plan", "bound decode") else "left")
    for ctx, p in rows:
        if p is None:
            t.add_row(fmt_tokens(ctx), "[red]nothing fits[/red]", "-", "-", "-", "-", "-")
            continue
        t.add_row(
            fmt_tokens(ctx),
            f"{p.plan.family} {p.plan.knobs()}",
            fmt_seconds(p.summary.decode_s_per_token),
            fmt_seconds(p.summary.prefill_s),
            fmt_bytes(p.summary.peak_gpu_bytes),
            fmt_bytes(p.summary.peak_host_bytes),
            bound_text(p, "decode"),
        )
    return t


def roofline_table(rows: list[RooflineRow], title: str) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("operator", "FLOPs", "bytes", "FLOP/byte", "time", "bound"):
        t.add_column(col, justify="left" if col in ("operator", "bound") else "right")
    for r in rows:
        t.add_row(
            r.name,
            _fmt_flops(r.flops),
            fmt_bytes(r.hbm_bytes),
            f"{r.intensity:.1f}",
            fmt_seconds(r.time_s),
            r.bound,
        )
    return t


def console() -> Console:
    c = Console()
    return c if c.is_terminal else Console(width=180)


def trace_table(trace, title: str) -> Table:
    s = trace.summary
    t = Table(
        title=f"{title}: {trace.header.plan.family} {trace.header.plan.knobs()} ({trace.header.producer})",
        title_justify="left",
    )
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("fits", "yes" if s.feasible else f"no: {s.reason}")
    t.add_row("prefill", fmt_seconds(s.prefill_s or float("nan")))
    t.add_row("prefill chunks", str(len(s.prefill.step_s)))
    t.add_row("decode / token (median)", fmt_seconds(s.decode_s_per_token or float("nan")))
    t.add_row("peak GPU memory", fmt_bytes(s.peak_gpu_bytes or 0))
    t.add_row("host memory", fmt_bytes(s.peak_host_bytes or 0))
    for phase in ("prefill", "decode"):
        stats = s.phase(phase)
        total = stats.time_s
        share = ", ".join(
            f"{r} {v / total:.0%}" for r, v in sorted(stats.busy_s.items(), key=lambda kv: -kv[1]) if total
        )
        if share:
            t.add_row(f"busy in {phase}", share)
    return t


def _distinct(cands, n: int):
    """The best candidate of each distinct plan once the prefill chunk is set aside, best first."""
    seen, out = set(), []
    for c in cands:
        key = (
            c.plan.family,
            tuple(sorted((k, str(v)) for k, v in c.plan.model_dump().items() if k != "prefill_chunk")),
        )
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
        if len(out) == n:
            break
    return out


def ranked_table(result, title: str, n: int = 10) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    objective = result.objective
    for col in ("#", "family", "knobs", objective, "decode/token", "prefill", "peak GPU", "bound", "model"):
        t.add_column(
            col,
            justify="right" if col in ("#", objective, "decode/token", "prefill", "peak GPU") else "left",
            overflow="fold",
        )
    for i, c in enumerate(_distinct(result.ranked, n), 1):
        p = c.prediction
        value = fmt_tokens(int(-c.score)) if objective == "max-context" else fmt_seconds(c.score)
        t.add_row(
            str(i),
            p.plan.family + (" ~" if p.plan.approximate else ""),
            p.plan.knobs(),
            value,
            fmt_seconds(p.summary.decode_s_per_token),
            fmt_seconds(p.summary.prefill_s),
            fmt_bytes(p.summary.peak_gpu_bytes),
            bound_text(p, "prefill" if objective == "prefill" else "decode"),
            "simulated" if c.simulated is not None else "analytic",
        )
    return t


def pareto_table(result) -> Table:
    t = Table(title="Pareto frontier: less GPU memory costs time", title_justify="left", header_style="bold")
    for col in ("peak GPU", result.objective, "family", "knobs"):
        t.add_column(
            col, justify="right" if col in ("peak GPU", result.objective) else "left", overflow="fold"
        )
    for c in result.pareto[:12]:
        t.add_row(
            fmt_bytes(c.prediction.summary.peak_gpu_bytes),
            fmt_seconds(c.score),
            c.plan.family,
            c.plan.knobs(),
        )
    return t
