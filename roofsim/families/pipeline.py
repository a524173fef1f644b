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

Busy time is kept per resource (compute, h2d, d2h, cpu, host: the trace's vocabulary) and, for the compute stream
and the CPU, per ceiling (tensor, hbm, launch; cpu_ram, cpu_compute), which says why a compute-bound phase is.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from roofsim import link, ops
from roofsim.geometry import last_block
from roofsim.kvformat import fp8, token_head_bytes, written_rows
from roofsim.roofline import GpuWork, work
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import RESOURCES, MemoryUse, PhaseStats
from roofsim.workload import Workload


@dataclass(frozen=True)
class Ctx:
    """What a plan is priced against: the specs, the workload and the type the plan stores its KV in (kv_dtype,
    roofsim.kvformat). `memo` keeps the work that does not depend on the plan (the layers' work outside attention,
    per step shape), so that the many plans of one search price it once."""

    model: ModelSpec
    gpu: GpuSpec
    host: HostSpec
    work: Workload
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    kv_dtype: str = "bf16"

    def cached(self, key: tuple, make):
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = make()
        return hit


_RECENT: list[Ctx] = []


def context(model: ModelSpec, gpu: GpuSpec, host: HostSpec, work: Workload, kv_dtype: str = "bf16") -> Ctx:
    """The Ctx of these specs and workload: the same one while they are the same objects (a search prices
    thousands of plans against one), so its memo serves them all. Specs are not changed in place (a changed spec is
    a copy: model_copy), which is what makes identity a safe key."""
    for c in _RECENT:
        if c.model is model and c.gpu is gpu and c.host is host and c.work == work and c.kv_dtype == kv_dtype:
            return c
    c = Ctx(model, gpu, host, work, kv_dtype=kv_dtype)
    _RECENT.insert(0, c)
    del _RECENT[4:]
    return c


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


def new_shapes(steps: Steps, token_block: int | None = None, resident: bool = False) -> np.ndarray:
    """Per prefill chunk, how many of its attention calls are at a key length the run has not attended yet (each
    first call at a new shape pays the kernel's set-up on the host, runtime.attention_shape_us). The executor's
    warm-up ran a chunk with no past and one after a chunk's, so lengths 0 and C[0] are seen from the start.
    Without token blocks a layer's calls are all at the chunk's past P: one new length per chunk after the first
    two. With token blocks a streamed slot attends each block's keys, so a chunk brings its last block's length and
    a full block's, and resident slots (`resident`) attend P besides. Counted per distinct length at its first
    chunk, in one pass over the chunks (sort and unique), as the simulator's Builder.new_shape counts per call."""
    P, n = steps.P, steps.P.size
    if not token_block:
        return ((P != 0) & (P != steps.C[0])).astype(float)
    lengths = [last_block(P[P > 0], token_block), np.full(int((P > token_block).sum()), float(token_block))]
    chunks = [np.nonzero(P > 0)[0], np.nonzero(P > token_block)[0]]
    if resident:
        lengths.append(P)
        chunks.append(np.arange(n))
    length, chunk = np.concatenate(lengths), np.concatenate(chunks)
    order = np.argsort(chunk, kind="stable")
    length, chunk = length[order], chunk[order]
    values, first = np.unique(length, return_index=True)
    new = ~np.isin(values, [0.0, float(steps.C[0])])
    return np.bincount(chunk[first[new]], minlength=n).astype(float)


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
    # copy-engine time of copies whose gap is not link.copy_gap_us (the streamed experts', from torch's pinned
    # allocator's memory: link.gap_s), beyond what h2d_copies prices them at
    h2d_gap_s: np.ndarray | float = 0.0
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
    graphed: bool = (
        False  # replayed from a CUDA graph: the host issues nothing per layer (combine's replay_s)
    )
    # copies on the critical path between the layer's attention and its MLP (the experts a token picked, fetched
    # once its router has chosen them)
    serial_s: np.ndarray | float = 0.0
    # compute of the layers before this one that stream nothing (window layers between two global ones), during
    # which the ring's prefetches already run
    slack_s: np.ndarray | float = 0.0


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
    h2d_s = link.engine_s(ll.h2d_bytes, ll.h2d_copies, gpu, "h2d") + ll.h2d_gap_s
    d2h_s = link.engine_s(ll.d2h_bytes, ll.d2h_copies, gpu, "d2h")
    h2d_eff, d2h_eff = link.duplex(h2d_s, d2h_s, gpu.link.duplex_efficiency.value)
    n = ll.nonattn.total_s
    a = ll.attn.total_s
    crit = n + np.maximum(a, ll.cpu_path_s) + ll.serial_s
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
        hidden = np.minimum(n + ll.slack_s, ll.depth * copy / np.maximum(units, 1.0))
        t = np.where(units > 0, np.maximum(crit, copy + n - hidden), np.maximum(crit, copy))
    beside_cpu = link.issue_s(
        np.asarray(ll.h2d_copies) + np.asarray(ll.d2h_copies), gpu
    ) + ll.attn.dispatch_s(gpu)
    issue = ll.nonattn.dispatch_s(gpu) + beside_cpu
    # the issuing thread joins the CPU's share of attention (cpu_attention) before it issues what follows: the
    # attention calls and copies it issues meanwhile hide under the CPU path (a wait, not host work: busy counts
    # only the issuing)
    host = ll.nonattn.dispatch_s(gpu) + np.maximum(beside_cpu, ll.cpu_path_s) + ll.host_work_s
    if ll.graphed:
        issue = host = np.zeros(())
    sync = ll.syncs * gpu.runtime.sync_us.value * 1e-6
    t = np.maximum(t, host) + sync
    ll.crit_s = crit + sync
    gpu_work = ll.nonattn + ll.attn
    cpu_ram = np.asarray(ll.cpu_ram_s, dtype=float)
    cpu_compute = np.asarray(ll.cpu_compute_s, dtype=float)
    busy = {
        "compute": gpu_work.total_s,
        "h2d": h2d_eff,
        "d2h": d2h_eff,
        "cpu": np.maximum(cpu_ram, cpu_compute),
        "host": issue + sync,
        **_ceilings(gpu_work),
        "cpu_ram": cpu_ram,
        "cpu_compute": cpu_compute,
    }
    return t, busy


CEILINGS = ("tensor", "hbm", "launch", "allreduce", "cpu_ram", "cpu_compute")
BUSY_KEYS = RESOURCES + CEILINGS


def _ceilings(w: GpuWork) -> dict[str, np.ndarray]:
    """The compute stream's busy time split by what binds each operator."""
    return {"tensor": w.tensor_s, "hbm": w.hbm_s, "launch": w.launch_s, "allreduce": w.comm_s}


def replayed(ctx: Ctx, ll: LayerLoad) -> LayerLoad:
    """A decode step's load of a global layer replayed from a CUDA graph: the host issues nothing per layer
    (combine's replay_s), and each of its attention calls attends every sequence of the batch in a call of its own
    (ops.DECODE_SEQUENCE_KERNELS), B - 1 calls' fixed GPU cost more than one call over the batch's bytes."""
    extra = (
        np.asarray(ll.attn.attn_calls, dtype=float) * (ctx.work.batch - 1) * ctx.gpu.decode_sequence_call_s
    )
    return replace(ll, graphed=True, attn=replace(ll.attn, launch_s=ll.attn.launch_s + extra))


def replays(plan, model) -> bool:
    """Whether the executor replays a plan's decode steps from a CUDA graph (executor/graphs.py's
    graph_unsupported and its capture), for a family with a `decode_graphs` knob: asked for, with the weights
    resident (nothing crosses the link at decode), a dense MLP (stock MoE layers ask the GPU which experts were hit
    before issuing them, a synchronisation a capture cannot hold) and one GPU (a tensor-parallel step all-reduces
    across ranks). KV in fp8 replays too: the new row is stored at the step's device position and the whole store
    dequantised (executor/kvquant.py write_row_at)."""
    return (
        getattr(plan, "decode_graphs", False)
        and plan.weights == "resident"
        and not model.moe_layers
        and plan.tp == 1
    )


def both_ways(plan, model):
    """A candidate with its decode replayed, then, where the executor replays it (`replays`), the same plan eager:
    elsewhere the two are one plan."""
    yield plan
    if replays(plan, model):
        yield plan.model_copy(update={"decode_graphs": False})


def combine(
    loads: list[LayerLoad], extra: GpuWork, fill_s, gpu: GpuSpec, replay_s: float | None = None
) -> StepCost:
    """Sum the layers of a step and add the work outside the layers. The first streamed unit's copy (the fill)
    delays the compute chain, but a copy-bound step already counts its copies from the start:
    step = host preamble + max(sum of layer times, fill + sum of critical paths) + embedding and LM head.
    replay_s: the step is replayed from a CUDA graph (its layers `graphed`): the host's whole part is that one
    replay's issue, which takes the preamble's place."""
    layers_s = np.zeros(())
    crit_s = np.zeros(())
    busy = {r: np.zeros(()) for r in BUSY_KEYS}
    busy["compute"] = busy["compute"] + extra.total_s
    for k, v in _ceilings(extra).items():
        busy[k] = busy[k] + v
    preamble = gpu.runtime.step_s()  # the forward's host preamble: nothing of the step is issued before it
    if replay_s is None:
        busy["host"] = busy["host"] + extra.dispatch_s(gpu) + preamble
    else:
        preamble = replay_s
        busy["host"] = busy["host"] + replay_s
    flops, hbm = extra.flops, extra.hbm_bytes
    h2d = d2h = cpu = np.zeros(())
    for ll in loads:
        t, b = layer_time(ll, gpu)
        layers_s = layers_s + ll.count * t
        crit_s = crit_s + ll.count * ll.crit_s
        for r in BUSY_KEYS:
            busy[r] = busy[r] + ll.count * b[r]
        flops = flops + ll.count * (ll.nonattn.flops + ll.attn.flops)
        hbm = hbm + ll.count * (ll.nonattn.hbm_bytes + ll.attn.hbm_bytes)
        h2d = h2d + ll.count * np.asarray(ll.h2d_bytes, dtype=float)
        d2h = d2h + ll.count * np.asarray(ll.d2h_bytes, dtype=float)
        cpu = cpu + ll.count * np.asarray(ll.cpu_bytes, dtype=float)
    total = extra.total_s + preamble + np.maximum(layers_s, fill_s + crit_s)
    shape = np.shape(total)

    def steps(v) -> np.ndarray:  # one float per step (a value shared by every step repeated)
        a = np.asarray(v, dtype=float)
        return a if a.shape == shape else np.full(shape, a)

    return StepCost(
        time_s=np.asarray(total, dtype=float),
        busy={r: steps(v) for r, v in busy.items()},
        flops=steps(flops),
        hbm_bytes=steps(hbm),
        h2d_bytes=steps(h2d),
        d2h_bytes=steps(d2h),
        cpu_bytes=steps(cpu),
    )


def _phase(sc: StepCost, pick, steps: list[float]) -> PhaseStats:
    """A phase's statistics from its step costs, each array reduced by `pick` (a sum over chunks, or one step)."""
    busy = {r: float(pick(sc.busy[r])) for r in RESOURCES}
    return PhaseStats(
        time_s=float(pick(sc.time_s)),
        step_s=steps,
        busy_s=busy,
        bound=max(busy, key=lambda r: busy[r]),
        ceiling_s={  # the all-reduces' share only where a tensor-parallel plan has them
            c: float(pick(sc.busy[c])) for c in CEILINGS if c != "allreduce" or np.any(sc.busy[c])
        },
        flops=float(pick(sc.flops)),
        hbm_bytes=float(pick(sc.hbm_bytes)),
        h2d_bytes=float(pick(sc.h2d_bytes)),
        d2h_bytes=float(pick(sc.d2h_bytes)),
        cpu_bytes=float(pick(sc.cpu_bytes)),
    )


def prefill_phase(sc: StepCost) -> PhaseStats:
    """The whole prefill: every chunk summed (chunk times kept up to 4096 chunks)."""
    steps = [float(x) for x in sc.time_s] if sc.time_s.size <= 4096 else []
    return _phase(sc, np.sum, steps)


def decode_phase(sc: StepCost, i: int = 0) -> PhaseStats:
    """Decode step i of the priced ones (0: at the workload's context)."""
    return _phase(sc, lambda a: a[i], [])


# ---- shared pieces of GPU work ------------------------------------------------------------------------------


def outside_layers(ctx: Ctx, steps: Steps) -> GpuWork:
    """The embedding of every step, and the LM head of those that produce logits."""
    m, B = ctx.model, ctx.work.batch

    def make():
        return work(ops.embed_ops(m, steps.C, B), ctx.gpu) + work(ops.head_ops(m, B), ctx.gpu).scale(
            steps.last
        )

    return ctx.cached(("outside", steps.C.tobytes(), steps.last.tobytes()), make)


def nonattn_work(ctx: Ctx, steps: Steps) -> GpuWork:
    """A layer's work outside attention (norms, projections, MLP) for each step's new tokens: the average layer's
    where dense and MoE layers mix (DeepSeek's first dense layers)."""
    m, B = ctx.model, ctx.work.batch

    def make():
        pre = ops.pre_attention_ops(m, steps.C, B)
        moe = m.moe_layers
        if moe == 0 or moe == m.n_layers:
            return work(pre + ops.post_attention_ops(m, steps.C, B, moe=moe > 0), ctx.gpu)
        dense_w = work(pre + ops.post_attention_ops(m, steps.C, B), ctx.gpu)
        moe_w = work(pre + ops.post_attention_ops(m, steps.C, B, moe=True), ctx.gpu)
        return dense_w.scale((m.n_layers - moe) / m.n_layers) + moe_w.scale(moe / m.n_layers)

    return ctx.cached(("nonattn", steps.C.tobytes()), make)


def attn_work(
    ctx: Ctx,
    steps: Steps,
    kv_heads=None,
    keys=None,
    calls=1,
    streamed_calls=0,
    write_back_tokens: int = 1,
    window: int | None = None,
) -> GpuWork:
    """A layer's attention for each step (ops.attention_op), kept in ctx's memo by its arguments: the plans of one
    search repeat the same few."""

    def make():
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
            kv_dtype=ctx.kv_dtype,
            window=window,
        )
        return work([op], ctx.gpu)

    key = ("attn", *map(_memo_key, (steps.C, steps.P, kv_heads, keys, calls, streamed_calls)))
    return ctx.cached((*key, write_back_tokens, window), make)


