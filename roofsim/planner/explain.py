"""One paragraph in plain words: what binds, what the runner-up costs, and what more memory would buy."""

from __future__ import annotations

from roofsim.errors import UserError
from roofsim.families.pipeline import context, weight_stream
from roofsim.families.registry import family
from roofsim.kinds import layer_kinds_notes
from roofsim.limits import Limits
from roofsim.planner.search import PlanResult
from roofsim.predict import predict
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.tensor_parallel import describe, shard_model
from roofsim.units import fmt_bytes, fmt_tokens

WHAT = {
    "tensor": ("compute-bound", "tensor-core math"),
    "hbm": ("HBM-bound", "reading weights and KV from GPU memory"),
    "launch": ("launch-bound", "the GPU's fixed cost per kernel"),
    "allreduce": ("all-reduce-bound", "the all-reduces between the tensor-parallel GPUs"),
    "compute": ("compute-bound", "the GPU's compute stream"),
    "h2d": ("PCIe-bound", "host-to-GPU copies (H2D)"),
    "d2h": ("PCIe-bound", "GPU-to-host write-back (D2H)"),
    "cpu_ram": ("CPU-RAM-bound", "the CPU scanning its heads' KV"),
    "cpu_compute": ("CPU-bound", "CPU attention math"),
    "cpu": ("CPU-bound", "the CPU's share of the work"),
    "host": ("host-bound", "the Python thread issuing kernels and copies"),
}


def _pct(new: float, old: float) -> str:
    return f"{abs(1 - new / old):.0%}"


def explain(result: PlanResult, model: ModelSpec, gpu: GpuSpec, host: HostSpec, limits: Limits) -> str:
    best = result.best.prediction
    plan = best.plan
    work = best.header.workload
    if result.objective == "max-context":
        return (
            f"The longest context that fits is {fmt_tokens(result.max_context)} tokens with {plan.family} "
            f"({plan.knobs()}); what stops a longer one is {result.binding}. At that length decode takes "
            f"{best.summary.decode_s_per_token:.2f} s per token and is {WHAT[best.summary.decode.binding()[0]][0]}."
        )
    phase = "prefill" if result.objective == "prefill" else "decode"
    cost = best.summary.phase(phase)
    name, share = cost.binding()
    kind, what = WHAT[name]
    unit = "the prefill" if phase == "prefill" else "the step"
    text = [f"{phase.capitalize()} is {kind}: {share:.0%} of {unit} is {what}."]
    if plan.tp > 1:
        line = describe(gpu, host, plan.tp)
        text.append(line[0].upper() + line[1:] + ".")
    if cost.bound == "h2d" and phase == "decode":
        text.append(_link_bytes(plan, cost.h2d_bytes or 0.0, shard_model(model, plan.tp), gpu, host, work))
    others = [c for c in result.ranked[1:] if c.plan.family != plan.family]
    if others:
        runner = others[0]
        text.append(
            f"The best {runner.plan.family} plan ({runner.plan.knobs()}) is {_pct(runner.score, result.best.score)} slower."
        )
    spare = limits.gpu_bytes(gpu) - best.summary.peak_gpu_bytes
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
    if plan.kv_dtype != "bf16":
        text.append(
            f"This plan is approximate: its KV is stored in {plan.kv_dtype} (validation/fp8_accuracy.py measures "
            "the logits' error and greedy agreement)."
        )
        versus = bf16_counterpart(plan, best, model, gpu, host, work, limits)
        if versus:
            text.append(versus)
        text.append(_best_bf16(result, model, gpu, host, work, limits, phase))
    elif plan.approximate:
        text.append("This plan is approximate: it attends only part of the context.")
    text += layer_kinds_notes(model, work)
    return " ".join(text)


def _best_bf16(result: PlanResult, model, gpu, host, work, limits: Limits, phase: str) -> str:
    """The fastest plan with bf16 KV (among those the search ranked, else each family's best by the analytic
    model) and how much faster the fp8 choice is."""
    ranked = [c for c in result.ranked if c.plan.kv_dtype == "bf16" and not c.plan.approximate]
    if ranked:
        bf16, bf16_s = ranked[0].plan, ranked[0].score
    else:
        from roofsim.families.registry import exact_families
        from roofsim.sweep import best_per_family

        fit = [p for p in best_per_family(model, gpu, host, work, limits, exact_families()) if p.feasible]
        if not fit:
            return "No plan with bf16 KV fits."
        top = min(fit, key=lambda p: p.summary.phase(phase).time_s)
        bf16, bf16_s = top.plan, top.summary.phase(phase).time_s
    return (
        f"The best plan with bf16 KV, {bf16.family} ({bf16.knobs()}), takes {bf16_s:.3g} s "
        f"{'per token' if phase == 'decode' else 'to prefill'}: fp8 is {bf16_s / result.best.score:.2f}x as fast."
    )


