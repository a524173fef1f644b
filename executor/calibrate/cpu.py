"""CPU-side timings: the CPU worker's decode attention scans (by KV heads, length, GQA group, one CPU slot's share,
beside H2D copies), sparse_fetch's gather of KV rows, host memcpy and a CPU matmul. Host-clock timed; the scans run
on the executor's CPU worker thread (roofsim.executor.cpu_worker), as a run makes them, over cold host KV
(hostkv.py)."""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch
from roofsim.executor.calibrate.hostkv import carve_kv_blocks, cold_kv_blocks, gather_rows, kv_block_bytes
from roofsim.executor.calibrate.link import stream_h2d

from roofsim.calibration import CopyPoint
from roofsim.specs.model import ModelSpec

MiB = 1024**2

# The CPU worker's idle time before each timed scan: in a run it idles between two layers' scans while the issuing
# thread sends the layer's output up, runs its MLP and the next layer's projections (about 2 ms), and its kernel
# threads fall asleep meanwhile; waking them costs the next scan, so a scan after an idle gap takes longer than
# one back to back.
SCAN_GAP_S = 2e-3

CPU_ATTENTION_GROUPS = (1, 2, 4, 7, 8)  # MHA, and the GQA groups of the shipped models

# KV heads in one CPU slot: one where the plan's slot size does not divide its CPU heads
SLOT_HEADS = (1, 2, 4, 8)
SLOT_TOKENS = (8193, 32769, 65537, 131073)  # a decode step's length: never a multiple of the key ranges


def expected_s(times: list[float]) -> float:
    """The expected time of a call, for a step that sums many: the mean, without the slowest 5% (a rare stall of
    the host's CPUs, hundreds of times a call, would otherwise stand for the whole table). Not the median: the
    CPU scan's times are skewed (a long tail above the median), and a decode step pays the mean."""
    kept = sorted(times)[: max(1, int(len(times) * 0.95))]
    return statistics.fmean(kept)


def timed_scans(
    q: torch.Tensor, calls: list[list[torch.Tensor]], length: int, out: torch.Tensor, gap_s: float = 0.0
) -> list[float]:
    """Seconds of each of `calls`: one layer's CPU decode attention (attend_host, head_dim from q) over that call's
    host blocks, one after another on the calling thread (run it on the CPU worker, as the executor does), each
    after `gap_s` idle (SCAN_GAP_S: as in a run)."""
    from roofsim.executor.cpu_decode import attend_host

    times = []
    for blocks in calls:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        attend_host(q, blocks, length, q.shape[-1] ** -0.5, out)
        times.append(time.perf_counter() - t0)
    return times


