"""Screen every candidate with the analytic model, refine the best with the simulator, pick by the objective."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from roofsim.errors import UserError
from roofsim.planner.candidates import SearchSpace, candidates, family_defaults
from roofsim.predict import Limits, predict
from roofsim.prediction import Prediction
from roofsim.sim import simulate
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import PhaseSummary
from roofsim.workload import Workload

Objective = Literal["decode", "prefill", "e2e", "throughput", "max-context"]
OBJECTIVES: tuple[str, ...] = ("decode", "prefill", "e2e", "throughput", "max-context")
SIMPLICITY = ["resident", "layer_offload", "head_offload", "kvpr", "cpu_attention", "sparse_fetch", "evict"]


def analytic_score(p: Prediction, objective: str) -> float:
    """Seconds to minimise (throughput: seconds per generated token across the batch)."""
    if objective == "prefill":
        return p.prefill_s
    if objective == "e2e":
        return p.e2e_s
    if objective == "throughput":
        return p.decode_s_per_token / p.workload.batch
    return p.decode_s_per_token


def simulated_score(s: PhaseSummary, work: Workload, objective: str) -> float:
    decode = s.decode_s_per_token or math.inf
    if objective == "prefill":
        return s.prefill_s or math.inf
    if objective == "e2e":
        return (s.prefill_s or math.inf) + work.gen * decode
    if objective == "throughput":
        return decode / work.batch
    return decode


@dataclass
class Candidate:
    prediction: Prediction
    score: float  # by the planner's final model: simulated where refined, else analytic
    simulated: PhaseSummary | None = None

    @property
    def plan(self):
        return self.prediction.plan


@dataclass
class PlanResult:
    objective: str
    best: Candidate
    ranked: list[Candidate]  # feasible, best first
    infeasible: list[Prediction]
    screened: int
    pareto: list[Candidate] = field(default_factory=list)
    max_context: int | None = None
    binding: str | None = None  # what stops a longer context (max-context)


def _rank_key(c: Candidate):
    return (round(c.score, 12), round(c.prediction.prefill_s, 9), SIMPLICITY.index(c.plan.family))


def _pick(cands: list[Candidate]) -> list[Candidate]:
    """Order by score; within 1% prefer the simpler family (resident over offload, exact over approximate)."""
    cands = sorted(cands, key=_rank_key)
    if not cands:
        return cands
    best = cands[0].score
    near = [c for c in cands if c.score <= best * 1.01]
    simplest = min(near, key=lambda c: (SIMPLICITY.index(c.plan.family), c.score))
    return [simplest] + [c for c in cands if c is not simplest]


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Plans no other plan beats on both peak GPU memory and score."""
    front, best_score = [], math.inf
    for c in sorted(cands, key=lambda c: (c.prediction.peak_gpu_bytes, c.score)):
        if c.score < best_score:
            front.append(c)
            best_score = c.score
    return front