def _memo_key(x) -> tuple | None:
    """A number or an array as a memo key: its shape and its values' bytes."""
    if x is None:
        return None
    a = np.asarray(x, dtype=float)
    return (a.shape, a.tobytes())


# ---- layer kinds: window layers and experts -------------------------------------------------------------------


def window_loads(ctx: Ctx, steps: Steps, streamed_weights: bool, streamed_experts: int) -> list[LayerLoad]:
    """The window layers of a step: every plan keeps their KV (window + sinks tokens) on the GPU and attends it
    in one call; they stream weights and experts as the plan's other layers do."""
    m = ctx.model
    if not m.window_layers:
        return []

    def make() -> list[LayerLoad]:
        loads = []
        for window, count in sorted(Counter(m.window(i) for i in m.window_layers).items()):
            w_bytes, w_copies = weight_stream(ctx, streamed_weights)
            x = expert_stream(ctx, steps, streamed_experts)
            loads.append(
                LayerLoad(
                    count=count,
                    nonattn=nonattn_work(ctx, steps),
                    attn=attn_work(ctx, steps, window=window),
                    h2d_bytes=w_bytes + x.h2d_bytes,
                    h2d_copies=w_copies + x.h2d_copies,
                    h2d_gap_s=x.h2d_gap_s,
                    units=1 if w_bytes else 0,
                    serial_s=x.serial_s,
                    host_work_s=x.host_s,
                    syncs=moe_syncs(m),
                )
            )
        return loads

    key = ("window", steps.C.tobytes(), steps.P.tobytes(), streamed_weights, streamed_experts)
    return ctx.cached(key, make)


