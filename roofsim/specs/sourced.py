"""A number with its provenance: a source (URL or document), a formula it was derived by, a measurement, or
a stated assumption. Shipped spec files must give one of them for every number; a user's own file may use a
bare number, which is then marked as coming from that file."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

USER_PROVIDED = "user-provided"


class Sourced(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    source: str | None = None
    derived: str | None = None
    measured: str | None = None
    assumed: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Sourced:
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
