"""Screen every candidate with the analytic model, refine the best with the simulator, pick by the objective."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from roofsim.errors import UserError
from roofsim.families.registry import simplicity
from roofsim.limits import Limits
from roofsim.planner.candidates import candidates, family_defaults
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.space import SearchSpace, with_weights_rule
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import Summary, Trace
from roofsim.workload import Workload

Objective = Literal["decode", "decode-worst", "prefill", "e2e", "throughput", "max-context"]
OBJECTIVES: tuple[str, ...] = ("decode", "decode-worst", "prefill", "e2e", "throughput", "max-context")
# decode-worst: decode per token at the upper end of its band (roofsim.band), so that a plan whose speed rests on
# an unsteady resource (the CPU's scan, the host's pace) wins only where it wins at that resource's slow end too


def _worst(point: float, band: tuple[float, float] | None) -> float:
    return point if band is None else max(point, band[1])


def analytic_score(p: Trace, objective: str) -> float:
    """Seconds to minimise (throughput: seconds per generated token across the batch)."""
    s = p.summary
    if objective == "prefill":
        return s.prefill_s
    if objective == "e2e":
        return p.e2e_s
    if objective == "throughput":
        return s.decode_s_per_token / p.header.workload.batch
    if objective == "decode-worst":
        return _worst(s.decode_s_per_token, s.decode.band_s)
    return s.decode_s_per_token


def simulated_score(s: Summary, work: Workload, objective: str, analytic: Summary | None = None) -> float:
    """The objective on the simulator's summary; decode-worst scales the simulated decode by the analytic
    band's upper end over the analytic point (`analytic`, priced with band)."""
    decode = s.decode_s_per_token or math.inf
    if objective == "decode-worst":
        a = analytic.decode if analytic is not None else None
        if a is None or a.band_s is None or not a.time_s:
            return decode
        return decode * max(1.0, a.band_s[1] / a.time_s)
    if objective == "prefill":
        return s.prefill_s or math.inf
    if objective == "e2e":
        return (s.prefill_s or math.inf) + work.gen * decode
    if objective == "throughput":
        return decode / work.batch
    return decode


@dataclass
class Candidate:
    prediction: Trace  # the analytic model's
    score: float  # by the planner's final model: simulated where refined, else analytic
    simulated: Summary | None = None

    @property
    def plan(self):
        return self.prediction.plan


@dataclass
class PlanResult:
    objective: str
    best: Candidate
    ranked: list[Candidate]  # feasible, best first
    infeasible: list[Trace]
    screened: int
    pareto: list[Candidate] = field(default_factory=list)
    max_context: int | None = None
    binding: str | None = None  # what stops a longer context (max-context)


def _rank_key(c: Candidate):
    return (round(c.score, 12), round(c.prediction.summary.prefill_s, 9), simplicity(c.plan.family))


