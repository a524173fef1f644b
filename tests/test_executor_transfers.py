"""Transfers of the executor: bytes moved per plan, the buffer-reuse race (CPU stand-in and, marked gpu, the
H100), contiguity of every host<->device copy, the pinned pool."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.cache import Ring  # noqa: E402
from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.engine import CpuEngine  # noqa: E402
from roofsim.executor.hostpool import HostPool  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402
from roofsim.executor.timing import copy_once_s  # noqa: E402

from roofsim.families import HeadOffloadPlan, LayerOffloadPlan  # noqa: E402

PROMPT, CHUNK, GEN = 37, 8, 4
ROW = 2 * 16 * 4  # K and V of one head, one token, fp32


@pytest.fixture(scope="module")
def llama():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    return model, ids, reference_logits(model, ids, CHUNK, GEN)


def _bytes(model, ids, plan):
    cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
    greedy_logits(model, cache, ids, CHUNK, GEN)
    cache.runtime.engine.synchronize()
    stats = cache.runtime.engine.stats
    cache.close()
    return stats["h2d"].bytes, stats["d2h"].bytes


def test_bytes_moved_are_what_the_plan_prices(llama):
    model, ids, _ = llama
    layers, heads = 2, 2
    P = [8 * i for i in range(math.ceil(PROMPT / CHUNK))] + list(range(PROMPT, PROMPT + GEN))
    C = [min(CHUNK, PROMPT - p) for p in P[:-GEN]] + [1] * GEN
    h2d = layers * heads * ROW * sum(P)
    # head_offload, incremental: every slot's history comes up; only the new tokens go down
    assert _bytes(model, ids, HeadOffloadPlan()) == (h2d, layers * heads * ROW * sum(C))
    # a resident slot moves nothing
    assert _bytes(model, ids, HeadOffloadPlan(resident_slots=1)) == (h2d // 2, layers * ROW * sum(C))
    # full write-back (transformers, HeadInfer): the whole slot goes down every step
    full = layers * heads * ROW * sum(p + c for p, c in zip(P, C, strict=True))
    assert _bytes(model, ids, LayerOffloadPlan(write_back="full")) == (h2d, full)


def test_write_back_tail_sends_one_copy_per_slot_every_n_tokens(llama):
    """write_back_tokens=3: each prefill chunk (>= 3 tokens) still goes down at once, but decode's tokens wait in
    the GPU tail and go down three at a time, one copy per slot; loads read only what the host holds, and the tail
    makes up the rest, so the logits stay exact. After flush() the host store holds every token."""
    from roofsim.executor.build import resident_copy

    model, ids, ref = llama
    layers, heads, chunks = 2, 2, math.ceil(PROMPT / CHUNK)
    cache = make_cache(model, HeadOffloadPlan(write_back_tokens=3), max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
        cache.runtime.engine.synchronize()
        d2h = cache.runtime.engine.stats["d2h"]
        # decode P = 37, 38 (tail), 39 (flushes 37..39), 40 (tail)
        assert d2h.bytes == layers * heads * ROW * (PROMPT + 3)
        assert d2h.copies == layers * heads * (chunks + 1)
        h2d = cache.runtime.engine.stats["h2d"].bytes
        P = [8 * i for i in range(chunks)] + [PROMPT, PROMPT, PROMPT, PROMPT + 3]
        assert h2d == layers * heads * ROW * sum(P)
        assert rel_err(got, ref) < 1e-5
        full = resident_copy(cache, model)  # flushes the tail, then reads the host store
        try:
            n = PROMPT + GEN
            for layer, copy in zip(cache.layers, full.layers, strict=True):
                assert layer.flushed == n
                for s in layer.slots:
                    assert torch.equal(s.host[:n], copy.slots[0].gpu[:n, :, :, s.h0 : s.h1])
            # the flushed store is the resident plan's: one more step over it gives stock logits
            nxt = ref[-1].argmax(-1, keepdim=True)
            a = model(nxt, past_key_values=full, use_cache=True, logits_to_keep=1).logits[:, -1]
        finally:
            full.close()
    finally:
        cache.close()
    from transformers import DynamicCache

    stock = DynamicCache(config=model.config)
    model.set_attn_implementation("sdpa")
    try:
        toks = torch.cat([ids, ref[:-1].argmax(-1).T, nxt], dim=1)
        b = model(toks, past_key_values=stock, use_cache=True).logits[:, -1]
    finally:
        model.set_attn_implementation("roofsim")
    assert rel_err(a.float(), b.float()) < 1e-4


def test_write_back_tail_needs_incremental_whole_slots():
    from roofsim.errors import UserError
    from roofsim.plan import plan_from_dict

    for bad in (
        {"family": "layer_offload", "write_back_tokens": 4},
        {"family": "head_offload", "write_back_tokens": 4, "token_block": 8},
    ):
        with pytest.raises(UserError, match="write_back_tokens"):
            plan_from_dict(bad)


def _race_pattern(engine, ring: Ring, host: torch.Tensor, steps: int) -> int:
    """HeadInfer's hazard, in the executor's own terms: fill a buffer, D2H it on the side stream, hand the buffer
    to the next fill. Returns how many host copies came out wrong."""
    for i in range(steps):
        b = i % ring.n
        if ring.guard:
            engine.wait(engine.compute, ring.release[b])
        ring.flat[b].fill_(float(i))
        done = engine.event(engine.compute)
        engine.wait(engine.d2h, done)
        engine.copy(engine.d2h, host[i], ring.flat[b])
        ring.release[b] = engine.event(engine.d2h)
    engine.synchronize()
    return sum(int(not bool((host[i] == i).all())) for i in range(steps))


def test_buffer_reuse_race_is_caught_on_the_cpu_stand_in():
    engine = CpuEngine()
    for guard, expect_bad in ((False, True), (True, False)):
        ring = Ring(2, 1024, torch.float32, "cpu")
        ring.guard = guard
        bad = _race_pattern(engine, ring, torch.empty(10, 1024), 10)
        assert (bad > 0) == expect_bad, (guard, bad)


def test_unguarded_ring_corrupts_the_host_store(llama):
    """Switch off the release-event wait in the runtime: the late D2H copies read overwritten buffers."""
    model, ids, ref = llama
    for guard in (False, True):
        cache = make_cache(model, HeadOffloadPlan(slot_buffers=2), max_tokens=PROMPT + GEN)
        cache.runtime.ring.guard = guard
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
        cache.close()
        assert (rel_err(got, ref) < 1e-5) == guard


def test_non_contiguous_copies_are_refused():
    engine = CpuEngine()
    src = torch.zeros(4, 8)[:, :4]
    with pytest.raises(ValueError, match="non-contiguous"):
        engine.copy(engine.h2d, torch.empty(4, 4), src)


def test_host_pool_blocks_are_page_aligned_and_exact():
    pool = HostPool(pinned=False)
    handles = [pool.reserve((5, 1, 2, 1, 16), torch.bfloat16) for _ in range(3)]
    pool.allocate()
    blocks = [pool.block(h, (5, 1, 2, 1, 16), torch.bfloat16) for h in handles]
    assert all(b.data_ptr() % 4096 == 0 and b.is_contiguous() for b in blocks)
    assert pool.nbytes == 3 * 4096 and pool.pinned_bytes == 0
    for b in blocks:
        b.zero_()
    blocks[0].fill_(1)  # blocks do not overlap: the others stay zero
    assert blocks[1].abs().sum() == 0 and blocks[2].abs().sum() == 0
    assert len({b.data_ptr() for b in blocks}) == 3


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_gpu_buffer_reuse_race():
    """On the GPU: the allocator pattern of HeadInfer / transformers 5.17 (free a buffer a side-stream D2H still
    reads, allocate the same size) corrupts the host copy without record_stream; the executor's guarded ring
    never does. The unguarded count is reported, the guarded one must be zero."""
    from roofsim.executor.engine import CudaEngine

    n = 32 * 2**20  # 128 MiB of fp32
    host = torch.empty(n, pin_memory=True)
    side = torch.cuda.Stream()
    bad_raw = 0
    for i in range(10):
        buf = torch.full((n,), float(i), device="cuda")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            host.copy_(buf, non_blocking=True)
        del buf  # no record_stream: the allocator may hand the block out while the copy reads it
        torch.full((n,), -1.0, device="cuda")
        side.synchronize()
        bad_raw += int(not bool((host[:: 2**16] == i).all()))
    engine = CudaEngine()
    ring = Ring(2, n, torch.float32, "cuda")
    bad = _race_pattern(engine, ring, torch.empty(10, n, pin_memory=True), 10)
    print(f"unguarded allocator pattern corrupted {bad_raw}/10 host copies; guarded ring {bad}/10")
    assert bad == 0


@pytest.mark.gpu
@cuda
def test_gpu_pool_is_pinned_and_exact_size():
    pool = HostPool(pinned=True)
    h = pool.reserve((1000, 1, 2, 1, 128), torch.bfloat16)
    pool.allocate()
    block = pool.block(h, (1000, 1, 2, 1, 128), torch.bfloat16)
    assert block.is_contiguous() and pool.pinned_bytes == -(-1000 * 512 // 4096) * 4096
    pool.close()
    # registered memory copies at pinned speed (torch's is_pinned() only knows its own allocator's blocks)
    pool = HostPool(pinned=True)
    n = 256 * 2**20
    h = pool.reserve((n,), torch.uint8)
    pool.allocate()
    host, dev = pool.block(h, (n,), torch.uint8), torch.empty(n, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    gbps = n / copy_once_s(dev, host) / 1e9
    pool.close()
    assert gbps > 20, f"{gbps:.1f} GB/s: the pool is not pinned (pageable copies run near 9 GB/s)"


@pytest.mark.gpu
@cuda
def test_gpu_device_alias_reads_host_memory_without_a_copy():
    """cpu_attention's merge reads the CPU's output through a device alias of its pinned buffer: a kernel sees what
    the host wrote after the alias was made, and the alias is the host buffer's memory, not a copy of it."""
    from roofsim.executor.hostpool import device_alias

    host = torch.zeros((1, 4, 1, 64), dtype=torch.bfloat16, pin_memory=True)
    dev = device_alias(host, torch.device("cuda"))
    assert dev.is_cuda and dev.shape == host.shape and dev.dtype == host.dtype
    assert dev.data_ptr() == host.data_ptr()
    host.copy_(torch.arange(256, dtype=torch.bfloat16).view(host.shape))
    got = torch.cat([torch.zeros_like(dev), dev], dim=1).cpu()
    assert torch.equal(got[:, 4:], host)
    with pytest.raises(ValueError, match="pinned"):
        device_alias(torch.zeros(8, dtype=torch.bfloat16), torch.device("cuda"))


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3"])
def test_a_ring_buffer_is_released_only_after_its_write_back_on_the_compute_stream(llama, kv_dtype):
    """layer_offload full sends the layer back on the compute stream (transformers' order). The event that frees
    the ring buffer for the next H2D, and marks the host slot written, must come after that copy was queued:
    on a GPU an earlier event lets the next layer's H2D overwrite the buffer while the copy still reads it (the
    CPU stand-in runs compute-stream copies at once, so only the order of the calls can show it)."""
    model, ids, _ = llama
    cache = make_cache(model, LayerOffloadPlan(write_back="full", kv_dtype=kv_dtype), max_tokens=PROMPT + GEN)
    rt, eng = cache.runtime, cache.runtime.engine
    log: list[tuple] = []
    copy, event, release = eng.copy, eng.event, rt.release

    def logged_copy(stream, dst, src, direction=None):
        log.append(("copy", stream is eng.compute and direction == "d2h"))
        return copy(stream, dst, src, direction)

    def logged_event(stream):
        ev = event(stream)
        log.append(("event", id(ev)))
        return ev

    def logged_release(unit, ev):
        log.append(("release", id(ev)))
        return release(unit, ev)

    eng.copy, eng.event, rt.release = logged_copy, logged_event, logged_release
    greedy_logits(model, cache, ids, CHUNK, GEN)
    cache.close()
    made = {key: i for i, (what, key) in enumerate(log) if what == "event"}
    releases = [i for i, (what, _) in enumerate(log) if what == "release"]
    assert releases
    for r in releases:
        last_d2h = max(i for i in range(r) if log[i] == ("copy", True))
        assert made[log[r][1]] > last_d2h, log[last_d2h : r + 1]