def search(
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    space: SearchSpace | None = None,
    objective: str = "decode",
    refine_top: int = 10,
    decode_steps: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> PlanResult:
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    limits = limits or Limits()
    space = space or SearchSpace()
    if model.weight_bytes > 0.85 * limits.gpu_bytes(gpu) and not space.stream_weights:
        space = dataclasses.replace(space, stream_weights=True)  # FlexGen's case: weights leave no room
    if objective == "max-context":
        return _max_context(model, gpu, host, work, limits, space, progress)
    plans = list(candidates(model, work, space))
    defaults = family_defaults(space)
    feasible: list[Candidate] = []
    infeasible: list[Prediction] = []
    total = len(plans) + len(defaults)
    for i, plan in enumerate([*plans, *defaults]):
        try:
            p = predict(plan, model, gpu, host, work, limits)
        except UserError:
            continue
        (feasible.append(Candidate(p, analytic_score(p, objective))) if p.feasible else infeasible.append(p))
        if progress and i % 64 == 0:
            progress(i, total)
    if not feasible:
        closest = min(infeasible, key=lambda p: p.peak_gpu_bytes) if infeasible else None
        why = (
            f"; the closest, {closest.plan.family} {closest.plan.knobs()}, {closest.reason}"
            if closest
            else ""
        )
        raise UserError(f"no plan fits {model.name} at {work.context} tokens on {gpu.name}{why}")
    feasible.sort(key=_rank_key)
    default_keys = {d.model_dump_json() for d in defaults}
    refine = feasible[:refine_top] + [
        c for c in feasible[refine_top:] if c.plan.model_dump_json() in default_keys
    ]
    # simulate what the objective needs: decode steps, and prefill (16 sampled chunks) for prefill and e2e
    with_prefill = objective in ("prefill", "e2e")
    steps = 0 if objective == "prefill" else max(1, min(decode_steps, work.gen))
    for j, c in enumerate(refine):
        trace = simulate(
            c.plan,
            model,
            gpu,
            host,
            work,
            limits,
            decode_steps=steps,
            keep="none",
            prefill=with_prefill,
            prefill_sample=16,
        )
        c.simulated = trace.summary
        c.score = simulated_score(trace.summary, work, objective) if trace.summary.feasible else math.inf
        if progress:
            progress(len(plans) + j, total + len(refine))
    refined = [c for c in refine if math.isfinite(c.score)]
    rest = [c for c in feasible if c.simulated is None]
    ranked = _pick(refined) + sorted(rest, key=_rank_key)
    return PlanResult(
        objective=objective,
        best=ranked[0],
        ranked=ranked,
        infeasible=infeasible,
        screened=len(plans) + len(defaults),
        pareto=pareto(ranked),
    )


def _memory_dedupe_key(plan) -> str:
    d = plan.model_dump()
    for knob in ("prefetch_depth", "overlap", "syncs_per_slot", "write_back"):
        d.pop(knob, None)
    return repr(sorted(d.items()))


def _fits(plan, model, gpu, host, work, limits) -> tuple[bool, Prediction | None]:
    try:
        p = predict(plan, model, gpu, host, work, limits)
    except UserError:
        return False, None
    return p.feasible, p


def _longest(plan, model, gpu, host, work, limits, hi: int = 2**28) -> tuple[int, Prediction | None]:
    """The longest context that fits. GPU and host memory are affine in the context (beyond one chunk), so solve
    from two points, then bisect the small bracket left by rounding (pinned power-of-two blocks)."""
    lo_ok = 1024
    ok, p = _fits(plan, model, gpu, host, work.model_copy(update={"context": lo_ok}), limits)
    if not ok:
        return 0, None
    c1, c2 = 2**16, 2**20
    _, p1 = _fits(plan, model, gpu, host, work.model_copy(update={"context": c1}), limits)
    _, p2 = _fits(plan, model, gpu, host, work.model_copy(update={"context": c2}), limits)
    a, b = lo_ok, hi
    if p1 is not None and p2 is not None:
        est = hi
        for need1, need2, cap in (
            (p1.peak_gpu_bytes, p2.peak_gpu_bytes, limits.gpu_bytes(gpu)),
            (p1.peak_host_bytes, p2.peak_host_bytes, limits.host_bytes(host)),
        ):
            slope = (need2 - need1) / (c2 - c1)
            if slope > 0:
                est = min(est, int(c1 + (cap - need1) / slope))
        est = max(lo_ok, min(est, hi))
        ok, q = _fits(plan, model, gpu, host, work.model_copy(update={"context": est}), limits)
        if ok:
            a, p = est, q
            over = min(hi, int(est * 1.01) + 1024)
            if not _fits(plan, model, gpu, host, work.model_copy(update={"context": over}), limits)[0]:
                b = over
        else:
            b = est
    while b - a > max(1024, a // 512):
        mid = (a + b) // 2
        ok, q = _fits(plan, model, gpu, host, work.model_copy(update={"context": mid}), limits)
        if ok:
            a, p = mid, q
        else:
            b = mid
    return a, p


def _max_context(model, gpu, host, work, limits, space, progress) -> PlanResult:
    seen, plans = set(), []
    smallest = min(c for c in (2048, 4096) if c)
    for plan in candidates(model, work.model_copy(update={"context": 2**24}), space):
        if plan.prefill_chunk not in (None, smallest) and plan.family != "evict":
            continue
        key = _memory_dedupe_key(plan)
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    results: list[Candidate] = []
    for i, plan in enumerate(plans):
        ctx, p = _longest(plan, model, gpu, host, work, limits)
        if p is not None:
            results.append(Candidate(p, -float(ctx)))
        if progress and i % 8 == 0:
            progress(i, len(plans))
    if not results:
        raise UserError(f"nothing fits {model.name} on {gpu.name} even at 1K tokens of context")
    results.sort(key=lambda c: (c.score, c.prediction.decode_s_per_token))
    best = results[0]
    longer = best.prediction.workload.model_copy(
        update={"context": int(best.prediction.workload.context * 1.02) + 1024}
    )
    over = predict(best.plan, model, gpu, host, longer, limits)
    binding = _binding_memory(over, gpu, host, limits)
    return PlanResult(
        objective="max-context",
        best=best,
        ranked=results,
        infeasible=[],
        screened=len(plans),
        pareto=[],
        max_context=-int(best.score),
        binding=binding,
    )


def _binding_memory(over: Prediction, gpu: GpuSpec, host: HostSpec, limits: Limits) -> str:
    gpu_over = over.peak_gpu_bytes - limits.gpu_bytes(gpu)
    host_over = over.peak_host_bytes - limits.host_bytes(host)
    if host_over >= gpu_over and host_over > 0:
        return "host memory (the KV in pinned host RAM)"
    kind = max(
        (k for k in over.memory.gpu if k != "weights"), key=lambda k: over.memory.gpu[k], default="weights"
    )
    names = {
        "kv_buffers": "GPU slot buffers",
        "kv_resident": "GPU-resident KV",
        "activations": "prefill activations",
    }
    return f"GPU memory ({names.get(kind, kind)})"
