"""`roofsim calibrate`: micro-benchmarks on the GPU machine (a few minutes), never a whole model or plan.

Pinned and pageable copies by size in each direction and both at once, many small copies, GEMMs at the model's
shapes, SDPA prefill and decode attention by context length, host-sync cost, one decoder layer at tiny shapes
(the framework's per-kernel cost, alone and beside the CPU worker's scan), CPU RAM bandwidth, CPU attention and CPU
matmul. Results are fitted and written by roofsim.calibration.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from roofsim.executor.launchpace import launch_us, step_us

from roofsim.calibration import BatchPoint, CopyPoint, FlopPoint, Measurements
from roofsim.hostpace import loop_us
from roofsim.specs.model import ModelSpec

KiB, MiB = 1024, 1024**2


QUEUE_CYCLES = (
    20_000_000  # ~10 ms of torch.cuda._sleep at H100/H200 clocks: longer than any timed call's issue
)


def _cuda_time(fn: Callable[[], None], repeat: int = 5, warmup: int = 2, queued: bool = False) -> float:
    """Median seconds of fn on the current stream, timed with CUDA events. queued: the GPU sleeps while the host
    issues fn, so the events time its kernels alone, as a run's prefill times them with the host ahead of the GPU;
    without it a ~1 ms call also times the host's lead to its first kernel (on an H200 guest one call of the same
    shape timed 0.49 ms and, on a slower host, 0.86: validation/results/h200-s17/README.md)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if queued:
            torch.cuda._sleep(QUEUE_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_once_s(dst: torch.Tensor, src: torch.Tensor) -> float:
    """Seconds of one copy of src into dst, timed by CUDA events with no warm-up copy (one between a CPU write of
    src and the timed copy would change what is timed: h2d_after_gather)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    dst.copy_(src, non_blocking=True)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _wall_time(fn: Callable[[], None], repeat: int = 5) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def fingerprint() -> dict:
    from roofsim.executor.cpu_attn import worker_threads

    props = torch.cuda.get_device_properties(0)
    fp = {
        "gpu_name": props.name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_worker_threads": worker_threads(),
    }
    try:
        import transformers

        fp["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import subprocess

        q = "driver_version,pcie.link.gen.current,pcie.link.width.current"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")[0]
        driver, gen, width = (x.strip() for x in out.split(","))
        fp.update(driver=driver, pcie_gen=int(gen), pcie_width=int(width))
    except Exception:  # noqa: BLE001 - nvidia-smi missing or unparsable: the fingerprint says less
        pass
    return fp


@contextmanager
def _store_bytes(n: int, pinned: bool = True):
    """n host bytes as the executor's KV store holds them (executor/hostpool.py): ordinary memory, written, then
    registered with cudaHostRegister; pageable: ordinary memory, written. An H200 guest's isolated copies from a
    never-written torch pinned buffer ran at 49.5 GB/s where the same machine's runs streamed their store at 55
    (validation/results/h200-s18)."""
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


def _copies(direction: str, sizes: list[int], pinned: bool = True) -> list[CopyPoint]:
    out = []
    for n in sizes:
        with _store_bytes(n, pinned) as host:
            dev = torch.empty(n, dtype=torch.uint8, device="cuda")
            if direction == "h2d":
                fn = lambda d=dev, h=host: d.copy_(h, non_blocking=True)  # noqa: E731
            else:
                fn = lambda d=dev, h=host: h.copy_(d, non_blocking=True)  # noqa: E731
            out.append(CopyPoint(nbytes=n, seconds=_cuda_time(fn, repeat=7 if n < 64 * MiB else 3)))
            del dev
    return out


def _back_to_back(total: int, copies: int) -> BatchPoint:
    with _store_bytes(total) as host:
        dev = torch.empty(total, dtype=torch.uint8, device="cuda")
        size = total // copies
        pairs = [(dev[i * size : (i + 1) * size], host[i * size : (i + 1) * size]) for i in range(copies)]

        def run():
            for d, h in pairs:
                d.copy_(h, non_blocking=True)

        return BatchPoint(copies=copies, nbytes_each=size, seconds=_wall_time(run, repeat=3))


def _bidirectional(n: int = 256 * MiB) -> float:
    with _store_bytes(n) as h_up, _store_bytes(n) as h_down:
        d_up, d_down = (torch.empty(n, dtype=torch.uint8, device="cuda") for _ in range(2))
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

        def run():
            with torch.cuda.stream(s1):
                d_up.copy_(h_up, non_blocking=True)
            with torch.cuda.stream(s2):
                h_down.copy_(d_down, non_blocking=True)

        return 2 * n / _wall_time(run, repeat=3) / 1e9


def _d2d_gbps(n: int = 1 << 30) -> float:
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty(n, dtype=torch.uint8, device="cuda")
    return 2 * n / _cuda_time(lambda: dst.copy_(src)) / 1e9


def layer_gemm_shapes(model: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, k, n) of the GEMMs one stock transformers decoder layer runs, unfused as the model runs them."""
    h, inter = model.hidden, model.intermediate
    if model.fused_qkv:
        shapes = [("qkv", h, model.q_dim + 2 * model.kv_dim)]
    else:
        shapes = [("q", h, model.q_dim), ("k", h, model.kv_dim), ("v", h, model.kv_dim)]
    shapes.append(("o", model.q_dim, h))
    if model.mlp == "gated":
        fused = model.family == "phi3"
        shapes += [("gate_up", h, 2 * inter)] if fused else [("gate", h, inter), ("up", h, inter)]
    else:
        shapes.append(("fc1", h, inter))
    shapes.append(("down" if model.mlp == "gated" else "fc2", inter, h))
    return shapes


def _gemms(model: ModelSpec) -> list[FlopPoint]:
    """Every GEMM of one decoder layer at prefill chunk sizes; the fit takes their total FLOPs over total time."""
    out = []
    for rows in (4096, 16384):
        for name, k, n in layer_gemm_shapes(model):
            a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)  # nn.Linear's weight layout
            t = _cuda_time(lambda a=a, b=b: torch.nn.functional.linear(a, b))
            out.append(FlopPoint(label=f"layer {name} {rows}x{k}x{n}", flops=2.0 * rows * k * n, seconds=t))
    return out


