"""The host's pace: the microseconds a fixed pure-Python loop takes, timed beside host-side work.

A launch-bound decode step costs what the issuing thread's Python, dispatcher and driver calls cost, and on a
cloud guest that moves: the H200 guests switch between two levels ~1.7x apart in spells of minutes, and the
resident runs' decode followed the loop (~1.25x the loop's ms per layer whatever the level:
validation/results/h200-s12/README.md). `roofsim calibrate` times the loop beside the micro-benchmarks that give
the host-side costs (runtime.host_pace_us); the executor times it before every decode step (the measured trace's
summary.host_pace_us); `roofsim validate` predicts each run with the host-side costs at the run's pace
(GpuSpec.at_host_pace). No torch: the planner's side reads the numbers only.
"""

from __future__ import annotations

import time

LOOP = 20_000  # iterations: ~0.7-1.3 ms on the H200 guests, short beside a decode step
LAUNCHES = 200  # roofsim.executor.launchpace's kernels per sample: ~1 ms on the H200 guests


def loop_us() -> float:
    """Microseconds of one LOOP-iteration pure-Python loop (validation/host_monitor.py times the same loop)."""
    t0 = time.perf_counter()
    s = 0
    for i in range(LOOP):
        s += i
    return (time.perf_counter() - t0) * 1e6
