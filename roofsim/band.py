"""A prediction's band: the plan priced with every unsteady resource at the slow end of its calibrated spread
(the upper end) and at the fast end (the lower end), from the profile alone.

The unsteady resources and their spreads (GpuSpec.spread, HostSpec.cpu_attention_low/high; roofsim calibrate
measures them, docs/calibration.md#spread): the host's pace (every host-side cost times the ratio), the pinned
copy rates, and the CPU attention kernel's scan rate. Taking the slow ends together prices the worst moment a
run can meet within what the calibration saw; the point lies between the ends. A profile without a spread gives
a zero-width band.
"""

from __future__ import annotations

from roofsim.specs.hardware import GpuSpec, HostSpec


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
