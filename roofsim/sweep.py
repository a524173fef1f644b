"""`roofsim predict` without --plan: the best feasible plan of each family in the planner's own space, ranked by
the analytic model alone (decode time per token; prefill time breaks ties). `roofsim plan` screens the same
candidates and refines its best ones with the simulator."""

from __future__ import annotations

from roofsim.errors import UserError
from roofsim.families.registry import check_supports, family, supports
from roofsim.limits import Limits
from roofsim.planner.candidates import candidates
from roofsim.predict import predict
from roofsim.space import SearchSpace, with_weights_rule
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import Trace
from roofsim.workload import Workload


def rank_key(p: Trace):
    s = p.summary
    return (not p.feasible, s.decode.time_s if p.feasible else s.peak_gpu_bytes, s.prefill.time_s)


def best_of_family(
    name: str,
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
) -> Trace:
    limits = limits or Limits()
    fam = family(name)
    check_supports(fam, fam.plan_type(), model)
    space = with_weights_rule(
        SearchSpace(allow_approximate=True, families=(name,)), model, limits.gpu_bytes(gpu)
    )
    preds = []
    for plan in [*candidates(model, work, space), family(name).default_plan(space)]:
        try:
            preds.append(predict(plan, model, gpu, host, work, limits))
        except UserError:
            continue  # a knob combination this model cannot take
    return min(preds, key=rank_key)


def best_per_family(
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    families: list[str] | None = None,
) -> list[Trace]:
    from roofsim.families.registry import families as registered

    names = families or [name for name, f in registered().items() if supports(f, model)]
    return [best_of_family(f, model, gpu, host, work, limits) for f in names]
