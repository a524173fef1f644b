"""One paragraph in plain words: what binds, what the runner-up costs, and what more memory would buy."""

from __future__ import annotations

from roofsim.errors import UserError
from roofsim.plan import CpuAttentionPlan, HeadOffloadPlan
from roofsim.planner.candidates import spread
from roofsim.planner.search import PlanResult
from roofsim.predict import Limits, predict
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.units import fmt_bytes, fmt_tokens

WHAT = {
    "tensor": ("compute-bound", "tensor-core math"),
    "hbm": ("HBM-bound", "reading weights and KV from GPU memory"),
    "pcie_h2d": ("PCIe-bound", "host-to-GPU copies (H2D)"),
    "pcie_d2h": ("PCIe-bound", "GPU-to-host write-back (D2H)"),
    "cpu_ram": ("CPU-RAM-bound", "the CPU scanning its heads' KV"),
    "cpu_compute": ("CPU-bound", "CPU attention math"),
    "host": ("host-bound", "the Python thread issuing kernels and copies"),
}


def _pct(new: float, old: float) -> str:
    return f"{abs(1 - new / old):.0%}"


def explain(result: PlanResult, model: ModelSpec, gpu: GpuSpec, host: HostSpec, limits: Limits) -> str:
    best = result.best.prediction
    plan = best.plan
    work = best.workload
    if result.objective == "max-context":
        return (
            f"The longest context that fits is {fmt_tokens(result.max_context)} tokens with {plan.family} "
            f"({plan.knobs()}); what stops a longer one is {result.binding}. At that length decode takes "
            f"{best.decode_s_per_token:.2f} s per token and is {WHAT[best.decode.bound][0]}."
        )
    phase = "prefill" if result.objective == "prefill" else "decode"
    cost = best.prefill if phase == "prefill" else best.decode
    kind, what = WHAT[cost.bound]
    unit = "the prefill" if phase == "prefill" else "the step"
    text = [f"{phase.capitalize()} is {kind}: {cost.bound_share:.0%} of {unit} is {what}."]
    if cost.bound == "pcie_h2d" and phase == "decode":
        gb = cost.h2d_bytes / 1e9
        text.append(f"Each token brings {gb:.1f} GB of KV over the link.")
    others = [c for c in result.ranked[1:] if c.plan.family != plan.family]
    if others:
        runner = others[0]
        text.append(
            f"The best {runner.plan.family} plan ({runner.plan.knobs()}) is {_pct(runner.score, result.best.score)} slower."
        )
    spare = limits.gpu_bytes(gpu) - best.peak_gpu_bytes
    what_if = _what_if(plan, model, gpu, host, work, limits, phase)
    if what_if:
        extra_bytes, new_time, label = what_if
        old_time = cost.time_s
        effect = f"{'cut' if new_time < old_time else 'slow'} {phase} by {_pct(new_time, old_time)}"
        if extra_bytes > 0:
            verdict = (
                "which is free" if extra_bytes <= spare else f"but only {fmt_bytes(max(spare, 0))} is free"
            )
            text.append(
                f"{label} would need {fmt_bytes(extra_bytes)} more GPU memory ({verdict}) and {effect}."
            )
        else:
            text.append(f"{label} would {effect}.")
    unfit = sorted({p.plan.family for p in result.infeasible} - {c.plan.family for c in result.ranked})
    if unfit:
        text.append(f"No {', '.join(unfit)} plan fits.")
    if plan.approximate:
        text.append("This plan is approximate: it attends only part of the context.")
    return " ".join(text)


def _what_if(plan, model, gpu, host, work, limits, phase):
    try:
        if isinstance(plan, HeadOffloadPlan):
            slots = model.n_kv_heads // plan.kv_heads_per_slot
            r = plan.resident_slots
            total = r * model.n_layers if isinstance(r, int) else sum(r)
            if total + model.n_layers > (slots - 1) * model.n_layers + model.n_layers - 1:
                return None
            more = plan.model_copy(
                update={"resident_slots": spread(total + 2 * model.n_layers, model.n_layers)}
            )
            if total + 2 * model.n_layers >= slots * model.n_layers:
                more = plan.model_copy(
                    update={"resident_slots": spread(total + model.n_layers, model.n_layers)}
                )
                label = "Keeping one more KV-head group per layer resident"
            else:
                label = "Keeping two more KV-head groups per layer resident"
        elif isinstance(plan, CpuAttentionPlan) and plan.cpu_kv_heads < model.n_kv_heads:
            more = plan.model_copy(update={"cpu_kv_heads": plan.cpu_kv_heads + 1})
            label = "Attending one more KV head per layer on the CPU"
        else:
            return None
        base = predict(plan, model, gpu, host, work, limits)
        alt = predict(more, model, gpu, host, work, limits)
    except UserError:
        return None
    alt_cost = alt.prefill if phase == "prefill" else alt.decode
    return alt.peak_gpu_bytes - base.peak_gpu_bytes, alt_cost.time_s, label
