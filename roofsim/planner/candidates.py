"""The plans the planner screens: each registered family's own candidates (roofsim.families.registry), the
approximate ones only on request, or a preset's (a published system's own shape) alone. Each candidate is screened
in every KV storage type of the space its family has (SearchSpace.kv_dtypes, Family.kv_dtypes): the family's
candidates are written in the model dtype, and a copy in fp8 is kept where its knobs allow fp8."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import ValidationError

from roofsim.errors import UserError
from roofsim.families.registry import Family, families, supports
from roofsim.plan import PlanBase
from roofsim.space import SearchSpace
from roofsim.specs.model import ModelSpec
from roofsim.tensor_parallel import shard_model
from roofsim.workload import Workload


def _wanted(space: SearchSpace, model: ModelSpec | None = None) -> list[Family]:
    fams = families()
    unknown = sorted(set(space.families or ()) - set(fams))
    if unknown:
        raise UserError(f"unknown plan family {unknown[0]!r} in --families; families are {', '.join(fams)}")
    return [
        f
        for name, f in fams.items()
        if (space.families is None or name in space.families)
        and (space.allow_approximate or not f.approximate)
        and (model is None or supports(f, model))
    ]


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[PlanBase]:
    """Every family's candidates at each tensor-parallel degree of the space: at tp > 1 the family writes its
    knobs for the shard one rank holds (its heads and KV heads), and the plans carry tp."""
    for tp in space.tps:
        if tp == 1:
            yield from _one_gpu(model, work, space)
            continue
        for plan in _one_gpu(shard_model(model, tp), work, space):
            yield plan.model_copy(update={"tp": tp})


def _one_gpu(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[PlanBase]:
    if space.restrict:
        presets = [f.presets[space.restrict] for f in families().values() if space.restrict in f.presets]
        if not presets:
            known = sorted({p for f in families().values() for p in f.presets})
            raise UserError(f"unknown preset {space.restrict!r}; presets are {', '.join(known)}")
        for preset in presets:
            yield from preset(model, work, space)
        return
    for f in _wanted(space, model):
        dtypes = _dtypes(f, space)
        if dtypes == ["bf16"]:
            yield from f.candidates(model, work, space)
            continue
        for plan in f.candidates(model, work, space):
            for d in dtypes:
                p = in_kv_dtype(plan, d)
                if p is not None:
                    yield p


def _dtypes(f: Family, space: SearchSpace) -> list[str]:
    return [d for d in space.kv_dtypes if d in f.kv_dtypes]


def in_kv_dtype(plan: PlanBase, kv_dtype: str) -> PlanBase | None:
    """The same plan with its KV stored in `kv_dtype`, or None where its knobs do not allow that type."""
    if plan.kv_dtype == kv_dtype:
        return plan
    try:
        return type(plan).model_validate({**plan.model_dump(), "kv_dtype": kv_dtype})
    except ValidationError:
        return None


def family_defaults(space: SearchSpace, model: ModelSpec | None = None) -> list[PlanBase]:
    """Each family's default plan, in each KV type and at each tensor-parallel degree of the space the family has:
    the planner's choice must never be slower than any of them."""
    if space.restrict:
        return []  # a restricted search compares only plans of the preset's shape
    out = []
    for f in _wanted(space, model):
        for d in _dtypes(f, space):
            p = in_kv_dtype(f.default_plan(space), d)
            if p is not None:
                out += [p if tp == 1 else p.model_copy(update={"tp": tp}) for tp in space.tps]
    return out
