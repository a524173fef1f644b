"""Is the host's two-level pace a property of the core or of the moment? The H200 guests' issuing thread flips
between two speeds ~1.7x apart within a second (validation/results/h200-s16/a/host). This pins the thread to each
CPU in turn and times roofsim.hostpace's loop and roofsim.executor.launchpace's launches there, then follows one
pinned CPU and the unpinned thread for a few seconds each. If some CPUs are steadily fast, pinning the issuing thread
is a fix; if every CPU flips, the pace is the moment's and the validation has to follow it.
  python validation/core_pace.py OUT.json [samples per CPU, default 60]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
from roofsim.executor.launchpace import launch_us

from roofsim.hostpace import loop_us

SLEEP_S = 0.005


def samples(n: int, device: str) -> dict[str, list[float]]:
    out = {"loop_us": [], "launch_us": [], "unix_s": []}
    for _ in range(n):
        out["unix_s"].append(time.time())
        out["loop_us"].append(loop_us())
        out["launch_us"].append(launch_us(device))
        time.sleep(SLEEP_S)
    return out


def main(path: str, n: int = 60) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpus = sorted(os.sched_getaffinity(0))
    launch_us(device)  # the probe tensor and the context, before any timing
    result = {"cpus": cpus, "device": device, "per_cpu": {}, "follow": {}}
    for cpu in cpus:
        os.sched_setaffinity(0, {cpu})
        result["per_cpu"][cpu] = samples(n, device)
    os.sched_setaffinity(0, {cpus[0]})
    result["follow"][f"cpu{cpus[0]}"] = samples(8 * n, device)
    os.sched_setaffinity(0, set(cpus))
    result["follow"]["unpinned"] = samples(8 * n, device)
    with open(path, "w") as f:
        json.dump(result, f)
    fast = min(statistics.median(s["loop_us"]) for s in result["per_cpu"].values())
    print(f"{'cpu':>8} {'loop med':>9} {'slow share':>10} {'launch med':>10}")
    rows = [(str(c), s) for c, s in result["per_cpu"].items()] + list(result["follow"].items())
    for name, s in rows:
        slow = sum(x > 1.3 * fast for x in s["loop_us"]) / len(s["loop_us"])
        print(
            f"{name:>8} {statistics.median(s['loop_us']):9.0f} {slow:10.2f} {statistics.median(s['launch_us']):10.0f}"
        )


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
