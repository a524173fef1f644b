"""What does handing a layer's CPU attention to the CPU worker cost, beyond the scan? cpu_attention's decode
submits each layer's CPU part to a worker thread and joins it (job.result()) before the layer's merge: two thread
wake-ups and the GIL changing hands. In l3-planner-128k-24gb's pick on the H200 (validation/results/h200-s15) the
time from one layer's CPU scan to the next layer's measured 1.82 ms against 1.19 ms predicted. Times submit ->
result of (a) an empty job, (b) a job shaped like the executor's CPU part without the scan (an event wait, a few
Python-level calls), each with the main thread idle-waiting and (c) with another thread issuing tiny CUDA kernels
meanwhile (the issuing thread's work, taking the GIL between launches). Prints medians and means; writes
OUT/worker_handoff.json.

    python validation/worker_handoff.py --out $OUT     # GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from pathlib import Path

import torch
from roofsim.executor.calibrate import cpu_part_job, worker_round_trips

N = 2000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()

    def empty():
        return None

    shaped = cpu_part_job()  # the executor's cpu_part less the scan: wait for q's copy, note a span, return
    cases = {}

    def run(name, job, busy: bool):
        stop = threading.Event()
        t = None
        if busy:
            x = torch.zeros(256, device="cuda")

            def issue():
                while not stop.is_set():
                    for _ in range(50):
                        x.add_(1.0)
                    torch.cuda.synchronize()

            t = threading.Thread(target=issue)
            t.start()
        times = worker_round_trips(job, N)
        stop.set()
        if t is not None:
            t.join()
        cases[name] = {"median_us": statistics.median(times) * 1e6, "mean_us": statistics.fmean(times) * 1e6}
        print(f"{name:40s} median {cases[name]['median_us']:7.1f} us  mean {cases[name]['mean_us']:7.1f} us")

    run("empty job, main idle", empty, False)
    run("cpu_part-shaped job, main idle", shaped, False)
    run("empty job, kernels issued beside", empty, True)
    run("cpu_part-shaped job, kernels issued beside", shaped, True)
    Path(args.out, "worker_handoff.json").write_text(
        json.dumps({"command": "python validation/worker_handoff.py", "calls": N, "cases": cases}, indent=1)
    )


if __name__ == "__main__":
    main()