def window_kv_bytes(ctx: Ctx) -> float:
    """GPU KV of the window layers: each holds its last window + sinks tokens (all of them below that length)."""
    m = ctx.model

    def make() -> float:
        tokens = ctx.work.max_tokens
        return float(
            sum(kv_bytes(ctx, float(m.window_keys(i, tokens)), m.n_kv_heads) for i in m.window_layers)
        )

    return ctx.cached(("kv_window",), make)


@dataclass
class ExpertStream:
    """Per layer and step, what streaming the routed experts from host memory adds (averaged over the layers: the
    share of them that stream): the experts the step's tokens picked (a decode step's few, nearly all of a prefill
    chunk's) come up once the router has chosen them, on the critical path between attention and the MLP."""

    h2d_bytes: np.ndarray | float = 0.0
    h2d_copies: np.ndarray | float = 0.0
    h2d_gap_s: np.ndarray | float = 0.0  # LayerLoad.h2d_gap_s: the copies' own gap beyond copy_gap_us's
    serial_s: np.ndarray | float = 0.0
    # LayerLoad.host_work_s: the fetch's host time beyond its copies' issue at copy_issue_us (expert_fetch_s)
    host_s: np.ndarray | float = 0.0


def expert_stream(ctx: Ctx, steps: Steps, streamed: int) -> ExpertStream:
    """`streamed`: the MoE layers whose routed experts stream (0: none)."""
    m = ctx.model
    if not streamed or not m.moe_layers:
        return ExpertStream()
    share = streamed / m.n_layers
    rows = ctx.work.batch * np.asarray(steps.C, dtype=float)
    picked = m.experts_touched(rows)
    copies = picked * EXPERT_TENSORS
    nbytes = picked * float(m.expert_params * m.dtype_bytes)
    # the experts' host copies come from torch's pinned allocator (executor.experts), whose back-to-back gap the
    # calibration measures apart from the registered KV store's
    own_gap = link.gap_s(ctx.gpu, allocated=True) - link.gap_s(ctx.gpu)
    fetch = expert_fetch_s(ctx.gpu, picked)
    # the copies finish after the engine has moved them and after the host has issued them, the last one's latency
    # beyond the gap after both
    engine = link.engine_s(nbytes, copies, ctx.gpu, "h2d", allocated=True)
    tail = max(0.0, ctx.gpu.link.copy_latency_us.value * 1e-6 - link.gap_s(ctx.gpu, allocated=True))
    return ExpertStream(
        h2d_bytes=share * nbytes,
        h2d_copies=share * copies,
        h2d_gap_s=share * copies * own_gap,
        serial_s=share * (np.maximum(engine, fetch) + tail),
        host_s=share * (fetch - link.issue_s(copies, ctx.gpu)),
    )


