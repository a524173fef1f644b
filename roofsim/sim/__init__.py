"""Discrete-event simulation of a plan: the executor's issue order played on simulated streams, copy engines,
CPU and host thread, with GPU memory tracked over time. The output is a Trace, the same schema the executor
writes when it measures."""

from __future__ import annotations

import datetime
import statistics
from typing import Literal

import numpy as np

from roofsim.families.pipeline import context, host_memory
from roofsim.families.registry import check_kv_dtype, family
from roofsim.limits import Limits
from roofsim.plan import PlanBase
from roofsim.sim.builder import build, prefill_chunks, sampled
from roofsim.sim.engine import Machine
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.tensor_parallel import rank_specs
from roofsim.trace import MemoryUse, PhaseStats, Summary, Trace, TraceHeader
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
    plan: PlanBase,
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    decode_steps: int | None = None,
    keep: KeepSpans = "sample",
    prefill: bool = True,
    prefill_sample: int | None = None,
) -> Trace:
    """Simulate prefill (every chunk, or `prefill_sample` evenly spaced chunks with the others interpolated in
    the cached length) and `decode_steps` decode steps (default: the workload's gen)."""
    limits = limits or Limits()
    check_kv_dtype(plan)
    rank_model, rank_gpu, rank_host = rank_specs(model, gpu, host, plan.tp)  # one rank of plan.tp
    ctx = context(rank_model, rank_gpu, rank_host, work, plan.kv_dtype)
    n_decode = decode_steps if decode_steps is not None else work.gen
    tasks, base = build(plan, ctx, n_decode, prefill, prefill_sample)
    n_prefill = prefill_chunks(ctx, plan.prefill_chunk) if prefill else 0
    chunks = sampled(n_prefill, prefill_sample)
    machine = Machine(rank_gpu, base, limits.gpu_bytes(gpu), _keeper(keep, n_prefill, n_decode))
    res = machine.run(tasks)

    ends = [res.step_end[("prefill", k)] for k in chunks] + [
        res.step_end[("decode", t)] for t in range(n_decode)
    ]
    durations = [e - s for s, e in zip([0.0] + ends[:-1], ends, strict=True)]
    simulated_chunk_s, step_s = durations[: len(chunks)], durations[len(chunks) :]
    chunk_s = [float(x) for x in np.interp(range(n_prefill), chunks, simulated_chunk_s)] if chunks else []
    busy: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}}
    for (phase, resource), seconds in res.busy.items():
        busy[phase][resource] = seconds / (1 if phase == "prefill" else max(n_decode, 1))

    host_bytes = host_memory(ctx, family(plan).host_memory(plan, ctx), plan.weights == "streamed")
    host_bytes = {k: v * plan.tp for k, v in host_bytes.items()}  # every rank's share
    host_need = sum(host_bytes.values())
    for sample in res.memory:  # the pinned KV pool is allocated once, before the first step
        sample.pinned_host_bytes = host_need
    reasons = []
    if res.over_capacity is not None:
        t, short = res.over_capacity
        reasons.append(
            f"exceeds GPU memory at t={t:.3f} s by {fmt_bytes(short)} (peak {fmt_bytes(res.peak_gpu_bytes)}, "
            f"usable {fmt_bytes(limits.gpu_bytes(gpu))})"
        )
    host_cap = limits.host_bytes(host)
    if host_need > host_cap:
        reasons.append(f"needs {fmt_bytes(host_need)} of host memory, {fmt_bytes(host_need - host_cap)} over")
    notes = [
        f"spans kept: {keep} (prefill chunks and decode steps; busy totals cover every step)",
        f"{len(chunks)} of {n_prefill} prefill chunks and {n_decode} decode steps simulated "
        f"({len(tasks)} tasks, {res.events} events)",
    ]
    if len(chunks) < n_prefill:
        notes.append(
            "prefill chunks not simulated are interpolated linearly in the cached length between sampled ones"
        )

    def phase(name: str, time_s, step_s) -> PhaseStats:
        b = busy[name]
        return PhaseStats(time_s=time_s, step_s=step_s, busy_s=b, bound=max(b, key=b.get) if b else None)

    peak = max(res.memory, key=lambda m: m.gpu_bytes)
    summary = Summary(
        prefill=phase("prefill", float(sum(chunk_s)) if chunk_s else None, chunk_s),
        decode=phase("decode", statistics.median(step_s) if step_s else None, step_s),
        peak_gpu_bytes=res.peak_gpu_bytes,
        peak_host_bytes=host_need,
        memory=MemoryUse(gpu=dict(peak.gpu), host=host_bytes),
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
        gpu_mem_bytes=limits.gpu_mem_bytes,
        host_mem_bytes=limits.host_mem_bytes,
        profile=gpu.source,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )
    return Trace(header=header, spans=res.spans, memory=res.memory, summary=summary)