def vector_ops(model: ModelSpec, device: str = "cuda", tokens: int = 16384) -> list[CopyPoint]:
    """A decoder layer's elementwise kernels at a prefill chunk of `tokens`, as stock transformers runs them (its
    fp32 RMSNorm module, its rotary on the projections' strided views, SiLU(gate) * up, a residual add), each
    timed with the HBM bytes roofsim's operator model (ops.py) counts for it: the fit prices "vector" operators
    at their rate, which need not be a device-to-device copy's (a prefill layer's span of these and its GEMMs took
    as long on the H200 as on the H100, whose HBM is slower: validation/results/h200/README.md)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    from roofsim import ops

    counted = {
        op.name: op
        for op in ops.pre_attention_ops(model, tokens, 1) + ops.post_attention_ops(model, tokens, 1)
    }
    kw = dict(device=device, dtype=torch.bfloat16)
    C, h, d = tokens, model.hidden, model.head_dim
    x, y = torch.randn(1, C, h, **kw), torch.randn(1, C, h, **kw)
    cases = {"residual_1": lambda: x + y}
    if model.norm == "rms":
        norm = LlamaRMSNorm(h).to(**kw)
        cases["input_norm"] = lambda: norm(x)
    if model.positions == "rope":
        q = torch.randn(1, C, model.n_heads, d, **kw).transpose(1, 2)  # the projection's view, as HF attends
        k = torch.randn(1, C, model.n_kv_heads, d, **kw).transpose(1, 2)
        cos, sin = torch.randn(1, C, d, **kw), torch.randn(1, C, d, **kw)
        cases["rope"] = lambda: apply_rotary_pos_emb(q, k, cos, sin)
    if model.mlp == "gated":
        gate, up = torch.randn(1, C, model.intermediate, **kw), torch.randn(1, C, model.intermediate, **kw)
        cases["act_mul"] = lambda: torch.nn.functional.silu(gate) * up
    timer = _cuda_time if device == "cuda" else _wall_time
    with torch.no_grad():
        return [
            CopyPoint(nbytes=int(float(counted[name].hbm_bytes)), seconds=timer(fn))
            for name, fn in cases.items()
        ]


# Chunk-after-a-past calls of few query rows, as the planner's short chunks and one-head slots make them (KV heads,
# 0 for the model's all; chunk; past): on the H200 a one-head call of a 2048-token chunk ran at 0.23 of the bf16
# peak against 0.56 for the calls above, and calls of equal GQA-folded rows ran alike whatever their heads and chunk
# (validation/results/h200-s15/probes/call6-shapes/prefill_attn_shapes.json). They give efficiency.attention_rows.
# Each at two pasts: the same rows ran 20-35% more efficiently after 98304 keys than after 24576 (a fixed part per
# call), and a long prompt's chunks attend pasts across that range; the table takes the median of the two.
SHORT_PREFILL_CALLS = tuple((h, C, P) for h, C in ((1, 2048), (1, 4096), (0, 2048)) for P in (24576, 98304))


def chunk_call(heads: int, group: int, head_dim: int, C: int, P: int) -> tuple[float, float]:
    """(seconds, FLOPs) of the executor's attention call of a C-token chunk after P cached keys over `heads` KV
    heads of `group` query heads each (attend_parts over chunk_parts, CUDA-event timed behind a sleeping kernel so
    that the host's issue is not in it, median of 3): q as the model
    hands it over ([B, C, H, D] transposed), K/V as the cache lays them out (token-major)."""
    from roofsim.executor.attention import attend_parts, chunk_parts, kv_views

    q = torch.randn(1, C, heads * group, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    buf = torch.randn(P + C, 1, 2, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = kv_views(buf, 0, P + C)
    t = _cuda_time(lambda: attend_parts(q, chunk_parts(k, v, P, C), head_dim**-0.5), repeat=3, queued=True)
    return t, 4.0 * heads * group * head_dim * C * (P + (C + 1) / 2)


def _attention(model: ModelSpec):
    """Attention through the executor's own kernels (roofsim.executor.attention: FlashAttention-2 with its LSE, a
    chunk split into past and causal parts merged in fp32), at the shapes plans run: whole layers and one-KV-head
    slots, chunks after a cached past, and decode. An efficiency measured on another SDPA backend would not hold
    for the executor (the first H100 campaign predicted prefill ~2x too fast that way)."""
    from roofsim.executor.attention import attend, kv_views

    hq, hk, d = model.n_heads, model.n_kv_heads, model.head_dim
    g = hq // hk
    scale = d**-0.5
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
        t = _cuda_time(lambda q=q, k=k, v=v: attend(q, k, v, causal=False, scale=scale))
        decode.append(CopyPoint(nbytes=2 * k.numel() * 2, seconds=t))
    return prefill, short, decode


def attention_new_shape_s(model: ModelSpec, device: str = "cuda", chunk: int = 8192, heads: int = 1) -> float:
    """Seconds the executor's prefill attention spends on its first call at a past length it has not attended
    before, beyond the same call repeated: cuDNN's fused attention (when it wins the kernel race) builds an
    execution plan per shape, and each prefill chunk's past is a new key length. Median over three new lengths,
    after a call that makes the race; wall time with the device synchronised around each call."""
    from roofsim.executor.attention import attend_parts, chunk_parts, kv_views

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g, d = model.n_heads // model.n_kv_heads, model.head_dim
    q = torch.randn(1, chunk, heads * g, d, device=dev, dtype=dtype).transpose(1, 2)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def call(kv, P):
        k, v = kv_views(kv, 0, P + chunk)
        sync()
        t0 = time.perf_counter()
        attend_parts(q, chunk_parts(k, v, P, chunk), d**-0.5)
        sync()
        return time.perf_counter() - t0

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

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def per_call(C: int, n: int = 40) -> float:
        P = past + chunk - C
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            attend_parts(queries[C], chunk_parts(k, v, P, C), d**-0.5)
        sync()
        return (time.perf_counter() - t0) / n

    per_call(chunk, 2), per_call(1, 2)  # the race, the kernels' first loading, cuDNN's plan for these shapes
    return statistics.median(max(0.0, per_call(chunk) - per_call(1)) for _ in range(5))


def _time_gauges(
    device: str, pace: list[float] | None, launch: list[float] | None, step: list[float] | None = None
) -> None:
    """One sample of each host-pace gauge asked for: roofsim.hostpace's loop, then roofsim.executor.launchpace's
    launches and its tiny decode step."""
    if pace is not None:
        pace.append(loop_us())
    if launch is not None:
        launch.append(launch_us(device))
    if step is not None:
        step.append(step_us(device))


@contextmanager
def _tiny_decoding(plan, device: str, dtype, steps: int, record: bool = False, width=None, **config):
    """A tiny stock Llama under `plan`, through the executor, with 16 prompt tokens prefilled and one decode step
    run to warm up: yields (step, cache), where step() runs one more decode step. width: a ModelSpec whose layer
    shapes (hidden, heads, MLP, family) the model takes instead of the tiny ones, at config["layers"] layers and a
    128-token vocabulary."""
    from roofsim.executor.build import make_cache
    from roofsim.executor.check import tiny_config
    from roofsim.executor.models import config_for_spec, random_model

    if width is None:
        hf_config = tiny_config("llama", **config)
    else:
        hf_config = config_for_spec(width)
        hf_config.num_hidden_layers = config["layers"]
        hf_config.vocab_size = 128
    model = random_model(hf_config, device, dtype, seed=0)
    cache = make_cache(model, plan, max_tokens=16 + steps + 8, record=record)
    if record:
        cache.runtime.rec.start()
    ids = torch.randint(0, 128, (1, 16), device=device)
    token = ids[:, -1:]

    @torch.no_grad()
    def step() -> None:
        model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)

    try:
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        step()  # warm-up step
        yield step, cache
    finally:
        cache.close()


def decode_layer_cost(
    device: str = "cuda",
    steps: int = 20,
    pace: list[float] | None = None,
    width: ModelSpec | None = None,
    launch: list[float] | None = None,
    step_pace: list[float] | None = None,
) -> tuple[float, ModelSpec, float]:
    """Seconds one decoder layer adds to a decode step's host issue, through the executor itself (stock
    transformers layer, the plan's cache, the registered attention, the recorder on as in a measured run's traced
    steps): the framework's per-layer cost, which bounds decode at short contexts. Measured as the difference
    between a 6-layer and a 2-layer model, so the embedding, the LM head and sampling cancel out; at tiny shapes,
    or with `width` at that model's layer shapes (a 128-token vocabulary): on an H200 guest a llama-3-8b layer
    issued in 1.17x the loop's time where a tiny one took 1.07x, and recording its spans added ~0.1x
    (validation/results/h200-s16/probes/layer-host-cost). Each step is timed from an idle device to the end of
    its issue (no sync inside the timing), so a GPU slower than the host at these shapes does not enter it. Third:
    the intercept, the seconds of a step outside its layers (the forward's preamble, embedding, final norm and LM
    head). `pace`, where given, gets the host's pace (roofsim.hostpace) timed once per pair of steps, and `launch`
    the launch pace (roofsim.executor.launchpace) right after it, and `step_pace` its tiny decode step after that."""
    from roofsim.plan import ResidentPlan

    if device != "cuda":
        width = (
            None  # on the CPU (tests) a step's issue is its compute: the model's shapes would time its GEMMs
        )
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with (
        _tiny_decoding(ResidentPlan(), device, torch.bfloat16, steps, True, width, layers=2) as (step2, c2),
        _tiny_decoding(ResidentPlan(), device, torch.bfloat16, steps, True, width, layers=6) as (step6, c6),
    ):
        # the two models' steps interleaved, so that a slower spell of the host (a guest's speed moves within
        # seconds: validation/results/h200/README.md) or of a busy CI machine weighs on both alike
        spent = {2: 0.0, 6: 0.0}
        sync()
        for _ in range(steps):
            _time_gauges(device, pace, launch, step_pace)
            for layers, step, cache in ((2, step2, c2), (6, step6, c6)):
                t0 = time.perf_counter()
                step()
                spent[layers] += time.perf_counter() - t0
                sync()
                cache.runtime.rec.flush()  # outside the timing, as a run flushes after its step's sync
                cache.runtime.rec.spans.clear()
    two, six = spent[2] / steps, spent[6] / steps
    per_layer = max(0.0, (six - two) / 4)
    if width is None:
        spec = ModelSpec(
            name="tiny-llama", source="roofsim calibrate", family="llama", n_layers=1, hidden=64, n_heads=4,
            n_kv_heads=2, head_dim=16, intermediate=128, vocab=128, max_positions=4096,
        )  # fmt: skip
    else:
        spec = width.model_copy(update={"n_layers": 1, "vocab": 128, "name": f"{width.name}-layer"})
    return per_layer, spec, max(0.0, two - 2 * per_layer)


def mean_tiny(samples: list[tuple[float, ModelSpec, float]]) -> tuple[float, ModelSpec, float]:
    """decode_layer_cost's (per layer, model, intercept) over several samples: the mean of each figure (a decode
    step pays the host's mean speed, and the guest's host moves between two levels ~1.7x apart)."""
    return (
        statistics.fmean(s[0] for s in samples),
        samples[0][1],
        statistics.fmean(s[2] for s in samples),
    )


def decode_layer_cost_beside_cpu(
    model: ModelSpec, device: str = "cuda", steps: int = 20, tokens: int = 32769, cold_bytes: int = 1 << 30
) -> float:
    """decode_layer_cost's seconds per layer while the CPU worker scans, back to back, one CPU slot of the model's
    group over cold host blocks (half its KV heads, `tokens` long), on its threads: cpu_attention's issuing thread
    launches the GPU heads' kernels beside that scan, and in the H200 campaign its decode steps lost most of their
    time in the GPU-side spans the host issues, not in the scan (validation/results/h200/README.md). The worker's
    loop stops after the timed steps."""
    import threading

    from roofsim.executor.cpu_attn import _worker

    heads = model.n_kv_heads // 2 or 1
    q = torch.randn(1, heads * model.group, 1, model.head_dim, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    blocks = [[b] for b in cold_kv_blocks(heads, tokens, model.head_dim, cold_bytes)]
    stop = threading.Event()

    def scans() -> None:
        while not stop.is_set():
            timed_scans(q, blocks, tokens, out)

    job = _worker().submit(scans)
    try:
        per_layer, _, _ = decode_layer_cost(device, steps, width=model)
    finally:
        stop.set()
        job.result()
    return per_layer


def worker_round_trips(job: Callable[[], None], n: int) -> list[float]:
    """Seconds of n hand-offs of `job` to the CPU worker, each from submit to its result back (after one untimed)."""
    from roofsim.executor.cpu_attn import _worker

    pool = _worker()
    pool.submit(job).result()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pool.submit(job).result()
        times.append(time.perf_counter() - t0)
    return times


def cpu_part_job() -> Callable[[], None]:
    """A job shaped like cpu_attention's CPU part less its scan: a completed event's wait, the span bookkeeping."""
    ev = torch.cuda.Event() if torch.cuda.is_available() else None
    if ev is not None:
        ev.record()
        torch.cuda.synchronize()
    marks: list[tuple[float, float]] = []

    def job() -> None:
        t0 = time.perf_counter()
        if ev is not None:
            ev.synchronize()
        marks.append((t0, time.perf_counter()))
        if len(marks) > 64:
            marks.clear()

    return job


def worker_round_trip_s(n: int = 500) -> float:
    """Median seconds from handing a job to the CPU worker to having its result back, for a job shaped like
    cpu_attention's CPU part less its scan (a completed event's wait, the span bookkeeping): the worker's wake-up
    and the issuing thread's, which every layer of a cpu_attention decode step pays on the CPU part's path beside
    the scan (on an H200 guest 35 us with the issuing thread idle, 70 us while another thread issues kernels:
    validation/results/h200-s15/probes/call8-handoff)."""
    return statistics.median(worker_round_trips(cpu_part_job(), n))


def _gpu_kernel_us(n: int = 400) -> float:
    """GPU time per tiny kernel when kernels are queued back to back: the host queues n adds while the GPU sleeps,
    then they run with no host in the way. A launch-bound eager step costs max(host dispatch, GPU work); this is
    the GPU side, kernel_us the host side."""
    x = torch.zeros(256, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # ~0.1 s at H100 clocks: far longer than queueing n kernels takes
        start.record()
        for _ in range(n):
            x.add_(1.0)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / n)
    return sorted(times)[1]


def attention_call_costs(
    device: str = "cuda",
    steps: int = 20,
    pace: list[float] | None = None,
    launch: list[float] | None = None,
    step_pace: list[float] | None = None,
) -> tuple[float, float]:
    """Host seconds of one attention call of the executor over GPU-resident KV, and what a streamed unit's call
    adds (ring, staging, events, the issue of its two copies): decode steps of a tiny 6-layer model (4 KV heads)
    under head_offload plans that differ only in their slots, recorded as a measured run records them. At tiny
    shapes the step is the host's time, so the differences are the calls' host cost."""
    from roofsim.plan import HeadOffloadPlan

    layers = 6
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    config = dict(layers=layers, kv_heads=4, heads=8)
    plans = {
        "one": HeadOffloadPlan(kv_heads_per_slot=4, resident_slots=1),
        "four": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=4),
        "streamed": HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=0),
    }
    with ExitStack() as stack:
        runs = {
            name: stack.enter_context(_tiny_decoding(plan, device, dtype, steps, record=True, **config))
            for name, plan in plans.items()
        }
        for _, cache in runs.values():
            cache.runtime.engine.synchronize()
            cache.runtime.rec.flush()
        # the three plans' steps interleaved, so that each difference is taken within one spell of the host (a
        # guest's speed moves between two levels ~1.7x apart within seconds: validation/results/h200-s12); one
        # plan timed after another put a slow spell into one difference (545 us per streamed call against 232)
        calls, streamed = [], []
        for _ in range(steps):
            _time_gauges(device, pace, launch, step_pace)
            took = {}
            for name, (step, cache) in runs.items():
                t0 = time.perf_counter()
                step()
                cache.runtime.engine.synchronize()
                took[name] = time.perf_counter() - t0
                cache.runtime.rec.flush()
            calls.append((took["four"] - took["one"]) / (layers * 3))
            streamed.append((took["streamed"] - took["four"]) / (layers * 4))
    return max(0.0, trimmed_mean(calls)), max(0.0, trimmed_mean(streamed))


def trimmed_mean(xs: list[float], cut: float = 0.1) -> float:
    """The mean of xs less its lowest and highest `cut` share (at least one each side from 5 values on): a decode
    step pays the host's mean speed, and one hiccup of a step (a page fault, a busy CPU) is not part of it."""
    k = max(int(len(xs) * cut), 1 if len(xs) >= 5 else 0)
    kept = sorted(xs)[k : len(xs) - k]
    return statistics.fmean(kept)


