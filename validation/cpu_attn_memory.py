"""Why does cpu_attention's CPU scan run 2-4x slower in a measured run than calibrate's kernel alone? One layer's
CPU decode attention (the executor's kernel on its worker, cold blocks as in calibration) over: ordinary pageable
blocks (calibrate's), blocks carved from a HostPool (one region registered with cudaHostRegister, as the executor's
host store), and each of those while pinned H2D copies stream from the same kind of memory, while the calling thread
issues tiny GPU kernels, or waits spinning on a CUDA event. Prints one line per case, writes OUT/cpu_attn_memory.json.

    python validation/cpu_attn_memory.py --out $OUT      # on the GPU machine, after . validation/device_setup.sh
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
    args = ap.parse_args()
    q = torch.randn(1, HEADS * G, 1, D, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    rows = []
    page = cold_kv_blocks(HEADS, L, D, COLD)  # calibrate's own blocks
    pool = HostPool(pinned=True)
    reg = pool_blocks(pool)
    pin_src = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True).fill_(1)
    pool2 = HostPool(pinned=True)
    h = pool2.reserve((1 << 30,), torch.uint8)
    pool2.allocate()
    reg_src = pool2.block(h, (1 << 30,), torch.uint8)
    reg_src.fill_(1)
    pool3 = HostPool(pinned=True)
    big = pool_blocks(pool3, total=args.pool_gib << 30, dma=True)
    for name, bufs in (
        ("pageable", page),
        ("registered pool", reg),
        (f"{args.pool_gib} GiB pool, DMA-written", big),
    ):
        rows.append(case(f"{name} alone", bufs, q, out))
        rows.append(case(f"{name} beside h2d (256 MiB pinned)", bufs, q, out, "h2d", pin_src))
        rows.append(case(f"{name} beside h2d (1 GiB registered)", bufs, q, out, "h2d", reg_src))
        rows.append(case(f"{name} beside kernel issue", bufs, q, out, "issue"))
        rows.append(case(f"{name} beside event spin", bufs, q, out, "spin"))
    Path(args.out, "cpu_attn_memory.json").write_text(
        json.dumps(
            {
                "command": "python validation/cpu_attn_memory.py",
                "threads": torch.get_num_threads(),
                "cases": rows,
            },
            indent=1,
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
