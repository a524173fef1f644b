"""Time the host's speed beside a campaign: every PERIOD_S, a fixed pure-Python loop and a fixed count of tiny
CPU torch calls (the dispatcher a launch-bound decode step pays per kernel), one CSV row each, flushed at once,
so that a measured run's slow spells can be set beside the host's (a launch-bound decode step follows the host's
pace, which moves within a run: docs/evidence.md#ev-host-two-speeds). One core, a few
milliseconds a period: it takes ~0.5% of one vCPU at the default period. Runs until killed.

    python3 validation/host_monitor.py $OUT/host.csv &   # then the campaign; kill %1 after it
"""

from __future__ import annotations

import sys
import time

import torch

from roofsim.hostpace import LOOP
from roofsim.hostpace import loop_us as python_loop_us

PERIOD_S = 0.5
CALLS = 200


def torch_call_us(x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS):
        x.add_(1.0)
    return (time.perf_counter() - t0) * 1e6 / CALLS


def main(path: str) -> None:
    torch.set_num_threads(1)
    x = torch.zeros(4)
    with open(path, "w") as f:
        f.write(f"unix_s,python_loop_us_{LOOP},torch_cpu_call_us\n")
        while True:
            f.write(f"{time.time():.3f},{python_loop_us():.1f},{torch_call_us(x):.2f}\n")
            f.flush()
            time.sleep(PERIOD_S)


if __name__ == "__main__":
    main(sys.argv[1])