EXPERT_TENSORS = 2  # an expert's fused gate_up and its down projection: one copy each


def expert_fetch_s(gpu: GpuSpec, picked):
    """Host time to fetch `picked` experts of a streamed MoE layer: runtime.expert_fetch_us each where the profile
    has it (the executor's fetch, timed), else their EXPERT_TENSORS copies at copy_issue_us."""
    fetch = gpu.runtime.expert_fetch_us
    if fetch is None:
        return link.issue_s(np.asarray(picked, dtype=float) * EXPERT_TENSORS, gpu)
    return np.asarray(picked, dtype=float) * fetch.value * 1e-6


def moe_syncs(m) -> float:
    """Host synchronisations per layer, on average, of stock transformers' MoE: the eager expert loop asks which
    experts were hit (a nonzero on the GPU's routing) before it issues them, once per MoE layer and step."""
    return m.moe_layers / m.n_layers


# ---- memory ---------------------------------------------------------------------------------------------------


def kv_bytes(ctx: Ctx, tokens, kv_heads) -> float:
    """K and V of `tokens` tokens for `kv_heads` heads of one layer, for the whole batch, as the plan stores them
    (MLA: the latent; ctx.kv_dtype fp8: one byte an element and the scales' share, roofsim.kvformat)."""
    m = ctx.model
    if m.is_mla:
        return float(ctx.work.batch * tokens * kv_heads * m.kv_latent * m.dtype_bytes)
    if ctx.kv_dtype == "bf16":
        return float(ctx.work.batch * tokens * kv_heads * m.head_dim * 2 * m.dtype_bytes)
    return ctx.work.batch * tokens * kv_heads * token_head_bytes(ctx.kv_dtype, m.head_dim, m.dtype_bytes)


