"""A number with its provenance: a source (URL or document), a formula it was derived by, a measurement, or
a stated assumption. Shipped spec files must give one of them for every number; a user's own file may use a
bare number, which is then marked as coming from that file."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

USER_PROVIDED = "user-provided"


class Sourced(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float = Field(strict=True)  # a number: no bool, no string that looks like one
    source: str | None = None
    derived: str | None = None
    measured: str | None = None
    assumed: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Sourced:
        if not math.isfinite(self.value):
            raise ValueError(f"must be a finite number (got {self.value})")
        if self.value < 0:
            raise ValueError(f"must not be negative (got {self.value})")
        if not (self.source or self.derived or self.measured or self.assumed):
            raise ValueError("needs a provenance: one of source, derived, measured or assumed")
        return self

    @property
    def provenance(self) -> str:
        for kind in ("measured", "source", "derived", "assumed"):
            text = getattr(self, kind)
            if text:
                return f"{kind}: {text}"
        return ""


def _coerce(raw: Any) -> Any:
    if isinstance(raw, bool):
        raise ValueError("must be a number")
    if isinstance(raw, (int, float)):
        return {"value": raw, "source": USER_PROVIDED}
    return raw


SourcedNumber = Annotated[Sourced, BeforeValidator(_coerce)]


def positive(field: str, s: Sourced) -> Sourced:
    if s.value <= 0:
        raise ValueError(f"{field} must be positive (got {s.value})")
    return s


def whole(field: str, s: Sourced) -> Sourced:
    """A count (cores, SMs, copy engines): a whole number, at least 1."""
    if s.value < 1 or s.value != int(s.value):
        raise ValueError(f"{field} is a count: a whole number of at least 1 (got {s.value})")
    return s


MAX_EFFICIENCY = 1.25
"""An achievable fraction of a datasheet peak: above 1 only a little (a card clocked past its datasheet, a
measurement's noise); beyond this, the peak it is a fraction of is wrong."""


def fraction(field: str, s: Sourced) -> Sourced:
    if not 0 < s.value <= MAX_EFFICIENCY:
        raise ValueError(
            f"{field} is a fraction of the datasheet peak, in (0, {MAX_EFFICIENCY}] (got {s.value}); a larger "
            "measured rate means the peak in the spec is too low"
        )
    return s
