"""The phase table: prefill time, decode time per token, peak memory, and what binds each phase with its share,
side by side for the analytic prediction, the simulated trace and the measured trace, whichever are given."""

from __future__ import annotations

from roofsim.report.page import Raw, table
from roofsim.report.validation import error_pct
from roofsim.trace import PhaseStats, Trace
from roofsim.units import fmt_band, fmt_bytes, fmt_seconds


def _shares(times: dict[str, float], total: float) -> str:
    return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(times.items(), key=lambda kv: -kv[1]) if v > 0)


def _busy_text(busy: dict[str, float], total: float | None, ceilings: dict[str, float] | None = None) -> str:
    """Each busy resource's share of the phase, most first; then, where the analytic model gives them, the compute
    stream's and the CPU's time by the ceiling that binds each operator (tensor, hbm, launch, cpu_ram, ...)."""
    if not busy or not total:
        return ""
    text = _shares(busy, total)
    by_ceiling = _shares(ceilings or {}, total)
    return f"{text}; by ceiling: {by_ceiling}" if by_ceiling else text


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


def _phase_cells(t: Trace, phase: str) -> dict[str, str | None]:
    """What binds a trace's phase and each resource's busy share: from its summary, or for a measured trace
    (whose summary has none) from the spans of the steps it kept."""
    st: PhaseStats = t.summary.phase(phase)
    busy, total, tag = dict(st.busy_s), st.time_s, ""
    bound, share = st.binding() if st.bound and busy else (st.bound, None)
    if not busy:
        busy, total = busy_from_spans(t, phase)
        tag = " (from the kept steps' spans)" if busy else ""
        bound = bound or (max(busy, key=busy.get) if busy else None)
        share = busy[bound] / total if bound in busy and total else None
    text = _busy_text(busy, total, st.ceiling_s)
    bound_text = f"{bound} {share:.0%}" if bound and share is not None else bound
    return {
        f"bound {phase}": bound_text + tag if bound_text else None,
        f"busy {phase}": text + tag if text else None,
    }


def phase_table(pred: Trace | None, traces: list[Trace]) -> Raw:
    """Columns: analytic (if `pred`, the analytic model's trace), then one per trace by producer; an error column
    when a measured trace sits beside a predicted one (predicted vs measured, in % of measured). A predicted time
    with a band shows it: `150.0 ms (141.2-172.5)`."""
    cols: list[dict[str, object]] = []
    named = [("analytic", pred)] if pred is not None else []
    for t in traces:
        name = "simulated" if t.header.producer == "predicted" else "measured"
        named.append((name if t.complete else f"{name} (incomplete)", t))
    for name, t in named:
        s = t.summary
        cols.append(
            {
                "name": name,
                "fits": _fits(s.feasible, s.reason),
                "prefill": s.prefill_s,
                "decode": s.decode_s_per_token,
                "prefill band": s.prefill.band_s,
                "decode band": s.decode.band_s,
                "gpu": s.peak_gpu_bytes,
                "host": s.peak_host_bytes,
                **_phase_cells(t, "prefill"),
                **_phase_cells(t, "decode"),
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
        row: list = [label] + [
            (fmt_band(c[key], c[f"{key} band"]) if c[key] is not None else None)
            if key in ("prefill", "decode")
            else _opt(c[key], fmt)
            if fmt
            else (c[key] or None)
            for c in cols
        ]
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