def write_back_rows(ctx: Ctx, P, C, write_back: str):
    """Rows of a streamed slot a forward of C tokens after P sends down: its new ones (incremental; in fp8 the
    whole scale blocks they touch, kvformat.written_rows), or all of them (full)."""
    if write_back != "incremental":
        return P + C
    return written_rows(P, C) if fp8(ctx.kv_dtype) else C


def dequant_scratch_bytes(ctx: Ctx, tokens, kv_heads) -> float:
    """The GPU scratch an fp8 plan turns one attention call's KV back into (the model dtype), sized for the largest
    call: none in bf16."""
    if ctx.kv_dtype == "bf16":
        return 0.0
    m = ctx.model
    return float(ctx.work.batch * tokens * kv_heads * m.head_dim * 2 * m.dtype_bytes)


def activation_bytes(
    ctx: Ctx, tokens: int, streamed_experts: int = 0, call_heads: int | None = None
) -> float:
    """Live activations of one layer's forward over `tokens` new tokens per sequence, at its peak: in the MLP of
    stock transformers, where the model's input embeddings, the layer's input (the caller's loop variable), the
    residual and the normed input (4h) are alive with act(gate), up and their product (3I; a plain MLP: fc1's
    output and its activation, 2I); or in a chunk's attention, where the executor merges two partial outputs in
    fp32 (larger for MHA models, whose q is as wide as their MLP is narrow), for the `call_heads` KV heads one
    attention call attends (default: all, a whole-layer call). With `streamed_experts` MoE layers
    streaming their routed experts, a MoE layer's MLP also holds the staged copies of the experts its tokens
    picked (expert_staging_bytes): allocated for the expert loop and freed after it, so they count at the MLP's
    moment, not beside the attention's."""
    m = ctx.model
    mlp = 4 * m.hidden + (3 if m.mlp == "gated" else 2) * m.intermediate
    rows = ctx.work.batch * tokens
    staged = 0.0
    if m.n_experts:  # a MoE layer: each token's picked experts' gate, up and product, and the router's logits
        moe = 4 * m.hidden + 3 * (m.experts_per_token * m.expert_intermediate + m.shared_intermediate)
        moe += 2 * m.n_experts
        mlp = moe if m.moe_layers == m.n_layers else max(mlp, moe)
        staged = expert_staging_bytes(ctx, tokens) if streamed_experts else 0.0
    # attention of a chunk after cached keys: 3h, the layer's q and the new k and v, and for the call's heads the
    # LSE merge at its fp32 sum (attention.merge_stacked): the two partial outputs (2 q units), their stack (2),
    # its fp32 upcast (4), the scaled product (4) and the sum (2), 14 q units of the call's query heads
    merged = 1 < tokens < ctx.work.context  # some chunk attends cached keys as well as its own
    share = 1.0 if call_heads is None else min(call_heads, m.n_kv_heads) / m.n_kv_heads
    attn = 3 * m.hidden + m.q_dim + 2 * m.kv_dim + 14 * m.q_dim * share if merged else 0
    return float(max(rows * mlp * m.dtype_bytes + staged, rows * attn * m.dtype_bytes))


