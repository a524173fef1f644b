"""Price a plan: run its family's model, check it fits, and wrap the answer as a Prediction."""

from __future__ import annotations

from dataclasses import dataclass

from roofsim.families import EVALUATORS
from roofsim.families.base import Ctx, attention_shape_s, decode_phase, prefill_phase
from roofsim.plan import Plan
from roofsim.prediction import Prediction
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.units import GiB, fmt_bytes
from roofsim.workload import Workload


@dataclass(frozen=True)
class Limits:
    """Memory the plan may use. gpu_mem caps the card (e.g. to emulate a 24 GB card on a bigger one); the
    GPU spec's reserved memory (CUDA context, allocator slack) comes off either way."""

    gpu_mem_bytes: float | None = None
    host_mem_bytes: float | None = None

    def gpu_bytes(self, gpu: GpuSpec) -> float:
        card = (
            gpu.capacity_bytes if self.gpu_mem_bytes is None else min(self.gpu_mem_bytes, gpu.capacity_bytes)
        )
        return card - gpu.memory.reserved_gib.value * GiB

    def host_bytes(self, host: HostSpec) -> float:
        return host.capacity_bytes if self.host_mem_bytes is None else self.host_mem_bytes


def predict(
    plan: Plan, model: ModelSpec, gpu: GpuSpec, host: HostSpec, work: Workload, limits: Limits = Limits()
) -> Prediction:
    ctx = Ctx(model, gpu, host, work)
    ev = EVALUATORS[plan.family](plan, ctx)
    shape_s = attention_shape_s(plan, ctx)
    if shape_s.any():  # the host sets a kernel up while the GPU waits for its first call
        ev.prefill.time_s = ev.prefill.time_s + shape_s
        ev.prefill.busy["host"] = ev.prefill.busy["host"] + shape_s
    gpu_need, host_need = ev.memory.gpu_bytes, ev.memory.host_bytes
    gpu_cap, host_cap = limits.gpu_bytes(gpu), limits.host_bytes(host)
    reasons = []
    if gpu_need > gpu_cap:
        reasons.append(
            f"needs {fmt_bytes(gpu_need)} of GPU memory, {fmt_bytes(gpu_need - gpu_cap)} over the {fmt_bytes(gpu_cap)} usable"
        )
    if host_need > host_cap:
        reasons.append(
            f"needs {fmt_bytes(host_need)} of host memory, {fmt_bytes(host_need - host_cap)} over the {fmt_bytes(host_cap)} available"
        )
    return Prediction(
        plan=plan,
        model=model.name,
        gpu=gpu.name,
        host=host.name,
        workload=work,
        approximate=plan.approximate,
        feasible=not reasons,
        reason="; ".join(reasons) or None,
        prefill=prefill_phase(ev.prefill),
        decode=decode_phase(ev.decode, 0),
        decode_end_s_per_token=float(ev.decode.time_s[-1]),
        memory=ev.memory,
        peak_gpu_bytes=gpu_need,
        peak_host_bytes=host_need,
        notes=ev.notes,
    )