def _topk_gelems() -> float:
    """Elements per second (G) torch.topk ranks when k is a large share of the row, with the sort of the chosen
    indices after it, as sparse_fetch (a tenth of 64K tokens per KV head) and evict (a 16K budget out of 20K)
    select: the median over both shapes."""
    rates = []
    for rows, n, k in ((8, 65536, 6554), (8, 20480, 16384)):
        x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        t = _cuda_time(lambda x=x, k=k: x.topk(k, dim=-1).indices.sort(dim=-1))
        rates.append(rows * n / t / 1e9)
    return sorted(rates)[len(rates) // 2]


def _sync_us() -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 200 * 1e6


def _cpu(model: ModelSpec) -> tuple:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8)
    b = torch.empty(n, dtype=torch.uint8)
    a.fill_(1)
    b.fill_(0)  # touch every page first: the timed copies must not pay first-touch page faults
    t0 = time.perf_counter()
    for _ in range(3):
        b.copy_(a)
    copy_gbps = 3 * 2 * n / (time.perf_counter() - t0) / 1e9
    del a, b
    points = [
        cpu_attention_point(model, heads, L)[0]
        for heads, L in ((1, 65536), (model.n_kv_heads // 2 or 1, 65536), (model.n_kv_heads, 131072))
    ]
    beside, h2d_rate = cpu_attention_point(model, model.n_kv_heads // 2 or 1, 65536, beside_h2d=True)
    groups = cpu_attention_groups(model)
    slots = cpu_attention_slots(model)
    gather = _cpu_gather(model)
    gathered_h2d = h2d_after_gather(model)
    m = torch.randn(4096, 4096)
    m @ m
    t0 = time.perf_counter()
    m @ m
    tflops = 2 * 4096**3 / (time.perf_counter() - t0) / 1e12
    return copy_gbps, points, tflops, gather, [beside], h2d_rate, groups, slots, gathered_h2d


CPU_ATTENTION_GROUPS = (1, 2, 4, 7, 8)  # MHA, and the GQA groups of the shipped models


def cpu_attention_groups(model: ModelSpec, L: int = 65536) -> dict[int, CopyPoint]:
    """CPU decode attention over the same cold KV (half the model's KV heads, L tokens) with G query heads per KV
    head, for each G of CPU_ATTENTION_GROUPS and the model's: the kernel's rate depends on G."""
    heads = model.n_kv_heads // 2 or 1
    bufs = cold_kv_blocks(heads, L, model.head_dim)
    return {
        g: cpu_attention_point(model, heads, L, group=g, bufs=bufs)[0]
        for g in sorted({*CPU_ATTENTION_GROUPS, model.group})
    }


# The CPU worker's idle time before each timed scan: in a run it idles between two layers' scans while the issuing
# thread sends the layer's output up, runs its MLP and the next layer's projections (about 2 ms in the H100 runs'
# traces), and its kernel threads fall asleep meanwhile; waking them costs the next scan (at q7-cpu1-64k's shape
# 0.87 ms back to back, 1.29 ms after 2 ms idle: validation/results/h100/cpu-attn-in-run/cpu_attn_wake.json).
SCAN_GAP_S = 2e-3


def expected_s(times: list[float]) -> float:
    """The expected time of a call, for a step that sums many: the mean, without the slowest 5% (a rare stall of
    the guest's vCPUs, hundreds of times a call, would otherwise stand for the whole table). Not the median: the
    CPU scan's times are skewed (p90 ~1.8x the median at l2-planner's shape), and a decode step pays the mean."""
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


def carve_kv_blocks(
    region: torch.Tensor, heads: int, L: int, head_dim: int, cold_bytes: int, least: int = 2
) -> list[torch.Tensor]:
    """Consecutive host blocks [L, 1, 2, heads, head_dim] over a filled bf16 region, enough to cover cold_bytes (at
    least `least`, at most what the region holds), so that calls cycling through them read RAM."""
    n = L * 2 * heads * head_dim
    count = max(least, min(cold_bytes // (2 * n), region.numel() // n))
    return [region[i * n : (i + 1) * n].view(L, 1, 2, heads, head_dim) for i in range(count)]


# KV heads in one CPU slot: one where the plan's slot size does not divide its CPU heads
SLOT_HEADS = (1, 2, 4, 8)
SLOT_TOKENS = (8193, 32769, 65537, 131073)  # a decode step's length: never a multiple of the key ranges


def cpu_attention_slots(model: ModelSpec, cold_bytes: int = 1 << 30) -> dict[int, dict[int, list[CopyPoint]]]:
    """One CPU slot's share of a layer's CPU decode attention, as the executor makes it (attend_host over that
    slot's host block, on the worker, cut into key ranges by its threads), by GQA group (CPU_ATTENTION_GROUPS and
    the model's), KV heads in the slot (SLOT_HEADS) and tokens (SLOT_TOKENS): its rate depends on all three, not only
    on the bytes (on the H100 guest one MHA head of 32K tokens scanned at half the rate of four). Blocks are carved
    from one filled region and cycled, so each call reads RAM; each call follows SCAN_GAP_S idle, as in a run, and
    a shape's time is its calls' expected_s."""
    from roofsim.executor.cpu_attn import on_worker

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


def cold_kv_blocks(heads: int, L: int, head_dim: int, cold_bytes: int = 1 << 30) -> list[torch.Tensor]:
    """Distinct host KV blocks [L, 1, 2, heads, head_dim] (bf16, filled) of at least `cold_bytes` together, so
    that a call cycling through them reads each from RAM (one block of a few tens of MB repeated would come from
    the last-level cache)."""
    size = L * 2 * heads * head_dim * 2
    bufs = [
        torch.empty(L, 1, 2, heads, head_dim, dtype=torch.bfloat16)
        for _ in range(max(2, -(-cold_bytes // size)))
    ]
    for b in bufs:
        b.normal_()
    return bufs


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
    meanwhile, as a plan that streams its GPU heads' KV runs them beside the CPU's heads (both read host RAM);
    then also the H2D rate over those copies, else None. `group`: query heads per KV head (default the model's);
    `bufs`: cold blocks of `heads` heads and L tokens to reuse."""
    from roofsim.executor.cpu_attn import _worker, on_worker

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
        job = _worker().submit(calls)
        copies += stream_h2d(src, job.done)
        times += job.result()
    rate = copies * n / (time.perf_counter() - t0) / 1e9
    return CopyPoint(nbytes=size, seconds=statistics.median(times)), rate


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


def gather_rows(tokens: int, picked: int, heads: int) -> torch.Tensor:
    """The host-block rows sparse_fetch's gather reads for `picked` random tokens (sorted) per KV head out of
    `tokens`: each token's K and V row per head of a token-major block [tokens, 1, 2, heads, head_dim], in the
    stage's order [heads, picked, 2] (executor/sparse.py)."""
    idx = torch.stack([torch.randperm(tokens)[:picked].sort().values for _ in range(heads)])
    return (((idx[:, :, None] * 2) + torch.arange(2)) * heads + torch.arange(heads)[:, None, None]).reshape(
        -1
    )


def h2d_after_gather(
    model: ModelSpec, tokens: int = 65536, fraction: float = 0.2, cold_bytes: int = 1 << 30
) -> tuple[float, float]:
    """sparse_fetch's copy of its gathered rows (executor/sparse.py): a fifth of a layer's tokens gathered by the
    CPU into a pinned stage, then copied up; its pinned H2D rate right after the gather, and the same stage copied
    again at once (the control: the same buffer, not written in between). In every H200 and H100 campaign
    l3-sparse-64k's 53.7 MB copies ran at 41-44 GB/s where isolated copies of never-written pinned buffers ran at
    50-55. Bytes per second, medians of the calls cycling through cold blocks as _cpu_gather does."""
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


def _cpu_gather(
    model: ModelSpec, tokens: int = 65536, fraction: float = 0.2, cold_bytes: int = 1 << 30
) -> float:
    """sparse_fetch's gather: a fifth of a layer's tokens (the plan's default), per KV head, from the token-major
    host block into a pinned buffer, as one index_select (executor/sparse.py). Each call reads another layer's
    block, as a decode step does, so the timed calls cycle through blocks of `cold_bytes` together with fresh
    indices each (one block gathered again comes from the last-level cache: the sixth and seventh sessions'
    calibrations said 49-87 GB/s, l3-sparse-64k's run gathered at 23-41). Bytes read plus written per second."""
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


def measure(model: ModelSpec, progress: Callable[[str], None] = lambda step: None) -> Measurements:
    if not torch.cuda.is_available():
        from roofsim.errors import UserError

        raise UserError("roofsim calibrate needs a CUDA GPU; run it on the GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    pace: list[float] = []  # the host's pace beside every tiny timing behind the host-side costs
    launch: list[float] = []  # and the launch pace right after each
    step_pace: list[float] = []  # and the tiny decode step after that
    beside: list[str] = []  # what each was timed beside (Measurements.pace_beside)

    def label(name: str) -> None:
        beside.extend([name] * (len(pace) - len(beside)))

    # at the start, the middle and the end: the host's speed moves in spells
    tiny = [decode_layer_cost("cuda", pace=pace, width=model, launch=launch, step_pace=step_pace)]
    label("layer0")
    sizes = [64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1024 * MiB]
    progress("pinned copies")
    h2d, d2h = _copies("h2d", sizes), _copies("d2h", sizes)
    progress("pageable and batched copies")
    pageable = _copies("h2d", [64 * MiB, 256 * MiB], pinned=False)
    batches = [_back_to_back(64 * MiB, c) for c in (16, 256, 1024)]
    bidir = _bidirectional()
    progress("HBM copy")
    d2d = _d2d_gbps()
    progress("GEMMs and attention")
    gemm = _gemms(model)
    prefill, short, decode = _attention(model)
    vector = vector_ops(model)
    progress("fixed costs")
    tiny.append(decode_layer_cost("cuda", pace=pace, width=model, launch=launch, step_pace=step_pace))
    label("layer1")
    sync = _sync_us()
    gpu_kernel = _gpu_kernel_us()
    topk = _topk_gelems()
    call_s, streamed_s = attention_call_costs("cuda", pace=pace, launch=launch, step_pace=step_pace)
    label("calls")
    new_shape = attention_new_shape_s(model)
    prefill_call = prefill_call_extra_s(model)
    progress("CPU")
    tiny_beside_cpu = decode_layer_cost_beside_cpu(model, "cuda")
    round_trip = worker_round_trip_s()
    tiny.append(decode_layer_cost("cuda", pace=pace, width=model, launch=launch, step_pace=step_pace))
    label("layer2")
    tiny_s, tiny_model, tiny_step = mean_tiny(tiny)
    cpu_copy, cpu_attn, cpu_tflops, cpu_gather, cpu_attn_h2d, h2d_beside, cpu_groups, cpu_slots, gathered = (
        _cpu(model)
    )
    return Measurements(
        fingerprint=fingerprint(),
        total_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
        h2d=h2d,
        d2h=d2h,
        pageable_h2d=pageable,
        back_to_back_h2d=batches,
        bidirectional_total_gbps=bidir,
        d2d_copy_gbps=d2d,
        gemm=gemm,
        attention_prefill=prefill,
        attention_prefill_short=short,
        attention_decode=decode,
        sync_us=sync,
        tiny_layer_s=tiny_s,
        tiny_layer_model=tiny_model,
        tiny_layer_samples_s=[t[0] for t in tiny],
        tiny_step_s=tiny_step,
        tiny_layer_beside_cpu_s=tiny_beside_cpu,
        worker_round_trip_s=round_trip,
        vector_ops=vector,
        cpu_copy_gbps=cpu_copy,
        cpu_attention=cpu_attn,
        cpu_matmul_tflops=cpu_tflops,
        cpu_gather_gbps=cpu_gather,
        h2d_after_gather_gbps=gathered[0] / 1e9,
        h2d_stage_again_gbps=gathered[1] / 1e9,
        cpu_attention_beside_h2d=cpu_attn_h2d,
        h2d_beside_cpu_gbps=h2d_beside,
        cpu_attention_groups=cpu_groups,
        cpu_attention_group=model.group,
        cpu_attention_slots=cpu_slots,
        gpu_kernel_us=gpu_kernel,
        topk_gelems=topk,
        attention_call_s=call_s,
        streamed_call_s=streamed_s,
        host_pace_us=pace,
        launch_pace_us=launch,
        step_pace_us=step_pace,
        pace_beside=beside,
        attention_new_shape_s=new_shape,
        prefill_call_s=prefill_call,
        cpu_scan_gap_s=SCAN_GAP_S,
        cpu_threads=torch.get_num_threads(),
        host_ram_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
    )
