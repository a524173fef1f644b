"""GPU kernels other than attention: one decoder layer's GEMMs and elementwise kernels at prefill shapes, the GPU
time per tiny kernel queued back to back, and top-k selection. CUDA-event timed (executor/timing.py), so that the
host's issue is not in them."""

from __future__ import annotations

import torch
from roofsim.executor.timing import QUEUE_CYCLES, cuda_time_s, wall_time_s, window_times

from roofsim.calibration import CopyPoint, FlopPoint, KernelPoint
from roofsim.specs.model import ModelSpec


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


def gemms(model: ModelSpec) -> list[FlopPoint]:
    """Every GEMM of one decoder layer at prefill chunk sizes; the fit takes their total FLOPs over total time."""
    out = []
    for rows in (4096, 16384):
        for name, k, n in layer_gemm_shapes(model):
            a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)  # nn.Linear's weight layout
            t = cuda_time_s(lambda a=a, b=b: torch.nn.functional.linear(a, b))
            out.append(
                FlopPoint(
                    label=f"layer {name} {rows}x{k}x{n}", flops=2.0 * rows * k * n, seconds=t, rows=rows
                )
            )
    return out


def gemms_held(
    model: ModelSpec, seconds: float = 4.0, rows: int = 16384, window_s: float = 0.25, idle_s: float = 1.0
) -> list[FlopPoint]:
    """One decoder layer's GEMMs at `rows` rows (gemms' larger chunk) issued round after round for about `seconds`
    after `idle_s` of an idle GPU, timed in windows (timing.window_times): a FlopPoint per window, in order. The
    first windows run at the clock an idle GPU boosts to, which is what gemms' short timings see; the later ones at
    the clock a prefill of seconds holds."""
    import time

    pairs = [
        (
            torch.randn(rows, k, device="cuda", dtype=torch.bfloat16),
            torch.randn(n, k, device="cuda", dtype=torch.bfloat16),
        )
        for _, k, n in layer_gemm_shapes(model)
    ]
    flops = sum(2.0 * rows * b.shape[0] * b.shape[1] for _, b in pairs)

    def layer_round() -> None:
        for a, b in pairs:
            torch.nn.functional.linear(a, b)

    torch.cuda.synchronize()
    time.sleep(idle_s)
    per, times = window_times(layer_round, seconds, window_s)
    return [
        FlopPoint(
            label=f"layer GEMMs at {rows} rows, window {i + 1} of {len(times)} ({per} rounds)",
            flops=per * flops,
            seconds=t,
            rows=rows,
        )
        for i, t in enumerate(times)
    ]


def vector_ops(model: ModelSpec, device: str = "cuda", tokens: int = 16384) -> list[CopyPoint]:
    """A decoder layer's elementwise kernels at a prefill chunk of `tokens`, as stock transformers runs them (its
    fp32 RMSNorm module, its rotary on the projections' strided views, SiLU(gate) * up, a residual add), each
    timed with the HBM bytes roofsim's operator model (ops.py) counts for it: the fit prices "vector" operators
    at their own rate, which need not be a device-to-device copy's."""
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
    timer = cuda_time_s if device == "cuda" else wall_time_s
    with torch.no_grad():
        return [
            CopyPoint(nbytes=int(float(counted[name].hbm_bytes)), seconds=timer(fn))
            for name, fn in cases.items()
        ]


GEMV_CYCLED_BYTES = 256 * 2**20
"""Weight copies a decode GEMV is timed over, in bytes (at most GEMV_COPIES of them): several times a GPU's L2, so
that each call reads its weight from HBM as a decode step does, whose every layer has weights of its own."""
GEMV_COPIES = 32