def expert_staging_bytes(ctx: Ctx, tokens: int) -> float:
    """The GPU copies of one streamed MoE layer's picked experts for a forward of `tokens` tokens a sequence (the
    executor fetches a layer's experts once its router has chosen, into tensors freed after its expert loop)."""
    m = ctx.model
    picked = float(m.experts_touched(ctx.work.batch * tokens))
    return picked * m.expert_weight_bytes / max(1, m.n_experts)


def logits_bytes(ctx: Ctx) -> float:
    return float(ctx.work.batch * ctx.model.vocab * 4)


def pinned_alloc(nbytes: float) -> float:
    """The CUDA caching host allocator rounds every pinned block up to a power of two."""
    return 0.0 if nbytes <= 0 else float(2 ** math.ceil(math.log2(nbytes)))


def weights_gpu_bytes(ctx: Ctx, streamed: bool, streamed_experts: int = 0) -> float:
    """Weights on the GPU: all; or the embeddings and two layers' buffers where the layers stream; less the routed
    experts of the `streamed_experts` MoE layers that stream theirs (their staged copies are activations:
    activation_bytes)."""
    m = ctx.model
    if streamed:  # the two layer buffers hold whole layers, experts and all
        return float(m.embedding_params * m.dtype_bytes + 2 * m.layer_weight_bytes)
    if streamed_experts and m.moe_layers:
        return float(m.weight_bytes - streamed_experts * m.expert_weight_bytes)
    return float(m.weight_bytes)


