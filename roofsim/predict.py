"""Price a plan with its family's analytic model, check it fits, and write the answer as a Trace (the summary of
both phases and the peak memory by kind; no spans)."""

from __future__ import annotations

from roofsim.band import fast_end, has_spread, slow_end, widen
from roofsim.families.pipeline import context, decode_phase, new_shapes, prefill_phase, prefill_steps
from roofsim.families.registry import check_kv_dtype, check_supports, family
from roofsim.kvformat import KV_SCALE_BLOCK
from roofsim.limits import Limits
from roofsim.plan import PlanBase
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.tensor_parallel import describe, rank_specs
from roofsim.trace import Summary, Trace, TraceHeader
from roofsim.units import fmt_bytes, fmt_bytes_both
from roofsim.workload import Workload

__all__ = ["Limits", "predict"]


def predict(
    plan: PlanBase,
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    band: bool = False,
) -> Trace:
    """The analytic prediction; with `band`, each phase's band too (roofsim.band: the plan priced at the slow
    and at the fast ends of the profile's spreads, `spread_band_s`, widened by the model's own error, `band_s`; a
    profile without spreads gives a zero-width band)."""
    limits = limits or Limits()
    check_kv_dtype(plan)
    rank_model, rank_gpu, rank_host = rank_specs(model, gpu, host, plan.tp)
    ctx = context(rank_model, rank_gpu, rank_host, work, plan.kv_dtype)
    fam = family(plan)
    check_supports(fam, plan, model)
    ev = fam.evaluate(plan, ctx)
    if plan.tp > 1:  # one rank priced; the host holds every rank's share
        ev.memory = ev.memory.model_copy(update={"host": {k: v * plan.tp for k, v in ev.memory.host.items()}})
        ev.notes.append(describe(gpu, host, plan.tp))
    if plan.kv_dtype != "bf16":
        ev.notes.append(
            f"approximate: KV stored in {plan.kv_dtype} with a scale per {KV_SCALE_BLOCK}-token block and head, "
            "dequantised on the GPU before attention"
        )
    shapes = ev.new_shapes
    if shapes is None:
        shapes = new_shapes(prefill_steps(work.context, plan.prefill_chunk))
    shape_s = shapes * gpu.runtime.attention_shape_s()
    if shape_s.any():  # the host sets a kernel up while the GPU waits for its first call
        ev.prefill.time_s = ev.prefill.time_s + shape_s
        ev.prefill.busy["host"] = ev.prefill.busy["host"] + shape_s
    gpu_need, host_need = ev.memory.gpu_bytes, ev.memory.host_bytes  # GPU: per rank
    gpu_cap, host_cap = limits.gpu_bytes(gpu), limits.host_bytes(host)
    reasons = []
    # a cap the user gave may be decimal (24GB, 1TB): say it in both bases beside the binary figures
    gpu_of = "" if limits.gpu_mem_bytes is None else f" of the {fmt_bytes_both(limits.gpu_mem_bytes)} cap"
    host_cap_text = fmt_bytes(host_cap) if limits.host_mem_bytes is None else fmt_bytes_both(host_cap)
    per_gpu = " per GPU" if plan.tp > 1 else ""
    if gpu_need > gpu_cap:
        reasons.append(
            f"needs {fmt_bytes(gpu_need)} of GPU memory{per_gpu}, {fmt_bytes(gpu_need - gpu_cap)} over the {fmt_bytes(gpu_cap)} "
            f"usable{gpu_of}"
        )
    if host_need > host_cap:
        reasons.append(
            f"needs {fmt_bytes(host_need)} of host memory, {fmt_bytes(host_need - host_cap)} over the {host_cap_text} available"
        )
    summary = Summary(
        prefill=prefill_phase(ev.prefill),
        decode=decode_phase(ev.decode, 0),
        decode_end_s_per_token=float(ev.decode.time_s[-1]),
        peak_gpu_bytes=gpu_need,
        peak_host_bytes=host_need,
        memory=ev.memory,
        feasible=not reasons,
        reason="; ".join(reasons) or None,
    )
    header = TraceHeader(
        producer="predicted",
        tool="roofsim.predict",
        plan=plan,
        model=model.name,
        gpu=gpu.name,
        host=host.name,
        workload=work,
        gpu_mem_bytes=limits.gpu_mem_bytes,
        host_mem_bytes=limits.host_mem_bytes,
        profile=gpu.source,
        notes=ev.notes,
    )
    if band:
        ends = [
            predict(plan, model, g, h, work, limits).summary
            for g, h in (fast_end(gpu, host), slow_end(gpu, host))
        ]
        spread = has_spread(gpu, host)
        for name in ("prefill", "decode"):
            phase = summary.phase(name)
            lo, hi = (e.phase(name).time_s for e in ends)
            phase.spread_band_s = (min(phase.time_s, lo, hi), max(phase.time_s, lo, hi))
            phase.band_s = widen(phase.spread_band_s, name) if spread else phase.spread_band_s
    return Trace(header=header, summary=summary)
