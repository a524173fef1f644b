"""`roofsim predict` without --plan: the best feasible plan of each family in the planner's own space, ranked by
the analytic model alone (decode time per token; prefill time breaks ties). `roofsim plan` screens the same
candidates and refines its best ones with the simulator."""

from __future__ import annotations

from roofsim.errors import UserError
from roofsim.families.registry import check_kv_dtype, check_supports, family, supports
from roofsim.limits import Limits
from roofsim.planner.candidates import candidates, in_kv_dtype
from roofsim.predict import predict
from roofsim.space import SearchSpace, with_weights_rule
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.tensor_parallel import check_gpus, shard_model
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
    kv_dtype: str = "bf16",
    tp: int = 1,
) -> Trace:
    """The family's best plan with its KV stored in `kv_dtype` (a family that does not store it: a one-line
    error, registry.check_kv_dtype), over `tp` GPUs (roofsim.tensor_parallel; a degree the model or GPU cannot
    take: a one-line error)."""
    limits = limits or Limits()
    fam = family(name)
    check_supports(fam, fam.plan_type(), model)
    check_gpus(gpu, tp)
    shard = shard_model(model, tp)
    space = with_weights_rule(
        SearchSpace(allow_approximate=True, families=(name,), kv_dtypes=(kv_dtype,), tps=(tp,)),
        shard,
        limits.gpu_bytes(gpu),
    )
    check_kv_dtype(family(name).plan_type.model_construct(kv_dtype=kv_dtype))
    default = in_kv_dtype(family(name).default_plan(space), kv_dtype)
    if default is not None and tp > 1:
        default = default.model_copy(update={"tp": tp})
    preds = []
    for plan in [*candidates(model, work, space), *([default] if default is not None else [])]:
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
    kv_dtype: str = "bf16",
    tp: int = 1,
) -> list[Trace]:
    """The best plan of each family (of `families`, default all) that stores its KV in `kv_dtype`, over `tp`
    GPUs."""
    from roofsim.families.registry import families as registered

    names = families or [name for name, f in registered().items() if supports(f, model)]
    names = [f for f in names if kv_dtype in registered()[f].kv_dtypes]
    return [best_of_family(f, model, gpu, host, work, limits, kv_dtype, tp) for f in names]
