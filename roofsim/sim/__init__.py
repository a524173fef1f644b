"""Discrete-event simulation of a plan: the executor's issue order played on simulated streams, copy engines,
CPU and host thread, with GPU memory tracked over time. The output is a Trace, the same schema the executor
writes when it measures."""

from __future__ import annotations

import datetime
import statistics
from typing import Literal

from roofsim.families.base import Ctx
from roofsim.plan import Plan
from roofsim.predict import Limits, predict
from roofsim.sim.engine import Machine
from roofsim.sim.program import build
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import PhaseSummary, Trace, TraceHeader
from roofsim.units import fmt_bytes
from roofsim.workload import Workload

KeepSpans = Literal["all", "sample", "none"]


def _keeper(keep: KeepSpans, n_prefill: int, n_decode: int):
    if keep == "all":
        return lambda phase, step: True
    if keep == "none":
        return lambda phase, step: False
    chunks = {0, n_prefill // 2, n_prefill - 1}
    steps = {0, n_decode - 1}
    return lambda phase, step: step in (chunks if phase == "prefill" else steps)


def simulate(
    plan: Plan,
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    decode_steps: int | None = None,
    keep: KeepSpans = "sample",
) -> Trace:
    limits = limits or Limits()
    ctx = Ctx(model, gpu, host, work)
    n_decode = decode_steps if decode_steps is not None else work.gen
    tasks, base = build(plan, ctx, n_decode)
    n_prefill = sum(1 for t in {(t.phase, t.step) for t in tasks} if t[0] == "prefill")
    machine = Machine(gpu, base, limits.gpu_bytes(gpu), _keeper(keep, n_prefill, n_decode))
    res = machine.run(tasks)

    prefill_ends = [res.step_end[("prefill", k)] for k in range(n_prefill)]
    chunk_s = [e - s for s, e in zip([0.0] + prefill_ends[:-1], prefill_ends, strict=True)]
    decode_ends = [res.step_end[("decode", t)] for t in range(n_decode)]
    step_s = [e - s for s, e in zip([prefill_ends[-1]] + decode_ends[:-1], decode_ends, strict=True)]
    busy: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}}
    for (phase, resource), seconds in res.busy.items():
        busy[phase][resource] = seconds / (1 if phase == "prefill" else max(n_decode, 1))

    analytic = predict(plan, model, gpu, host, work, limits)  # host memory and its limit
    reasons = []
    if res.over_capacity is not None:
        t, short = res.over_capacity
        reasons.append(
            f"exceeds GPU memory at t={t:.3f} s by {fmt_bytes(short)} (peak {fmt_bytes(res.peak_gpu_bytes)}, "
            f"usable {fmt_bytes(limits.gpu_bytes(gpu))})"
        )
    host_cap = limits.host_bytes(host)
    if analytic.peak_host_bytes > host_cap:
        reasons.append(
            f"needs {fmt_bytes(analytic.peak_host_bytes)} of host memory, {fmt_bytes(analytic.peak_host_bytes - host_cap)} over"
        )
    notes = [
        f"spans kept: {keep} (prefill chunks and decode steps; busy totals cover every step)",
        f"every prefill chunk and {n_decode} decode steps simulated in full ({len(tasks)} tasks, {res.events} events)",
    ]
    summary = PhaseSummary(
        prefill_s=prefill_ends[-1],
        prefill_chunk_s=chunk_s,
        decode_s_per_token=statistics.median(step_s) if step_s else None,
        decode_step_s=step_s,
        peak_gpu_bytes=res.peak_gpu_bytes,
        pinned_host_bytes=analytic.peak_host_bytes,
        bound={p: max(b, key=b.get) for p, b in busy.items() if b},
        busy_s=busy,
        feasible=not reasons,
        reason="; ".join(reasons) or None,
    )
    header = TraceHeader(
        producer="predicted",
        tool="roofsim.sim",
        plan=plan,
        model=model.name,
        gpu=gpu.name,
        host=host.name,
        workload=work,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )
    return Trace(header=header, spans=res.spans, memory=res.memory, summary=summary)
