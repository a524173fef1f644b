"""Price a plan with its family's analytic model, check it fits, and write the answer as a Trace (the summary of
both phases and the peak memory by kind; no spans)."""

from __future__ import annotations

from roofsim.families.pipeline import context, decode_phase, new_shapes, prefill_phase, prefill_steps
from roofsim.families.registry import check_supports, family
from roofsim.limits import Limits
from roofsim.plan import PlanBase
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
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
) -> Trace:
    limits = limits or Limits()
    ctx = context(model, gpu, host, work)
    fam = family(plan)
    check_supports(fam, plan, model)
    ev = fam.evaluate(plan, ctx)
    shapes = ev.new_shapes
    if shapes is None:
        shapes = new_shapes(prefill_steps(work.context, plan.prefill_chunk))
    shape_s = shapes * gpu.runtime.attention_shape_s()
    if shape_s.any():  # the host sets a kernel up while the GPU waits for its first call
        ev.prefill.time_s = ev.prefill.time_s + shape_s
        ev.prefill.busy["host"] = ev.prefill.busy["host"] + shape_s
    gpu_need, host_need = ev.memory.gpu_bytes, ev.memory.host_bytes
    gpu_cap, host_cap = limits.gpu_bytes(gpu), limits.host_bytes(host)
    reasons = []
    # a cap the user gave may be decimal (24GB, 1TB): say it in both bases beside the binary figures
    gpu_of = "" if limits.gpu_mem_bytes is None else f" of the {fmt_bytes_both(limits.gpu_mem_bytes)} cap"
    host_cap_text = fmt_bytes(host_cap) if limits.host_mem_bytes is None else fmt_bytes_both(host_cap)
    if gpu_need > gpu_cap:
        reasons.append(
            f"needs {fmt_bytes(gpu_need)} of GPU memory, {fmt_bytes(gpu_need - gpu_cap)} over the {fmt_bytes(gpu_cap)} "
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
    return Trace(header=header, summary=summary)
