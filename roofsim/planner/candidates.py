"""The plans the planner screens: each registered family's own candidates (roofsim.families.registry), the
approximate ones only on request, or a preset's (a published system's own shape) alone."""

from __future__ import annotations

from collections.abc import Iterator

from roofsim.errors import UserError
from roofsim.families.registry import Family, families, supports
from roofsim.plan import PlanBase
from roofsim.space import SearchSpace
from roofsim.specs.model import ModelSpec
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
    if space.restrict:
        presets = [f.presets[space.restrict] for f in families().values() if space.restrict in f.presets]
        if not presets:
            known = sorted({p for f in families().values() for p in f.presets})
            raise UserError(f"unknown preset {space.restrict!r}; presets are {', '.join(known)}")
        for preset in presets:
            yield from preset(model, work, space)
        return
    for f in _wanted(space, model):
        yield from f.candidates(model, work, space)


def family_defaults(space: SearchSpace, model: ModelSpec | None = None) -> list[PlanBase]:
    """Each family's default plan: the planner's choice must never be slower than any of them."""
    if space.restrict:
        return []  # a restricted search compares only plans of the preset's shape
    return [f.default_plan(space) for f in _wanted(space, model)]
