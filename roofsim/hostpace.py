"""The host's pace: the microseconds a fixed pure-Python loop takes, timed beside host-side work.

A launch-bound decode step costs what the issuing thread's Python, dispatcher and driver calls cost, and that
moves with the host's speed, between machines and within one (docs/evidence.md#ev-host-two-speeds); the step
follows it in proportion (docs/evidence.md#ev-launch-bound-follows-host-pace). `roofsim calibrate` times the
loop beside the micro-benchmarks that give the host-side costs (runtime.host_pace_us); the executor times it
before every decode step (the measured trace's summary.host_pace_us); `roofsim validate` predicts each run
with the host-side costs at the run's pace (GpuSpec.at_host_pace). No torch: the planner's side reads the
numbers only.
"""

from __future__ import annotations

import time

LOOP = 20_000  # iterations: about a millisecond, short beside a decode step
LAUNCHES = 200  # roofsim.executor.launchpace's kernels per sample: about a millisecond of issue


def loop_us() -> float:
    """Microseconds of one LOOP-iteration pure-Python loop (validation/host_monitor.py times the same loop)."""
    t0 = time.perf_counter()
    s = 0
    for i in range(LOOP):
        s += i
    return (time.perf_counter() - t0) * 1e6


def pace_ratio(
    loop: float,
    loop_ref: float,
    launch: float | None = None,
    launch_ref: float | None = None,
    step: float | None = None,
    step_ref: float | None = None,
) -> float:
    """How much slower a host whose gauges read `loop` (loop_us), `launch` and `step` (roofsim.executor.launchpace)
    issues than one that read the `_ref` figures. Where the tiny decode step was read on both sides, its
    ratio: it runs the code a launch-bound step runs (docs/evidence.md#ev-tiny-step-gauge). Else, where both
    were read on both sides, the mean of the loop's and the launches' ratios (a layer's issue is part
    interpreter, part launch path: docs/evidence.md#ev-gauge-mean-in-sample); else the loop's."""
    if step and step_ref:
        return step / step_ref
    k = loop / loop_ref
    if launch and launch_ref:
        k = (k + launch / launch_ref) / 2
    return k