def decode_gemv_points(model: ModelSpec, device: str = "cuda") -> list[KernelPoint]:
    """One token's GEMVs (rows = 1) at the shapes of layer_gemm_shapes and the LM head: per shape, copies of the
    weight cycled so that none is read from L2, the GPU asleep while the host queues them (the kernels alone, as a
    replayed step runs them); the weight's bytes and the GPU seconds a call. A small GEMV falls short of the HBM
    rate by more than a tiny kernel's fixed cost (gpu_kernel_us): too few blocks to keep every SM's loads in
    flight, and a ramp at each end."""
    kw = dict(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    out = []
    with torch.no_grad():
        for name, k, n in [*layer_gemm_shapes(model), ("lm_head", model.hidden, model.vocab)]:
            nbytes = k * n * 2
            copies = max(1, min(GEMV_COPIES, -(-GEMV_CYCLED_BYTES // nbytes)))
            x = torch.randn(1, k, **kw)
            weights = [torch.randn(n, k, **kw) for _ in range(copies)]

            def calls(x=x, weights=weights) -> None:
                for w in weights:
                    torch.nn.functional.linear(x, w)

            seconds = (
                cuda_time_s(calls, sleep_cycles=QUEUE_CYCLES) if device == "cuda" else wall_time_s(calls)
            )
            out.append(KernelPoint(label=f"decode {name} 1x{k}x{n}", nbytes=nbytes, seconds=seconds / copies))
            del weights
    return out


def graph_kernel_us(n: int = 400) -> float:
    """GPU time per tiny kernel replayed from a CUDA graph: gpu_kernel_us's n adds captured once, the replay timed
    with the GPU asleep while the host issues it: the spacing of a replayed step's kernels, against gpu_kernel_us's
    for kernels launched one by one (recorded; the model prices gpu_kernel_us for both)."""
    x = torch.zeros(256, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # a capture wants its kernels warmed up off the default stream
        for _ in range(3):
            x.add_(1.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            x.add_(1.0)
    return cuda_time_s(graph.replay, repeat=3, warmup=1, sleep_cycles=QUEUE_CYCLES) * 1e6 / n


# ~0.1 s of torch.cuda._sleep at H100 clocks: far longer than the host takes to queue gpu_kernel_us's n kernels
KERNEL_QUEUE_CYCLES = 200_000_000


def gpu_kernel_us(n: int = 400) -> float:
    """GPU time per tiny kernel when kernels are queued back to back: the host queues n adds while the GPU sleeps,
    then they run with no host in the way; the upper median of 3. A launch-bound eager step costs max(host
    dispatch, GPU work); this is the GPU side, kernel_us the host side."""
    x = torch.zeros(256, device="cuda")

    def adds() -> None:
        for _ in range(n):
            x.add_(1.0)

    return cuda_time_s(adds, repeat=3, warmup=0, sleep_cycles=KERNEL_QUEUE_CYCLES) * 1e6 / n


def fp8_passes(model: ModelSpec, device: str = "cuda") -> list[CopyPoint]:
    """A decode call's fp8 store passes at the model's KV heads (one slot of all of them): the write of one new
    row (re-scaling its block) and the dequantisation of the store into a bf16 scratch, as the executor's slots run
    them (executor/kvquant.py), at 16K and 64K tokens, each timed with the bytes roofsim's operator model counts for
    them (ops.attention_op's fp8_bytes). The GPU sleeps while the host queues each call (QUEUE_CYCLES), so the events
    time the passes' kernels alone, as a decode step runs them with the host ahead; the host's part of them is
    runtime.fp8_call_us. Without the sleep the host's lead to each of the passes' dozen kernels enters the time."""
    from roofsim.executor import kvquant

    from roofsim import ops

    heads, d = model.n_kv_heads, model.head_dim
    lay = kvquant.Layout(batch=1, heads=heads, head_dim=d)
    out = []
    for past in (16384, 65536):
        store = kvquant.Store(lay, torch.zeros(lay.nbytes(past + 1), dtype=torch.uint8, device=device))
        kvquant.write(lay, store, 0, torch.randn(past, 1, 2, heads, d, device=device, dtype=torch.bfloat16))
        new = torch.randn(1, 1, 2, heads, d, device=device, dtype=torch.bfloat16)
        scratch = torch.empty(kvquant.scratch_numel(lay, past + 1), device=device, dtype=torch.bfloat16)

        def call(store=store, new=new, scratch=scratch, past=past) -> None:
            kvquant.write(lay, store, past, new)
            kvquant.dequantize(lay, store, past + 1, scratch)

        op = ops.attention_op(model, 1, past, 1, kv_dtype="fp8_e4m3")
        counted = op.fp8_bytes + op.fp8_write_bytes
        seconds = cuda_time_s(call, sleep_cycles=QUEUE_CYCLES) if device == "cuda" else wall_time_s(call)
        out.append(CopyPoint(nbytes=int(float(counted)), seconds=seconds))
    return out


FP8_WRITE_CHUNKS = ((4096, 24576), (16384, 49152))
"""(chunk rows, past) of the prefill writes fp8_writes times: whole blocks after a block boundary, as a chunk's."""


def fp8_writes(model: ModelSpec, device: str = "cuda") -> list[CopyPoint]:
    """The fp8 store's write of a prefill chunk's rows at the model's KV heads (kvquant.write: to fp32, each block's
    maximum, the power-of-two scale, the rows divided and cast), at FP8_WRITE_CHUNKS, each with the bytes roofsim's
    operator model counts for it (ops.attention_op's fp8_write_bytes), the GPU asleep while the host queues it. A
    bulk pass of many rows runs at a rate of its own, unlike a decode call's dequantisation (fp8_passes)."""
    from roofsim.executor import kvquant

    from roofsim import ops

    heads, d = model.n_kv_heads, model.head_dim
    lay = kvquant.Layout(batch=1, heads=heads, head_dim=d)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out = []
    for C, P in FP8_WRITE_CHUNKS:
        store = kvquant.Store(lay, torch.zeros(lay.nbytes(P + C), dtype=torch.uint8, device=device))
        new = torch.randn(C, 1, 2, heads, d, device=device, dtype=dtype)

        def call(store=store, new=new, P=P) -> None:
            kvquant.write(lay, store, P, new)

        counted = ops.attention_op(model, C, P, 1, kv_dtype="fp8_e4m3").fp8_write_bytes
        seconds = cuda_time_s(call, sleep_cycles=QUEUE_CYCLES) if device == "cuda" else wall_time_s(call)
        out.append(CopyPoint(nbytes=int(float(counted)), seconds=seconds))
    return out


TOPK_SHAPES = ((8, 16384, 1638), (8, 65536, 6554), (8, 262144, 26214), (8, 20480, 16384))
"""(rows, n, k) of the topk calls timed for topk_points: a tenth of 16K, 64K and 256K tokens per KV head
(sparse_fetch's selections across contexts) and evict's 16K budget out of 20K."""


def topk_points() -> list[CopyPoint]:
    """torch.topk and the sort of its indices at TOPK_SHAPES, each as (elements ranked, seconds): their line gives a
    fixed time per call and a rate per element (efficiency.topk_call_us, topk_gelems). A call at a short row is
    mostly its fixed part, so one rate from short rows overprices long ones."""
    out = []
    for rows, n, k in TOPK_SHAPES:
        x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        t = cuda_time_s(lambda x=x, k=k: x.topk(k, dim=-1).indices.sort(dim=-1))
        out.append(CopyPoint(nbytes=rows * n, seconds=t))
    return out


MOE_WIDTH = (2048, 768)
"""(hidden, expert intermediate) the resident expert loop is timed at: Qwen3-30B-A3B's. At 128 experts its weights
take 1.2 GB in bf16, and an expert's GPU work for the ~16 tokens it gets of 256 takes a few microseconds, so the
loop stays host-bound while its ops run at a real MoE layer's shapes."""


def expert_costs_s(device: str = "cuda", width: tuple[int, int] = MOE_WIDTH) -> tuple[float, float]:
    """Host seconds per expert hit of the executor's two MoE expert loops, on a layer of 128 experts, 8 per token:
    (the loop over GPU-resident weights, experts.resident_forward, at `width`; what a streamed layer's fetch adds to
    it, ExpertStreamer's fetching forward over a tiny layer (hidden 64) with its weights in pinned host memory,
    against the resident loop over the same tiny layer). Each loop runs for one token (8 experts hit) and for 256
    tokens (nearly all 128 hit); a cost is the difference in time over the difference in experts hit. An expert's
    GPU work and (tiny) copies take a few microseconds, so the loops' time is their host issue: the resident loop's
    ops per hit expert (its tokens' gather, gate/up, act, product, down, routing weight, index_add); the fetch's two
    copies per hit expert (engine.copy_many under one stream context, the staging views), with the recorder on as
    in a measured run's traced steps."""
    from types import SimpleNamespace

    from roofsim.executor.engine import CpuEngine, CudaEngine
    from roofsim.executor.experts import ExpertStreamer, resident_forward
    from roofsim.executor.recorder import Recorder

    g = torch.Generator(device="cpu").manual_seed(0)
    E, k = 128, 8
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def layer(h: int, inter: int):
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

        config = Qwen3MoeConfig(
            hidden_size=h, moe_intermediate_size=inter, num_experts=E, num_experts_per_tok=k
        )
        with torch.device(device):  # made where it runs: the wide layer is 1.2 GB in bf16
            mod = Qwen3MoeExperts(config).to(dtype)
        with torch.no_grad():
            for p in (mod.gate_up_proj, mod.down_proj):
                p.normal_()
        return mod

    def per_hit(forward, h: int) -> float:
        timed = []
        for tokens in (1, 256):
            x = torch.randn(tokens, h, generator=g).to(device, dtype)
            idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(tokens)]).to(device)
            w = torch.full((tokens, k), 1.0 / k, dtype=dtype, device=device)
            hit = len(set(idx.flatten().tolist()))
            timed.append((hit, wall_time_s(lambda x=x, idx=idx, w=w: forward(x, idx, w))))
        (few, t_few), (many, t_many) = timed
        return max(0.0, (t_many - t_few) / max(1, many - few))

    with torch.no_grad():
        wide = layer(*width)
        loop = per_hit(lambda *a: resident_forward(wide, *a), width[0])
        tiny = layer(64, 32)
        tiny_loop = per_hit(lambda *a: resident_forward(tiny, *a), 64)
        engine = CudaEngine(device) if device == "cuda" else CpuEngine(lazy=False)
        rec = Recorder(engine)
        rec.start()
        rt = SimpleNamespace(
            engine=engine, rec=rec, shape=SimpleNamespace(device=engine.device), close_callbacks=[]
        )
        holder = torch.nn.Module()
        holder.mlp = torch.nn.Module()
        holder.mlp.experts = tiny
        streamer = ExpertStreamer(rt, SimpleNamespace(layers=[holder]), streamed=1)
        try:
            streamed = per_hit(tiny.forward, 64)
        finally:
            streamer.close()
    return loop, max(0.0, streamed - tiny_loop)
