"""The registry of plan families: each family's module registers one Family, and everything that depends on the
family (parsing a plan, the candidates the planner and the predict sweep screen, the analytic model, the simulator
program, the planner's what-if) asks it here. Nothing outside a family's module branches on the family.

Registration order is the order of simplicity the planner prefers among near-ties (resident first). The built-in
families register when roofsim.families is imported; `families()` imports it first, so asking the registry is
enough. The executor keeps its own registry of builders under the same names (roofsim.executor.families).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roofsim.families.pipeline import Ctx, Evaluation
    from roofsim.plan import PlanBase
    from roofsim.sim.builder import Builder, StepSpec
    from roofsim.space import SearchSpace
    from roofsim.specs.model import ModelSpec
    from roofsim.workload import Workload

    Candidates = Callable[[ModelSpec, Workload, SearchSpace], Iterable[PlanBase]]


@dataclass(frozen=True)
class Family:
    """What one plan family brings. Each callable takes the family's own plan type.

    - candidates(model, work, space): the plans worth screening, for the planner and `roofsim predict`'s sweep.
    - evaluate(plan, ctx): the analytic model (step costs of prefill and decode, peak memory by kind).
    - program(builder, plan, steps, base): the simulator's tasks for those steps in the executor's issue order,
      and the GPU memory held from the start added to `base` by kind.
    - host_memory(plan, ctx): host bytes by kind (the pinned KV store, ...), allocated once before the run.
    - default(space): the plan the planner always compares against (default: every knob at its default).
    - what_if(plan, model): the plan with one more unit of the family's main memory knob and a label for it
      (`roofsim plan` prices it in its explanation), or None.
    - presets: name -> candidates of a published system's own shape (`roofsim plan --restrict NAME`).
    - host_store: whether the executor keeps KV in host memory (it then needs the run's length up front).
    - h2d_payload: what its host-to-GPU bytes carry besides streamed weights, as explanations name them.
    - kv_dtypes: the KV storage types (a plan's `kv_dtype`, roofsim.kvformat) its model prices and its executor
      runs; a plan in another is refused in one line by `roofsim predict`, the simulator and the executor.
    - layer_kinds: whether it prices window layers (their KV resident beside the plan's global layers) and
      streamed experts; a family without is not offered for a model that has window layers, nor with
      experts="streamed".
    """

    plan_type: type[PlanBase]
    candidates: Candidates
    evaluate: Callable[[Any, Ctx], Evaluation]
    program: Callable[[Builder, Any, list[StepSpec], dict[str, float]], None]
    host_memory: Callable[[Any, Ctx], dict[str, float]]
    default: Callable[[SearchSpace], PlanBase] | None = None
    what_if: Callable[[Any, ModelSpec], tuple[PlanBase, str] | None] | None = None
    presets: Mapping[str, Candidates] = field(default_factory=dict)
    host_store: bool = True
    h2d_payload: str = "KV"
    kv_dtypes: tuple[str, ...] = ("bf16",)
    layer_kinds: bool = False

    @property
    def name(self) -> str:
        return self.plan_type.model_fields["family"].default

    @property
    def approximate(self) -> bool:
        return self.plan_type().approximate

    def default_plan(self, space: SearchSpace) -> PlanBase:
        return self.default(space) if self.default else self.plan_type()


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (a module calls this once, at import); a name registered twice is a bug."""
    if family.name in _FAMILIES:
        raise ValueError(f"plan family {family.name!r} is registered already")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests that register a toy one)."""
    _FAMILIES.pop(name, None)


def families() -> Mapping[str, Family]:
    """Every registered family by name, in registration (simplicity) order."""
    import roofsim.families  # noqa: F401  (the built-in families register on import)

    return _FAMILIES


def family(plan_or_name: PlanBase | str) -> Family:
    """The family of a plan (or of a family name that is known to be registered)."""
    name = plan_or_name if isinstance(plan_or_name, str) else plan_or_name.family
    return families()[name]


def check_kv_dtype(plan: PlanBase) -> None:
    """A one-line user error where the plan's family does not store its KV in the plan's kv_dtype."""
    f = family(plan)
    if plan.kv_dtype not in f.kv_dtypes:
        from roofsim.errors import UserError

        which = ", ".join(n for n, g in families().items() if plan.kv_dtype in g.kv_dtypes)
        raise UserError(
            f"plan family {plan.family} stores its KV in {' or '.join(f.kv_dtypes)} only, not "
            f"kv_dtype={plan.kv_dtype}; families with {plan.kv_dtype}: {which}"
        )


def simplicity(name: str) -> int:
    """The family's rank in the order of simplicity (registration order)."""
    return list(families()).index(name)


def check_supports(fam: Family, plan: PlanBase, model: ModelSpec) -> None:
    """A one-line error where the family cannot price this model's layer kinds or the plan's expert placement."""
    from roofsim.errors import UserError

    if fam.layer_kinds:
        return
    if model.window_layers:
        raise UserError(
            f"plan family {fam.name} does not price window layers, and {model.name} has "
            f"{len(model.window_layers)}; use {', '.join(n for n, f in families().items() if f.layer_kinds)}"
        )
    if plan.experts == "streamed":
        raise UserError(f"plan family {fam.name} does not stream experts; set experts='resident'")


def supports(fam: Family, model: ModelSpec) -> bool:
    """Whether the family's plans can be priced for this model (window layers need layer_kinds)."""
    return fam.layer_kinds or not model.window_layers


def exact_families() -> list[str]:
    return [name for name, f in families().items() if not f.approximate]
