"""How should cpu_attention's CPU worker run? One layer's CPU decode attention (the executor's kernel,
on a worker thread, cold cache as in calibration) timed with torch's thread count and with one fewer, alone and
with the calling thread issuing small GPU kernels meanwhile, as the executor's issuing thread does while the CPU
attends (all the time: the worst case), with Python's default GIL switch interval and with 0.1 ms (the worker
needs the GIL back after every torch call), op by op and in one TorchScript call (cpu_decode). Prints one line per case and writes OUT/cpu_attn_threads.json.

    python validation/cpu_attn_threads.py --out $OUT      # on the GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from roofsim.executor.calibrate import cold_kv_blocks
from roofsim.executor.cpu_attn import worker_pool
from roofsim.executor.cpu_decode import attend_host

from roofsim.specs import load_model


def _issue_until(done: threading.Event) -> int:
    """Launch tiny kernels (or spin, without a GPU) until `done`; returns how many."""
    x = torch.zeros(256, device="cuda") if torch.cuda.is_available() else None
    n = 0
    while not done.is_set():
        if x is not None:
            x.add_(1.0)
        n += 1
    return n


def case(
    model, bufs: list[torch.Tensor], threads: int, beside: bool, switch_s: float, scripted: bool
) -> dict:
    hq, hk, d = model.n_heads, model.n_kv_heads, model.head_dim
    L, heads = bufs[0].shape[0], bufs[0].shape[3]
    q = torch.randn(1, heads * (hq // hk), 1, d, dtype=torch.bfloat16)
    size = bufs[0].numel() * 2
    default_switch = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    pool = worker_pool(threads)

    out = torch.empty_like(q)

    def one(b) -> float:
        t0 = time.perf_counter()
        attend_host(q, [b], L, d**-0.5, out, scripted=scripted)
        return time.perf_counter() - t0

    for b in bufs:
        pool.submit(one, b).result()
    times = []
    for _ in range(2):
        for b in bufs:
            job = pool.submit(one, b)
            if beside:
                done = threading.Event()
                job.add_done_callback(lambda _j, done=done: done.set())
                _issue_until(done)
            times.append(job.result())
    pool.shutdown()
    sys.setswitchinterval(default_switch)
    med = statistics.median(times)
    return {
        "heads": heads,
        "tokens": L,
        "threads": threads,
        "beside_issue": beside,
        "switch_interval_ms": switch_s * 1e3,
        "path": "torchscript" if scripted else "op-by-op",
        "median_ms": med * 1e3,
        "max_ms": max(times) * 1e3,
        "gbps": size / med / 1e9,
        "calls": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    model = load_model(args.model)
    n = torch.get_num_threads()
    rows = []
    default_switch = sys.getswitchinterval()
    for heads, L in ((2, 65536),):
        bufs = cold_kv_blocks(heads, L, model.head_dim)
        for threads, scripted in ((n, False), (n - 1, False), (n - 1, True)):
            for beside, switch_s in ((False, default_switch), (True, default_switch), (True, 1e-4)):
                r = case(model, bufs, threads, beside, switch_s, scripted)
                rows.append(r)
                print(
                    f"{heads} kv heads x {L} tokens  {r['path']:11s} threads={threads:2d}  beside_issue={beside!s:5}  "
                    f"switch {switch_s * 1e3:4.1f} ms  median {r['median_ms']:7.2f} ms  max {r['max_ms']:7.2f} ms  "
                    f"{r['gbps']:5.1f} GB/s",
                    flush=True,
                )
        del bufs
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_attn_threads.json").write_text(
        json.dumps(
            {"command": "python validation/cpu_attn_threads.py", "torch_threads": n, "cases": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