def bf16_counterpart(plan, pred, model, gpu, host, work, limits: Limits) -> str | None:
    """For a plan with fp8 KV (`pred`: its prediction): the same plan in bf16, priced, and the speedup fp8 buys
    in decode and prefill, or what keeps the bf16 plan from fitting. None for a bf16 plan."""
    if plan.kv_dtype == "bf16":
        return None
    from roofsim.planner.candidates import in_kv_dtype

    same = in_kv_dtype(plan, "bf16")
    try:
        base = predict(same, model, gpu, host, work, limits)
    except UserError:
        return None
    if not base.feasible:
        return f"The same plan with bf16 KV does not fit: it {base.summary.reason}."
    fp8_s, bf16_s = pred.summary.decode_s_per_token, base.summary.decode_s_per_token
    return (
        f"The same plan with bf16 KV decodes at {bf16_s:.3g} s per token: fp8 is {bf16_s / fp8_s:.2f}x as fast "
        f"in decode and {base.summary.prefill_s / pred.summary.prefill_s:.2f}x in prefill."
    )


def streamed_weight_bytes(plan, model: ModelSpec, gpu: GpuSpec, host: HostSpec, work) -> float:
    """Weight bytes one forward brings over the link: every layer's (pipeline.weight_stream) where the plan
    streams its weights, else none."""
    per_layer, _ = weight_stream(context(model, gpu, host, work), plan.weights == "streamed")
    return per_layer * model.n_layers


def streamed_expert_bytes(plan, model: ModelSpec, work) -> float:
    """Expert bytes one decode step brings over the link: the picked experts of each layer that streams them."""
    layers = plan.streamed_expert_layers(model)
    if not layers:
        return 0.0
    return float(layers * model.experts_touched(work.batch) * model.expert_params * model.dtype_bytes)


def _link_bytes(plan, h2d_bytes: float, model, gpu, host, work) -> str:
    """What one decode step brings over the link, by kind: streamed weights or experts and the family's payload
    (KV)."""
    experts = min(streamed_expert_bytes(plan, model, work), h2d_bytes)
    if experts:
        rest, payload = h2d_bytes - experts, family(plan).h2d_payload
        kv = f" and {fmt_bytes(rest)} of {payload}" if rest > 0.001 * h2d_bytes else f", and no {payload}"
        return f"Each token brings {fmt_bytes(experts)} of the experts it picked over the link{kv}."
    weights = min(streamed_weight_bytes(plan, model, gpu, host, work), h2d_bytes)
    rest, payload = h2d_bytes - weights, family(plan).h2d_payload
    if not weights:
        link = "each GPU's link" if model.tp > 1 else "the link"
        return f"Each token brings {fmt_bytes(rest)} of {payload} over {link}."
    if rest <= 0:
        return f"Each token brings {fmt_bytes(weights)} of streamed weights over the link, and no {payload}."
    return (
        f"Each token brings {fmt_bytes(h2d_bytes)} over the link: {fmt_bytes(weights)} of streamed weights "
        f"and {fmt_bytes(rest)} of {payload}."
    )


def _what_if(plan, model, gpu, host, work, limits, phase):
    """The family's next step up its main memory knob, priced: (extra GPU bytes, new time, label), or None."""
    what_if = family(plan).what_if
    step = what_if(plan, shard_model(model, plan.tp)) if what_if else None  # knobs of one rank's shard
    if step is None:
        return None
    more, label = step
    try:
        base = predict(plan, model, gpu, host, work, limits)
        alt = predict(more, model, gpu, host, work, limits)
    except UserError:
        return None
    return (
        alt.summary.peak_gpu_bytes - base.summary.peak_gpu_bytes,
        alt.summary.phase(phase).time_s,
        label,
    )
