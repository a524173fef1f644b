"""Does pinned H2D traffic from cold host memory slow the CPU decode attention scan? In a cpu_attention run the GPU
heads' KV streams from the host store (gigabytes, read from DRAM) while the CPU scans its heads; calibrate's
beside-H2D case streams one 256 MiB buffer again and again, which the 300 MiB last-level cache can serve. This
times one layer's CPU scan at the shapes of two runs (l2-planner-32k-24gb's pick: two one-head MHA slots of 32K
tokens; q7-cpu1-64k: one GQA-7 head of 64K) alone, beside H2D from one 256 MiB pinned buffer, and beside H2D
cycling through a registered pool of POOL GiB in 256 MiB copies (each read from DRAM), with the H2D rate of each
case. One line per case; writes OUT/cpu_attn_dram.json.

    python validation/cpu_attn_dram.py --out $OUT      # on the GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from functools import partial
from pathlib import Path

import torch
from roofsim.executor.calibrate import carve_kv_blocks, stream_h2d, timed_scans
from roofsim.executor.cpu_attn import _worker
from roofsim.executor.hostpool import HostPool

D = 128
CHUNK = 256 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--pool-gib", type=int, default=8)
    args = ap.parse_args()
    region = torch.empty(1 << 30, dtype=torch.bfloat16)
    region.normal_()
    small = torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True).fill_(1)
    pool = HostPool(pinned=True)
    handles = [pool.reserve((CHUNK,), torch.uint8) for _ in range(args.pool_gib * 4)]
    pool.allocate()
    chunks = [pool.block(h, (CHUNK,), torch.uint8) for h in handles]
    for c in chunks:
        c.fill_(1)
    rows = []
    for name, G, heads, slots, L in (("l2 pick", 1, 1, 2, 32769), ("q7-cpu1", 7, 1, 1, 65537)):
        n = L * 2 * heads * D
        blocks = carve_kv_blocks(region, heads, L, D, 2 * region.numel(), least=1)  # the whole region
        calls = [blocks[i : i + slots] for i in range(0, len(blocks) - slots + 1, slots)]
        q = torch.randn(1, slots * heads * G, 1, D, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        scan = partial(timed_scans, q, calls, L, out)

        _worker().submit(scan).result()
        for case in ("alone", "beside h2d, one 256 MiB buffer", f"beside h2d, cycling {args.pool_gib} GiB"):
            times, copies = [], 0
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                done = threading.Event()
                job = _worker().submit(scan)
                job.add_done_callback(lambda _f, d=done: d.set())
                if case == "alone":
                    job.result()
                elif "one" in case:
                    copies += stream_h2d(small, done.is_set)
                else:
                    copies += stream_h2d(chunks, done.is_set)
                times += job.result()
            wall = time.perf_counter() - t0
            med = statistics.median(times)
            row = {
                "shape": name,
                "case": case,
                "median_ms": med * 1e3,
                "gbps": slots * n * 2 / med / 1e9,
                "h2d_gbps": copies * CHUNK / wall / 1e9,
            }
            rows.append(row)
            print(
                f"{name:8s} {case:34s} scan {row['gbps']:6.1f} GB/s ({med * 1e3:.2f} ms/layer)  "
                f"h2d {row['h2d_gbps']:5.1f} GB/s",
                flush=True,
            )
            Path(args.out, "cpu_attn_dram.json").write_text(
                json.dumps({"command": "python validation/cpu_attn_dram.py", "cases": rows}, indent=1)
            )
    pool.close()


if __name__ == "__main__":
    main()
