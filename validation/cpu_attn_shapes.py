"""Does the CPU decode attention kernel's rate depend on how a layer's CPU heads are cut into host blocks? calibrate
times one block of half the model's KV heads; a cpu_attention run attends one block per CPU slot (one head each
where kv_heads_per_slot does not divide cpu_kv_heads), each cut into up to one key range per thread. This times the
executor's kernel (attend_host, on its worker thread) over cold blocks carved from one filled region, for each
(GQA group, heads per block, blocks per call, tokens), then one block's call at forced key-range counts and worker
thread counts. One line per case; writes OUT/cpu_attn_shapes.json (rows written as they come, so a run cut short
keeps what it measured).

    python validation/cpu_attn_shapes.py --out $OUT      # on the GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from roofsim.executor.attention import cpu_splits
from roofsim.executor.calibrate import carve_kv_blocks
from roofsim.executor.cpu_attn import _worker, worker_pool
from roofsim.executor.cpu_decode import _compiled, attend_host

D = 128
COLD = 1 << 30  # bytes each case cycles through, so every block comes from RAM


def carve(region: torch.Tensor, heads: int, L: int) -> list[torch.Tensor]:
    """Consecutive host blocks [L, 1, 2, heads, D] over the region (bf16), as many as fit in COLD bytes."""
    return carve_kv_blocks(region, heads, L, D, COLD, least=1)


def timed(pool, fn, calls: list) -> list[float]:
    """fn(*args) for each args in calls on the pool's thread, each timed; the median of two passes' times."""

    def run():
        times = []
        for args in calls:
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
        return times

    pool.submit(run).result()  # warm: the kernel's first call at this shape
    return pool.submit(run).result() + pool.submit(run).result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true", help="a few cases (a CPU smoke run)")
    args = ap.parse_args()
    out_file = Path(args.out, "cpu_attn_shapes.json")
    region = torch.empty(2 * COLD // 2, dtype=torch.bfloat16)
    region.normal_()
    worker = _worker()
    threads = worker.submit(torch.get_num_threads).result()
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        print(
            f"{row['case']:10s} G={row['group']} heads/block={row['heads']} blocks={row['blocks']} "
            f"L={row['tokens']:6d} splits={row['splits']:2d} threads={row['threads']:2d}  "
            f"{row['gbps']:6.1f} GB/s  {row['median_ms']:.3f} ms/call",
            flush=True,
        )
        out_file.write_text(
            json.dumps(
                {"command": "python validation/cpu_attn_shapes.py", "worker_threads": threads, "cases": rows},
                indent=1,
            )  # fmt: skip
        )

    groups = (1, 4) if args.quick else (1, 2, 4, 7)
    lengths = (8192,) if args.quick else (4096, 16384, 32768, 65536, 131072)
    heads_per_block = (1, 4) if args.quick else (1, 2, 4)
    blocks_per_call = (1, 4) if args.quick else (1, 2, 6)
    for G in groups:
        for h in heads_per_block:
            for L in lengths:
                blocks = carve(region, h, L)
                for nb in blocks_per_call:
                    if len(blocks) < 2 * nb:
                        continue
                    q = torch.randn(1, nb * h * G, 1, D, dtype=torch.bfloat16)
                    o = torch.empty_like(q)
                    calls = [
                        (q, blocks[i : i + nb], L, D**-0.5, o) for i in range(0, len(blocks) - nb + 1, nb)
                    ]
                    med = statistics.median(timed(worker, attend_host, calls))
                    nbytes = nb * blocks[0].numel() * 2
                    splits = worker.submit(cpu_splits, h, G, L).result()
                    keep(
                        {
                            "case": "layout",
                            "group": G,
                            "heads": h,
                            "blocks": nb,
                            "tokens": L,
                            "splits": splits,
                            "threads": threads,
                            "median_ms": med * 1e3,
                            "gbps": nbytes / med / 1e9,
                        }
                    )
    layer = _compiled()
    forced = (1, 4) if args.quick else (1, 2, 4, 8, 12, 15, 16, 30, 60)
    for G, L in ((1, 32768), (7, 65536), (4, 65536)) if not args.quick else ((1, 8192),):
        blocks = carve(region, 1, L)
        q = torch.randn(1, G, 1, D, dtype=torch.bfloat16)
        o = torch.empty_like(q)
        for m in forced:
            if layer is None:
                break
            calls = [(q, [b], L, [m], D**-0.5, o) for b in blocks]
            med = statistics.median(timed(worker, layer, calls))
            keep(
                {
                    "case": "splits",
                    "group": G,
                    "heads": 1,
                    "blocks": 1,
                    "tokens": L,
                    "splits": m,
                    "threads": threads,
                    "median_ms": med * 1e3,
                    "gbps": blocks[0].numel() * 2 / med / 1e9,
                }
            )
        for t in (2,) if args.quick else (4, 8, 12, 15, 16):
            pool = worker_pool(t)
            calls = [(q, [b], L, D**-0.5, o) for b in blocks]
            med = statistics.median(timed(pool, attend_host, calls))
            keep(
                {
                    "case": "threads",
                    "group": G,
                    "heads": 1,
                    "blocks": 1,
                    "tokens": L,
                    "splits": pool.submit(cpu_splits, 1, G, L).result(),
                    "threads": t,
                    "median_ms": med * 1e3,
                    "gbps": blocks[0].numel() * 2 / med / 1e9,
                }
            )
            pool.shutdown()


if __name__ == "__main__":
    main()
