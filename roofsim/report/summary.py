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
                "bound prefill": _bound(s.bound.get("prefill"), s.busy_s.get("prefill", {}), s.prefill_s),
                "bound decode": _bound(
                    s.bound.get("decode"), s.busy_s.get("decode", {}), s.decode_s_per_token
                ),
                "busy prefill": _busy_text(s.busy_s.get("prefill", {}), s.prefill_s),
                "busy decode": _busy_text(s.busy_s.get("decode", {}), s.decode_s_per_token),
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
