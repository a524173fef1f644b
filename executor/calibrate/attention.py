"""Attention through the executor's own kernels (roofsim.executor.attention: FlashAttention-2 with its LSE, a chunk
split into past and causal parts merged in fp32), at the shapes plans run: the GPU time of prefill and decode calls
(CUDA events), and the host time a call costs (a new past length's first call, a chunk's call beside a decode
call's, one call and a streamed unit's call in a decode step).

An efficiency measured on another SDPA backend would not hold for the executor: every timing here goes through the
same attend/attend_parts the executor's cache calls."""

from __future__ import annotations

import statistics
from contextlib import ExitStack

import torch
from roofsim.executor.calibrate.host import time_gauges, tiny_decoding, trimmed_mean
from roofsim.executor.timing import QUEUE_CYCLES, cuda_time_s, device_sync, wall_s

from roofsim.calibration import CopyPoint, FlopPoint
from roofsim.specs.model import ModelSpec

# Chunk-after-a-past calls of few query rows, as the planner's short chunks and one-head slots make them (KV heads,
# 0 for the model's all; chunk; past): a call's efficiency follows its GQA-folded query rows (whatever its heads and
# chunk), and falls with fewer rows. They give efficiency.attention_rows. Each at two pasts: a call has a fixed part,
# so the same rows run more efficiently after a long past than after a short one, and a long prompt's chunks attend
# pasts across that range; the table takes the median of the two.
SHORT_PREFILL_CALLS = tuple((h, C, P) for h, C in ((1, 2048), (1, 4096), (0, 2048)) for P in (24576, 98304))


