"""A prediction's band: the plan priced with every unsteady resource at the slow end of its calibrated spread
(the upper end) and at the fast end (the lower end), from the profile alone, then widened by the model's own
error.

The unsteady resources and their spreads (GpuSpec.spread, HostSpec.cpu_attention_low/high; roofsim calibrate
measures them, docs/calibration.md#spread): the host's pace (every host-side cost times the ratio), the pinned
copy rates, and the CPU attention kernel's scan rate. Taking the slow ends together prices the worst moment a
run can meet within what the calibration saw; the point lies between the ends (the spread band).

The model's own error (ModelError, model_error.json): what the spread band misses of the development set's and
the spent held-out sets' measured runs, as a split-conformal quantile per phase (validation/fit_model_error.py):
the spread band's lower end times (1 - q) and its upper end times (1 + q) holds 90% of those runs, and, where a new
run is like them, about as many of new ones. A profile without a spread (a datasheet spec, never calibrated) gives a zero-width band, not
widened: the error was fitted against calibrated profiles.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

from roofsim.specs.hardware import GpuSpec, HostSpec


class ModelError(BaseModel):
    """The widening of the spread band by phase, fitted on the development set and the spent held-out sets
    (validation/fit_model_error.py)."""

    model_config = ConfigDict(extra="forbid")

    coverage: float = Field(description="the share of the fitted runs the widened band holds, at least")
    prefill: float = Field(ge=0, description="q of the prefill band: (lower (1 - q), upper (1 + q))")
    decode: float = Field(ge=0, description="q of the decode band")
    runs: dict[str, int] = Field(description="measured runs fitted, by phase")
    excluded: dict[str, int] = Field(
        default={}, description="measured runs left out, by phase: each measured a defect fixed since"
    )
    source: list[str] = Field(description="the results folders fitted, or the file that lists them")
    command: str = Field(description="the command that wrote this file")


MODEL_ERROR_FILE = "model_error.json"


@cache
def model_error() -> ModelError:
    """The shipped fit (roofsim/model_error.json)."""
    text = (resources.files("roofsim") / MODEL_ERROR_FILE).read_text()
    return ModelError.model_validate(json.loads(text))


def widen(band: tuple[float, float], phase: str, error: ModelError | None = None) -> tuple[float, float]:
    """The spread band `band` of `phase` ("prefill" or "decode") widened by the model's own error."""
    q = getattr(error or model_error(), phase)
    return (band[0] * max(0.0, 1.0 - q), band[1] * (1.0 + q))


def slow_end(gpu: GpuSpec, host: HostSpec) -> tuple[GpuSpec, HostSpec]:
    """The profile with the host at its slow pace, the link and the CPU scan at their slow rates."""
    return (
        gpu.host_costs_times(gpu.spread_end("host_pace_high")).link_times(gpu.spread_end("link_low")),
        host.scans_times(host.spread_end("cpu_attention_low")),
    )


def fast_end(gpu: GpuSpec, host: HostSpec) -> tuple[GpuSpec, HostSpec]:
    """The profile with the host at its fast pace, the link and the CPU scan at their fast rates."""
    return (
        gpu.host_costs_times(gpu.spread_end("host_pace_low")).link_times(gpu.spread_end("link_high")),
        host.scans_times(host.spread_end("cpu_attention_high")),
    )


def has_spread(gpu: GpuSpec, host: HostSpec) -> bool:
    return gpu.spread is not None or host.cpu_attention_low is not None or host.cpu_attention_high is not None


def scaled(
    point: float | None, ends: tuple[float, float] | None, ref: float | None
) -> tuple[float, float] | None:
    """Another model's point (the simulator's) given the analytic band `ends` around the analytic point `ref`: the
    same ratios, so that the band holds each model's own point."""
    if point is None or ends is None or not ref:
        return None
    return (min(point, point * ends[0] / ref), max(point, point * ends[1] / ref))
