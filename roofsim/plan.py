"""Plan: where each layer's and head's KV lives, how it moves, and the knobs of that movement.

Every family's plan type subclasses PlanBase and lives in its family's module (roofsim.families.<name>); the
registry (roofsim.families.registry) maps the `family` field to that type. `Plan` is the field type that reads
any registered family's plan from JSON (dispatching on `family`) and writes it back with its own fields: the
planner writes it, `roofsim predict` prices it, and the executor runs it unchanged.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError

from roofsim.errors import UserError
from roofsim.units import MAX_TOKENS


def _compact(value) -> str:
    """[0, 0, 1, 1, 1] -> 2x0+3x1: per-layer lists stay readable."""
    if not isinstance(value, list):
        return str(value)
    runs: list[list] = []
    for v in value:
        if runs and runs[-1][1] == v:
            runs[-1][0] += 1
        else:
            runs.append([1, v])
    return "+".join(f"{n}x{v}" for n, v in runs)


class PlanBase(BaseModel):
    """The knobs every family has. A family's plan type adds its own and a `family: Literal[<name>]` field."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True
    )  # "64" or true for a number is a mistake

    family: str
    prefill_chunk: int | None = Field(
        None, gt=0, le=MAX_TOKENS, description="prefill chunk in tokens; None = whole prompt at once"
    )
    weights: Literal["resident", "streamed"] = Field(
        "resident", description="streamed: each layer's weights cross the link every forward (FlexGen's case)"
    )

    @property
    def approximate(self) -> bool:
        """True where attention sees only part of the context (the accuracy is not modelled)."""
        return False

    def knobs(self) -> str:
        """Short human summary of the knobs that differ from the family's defaults."""
        default = type(self)()
        parts = []
        for name in type(self).model_fields:
            if name == "family":
                continue
            value = getattr(self, name)
            if value != getattr(default, name):
                parts.append(f"{name}={_compact(value)}")
        return " ".join(parts) or "defaults"


def _registry():
    from roofsim.families import registry

    return registry


def family_names() -> list[str]:
    return list(_registry().families())


def plan_from_dict(data: Any, where: str = "plan") -> PlanBase:
    """The plan a dict describes (or a plan document's `plan`), checked against its family's type."""
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]  # a plan document written by `roofsim plan`
    if not isinstance(data, dict):
        raise UserError(f"{where}: a plan is a JSON object with a 'family' field, got {type(data).__name__}")
    name = data.get("family")
    if not isinstance(name, str):
        raise UserError(f"{where}: the plan has no 'family'; families: {', '.join(family_names())}")
    plan_type = family_of(name, where).plan_type
    try:
        return plan_type.model_validate(data)
    except ValidationError as e:
        from roofsim.specs.tomlfile import first_error

        raise UserError(f"{where}: {first_error(e)}") from None


def family_of(name: str, where: str = "plan"):
    """The registered family called `name`, or a one-line error with the closest names."""
    fams = _registry().families()
    if name not in fams:
        close = difflib.get_close_matches(name, list(fams), n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"{where}: unknown plan family {name!r}: {hint}families are {', '.join(fams)}")
    return fams[name]


def default_plan(family: str) -> PlanBase:
    """The family's plan with every knob at its default."""
    return family_of(family, "--plan").plan_type()


def _validate(value: Any) -> PlanBase:
    if isinstance(value, PlanBase):
        return value
    try:
        return plan_from_dict(value)
    except UserError as e:
        raise ValueError(str(e)) from None


Plan = Annotated[
    PlanBase,
    PlainValidator(_validate),
    PlainSerializer(lambda p: p.model_dump(mode="json"), return_type=dict),
]
"""A plan of any registered family, as a pydantic field type (Trace headers, plan documents)."""
