"""Plan: where each layer's and head's KV lives, how it moves, and the knobs of that movement.

Every family's plan type subclasses PlanBase and lives in its family's module (roofsim.families.<name>); the
registry (roofsim.families.registry) maps the `family` field to that type. `Plan` is the field type that reads
any registered family's plan from JSON (dispatching on `family`) and writes it back with its own fields: the
planner writes it, `roofsim predict` prices it, and the executor runs it unchanged.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_serializer,
    model_validator,
)

from roofsim.errors import UserError
from roofsim.units import MAX_TOKENS, fmt_tokens

KvDtype = Literal["bf16", "fp8_e4m3"]
KV_DTYPES: tuple[str, ...] = ("bf16", "fp8_e4m3")


def _compact(value, short=str) -> str:
    """[0, 0, 1, 1, 1] -> 2x0+3x1: per-layer lists stay readable; `short` writes each value."""
    if not isinstance(value, list):
        return short(value)
    runs: list[list] = []
    for v in value:
        if runs and runs[-1][1] == v:
            runs[-1][0] += 1
        else:
            runs.append([1, v])
    return "+".join(f"{n}x{short(v)}" for n, v in runs)


def _short_value(value) -> str:
    """A knob's value for a narrow column: whole multiples of 1024 as K or M (2048 -> 2K, as token counts are
    written), floats without trailing zeros."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        return fmt_tokens(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _initials(name: str) -> str:
    """The abbreviation rule: the initials of a knob's words, 'per' left out (kv_heads_per_slot -> khs)."""
    return "".join(w[0] for w in name.split("_") if w and w != "per")


def unique_abbreviations(names) -> dict[str, str]:
    """Each name -> its initials (_initials), unique over `names`: where two share initials, the later one takes
    more letters of its last word until it differs (syncs_per_slot -> ss, then slot_size -> ssi), and a number
    where the whole word is not enough."""
    out: dict[str, str] = {}
    for name in dict.fromkeys(names):
        head, last = _initials(name)[:-1], name.split("_")[-1]
        short, n = _initials(name), 1
        while short in out.values() and n < len(last):
            n += 1
            short = head + last[:n]
        k = 2
        while short in out.values():
            short, k = f"{head}{last}{k}", k + 1
        out[name] = short
    return out


def knob_abbreviations() -> dict[str, str]:
    """Every registered family's knob -> its short name for compact tables, unique across families, in
    registration and field order (unique_abbreviations)."""
    names = [n for f in _registry().families().values() for n in f.plan_type.model_fields if n != "family"]
    return unique_abbreviations(names)


def knob_abbreviation(name: str) -> str:
    """The short name a compact table gives knob `name` (see knob_abbreviations)."""
    return knob_abbreviations().get(name) or _initials(name)


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
    kv_dtype: KvDtype = Field(
        "bf16",
        description="the type the KV is stored in wherever it lives; fp8_e4m3 keeps a power-of-two scale per "
        "(token block, K or V, head) and turns it back to the model dtype on the GPU before attention",
    )

    @model_serializer(mode="wrap")
    def _drop_default_new_knobs(self, handler):
        """A plan on one GPU in the model dtype with its experts resident is written without `tp`, `kv_dtype`,
        `experts` and `resident_expert_layers`, as before those knobs existed (plan files of dense bf16 plans on
        one GPU do not change)."""
        data = handler(self)
        if isinstance(data, dict):
            for name, default in (
                ("tp", 1),
                ("kv_dtype", "bf16"),
                ("experts", "resident"),
                ("resident_expert_layers", 0),
            ):
                if name in data and data[name] == default:
                    data.pop(name)
        return data

    experts: Literal["resident", "streamed"] = Field(
        "resident",
        description="MoE models: streamed keeps the routed experts in host memory; a prefill chunk fetches each "
        "layer's experts ahead, a decode step the ones its tokens picked, after the router",
    )

    resident_expert_layers: int = Field(
        0,
        ge=0,
        description="with experts='streamed': the first MoE layers whose routed experts stay on the GPU all the same",
    )

    @model_validator(mode="after")
    def _one_weight_stream(self):
        if self.experts == "streamed" and self.weights == "streamed":
            raise ValueError("weights='streamed' streams the experts with the layers; set experts='resident'")
        if self.resident_expert_layers and self.experts != "streamed":
            raise ValueError(
                "resident_expert_layers keeps some layers' experts resident: it needs experts='streamed'"
            )
        return self

    tp: int = Field(
        1,
        ge=1,
        le=64,
        description="tensor-parallel degree: each of tp GPUs holds 1/tp of every layer's heads (their KV too, "
        "streamed over its own link) and of the MLP, with two all-reduces of the hidden state per layer",
    )

    def streamed_expert_layers(self, model) -> int:
        """MoE layers whose routed experts stream from host memory: the last ones, all but resident_expert_layers
        (0 with experts='resident')."""
        if self.experts != "streamed" or not model.moe_layers:
            return 0
        if self.resident_expert_layers > model.moe_layers:
            raise UserError(
                f"resident_expert_layers={self.resident_expert_layers} exceeds {model.name}'s {model.moe_layers} "
                "MoE layers"
            )
        return model.moe_layers - self.resident_expert_layers

    @property
    def approximate(self) -> bool:
        """True where attention does not see the context exactly: a part of it (sparse plans) or its KV rounded
        to fp8 (the accuracy is measured, not modelled: validation/fp8_accuracy.py)."""
        return self.kv_dtype != "bf16"

    def changed_knobs(self) -> dict[str, Any]:
        """The knobs whose values differ from the family's defaults, in field order."""
        default = type(self)()
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "family" and getattr(self, name) != getattr(default, name)
        }

    def knobs(self, compact: bool = False) -> str:
        """Short human summary of the knobs that differ from the family's defaults: `prefill_chunk=32768
        cpu_kv_heads=6`, or compact, for narrow tables, `pc=32K ckh=6` (knob_abbreviation; K, M = 1024, 1024^2)."""
        if compact:
            parts = [
                f"{knob_abbreviation(k)}={_compact(v, _short_value)}" for k, v in self.changed_knobs().items()
            ]
        else:
            parts = [f"{k}={_compact(v)}" for k, v in self.changed_knobs().items()]
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