def chunk_call(heads: int, group: int, head_dim: int, C: int, P: int) -> tuple[float, float]:
    """(seconds, FLOPs) of the executor's attention call of a C-token chunk after P cached keys over `heads` KV
    heads of `group` query heads each (attend_parts over chunk_parts, CUDA-event timed behind a sleeping kernel so
    that the host's issue is not in it, upper median of 3): q as the model hands it over ([B, C, H, D] transposed),
    K/V as the cache lays them out (token-major)."""
    from roofsim.executor.attention import attend_parts, chunk_parts, kv_views

    q = torch.randn(1, C, heads * group, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    buf = torch.randn(P + C, 1, 2, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = kv_views(buf, 0, P + C)
    t = cuda_time_s(
        lambda: attend_parts(q, chunk_parts(k, v, P, C), head_dim**-0.5), repeat=3, sleep_cycles=QUEUE_CYCLES
    )
    return t, 4.0 * heads * group * head_dim * C * (P + (C + 1) / 2)


def attention_points(model: ModelSpec) -> tuple[list[FlopPoint], list[FlopPoint], list[CopyPoint]]:
    """(prefill, short prefill, decode) points through the executor's own kernels: prefill calls of whole layers
    and one-KV-head slots, a chunk alone and after a cached past (chunk_call); SHORT_PREFILL_CALLS; decode calls
    (one query token) over 4K, 32K and 128K keys with the KV bytes they read."""
    from roofsim.executor.attention import attend, kv_views, race_heads, race_prefill
    from roofsim.executor.cache import Shape

    hq, hk, d = model.n_heads, model.n_kv_heads, model.head_dim
    g = hq // hk
    scale = d**-0.5
    # the choices a resident plan's warm-up makes at 128K in 16K chunks (the kernel, one call or one per KV head),
    # so that the whole-layer calls below are timed as such a run makes them
    shape = Shape(model.n_layers, hq, hk, d, hq * d, 1, torch.bfloat16, torch.device("cuda"))
    race_prefill(shape, 16384, hk, 131072)
    race_heads(shape, 16384, hk, 131072)
    prefill, short, decode = [], [], []
    shorts = [(h or hk, C, P) for h, C, P in SHORT_PREFILL_CALLS]
    for heads, C, P in (
        (hk, 8192, 0),
        (hk, 8192, 24576),
        (hk, 16384, 49152),
        (1, 8192, 24576),
        (1, 16384, 49152),
        *shorts,
    ):
        t, flops = chunk_call(heads, g, d, C, P)
        point = FlopPoint(
            label=f"executor prefill {heads} kv heads, {C} after {P}",
            flops=flops,
            seconds=t,
            rows=heads * g * C if P else None,
        )
        (short if (heads, C, P) in shorts else prefill).append(point)
    for L in (4096, 32768, 131072):
        q = torch.randn(1, 1, hq, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k, v = kv_views(torch.randn(L, 1, 2, hk, d, device="cuda", dtype=torch.bfloat16), 0, L)
        t = cuda_time_s(lambda q=q, k=k, v=v: attend(q, k, v, causal=False, scale=scale))
        decode.append(CopyPoint(nbytes=2 * k.numel() * 2, seconds=t))
    return prefill, short, decode


def decode_replay_points(model: ModelSpec, lengths=(4096, 32768, 131072)) -> list[CopyPoint]:
    """The decode kernel a replayed step runs (decode_attend, once pick_decode_kernel chose it) over `lengths` keys
    of a token-major slot of the model's KV heads, batch 1, the GPU asleep while the host queues it: the KV bytes
    read and the GPU seconds."""
    from roofsim.executor import attention as executor_attention
    from roofsim.executor.attention import decode_attend, kv_views, pick_decode_kernel

    hq, hk, d = model.n_heads, model.n_kv_heads, model.head_dim
    scale = d**-0.5
    out = []
    chosen = dict(executor_attention._decode_choice)  # the timings after these see the choice they saw before
    try:
        with torch.no_grad():
            for L in lengths:
                K, V = kv_views(torch.randn(L, 1, 2, hk, d, device="cuda", dtype=torch.bfloat16), 0, L)
                q = torch.randn(1, hq, 1, d, device="cuda", dtype=torch.bfloat16)
                pick_decode_kernel(q, K, V, L, scale)
                n_keys = torch.full((1,), L, dtype=torch.int32, device="cuda")
                t = cuda_time_s(
                    lambda q=q, K=K, V=V, n=n_keys: decode_attend(q, K, V, n, scale),
                    sleep_cycles=QUEUE_CYCLES,
                )
                out.append(CopyPoint(nbytes=2 * L * hk * d * 2, seconds=t))
    finally:
        executor_attention._decode_choice.clear()
        executor_attention._decode_choice.update(chosen)
    return out


# the head dims of the models roofsim ships (Phi-3: 96, Gemma-3-12B: 256, gpt-oss: 64)
HEAD_DIMS = (64, 96, 128, 256)


def head_dim_points(model: ModelSpec, C: int = 8192, P: int = 24576) -> dict[int, FlopPoint]:
    """The executor's chunk-after-a-past call at `model`'s KV heads and group, a C-token chunk after P keys, at
    each of HEAD_DIMS and the model's own head dim: the same rows at every head dim, so what differs between them
    is the kernel's rate at that head dim (efficiency.attention_head_dim)."""
    g = model.n_heads // model.n_kv_heads
    out = {}
    for d in sorted({*HEAD_DIMS, model.head_dim}):
        t, flops = chunk_call(model.n_kv_heads, g, d, C, P)
        out[d] = FlopPoint(label=f"executor prefill head dim {d}, {C} after {P}", flops=flops, seconds=t)
    return out


def attention_new_shape_s(model: ModelSpec, device: str = "cuda", chunk: int = 8192, heads: int = 1) -> float:
    """Seconds the executor's prefill attention spends on its first call at a past length it has not attended
    before, beyond the same call repeated: cuDNN's fused attention (when it wins the kernel race) builds an
    execution plan per shape, and each prefill chunk's past is a new key length. Median over three new lengths,
    after a call that makes the race; wall time with the device synchronised around each call (timing.wall_s)."""
    from roofsim.executor.attention import attend_parts, chunk_parts, kv_views

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g, d = model.n_heads // model.n_kv_heads, model.head_dim
    q = torch.randn(1, chunk, heads * g, d, device=dev, dtype=dtype).transpose(1, 2)
    sync = device_sync(dev)

    def call(kv, P):
        k, v = kv_views(kv, 0, P + chunk)
        return wall_s(lambda: attend_parts(q, chunk_parts(k, v, P, chunk), d**-0.5), sync)

    kv = torch.randn(5 * chunk + 3, 1, 2, heads, d, device=dev, dtype=dtype)
    call(kv, chunk)  # the race, and the kernels' first loading
    extra = []
    for P in (2 * chunk + 1, 3 * chunk + 2, 4 * chunk + 3):
        cold = call(kv, P)
        warm = min(call(kv, P) for _ in range(2))
        extra.append(cold - warm)
    return statistics.median(extra)


def prefill_call_extra_s(model: ModelSpec, device: str = "cuda", chunk: int = 256, past: int = 1024) -> float:
    """Host seconds an attention call of the executor over a chunk after a past adds to a decode call's: the
    chunk's own causal part, the GQA repeat of its K/V, the merge of the two by their LSE in fp32 (attend_parts over
    chunk_parts). One KV head at the model's head_dim and group, so through the kernels a run uses (the chunk has
    _LONG query rows: the prefill race's winner), at shapes where the GPU work is microseconds, so that calls issued
    back to back run at the host's pace; the same past every time (a new one costs attention_shape_us, apart).
    Median over five batches of the per-call time of the chunk's calls less a decode call's over the same keys."""
    from roofsim.executor.attention import attend_parts, chunk_parts, kv_views

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g, d = model.n_heads // model.n_kv_heads, model.head_dim
    kv = torch.randn(past + chunk, 1, 2, 1, d, device=dev, dtype=dtype)
    k, v = kv_views(kv, 0, past + chunk)
    queries = {C: torch.randn(1, C, g, d, device=dev, dtype=dtype).transpose(1, 2) for C in (chunk, 1)}
    sync = device_sync(dev)

    def per_call(C: int, n: int = 40) -> float:
        P = past + chunk - C

        def calls() -> None:
            for _ in range(n):
                attend_parts(queries[C], chunk_parts(k, v, P, C), d**-0.5)

        return wall_s(calls, sync) / n

    per_call(chunk, 2), per_call(1, 2)  # the race, the kernels' first loading, cuDNN's plan for these shapes
    return statistics.median(max(0.0, per_call(chunk) - per_call(1)) for _ in range(5))


def attention_call_costs(
    device: str = "cuda",
    steps: int = 20,
    pace: list[float] | None = None,
    launch: list[float] | None = None,
    step_pace: list[float] | None = None,
) -> tuple[float, float, float]:
    """Host seconds of one attention call of the executor over GPU-resident KV, what a streamed unit's call
    adds (ring, staging, events, the issue of its two copies), and what an fp8 store adds to a call (the write of
    its new rows, the dequantisation): decode steps of a tiny 6-layer model (4 KV heads) under head_offload plans
    that differ only in their slots or their KV dtype, recorded as a measured run records them. At tiny shapes the
    step is the host's time, so the differences are the calls' host cost. `pace`, `launch` and `step_pace` get
    one sample of each host-pace gauge per round of the plans' steps (host.time_gauges)."""
    c = _call_costs(device, steps, pace, launch, step_pace)
    return c["call"], c["streamed"], c["fp8"]


def attention_calls_at_width(model, device: str = "cuda", steps: int = 20) -> dict[str, float]:
    """attention_call_costs' figures at `model`'s layer shapes and KV heads H (one slot of H heads against H one-head
    slots) instead of the tiny ones, and beside them: each fp8 extra apart for resident and streamed calls
    (fp8_resident, fp8_streamed), and what a head_offload layer of one resident slot of every head adds to the
    resident plan's layer (layer_over_resident: the offload cache's own per-layer path; the same kernels). On the
    CPU the tiny shapes serve (a step there is its compute)."""
    return _call_costs(device, steps, width=None if device != "cuda" else model, resident=True)


def _call_costs(
    device: str,
    steps: int,
    pace: list[float] | None = None,
    launch: list[float] | None = None,
    step_pace: list[float] | None = None,
    width=None,
    resident: bool = False,
) -> dict[str, float]:
    """The per-call host costs (and, with `resident`, the per-layer one) from decode steps of 6-layer models under
    plans that differ in one thing each, timed interleaved (see attention_call_costs); trimmed means."""
    from roofsim.families import HeadOffloadPlan, ResidentPlan

    layers = 6
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    H = 4 if width is None else width.n_kv_heads
    config = dict(layers=layers) if width is not None else dict(layers=layers, kv_heads=4, heads=8)
    plans = {
        "one": HeadOffloadPlan(kv_heads_per_slot=H, resident_slots=1),
        "four": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=H),
        "streamed": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=0),
        "four_fp8": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=H, kv_dtype="fp8_e4m3"),
        "streamed_fp8": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=0, kv_dtype="fp8_e4m3"),
        **({"resident": ResidentPlan()} if resident else {}),
    }
    with ExitStack() as stack:
        runs = {
            name: stack.enter_context(
                tiny_decoding(plan, device, dtype, steps, record=True, width=width, **config)
            )
            for name, plan in plans.items()
        }
        for _, cache in runs.values():
            cache.runtime.engine.synchronize()
            cache.runtime.rec.flush()
        # the plans' steps interleaved, so that each difference is taken within one spell of the host: one plan
        # timed after another would put a slow spell into one difference
        out: dict[str, list[float]] = {
            k: [] for k in ("call", "streamed", "fp8", "fp8_resident", "fp8_streamed")
        }
        if resident:
            out["layer_over_resident"] = []
        for _ in range(steps):
            time_gauges(device, pace, launch, step_pace)
            took = {}
            for name, (step, cache) in runs.items():
                took[name] = wall_s(step, cache.runtime.engine.synchronize)
                cache.runtime.rec.flush()
            out["call"].append((took["four"] - took["one"]) / (layers * (H - 1)))
            out["streamed"].append((took["streamed"] - took["four"]) / (layers * H))
            # resident and streamed calls alike: each fp8 call's extra, over both plans' 2 x H calls a layer
            fp8_resident = took["four_fp8"] - took["four"]
            fp8_streamed = took["streamed_fp8"] - took["streamed"]
            out["fp8"].append((fp8_resident + fp8_streamed) / (layers * 2 * H))
            out["fp8_resident"].append(fp8_resident / (layers * H))
            out["fp8_streamed"].append(fp8_streamed / (layers * H))
            if resident:
                out["layer_over_resident"].append((took["one"] - took["resident"]) / layers)
    return {k: max(0.0, trimmed_mean(v)) for k, v in out.items()}