def cpu_attention_slots(model: ModelSpec, cold_bytes: int = 1 << 30) -> dict[int, dict[int, list[CopyPoint]]]:
    """One CPU slot's share of a layer's CPU decode attention, as the executor makes it (attend_host over that
    slot's host block, on the worker, cut into key ranges by its threads), by GQA group (CPU_ATTENTION_GROUPS and
    the model's), KV heads in the slot (SLOT_HEADS) and tokens (SLOT_TOKENS): its rate depends on all three, not only
    on the bytes. Blocks are carved from one filled region and cycled, so each call reads RAM; each call follows
    SCAN_GAP_S idle, as in a run, and a shape's time is its calls' expected_s."""
    from roofsim.executor.cpu_worker import on_worker

    d = model.head_dim
    largest = max(SLOT_TOKENS) * 2 * max(SLOT_HEADS) * d * 2
    region = torch.empty(max(cold_bytes, 2 * largest) // 2, dtype=torch.bfloat16)
    region.normal_()
    out: dict[int, dict[int, list[CopyPoint]]] = {}
    for g in sorted({*CPU_ATTENTION_GROUPS, model.group}):
        for h in SLOT_HEADS:
            q = torch.randn(1, h * g, 1, d, dtype=torch.bfloat16)
            o = torch.empty_like(q)
            for L in SLOT_TOKENS:
                blocks = carve_kv_blocks(region, h, L, d, cold_bytes)
                calls = partial(timed_scans, q, [[b] for b in blocks], L, o, gap_s=SCAN_GAP_S)
                on_worker(calls)  # the kernel's first calls at this shape
                seconds = expected_s(on_worker(calls) + on_worker(calls))
                nbytes = blocks[0].numel() * blocks[0].element_size()
                out.setdefault(g, {}).setdefault(h, []).append(CopyPoint(nbytes=nbytes, seconds=seconds))
    return out


def cpu_attention_point(
    model: ModelSpec,
    heads: int,
    L: int,
    cold_bytes: int = 1 << 30,
    beside_h2d: bool = False,
    group: int | None = None,
    bufs: list[torch.Tensor] | None = None,
) -> tuple[CopyPoint, float | None]:
    """One layer's CPU decode attention over `heads` KV heads of L tokens, as the executor makes it: on its CPU
    worker thread (and that thread's thread count), over the host store's layout, in one TorchScript call
    (attend_host), with a cold cache: a decode step reads each layer's host KV once, so the timed calls cycle
    through cold_kv_blocks. Median seconds per call. With beside_h2d, pinned 256 MiB H2D copies run back to back
    meanwhile (link.stream_h2d), as a plan that streams its GPU heads' KV runs them beside the CPU's heads (both
    read host RAM); then also the H2D rate over those copies, else None. `group`: query heads per KV head (default
    the model's); `bufs`: cold blocks of `heads` heads and L tokens to reuse."""
    from roofsim.executor.cpu_worker import on_worker, worker

    d = model.head_dim
    q = torch.randn(1, heads * (group or model.group), 1, d, dtype=torch.bfloat16)
    bufs = bufs or cold_kv_blocks(heads, L, d, cold_bytes)
    size = bufs[0].numel() * bufs[0].element_size()
    out = torch.empty_like(q)

    calls = partial(timed_scans, q, [[b] for b in bufs], L, out)
    on_worker(calls)  # first touch, the kernel's first call
    if not beside_h2d:
        return CopyPoint(nbytes=size, seconds=statistics.median(on_worker(calls) + on_worker(calls))), None
    n = 256 * MiB
    src = torch.empty(n, dtype=torch.uint8, pin_memory=True).fill_(1)
    times, copies = [], 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(2):
        job = worker().submit(calls)
        copies += stream_h2d(src, job.done)
        times += job.result()
    rate = copies * n / (time.perf_counter() - t0) / 1e9
    return CopyPoint(nbytes=size, seconds=statistics.median(times)), rate


def cpu_attention_groups(model: ModelSpec, L: int = 65536) -> dict[int, CopyPoint]:
    """CPU decode attention over the same cold KV (half the model's KV heads, L tokens) with G query heads per KV
    head, for each G of CPU_ATTENTION_GROUPS and the model's: the kernel's rate depends on G."""
    heads = model.n_kv_heads // 2 or 1
    bufs = cold_kv_blocks(heads, L, model.head_dim)
    return {
        g: cpu_attention_point(model, heads, L, group=g, bufs=bufs)[0]
        for g in sorted({*CPU_ATTENTION_GROUPS, model.group})
    }


def cpu_gather_gbps(
    model: ModelSpec, tokens: int = 65536, fraction: float = 0.2, cold_bytes: int = 1 << 30
) -> float:
    """sparse_fetch's gather: a fifth of a layer's tokens (the plan's default), per KV head, from the token-major
    host block into a pinned buffer, as one index_select (executor/sparse.py). Each call reads another layer's
    block, as a decode step does, so the timed calls cycle through blocks of `cold_bytes` together with fresh
    indices each (one block gathered again would come from the last-level cache and overstate the rate). Bytes
    read plus written per second (G), from the median call."""
    hk, d = model.n_kv_heads, model.head_dim
    n = int(tokens * fraction)
    blocks = cold_kv_blocks(hk, tokens, d, cold_bytes)
    picks = [gather_rows(tokens, n, hk) for _ in blocks]
    out = torch.empty(hk * n * 2, d, dtype=torch.bfloat16, pin_memory=torch.cuda.is_available())
    torch.index_select(blocks[0].view(-1, d), 0, picks[0], out=out)  # first call
    times = []
    for _ in range(2):
        for b, r in zip(blocks, picks, strict=True):
            t0 = time.perf_counter()
            torch.index_select(b.view(-1, d), 0, r, out=out)
            times.append(time.perf_counter() - t0)
    return 2 * out.numel() * out.element_size() / statistics.median(times) / 1e9


def cpu_gather_by_region_gbps(
    model: ModelSpec,
    tokens: int = 65536,
    fraction: float = 0.2,
    small: int = 1 << 30,
    large: int = 8 << 30,
    rounds: int = 3,
) -> dict[int, float]:
    """cpu_gather_gbps's gather from the blocks of one filled region of `small` bytes and of one of `large` bytes,
    the two timed call by call in turn (a spell of the host weighs on both). A run gathers from its host store, one
    allocation of every layer's KV (tens of GB), whose page tables outgrow the caches that hold a 1 GiB region's; a
    lower rate over the large region is the page walks' price. Median bytes read plus written per second (G), by
    region bytes (each region holds at least two of the model's blocks, the large one four). Recorded beside the
    profile, not fitted into it."""
    hk, d = model.n_kv_heads, model.head_dim
    n = int(tokens * fraction)
    block = kv_block_bytes(hk, tokens, d)
    regions = {}
    # at least two blocks to cycle through in the small region, and more in the large one
    for size in (max(small, 2 * block), max(large, 4 * block)):
        region = torch.empty(size // 2, dtype=torch.bfloat16)
        region.fill_(1.0)  # faults every page in
        regions[size] = carve_kv_blocks(region, hk, tokens, d, size)
    picks = [gather_rows(tokens, n, hk) for _ in range(4)]
    out = torch.empty(hk * n * 2, d, dtype=torch.bfloat16, pin_memory=torch.cuda.is_available())
    for blocks in regions.values():
        torch.index_select(blocks[0].view(-1, d), 0, picks[0], out=out)  # first call
    times: dict[int, list[float]] = {size: [] for size in regions}
    calls = max(len(b) for b in regions.values())
    for r in range(rounds):
        for i in range(calls):
            for size, blocks in regions.items():
                src = blocks[i % len(blocks)].view(-1, d)
                t0 = time.perf_counter()
                torch.index_select(src, 0, picks[(r + i) % len(picks)], out=out)
                times[size].append(time.perf_counter() - t0)
    nbytes = 2 * out.numel() * out.element_size()
    return {size: nbytes / statistics.median(t) / 1e9 for size, t in times.items()}


def memcpy_gbps(n: int = 1 << 30) -> float:
    """Host memcpy of n bytes, three times: bytes read plus written per second (G). Both buffers are written first,
    so that the timed copies pay no first-touch page faults."""
    a = torch.empty(n, dtype=torch.uint8)
    b = torch.empty(n, dtype=torch.uint8)
    a.fill_(1)
    b.fill_(0)
    t0 = time.perf_counter()
    for _ in range(3):
        b.copy_(a)
    return 3 * 2 * n / (time.perf_counter() - t0) / 1e9


def matmul_tflops(n: int = 4096) -> float:
    """One fp32 n x n CPU matmul after an untimed one: FLOPs per second (T)."""
    m = torch.randn(n, n)
    m @ m
    t0 = time.perf_counter()
    m @ m
    return 2 * n**3 / (time.perf_counter() - t0) / 1e12
