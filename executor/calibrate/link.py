"""Copies over the host link and within HBM: pinned and pageable copies by size in each direction, back-to-back
copies, both directions at once, device-to-device, H2D copies streamed beside other work, and the copy of rows the
CPU has just gathered into a pinned stage.

Host memory is the executor's own (HostPool: ordinary memory, written, then registered with cudaHostRegister), as a
run's host store is: a copy's rate depends on how its source was allocated and whether it was written."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import contextmanager

import torch
from roofsim.executor.calibrate.hostkv import cold_kv_blocks, gather_rows
from roofsim.executor.timing import copy_once_s, cuda_time_s, wall_time_s

from roofsim.calibration import BatchPoint, CopyPoint
from roofsim.specs.model import ModelSpec

MiB = 1024**2


@contextmanager
def _store_bytes(n: int, pinned: bool = True):
    """n host bytes as the executor's KV store holds them (executor/hostpool.py): ordinary memory, written, then
    registered with cudaHostRegister; pageable: ordinary memory, written. A never-written torch pinned buffer would
    time a different source than the one a run streams from."""
    from roofsim.executor.hostpool import HostPool

    if not pinned:
        yield torch.zeros(n, dtype=torch.uint8)
        return
    pool = HostPool(pinned=True)
    handle = pool.reserve((n,), torch.uint8)
    pool.allocate()
    try:
        yield pool.block(handle, (n,), torch.uint8)
    finally:
        pool.close()


@contextmanager
def _allocated_bytes(n: int):
    """n bytes of torch's pinned host memory (cudaHostAlloc), written."""
    yield torch.zeros(n, dtype=torch.uint8, pin_memory=True)


def copies(direction: str, sizes: list[int], pinned: bool = True) -> list[CopyPoint]:
    """One isolated copy per size in `direction` ("h2d" or "d2h"), CUDA-event timed, the upper median of 7 (3 from
    64 MiB up)."""
    out = []
    for n in sizes:
        with _store_bytes(n, pinned) as host:
            dev = torch.empty(n, dtype=torch.uint8, device="cuda")
            if direction == "h2d":
                fn = lambda d=dev, h=host: d.copy_(h, non_blocking=True)  # noqa: E731
            else:
                fn = lambda d=dev, h=host: h.copy_(d, non_blocking=True)  # noqa: E731
            out.append(CopyPoint(nbytes=n, seconds=cuda_time_s(fn, repeat=7 if n < 64 * MiB else 3)))
            del dev
    return out


def back_to_back(total: int, copies: int, allocated: bool = False) -> BatchPoint:
    """`copies` H2D copies of total / copies bytes each, issued back to back: wall time of the batch (its issue
    and its copies), the upper median of 3. From host memory as the KV store holds it (registered), or with
    `allocated` as torch's pinned allocator gives it (cudaHostAlloc: the streamed experts' home)."""
    with _allocated_bytes(total) if allocated else _store_bytes(total) as host:
        dev = torch.empty(total, dtype=torch.uint8, device="cuda")
        size = total // copies
        pairs = [(dev[i * size : (i + 1) * size], host[i * size : (i + 1) * size]) for i in range(copies)]

        def run():
            for d, h in pairs:
                d.copy_(h, non_blocking=True)

        return BatchPoint(copies=copies, nbytes_each=size, seconds=wall_time_s(run, repeat=3))


def bidirectional_gbps(n: int = 256 * MiB, chunk: int = 64 * MiB, rounds: int = 4) -> float:
    """Bytes per second (G) of both directions streaming at once, as a plan's prefetch and write-back stream: on two
    streams, H2D and D2H copies of `chunk` bytes each, issued in turn, over n bytes each way, `rounds` times over;
    both directions' bytes over the wall time of the whole, the upper median of 5. One 256 MiB pair timed alone
    measured well below what a run's streams reached at once on the same machine
    (docs/evidence.md#ev-fp8-kernel-timed)."""
    with _store_bytes(n) as h_up, _store_bytes(n) as h_down:
        d_up, d_down = (torch.empty(n, dtype=torch.uint8, device="cuda") for _ in range(2))
        pairs = list(
            zip(d_up.split(chunk), h_up.split(chunk), h_down.split(chunk), d_down.split(chunk), strict=True)
        )
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

        def run():
            for _ in range(rounds):
                for up_dst, up_src, down_dst, down_src in pairs:
                    with torch.cuda.stream(s1):
                        up_dst.copy_(up_src, non_blocking=True)
                    with torch.cuda.stream(s2):
                        down_dst.copy_(down_src, non_blocking=True)

        return 2 * n * rounds / wall_time_s(run, repeat=5) / 1e9


def d2d_gbps(n: int = 1 << 30) -> float:
    """A device-to-device copy of n bytes: bytes read plus written per second (G)."""
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty(n, dtype=torch.uint8, device="cuda")
    return 2 * n / cuda_time_s(lambda: dst.copy_(src)) / 1e9


def stream_h2d(src: torch.Tensor | list[torch.Tensor], until: Callable[[], bool]) -> int:
    """H2D copies of the bytes of `src` (pinned host memory; a list of equal-sized chunks: each in turn) back to
    back on a stream of their own, two in flight so the copy engine never idles, until until() is true; waits for
    the last and returns how many ran."""
    chunks = src if isinstance(src, list) else [src]
    dst = torch.empty(chunks[0].numel(), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    pending, copies = [], 0
    while not until():
        with torch.cuda.stream(stream):
            dst.copy_(chunks[copies % len(chunks)], non_blocking=True)
            pending.append(torch.cuda.Event())
            pending[-1].record(stream)
        copies += 1
        if len(pending) > 2:
            pending.pop(0).synchronize()
    stream.synchronize()
    return copies


def h2d_after_gather(
    model: ModelSpec, tokens: int = 65536, fraction: float = 0.2, cold_bytes: int = 1 << 30
) -> tuple[float, float]:
    """sparse_fetch's copy of its gathered rows (executor/sparse.py): a fifth of a layer's tokens gathered by the
    CPU into a pinned stage, then copied up; its pinned H2D rate right after the gather, and the same stage copied
    again at once (the control: the same buffer, not written in between). A pinned buffer the CPU has just written
    may copy up slower than one that was not written since, and a run's gathered rows are always fresh: the profile
    prices that copy at its own rate (link.h2d_gathered_gbps). Bytes per second, medians of the calls cycling
    through cold blocks as cpu.cpu_gather_gbps does."""
    hk, d = model.n_kv_heads, model.head_dim
    n = int(tokens * fraction)
    blocks = cold_kv_blocks(hk, tokens, d, cold_bytes)
    picks = [gather_rows(tokens, n, hk) for _ in blocks]
    stage = torch.empty(hk * n * 2, d, dtype=torch.bfloat16, pin_memory=True)
    dev = torch.empty_like(stage, device="cuda")
    after, again = [], []
    for i in range(2 * len(blocks) + 1):
        b, r = blocks[i % len(blocks)], picks[i % len(blocks)]
        torch.index_select(b.view(-1, d), 0, r, out=stage)
        t_after, t_again = copy_once_s(dev, stage), copy_once_s(dev, stage)
        if i:  # the first pair warms up
            after.append(t_after)
            again.append(t_again)
    nbytes = stage.numel() * stage.element_size()
    return nbytes / statistics.median(after), nbytes / statistics.median(again)
