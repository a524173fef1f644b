"""The phase table: prefill time, decode time per token, peak memory, and what binds each phase with its share,
side by side for the analytic prediction, the simulated trace and the measured trace, whichever are given."""

from __future__ import annotations

from roofsim.prediction import Prediction
from roofsim.report.page import Raw, table
from roofsim.report.validation import error_pct
from roofsim.trace import Trace
from roofsim.units import fmt_bytes, fmt_seconds


def _busy_text(busy: dict[str, float], total: float | None) -> str:
    if not busy or not total:
        return ""
    return ", ".join(f"{r} {v / total:.0%}" for r, v in sorted(busy.items(), key=lambda kv: -kv[1]) if v > 0)


def _bound(resource: str | None, busy: dict[str, float], total: float | None) -> str | None:
    if resource is None:
        return None
    if resource in busy and total:
        return f"{resource} {busy[resource] / total:.0%}"
    return resource


def _fits(feasible: bool | None, reason: str | None) -> str:
    if feasible is None:
        return ""
    return "yes" if feasible else f"no: {reason or ''}"


def _opt(value: float | None, fmt) -> str | None:
    return fmt(value) if value is not None else None


def _err(pred: float | None, meas: float | None) -> Raw | None:
    e = error_pct(pred, meas)
    if e is None:
        return None
    cls = "err-ok" if abs(e) <= 5 else "err-mid" if abs(e) <= 10 else "err-bad"
    return Raw(f'<span class="{cls}">{e:+.1f}%</span>')


def busy_from_spans(trace: Trace, phase: str) -> tuple[dict[str, float], float]:
    """Busy time per resource over the steps whose spans the trace kept, and those steps' total time: for a
    measured trace, whose summary carries no busy times. Overlapping spans on one resource count once; the
    host thread's waits (sync) are not work."""
    steps: dict[int, list] = {}
    for s in trace.spans:
        if s.phase == phase:
            steps.setdefault(s.step, []).append(s)
    busy: dict[str, float] = {}
    total = 0.0
    for spans in steps.values():
        total += max(s.end_s for s in spans) - min(s.start_s for s in spans)
        by_resource: dict[str, list[tuple[float, float]]] = {}
        for s in spans:
            if s.kind != "sync":
                by_resource.setdefault(s.resource, []).append((s.start_s, s.end_s))
        for resource, intervals in by_resource.items():
            covered, end = 0.0, -float("inf")
            for a, b in sorted(intervals):
                if b > end:
                    covered += b - max(a, end)
                    end = b
            busy[resource] = busy.get(resource, 0.0) + covered
    return busy, total


def _trace_phase_cells(t: Trace, phase: str) -> dict[str, str | None]:
    """Bound and busy shares of a trace's phase: from its summary, or for a measured trace (whose summary has
    none) from the spans of the steps it kept."""
    s = t.summary
    busy = s.busy_s.get(phase) or {}
    total = s.prefill_s if phase == "prefill" else s.decode_s_per_token
    tag = ""
    if not busy:
        busy, total = busy_from_spans(t, phase)
        tag = " (from the kept steps' spans)" if busy else ""
    bound = s.bound.get(phase) or (max(busy, key=busy.get) if busy else None)
    text = _busy_text(busy, total)
    return {
        f"bound {phase}": (_bound(bound, busy, total) or "") + tag if bound else None,
        f"busy {phase}": text + tag if text else None,
    }


def phase_table(pred: Prediction | None, traces: list[Trace]) -> Raw:
    """Columns: analytic (if `pred`), then one per trace by producer; an error column when a measured trace
    sits beside a predicted one (predicted vs measured, in % of measured)."""
    cols: list[dict[str, object]] = []
    if pred is not None:
        cols.append(
            {
                "name": "analytic",
                "fits": _fits(pred.feasible, pred.reason),
                "prefill": pred.prefill_s,
                "decode": pred.decode_s_per_token,
                "gpu": pred.peak_gpu_bytes,
                "host": pred.peak_host_bytes,
                "bound prefill": f"{pred.prefill.bound} {pred.prefill.bound_share:.0%}",
                "bound decode": f"{pred.decode.bound} {pred.decode.bound_share:.0%}",
                "busy prefill": _busy_text(pred.prefill.busy_s, pred.prefill_s),
                "busy decode": _busy_text(pred.decode.busy_s, pred.decode_s_per_token),
            }
        )
    for t in traces:
        s = t.summary
        name = "simulated" if t.header.producer == "predicted" else "measured"
        if not t.complete:
            name += " (incomplete)"
        cols.append(
            {
                "name": name,
                "fits": _fits(s.feasible, s.reason),
                "prefill": s.prefill_s,
                "decode": s.decode_s_per_token,
                "gpu": s.peak_gpu_bytes,
                "host": s.pinned_host_bytes,
                **_trace_phase_cells(t, "prefill"),
                **_trace_phase_cells(t, "decode"),
            }
        )
    predicted = next((t for t in traces if t.header.producer == "predicted"), None)
    measured = next((t for t in traces if t.header.producer == "measured"), None)
    with_error = predicted is not None and measured is not None
    quantities = [
        ("fits", "fits", None),
        ("prefill", "prefill", fmt_seconds),
        ("decode per token", "decode", fmt_seconds),
        ("peak GPU memory", "gpu", fmt_bytes),
        ("host memory (pinned)", "host", fmt_bytes),
        ("bound in prefill", "bound prefill", None),
        ("bound in decode", "bound decode", None),
        ("busy in prefill (share of the phase)", "busy prefill", None),
        ("busy in decode (share of a step)", "busy decode", None),
    ]
    rows = []
    for label, key, fmt in quantities:
        row: list = [label] + [_opt(c[key], fmt) if fmt else (c[key] or None) for c in cols]
        if with_error:
            row.append(
                _err(getattr(predicted.summary, _FIELD[key]), getattr(measured.summary, _FIELD[key]))
                if key in _FIELD
                else None
            )
        rows.append(row)
    headers = (
        ["quantity"]
        + [str(c["name"]) for c in cols]
        + (["error (simulated vs measured)"] if with_error else [])
    )
    return table(headers, rows)


_FIELD = {"prefill": "prefill_s", "decode": "decode_s_per_token", "gpu": "peak_gpu_bytes"}
