"""Why does cpu_attention's CPU scan run 2-4x slower in a measured run than calibrate's kernel alone? One layer's
CPU decode attention (the executor's kernel on its worker, cold blocks as in calibration) over: ordinary pageable
blocks (calibrate's), blocks carved from a HostPool (one region registered with cudaHostRegister, as the executor's
host store), and each of those while pinned H2D copies stream from the same kind of memory, while the calling thread
issues tiny GPU kernels, or waits spinning on a CUDA event. Prints one line per case, writes OUT/cpu_attn_memory.json.

    python validation/cpu_attn_memory.py --out $OUT      # on the GPU machine, after . validation/device_setup.sh
    python validation/cpu_attn_memory.py --heads 2 --tokens 131073 --cases pageable,pool --out $OUT

--heads and --tokens set the block's shape [tokens, 1, 2, heads, 128] (default 4 heads of 64K), --cases which
memory kinds run (pageable, pool, dma: the big DMA-written pool) and --beside what runs beside (alone, h2d,
h2d-registered, issue, spin); the output file is named for the shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from pathlib import Path

import torch
from roofsim.executor.calibrate import cold_kv_blocks, stream_h2d, timed_scans
from roofsim.executor.cpu_attn import _worker
from roofsim.executor.hostpool import HostPool

HEADS, L, D, G = 4, 65536, 128, 4
COLD = 1 << 30


def pool_blocks(pool: HostPool, total: int = COLD, dma: bool = False) -> list[torch.Tensor]:
    """Blocks of a HostPool of `total` bytes (the scans use the first COLD of them); dma: written by D2H copies
    from the GPU, as a run's prefill writes its host store, else by the CPU."""
    shape = (L, 1, 2, HEADS, D)
    size = L * 2 * HEADS * D * 2
    handles = [pool.reserve(shape, torch.bfloat16) for _ in range(total // size)]
    pool.allocate()
    bufs = [pool.block(h, shape, torch.bfloat16) for h in handles]
    src = torch.randn(shape, dtype=torch.bfloat16, device="cuda") if dma else None
    for b in bufs:
        if dma:
            b.copy_(src, non_blocking=True)
        else:
            b.normal_()
    torch.cuda.synchronize()
    return bufs[: COLD // size]


def scan(bufs, q, out) -> list[float]:
    return timed_scans(q, [[b] for b in bufs], L, out)


def beside(kind: str, src: torch.Tensor | None, done: threading.Event) -> None:
    """What the calling thread does while the worker scans: stream H2D from src, issue kernels, or spin on an event."""
    if kind == "h2d":
        stream_h2d(src, done.is_set)
    elif kind == "issue":
        x = torch.zeros(256, device="cuda")
        while not done.is_set():
            for _ in range(50):
                x.add_(1.0)
            torch.cuda.synchronize()
    elif kind == "spin":
        while not done.is_set():
            torch.cuda._sleep(1_000_000)
            ev = torch.cuda.Event()
            ev.record()
            ev.synchronize()


def case(name, bufs, q, out, kind=None, src=None) -> dict:
    scan(bufs[:2], q, out)
    times = []
    for _ in range(2):
        done = threading.Event()
        job = _worker().submit(scan, bufs, q, out)
        if kind:
            job.add_done_callback(lambda _f, d=done: d.set())
            beside(kind, src, done)
        times += job.result()
    nbytes = bufs[0].numel() * bufs[0].element_size()
    med = statistics.median(times)
    row = {"case": name, "median_ms": med * 1e3, "max_ms": max(times) * 1e3, "gbps": nbytes / med / 1e9}
    print(f"{name:40s} {row['gbps']:6.1f} GB/s  median {row['median_ms']:.2f} ms  max {row['max_ms']:.2f} ms")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--pool-gib", type=int, default=16, help="a registered pool this large, written by D2H")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--cases", default="pageable,pool,dma")
    ap.add_argument("--beside", default="alone,h2d,h2d-registered,issue,spin")
    args = ap.parse_args()
    global HEADS, L
    HEADS, L = args.heads, args.tokens
    kinds, besides = args.cases.split(","), args.beside.split(",")
    q = torch.randn(1, HEADS * G, 1, D, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    rows = []
    pin_src = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True).fill_(1)
    pool2 = HostPool(pinned=True)
    h = pool2.reserve((1 << 30,), torch.uint8)
    pool2.allocate()
    reg_src = pool2.block(h, (1 << 30,), torch.uint8)
    reg_src.fill_(1)
    pools = [pool2]
    for kind in kinds:
        if kind == "pageable":
            name, bufs = "pageable", cold_kv_blocks(HEADS, L, D, COLD)  # calibrate's own blocks
        elif kind == "pool":
            pools.append(HostPool(pinned=True))
            name, bufs = "registered pool", pool_blocks(pools[-1])
        else:
            pools.append(HostPool(pinned=True))
            name, bufs = (
                f"{args.pool_gib} GiB pool, DMA-written",
                pool_blocks(pools[-1], args.pool_gib << 30, True),
            )
        cases = {
            "alone": (f"{name} alone", None, None),
            "h2d": (f"{name} beside h2d (256 MiB pinned)", "h2d", pin_src),
            "h2d-registered": (f"{name} beside h2d (1 GiB registered)", "h2d", reg_src),
            "issue": (f"{name} beside kernel issue", "issue", None),
            "spin": (f"{name} beside event spin", "spin", None),
        }
        for b in besides:
            label, how, src = cases[b]
            rows.append(case(label, bufs, q, out, how, src))
        del bufs
    suffix = "" if (HEADS, L) == (4, 65536) else f"-h{HEADS}-{L}"
    Path(args.out, f"cpu_attn_memory{suffix}.json").write_text(
        json.dumps(
            {
                "command": "python validation/cpu_attn_memory.py "
                f"--heads {HEADS} --tokens {L} --cases {args.cases} --beside {args.beside}",
                "threads": torch.get_num_threads(),
                "cases": rows,
            },
            indent=1,
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
