"""The per-layer pipeline model shared by every family.

A step (one prefill chunk, or one decode step) runs the decoder layers in order. In each layer the GPU stream
does the non-attention work n (norms, projections, MLP, recompute) and the attention a; the copy engines move
the layer's streamed KV (H2D) and write-back (D2H), both directions slowed by the duplex efficiency while they
overlap; the host thread issues kernels and copies. With streamed units prefetched `depth` ahead:

    t_layer = max(n + a, copy + n - min(n, depth * copy / units))     (copy hides behind compute, except the
                                                                       part of n the ring cannot cover)
    t_layer = max(t_layer, host) + syncs * sync_s

A plan that orders the write-back on the compute stream (transformers) puts D2H on the critical path instead.
Step time = max(sum over layers, first unit's copy + sum of the compute chains) + embedding and LM head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from roofsim import link, ops
from roofsim.prediction import RESOURCES, MemoryUse, PhaseCost
from roofsim.roofline import GpuWork, work
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


@dataclass(frozen=True)
class Ctx:
    model: ModelSpec
    gpu: GpuSpec
    host: HostSpec
    work: Workload


@dataclass
class Steps:
    """The steps of a phase: C new tokens after P cached, per step (arrays)."""

    C: np.ndarray
    P: np.ndarray
    last: np.ndarray  # 1.0 where the step produces logits

    @property
    def n(self) -> int:
        return int(self.C.size)


def prefill_steps(context: int, chunk: int | None) -> Steps:
    c = min(chunk or context, context)
    n = math.ceil(context / c)
    P = np.arange(n, dtype=float) * c
    C = np.minimum(c, context - P)
    last = np.zeros(n)
    last[-1] = 1.0
    return Steps(C, P, last)


def block_lengths(P, token_block: int) -> set[float]:
    """Key lengths of the blocks a past of P tokens is attended in, token_block at a time (the last one shorter)."""
    return {float(min(token_block, P - t0)) for t0 in range(0, int(P), token_block)}


def attention_shape_s(plan, ctx: Ctx) -> np.ndarray:
    """Per prefill chunk, the host time of its attention's first calls at new shapes: each chunk's past is a new
    key length (the executor's warm-up ran no past and one chunk's, so the first two chunks pay nothing). The
    models attend a chunk's heads in calls of one size (whole layers, or every slot alike: cpu_attention's in
    prefill_slot_heads; where its GPU and CPU slots differ in size the simulator counts both, this one), so one new
    shape per chunk; with token blocks, the streamed slots' calls are over each
    block's keys: the last block's length is new at every chunk, a full block's once, and the resident slots'
    past P besides. As the simulator's Builder.new_shape counts. Zero unless the profile measured the per-shape
    set-up."""
    steps = prefill_steps(ctx.work.context, plan.prefill_chunk)
    tb = getattr(plan, "token_block", None)
    if not tb:
        new = (steps.P != 0) & (steps.P != steps.C[0])
        return new * ctx.gpu.runtime.attention_shape_s()
    resident = getattr(plan, "resident_slots", 0)
    resident = any(resident) if isinstance(resident, list) else resident > 0
    seen = {0.0, float(steps.C[0])}
    counts = []
    for P in steps.P:
        lengths = block_lengths(P, tb) | ({float(P)} if resident else set())
        counts.append(len(lengths - seen))
        seen |= lengths
    return np.asarray(counts, dtype=float) * ctx.gpu.runtime.attention_shape_s()


def decode_steps(contexts: list[int]) -> Steps:
    """One decode step at each context: attention over that many cached tokens plus the new one."""
    P = np.asarray(contexts, dtype=float)
    return Steps(np.ones_like(P), P, np.ones_like(P))


@dataclass
class LayerLoad:
    """What `count` identical layers each do in one step (arrays broadcast over steps)."""

    count: int
    nonattn: GpuWork
    attn: GpuWork
    h2d_bytes: np.ndarray | float = 0.0
    h2d_copies: np.ndarray | float = 0.0
    d2h_bytes: np.ndarray | float = 0.0
    d2h_copies: np.ndarray | float = 0.0
    units: np.ndarray | float = 0.0  # streamed units per layer through the ring (0: nothing streamed)
    depth: int = 1  # units prefetched ahead
    pre_copy_s: np.ndarray | float = (
        0.0  # CPU work that must precede the H2D copy (a gather), pipelined with it
    )
    override_s: np.ndarray | None = None  # a family's own layer time (before host and sync costs)
    crit_s: np.ndarray | float = 0.0  # set by layer_time: the compute chain alone (the fill delays it)
    d2h_on_compute: bool = False
    syncs: float = 0.0
    cpu_path_s: np.ndarray | float = 0.0  # CPU work on the critical path, in parallel with GPU attention
    # CPU work of the issuing thread itself (sparse_fetch's gather): it issues nothing meanwhile
    host_work_s: np.ndarray | float = 0.0
    cpu_ram_s: np.ndarray | float = 0.0
    cpu_compute_s: np.ndarray | float = 0.0
    cpu_bytes: np.ndarray | float = 0.0


@dataclass
class StepCost:
    time_s: np.ndarray
    busy: dict[str, np.ndarray]
    flops: np.ndarray
    hbm_bytes: np.ndarray
    h2d_bytes: np.ndarray
    d2h_bytes: np.ndarray
    cpu_bytes: np.ndarray


def layer_time(ll: LayerLoad, gpu: GpuSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    h2d_s = link.engine_s(ll.h2d_bytes, ll.h2d_copies, gpu, "h2d")
    d2h_s = link.engine_s(ll.d2h_bytes, ll.d2h_copies, gpu, "d2h")
    h2d_eff, d2h_eff = link.duplex(h2d_s, d2h_s, gpu.link.duplex_efficiency.value)
    n = ll.nonattn.total_s
    a = ll.attn.total_s
    crit = n + np.maximum(a, ll.cpu_path_s)
    if ll.d2h_on_compute:
        crit = crit + d2h_eff
        copy = h2d_eff + ll.pre_copy_s
    else:
        copy = np.maximum(h2d_eff + ll.pre_copy_s, d2h_eff)
    units = np.asarray(ll.units, dtype=float)
    if ll.override_s is not None:
        t = np.asarray(ll.override_s, dtype=float)
    elif ll.depth == 0:
        t = crit + copy
    else:
        # units == 0: nothing comes in through the ring; a write-back still runs beside the compute
        hidden = np.minimum(n, ll.depth * copy / np.maximum(units, 1.0))
        t = np.where(units > 0, np.maximum(crit, copy + n - hidden), np.maximum(crit, copy))
    beside_cpu = link.issue_s(
        np.asarray(ll.h2d_copies) + np.asarray(ll.d2h_copies), gpu
    ) + ll.attn.dispatch_s(gpu)
    issue = ll.nonattn.dispatch_s(gpu) + beside_cpu
    # the issuing thread joins the CPU's share of attention (cpu_attention) before it issues what follows: the
    # attention calls and copies it issues meanwhile hide under the CPU path (a wait, not host work: busy counts
    # only the issuing)
    host = ll.nonattn.dispatch_s(gpu) + np.maximum(beside_cpu, ll.cpu_path_s) + ll.host_work_s
    sync = ll.syncs * gpu.runtime.sync_us.value * 1e-6
    t = np.maximum(t, host) + sync
    ll.crit_s = crit + sync
    busy = {
        "tensor": ll.nonattn.tensor_s + ll.attn.tensor_s,
        "hbm": ll.nonattn.hbm_s + ll.attn.hbm_s,
        "pcie_h2d": h2d_eff,
        "pcie_d2h": d2h_eff,
        "cpu_ram": np.asarray(ll.cpu_ram_s, dtype=float),
        "cpu_compute": np.asarray(ll.cpu_compute_s, dtype=float),
        "host": issue + sync,
    }
    return t, busy


def combine(loads: list[LayerLoad], extra: GpuWork, fill_s, gpu: GpuSpec) -> StepCost:
    """Sum the layers of a step and add the work outside the layers. The first streamed unit's copy (the fill)
    delays the compute chain, but a copy-bound step already counts its copies from the start:
    step = host preamble + max(sum of layer times, fill + sum of critical paths) + embedding and LM head."""
    layers_s = np.zeros(())
    crit_s = np.zeros(())
    busy = {r: np.zeros(()) for r in RESOURCES}
    busy["tensor"] = busy["tensor"] + extra.tensor_s
    busy["hbm"] = busy["hbm"] + extra.hbm_s
    preamble = gpu.runtime.step_s()  # the forward's host preamble: nothing of the step is issued before it
    busy["host"] = busy["host"] + extra.dispatch_s(gpu) + preamble
    flops, hbm = extra.flops, extra.hbm_bytes
    h2d = d2h = cpu = np.zeros(())
    for ll in loads:
        t, b = layer_time(ll, gpu)
        layers_s = layers_s + ll.count * t
        crit_s = crit_s + ll.count * ll.crit_s
        for r in RESOURCES:
            busy[r] = busy[r] + ll.count * b[r]
        flops = flops + ll.count * (ll.nonattn.flops + ll.attn.flops)
        hbm = hbm + ll.count * (ll.nonattn.hbm_bytes + ll.attn.hbm_bytes)
        h2d = h2d + ll.count * np.asarray(ll.h2d_bytes, dtype=float)
        d2h = d2h + ll.count * np.asarray(ll.d2h_bytes, dtype=float)
        cpu = cpu + ll.count * np.asarray(ll.cpu_bytes, dtype=float)
    total = extra.total_s + preamble + np.maximum(layers_s, fill_s + crit_s)
    shape = np.shape(total)
    return StepCost(
        time_s=np.asarray(total, dtype=float),
        busy={r: np.broadcast_to(v, shape).astype(float) for r, v in busy.items()},
        flops=np.broadcast_to(flops, shape).astype(float),
        hbm_bytes=np.broadcast_to(hbm, shape).astype(float),
        h2d_bytes=np.broadcast_to(h2d, shape).astype(float),
        d2h_bytes=np.broadcast_to(d2h, shape).astype(float),
        cpu_bytes=np.broadcast_to(cpu, shape).astype(float),
    )


def _bound(busy: dict[str, float]) -> str:
    return max(busy, key=lambda r: busy[r])


def prefill_phase(sc: StepCost) -> PhaseCost:
    busy = {r: float(v.sum()) for r, v in sc.busy.items()}
    return PhaseCost(
        time_s=float(sc.time_s.sum()),
        busy_s=busy,
        bound=_bound(busy),
        flops=float(sc.flops.sum()),
        hbm_bytes=float(sc.hbm_bytes.sum()),
        h2d_bytes=float(sc.h2d_bytes.sum()),
        d2h_bytes=float(sc.d2h_bytes.sum()),
        cpu_bytes=float(sc.cpu_bytes.sum()),
        steps=int(sc.time_s.size),
        step_times_s=[float(x) for x in sc.time_s] if sc.time_s.size <= 4096 else [],
    )


def decode_phase(sc: StepCost, i: int = 0) -> PhaseCost:
    busy = {r: float(v[i]) for r, v in sc.busy.items()}
    return PhaseCost(
        time_s=float(sc.time_s[i]),
        busy_s=busy,
        bound=_bound(busy),
        flops=float(sc.flops[i]),
        hbm_bytes=float(sc.hbm_bytes[i]),
        h2d_bytes=float(sc.h2d_bytes[i]),
        d2h_bytes=float(sc.d2h_bytes[i]),
        cpu_bytes=float(sc.cpu_bytes[i]),
    )


# ---- shared pieces of GPU work ------------------------------------------------------------------------------


def outside_layers(ctx: Ctx, steps: Steps) -> GpuWork:
    m, B = ctx.model, ctx.work.batch
    return work(ops.embed_ops(m, steps.C, B), ctx.gpu) + work(ops.head_ops(m, B), ctx.gpu).scale(steps.last)


def nonattn_work(ctx: Ctx, steps: Steps) -> GpuWork:
    m, B = ctx.model, ctx.work.batch
    return work(ops.pre_attention_ops(m, steps.C, B) + ops.post_attention_ops(m, steps.C, B), ctx.gpu)


def attn_work(
    ctx: Ctx, steps: Steps, kv_heads=None, keys=None, calls=1, streamed_calls=0, write_back_tokens: int = 1
) -> GpuWork:
    tail = 0.0
    if write_back_tokens > 1:
        uses_tail = (np.asarray(streamed_calls) > 0) & (np.asarray(steps.C) < write_back_tokens)
        tail = np.where(uses_tail, ops.TAIL_KERNELS, 0.0)
    op = ops.attention_op(
        ctx.model,
        steps.C,
        steps.P,
        ctx.work.batch,
        kv_heads=kv_heads,
        keys=keys,
        calls=calls,
        streamed_calls=streamed_calls,
        write_back_tokens=write_back_tokens,
        tail_kernels=tail,
    )
    return work([op], ctx.gpu)


# ---- memory ---------------------------------------------------------------------------------------------------


def kv_bytes(ctx: Ctx, tokens, kv_heads) -> float:
    """K and V of `tokens` tokens for `kv_heads` heads of one layer, for the whole batch."""
    m = ctx.model
    return float(ctx.work.batch * tokens * kv_heads * m.head_dim * 2 * m.dtype_bytes)


def activation_bytes(ctx: Ctx, tokens: int) -> float:
    """Live activations of one layer's forward over `tokens` new tokens per sequence, at its peak: in the MLP of
    stock transformers, where the model's input embeddings, the layer's input (the caller's loop variable), the
    residual and the normed input (4h) are alive with act(gate), up and their product (3I; a plain MLP: fc1's
    output and its activation, 2I); or in a chunk's attention, where the executor merges two partial outputs in
    fp32 (larger for MHA models, whose q is as wide as their MLP is narrow)."""
    m = ctx.model
    mlp = 4 * m.hidden + (3 if m.mlp == "gated" else 2) * m.intermediate
    # attention of a chunk after cached keys: 3h, q, k and v (k, v packed once more), the two partial outputs and
    # the fp32 LSE merge's temporaries (two upcast outputs, a scaled term, the accumulator: 8 q_dim in bf16 units)
    merged = 1 < tokens < ctx.work.context  # some chunk attends cached keys as well as its own
    attn = 3 * m.hidden + 11 * m.q_dim + 2 * m.kv_dim if merged else 0
    return float(ctx.work.batch * tokens * max(mlp, attn) * m.dtype_bytes)


def logits_bytes(ctx: Ctx) -> float:
    return float(ctx.work.batch * ctx.model.vocab * 4)


def pinned_alloc(nbytes: float) -> float:
    """The CUDA caching host allocator rounds every pinned block up to a power of two."""
    return 0.0 if nbytes <= 0 else float(2 ** math.ceil(math.log2(nbytes)))


def weights_gpu_bytes(ctx: Ctx, streamed: bool) -> float:
    m = ctx.model
    if not streamed:
        return float(m.weight_bytes)
    return float(m.embedding_params * m.dtype_bytes + 2 * m.layer_weight_bytes)


def memory(ctx: Ctx, *, gpu: dict[str, float], host: dict[str, float], streamed_weights: bool) -> MemoryUse:
    gpu = {"weights": weights_gpu_bytes(ctx, streamed_weights), **gpu}
    if streamed_weights:
        host = {**host, "weights": float(ctx.model.n_layers * ctx.model.layer_weight_bytes)}
    return MemoryUse(gpu={k: float(v) for k, v in gpu.items()}, host={k: float(v) for k, v in host.items()})


def weight_stream(ctx: Ctx, streamed: bool) -> tuple[float, float]:
    """(bytes, copies) per layer per step when weights stream: one copy per weight tensor."""
    if not streamed:
        return 0.0, 0.0
    m = ctx.model
    tensors = (4 if not m.fused_qkv else 2) + (3 if m.mlp == "gated" else 2) + 2
    return float(m.layer_weight_bytes), float(tensors)


def divisors(n: int) -> list[int]:
    """The group sizes that split n KV heads evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_divides(total: int, part: int, what: str) -> None:
    from roofsim.errors import UserError

    if part <= 0 or total % part:
        raise UserError(f"{what}={part} must divide the model's {total} KV heads; pick a divisor of {total}")


@dataclass
class Evaluation:
    """A family's answer for one plan: step costs of both phases and peak memory by kind."""

    prefill: StepCost
    decode: StepCost  # two steps: at the context, and at context + gen
    memory: MemoryUse
    notes: list[str] = field(default_factory=list)


def peak_memory(
    ctx: Ctx, phases: list[tuple[dict[str, float], dict[str, float]]], streamed_weights: bool
) -> MemoryUse:
    """The phase whose GPU total is largest gives the breakdown; host memory is the same in both phases."""
    uses = [memory(ctx, gpu=g, host=h, streamed_weights=streamed_weights) for g, h in phases]
    return max(uses, key=lambda u: u.gpu_bytes)