def host_memory(
    ctx: Ctx, host: dict[str, float], streamed_weights: bool, streamed_experts: int = 0
) -> dict[str, float]:
    """A family's host bytes by kind, with the decoder layers' weights where they stream from host memory (and
    the streamed layers' routed experts where only they do)."""
    if streamed_weights:
        host = {**host, "weights": float(ctx.model.n_layers * ctx.model.layer_weight_bytes)}
    elif streamed_experts and ctx.model.moe_layers:
        host = {**host, "experts": float(streamed_experts * ctx.model.expert_weight_bytes)}
    return {k: float(v) for k, v in host.items()}


def memory(
    ctx: Ctx,
    *,
    gpu: dict[str, float],
    host: dict[str, float],
    streamed_weights: bool,
    streamed_experts: int = 0,
) -> MemoryUse:
    gpu = {"weights": weights_gpu_bytes(ctx, streamed_weights, streamed_experts), **gpu}
    if ctx.model.window_layers:
        gpu = {**gpu, "kv_window": window_kv_bytes(ctx)}
    return MemoryUse(
        gpu={k: float(v) for k, v in gpu.items()},
        host=host_memory(ctx, host, streamed_weights, streamed_experts),
    )


def weight_stream(ctx: Ctx, streamed: bool) -> tuple[float, float]:
    """(bytes, copies) per layer per step when weights stream: one copy per weight tensor."""
    if not streamed:
        return 0.0, 0.0
    m = ctx.model
    tensors = (4 if not m.fused_qkv else 2) + (3 if m.mlp == "gated" else 2) + 2
    return float(m.layer_weight_bytes), float(tensors)


@dataclass
class Evaluation:
    """A family's answer for one plan: step costs of both phases and peak memory by kind. `new_shapes`: attention
    calls per prefill chunk at a key length not attended before (new_shapes(); None: the calls of a plan without
    token blocks)."""

    prefill: StepCost
    decode: StepCost  # two steps: at the context, and at context + gen
    memory: MemoryUse
    notes: list[str] = field(default_factory=list)
    new_shapes: np.ndarray | None = None


def peak_memory(
    ctx: Ctx,
    phases: list[tuple[dict[str, float], dict[str, float]]],
    streamed_weights: bool,
    streamed_experts: int = 0,
) -> MemoryUse:
    """The phase whose GPU total is largest gives the breakdown; host memory is the same in both phases."""
    uses = [
        memory(ctx, gpu=g, host=h, streamed_weights=streamed_weights, streamed_experts=streamed_experts)
        for g, h in phases
    ]
    return max(uses, key=lambda u: u.gpu_bytes)