def _pick(cands: list[Candidate]) -> list[Candidate]:
    """Order by score; within 1% prefer an exact plan, then the simpler family (resident over offload)."""
    cands = sorted(cands, key=_rank_key)
    if not cands:
        return cands
    best = cands[0].score
    near = [c for c in cands if c.score <= best * 1.01]
    # exact before approximate (sparse_fetch, evict, fp8 KV): an approximate plan wins only by more than 1%
    simplest = min(near, key=lambda c: (c.plan.approximate, simplicity(c.plan.family), c.score))
    return [simplest] + [c for c in cands if c is not simplest]


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Plans no other plan beats on both peak GPU memory and score."""
    front, best_score = [], math.inf
    for c in sorted(cands, key=lambda c: (c.prediction.summary.peak_gpu_bytes, c.score)):
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
    space = with_weights_rule(space, model, limits.gpu_bytes(gpu))
    if objective == "max-context":
        return _max_context(model, gpu, host, work, limits, space, progress)
    plans = list(candidates(model, work, space))
    defaults = family_defaults(space, model)
    feasible: list[Candidate] = []
    infeasible: list[Trace] = []
    total = len(plans) + len(defaults)
    banded = objective == "decode-worst"
    for i, plan in enumerate([*plans, *defaults]):
        try:
            p = predict(plan, model, gpu, host, work, limits, band=banded)
        except UserError:
            continue
        (feasible.append(Candidate(p, analytic_score(p, objective))) if p.feasible else infeasible.append(p))
        if progress and i % 64 == 0:
            progress(i, total)
    if not feasible:
        closest = min(infeasible, key=lambda p: p.summary.peak_gpu_bytes) if infeasible else None
        why = (
            f"; the closest, {closest.plan.family} {closest.plan.knobs()}, {closest.summary.reason}"
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
        if not banded:  # the band for the tables (the leaders only: it prices the plan twice more)
            c.prediction = predict(c.plan, model, gpu, host, work, limits, band=True)
        c.score = (
            simulated_score(trace.summary, work, objective, c.prediction.summary)
            if trace.summary.feasible
            else math.inf
        )
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
    """A plan less the knobs that do not change its memory (the longest context is the same for all of them)."""
    d = plan.model_dump()
    for knob in ("prefill_chunk", "prefetch_depth", "overlap", "syncs_per_slot", "write_back"):
        d.pop(knob, None)
    return repr(sorted(d.items()))


def _fits(plan, model, gpu, host, work, limits) -> tuple[bool, Trace | None]:
    try:
        p = predict(plan, model, gpu, host, work, limits)
    except UserError:
        return False, None
    return p.feasible, p


def _longest(plan, model, gpu, host, work, limits, hi: int = 2**28) -> tuple[int, Trace | None]:
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
            (p1.summary.peak_gpu_bytes, p2.summary.peak_gpu_bytes, limits.gpu_bytes(gpu)),
            (p1.summary.peak_host_bytes, p2.summary.peak_host_bytes, limits.host_bytes(host)),
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
    """Each memory shape once, at its smallest prefill chunk (the least activation memory), among the candidates
    of a 16M-token prompt (every chunk the space has)."""
    smallest: dict[str, object] = {}
    for plan in candidates(model, work.model_copy(update={"context": 2**24}), space):
        key = _memory_dedupe_key(plan)
        kept = smallest.get(key)
        if kept is None or (plan.prefill_chunk or math.inf) < (kept.prefill_chunk or math.inf):
            smallest[key] = plan
    plans = list(smallest.values())
    results: list[Candidate] = []
    for i, plan in enumerate(plans):
        ctx, p = _longest(plan, model, gpu, host, work, limits)
        if p is not None:
            results.append(Candidate(p, -float(ctx)))
        if progress and i % 8 == 0:
            progress(i, len(plans))
    if not results:
        raise UserError(f"nothing fits {model.name} on {gpu.name} even at 1K tokens of context")
    results.sort(key=lambda c: (c.score, c.prediction.summary.decode_s_per_token))
    best = results[0]
    longer = best.prediction.header.workload.model_copy(
        update={"context": int(best.prediction.header.workload.context * 1.02) + 1024}
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


def _binding_memory(over: Trace, gpu: GpuSpec, host: HostSpec, limits: Limits) -> str:
    s = over.summary
    gpu_over = s.peak_gpu_bytes - limits.gpu_bytes(gpu)
    host_over = s.peak_host_bytes - limits.host_bytes(host)
    if host_over >= gpu_over and host_over > 0:
        return "host memory (the KV in pinned host RAM)"
    kind = max((k for k in s.memory.gpu if k != "weights"), key=lambda k: s.memory.gpu[k], default="weights")
    names = {
        "kv_buffers": "GPU slot buffers",
        "kv_resident": "GPU-resident KV",
        "activations": "prefill activations",
    }
    return f"GPU memory ({names.get(kind, kind)})"
