"""Programs: the tasks a plan issues, in the order the executor issues them, with their dependencies.

Durations come from the roofline (roofsim.roofline.work over roofsim.ops), the single source of per-operator
cost; copy sizes from the same slot geometry the analytic families use. Per step (prefill chunk or decode step)
and layer: the non-attention work before attention, one attention task per slot (or per unit the plan attends
separately), the copies of streamed units through a ring of GPU buffers prefetched `depth` ahead, the
write-back, and the work after attention.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from roofsim import link, ops
from roofsim.families.base import Ctx, activation_bytes, block_lengths, kv_bytes, logits_bytes, weight_stream
from roofsim.families.cpu_attention import cpu_slot_count, cpu_slot_heads, prefill_slot_heads, ring_slot_heads
from roofsim.families.evict import evict_ops, evict_workspace
from roofsim.families.kvpr import optimal_split, per_token, recompute_ops, recompute_peak_bytes
from roofsim.families.sparse_fetch import selection_ops
from roofsim.families.streaming import CAT_PEAK_SLOTS, tail_bytes
from roofsim.plan import (
    CpuAttentionPlan,
    EvictPlan,
    HeadOffloadPlan,
    KvprPlan,
    LayerOffloadPlan,
    Plan,
    ResidentPlan,
    SparseFetchPlan,
)
from roofsim.roofline import work
from roofsim.sim.engine import Task


@dataclass
class Unit:
    """One thing attended separately in a layer: a group of KV heads, streamed or resident."""

    heads: int
    streamed: bool
    h2d_bytes: float = 0.0
    h2d_copies: int = 1
    d2h_bytes: float = 0.0
    full_write_back: bool = False
    keys: float | None = None  # cached keys attended (sparse plans); None = all P
    write_back_tokens: int = 1  # > 1: new tokens wait in the layer's GPU tail (one forward in N writes back)
    tail_kernels: float = 0.0  # the layer's write into its tail, charged to its first streamed unit
    token_block: int | None = None  # a streamed unit attended block by block

    def pasts(self, P) -> list:
        """Key lengths of the unmasked calls this unit's attention makes after a past of P tokens: P, or with
        token blocks each block's (the executor attends them one by one and merges)."""
        if self.keys is not None:
            return [self.keys]
        if self.streamed and self.token_block and P > 0:
            return sorted(block_lengths(P, self.token_block))
        return [P]


@dataclass
class Builder:
    ctx: Ctx
    tasks: list[Task] = field(default_factory=list)
    _costs: dict = field(default_factory=dict)
    shapes: set = field(
        default_factory=set
    )  # prefill attention shapes attended so far (kv heads, past, chunk)

    @property
    def kernel_s(self) -> float:
        return self.ctx.gpu.kernel_s

    @contextmanager
    def driven_by(self, gpu):
        """Build with `gpu`'s costs meanwhile (a host that dispatches at another rate), then the step's own."""
        saved = self.ctx, self._costs
        self.ctx, self._costs = replace(self.ctx, gpu=gpu), {}
        try:
            yield
        finally:
            self.ctx, self._costs = saved

    def add(self, task: Task) -> int:
        self.tasks.append(task)
        return len(self.tasks) - 1

    def cost(self, op_list) -> tuple[float, float, int]:
        """(duration, FLOPs, host dispatch seconds) of a list of operators, cached: every layer of a step repeats
        them."""
        key = tuple(
            (
                op.name,
                float(op.flops),
                float(op.hbm_bytes),
                float(op.kernels),
                float(op.runtime_calls),
                float(op.attn_calls),
                float(op.streamed_calls),
                float(op.prefill_calls),
                float(op.query_rows),
            )
            for op in op_list
        )
        hit = self._costs.get(key)
        if hit is None:
            w = work(op_list, self.ctx.gpu)
            hit = self._costs[key] = (float(w.total_s), float(w.flops), float(w.dispatch_s(self.ctx.gpu)))
        return hit

    def compute(
        self, op_list, phase, step, layer=None, slot=None, kind="gemm", deps=(), name=None, **kw
    ) -> int:
        duration, flops, dispatch_s = self.cost(op_list)
        return self.add(
            Task(
                resource="compute",
                kind=kind,
                phase=phase,
                step=step,
                layer=layer,
                slot=slot,
                duration_s=duration,
                flops=flops,
                deps=tuple(deps),
                issue_s=dispatch_s,
                name=name,
                **kw,
            )
        )

    def copy(
        self, direction, nbytes, phase, step, layer=None, slot=None, copies=1, deps=(), kind=None, **kw
    ) -> int:
        issue = copies * self.ctx.gpu.runtime.copy_issue_us.value * 1e-6
        return self.add(
            Task(
                resource=direction,
                kind=kind or direction,
                phase=phase,
                step=step,
                layer=layer,
                slot=slot,
                nbytes=float(nbytes),
                copies=int(copies),
                deps=tuple(deps),
                issue_s=issue,
                **kw,
            )
        )

    def cpu(
        self, duration_s, phase, step, layer=None, kind="cpu_attention", deps=(), nbytes=0.0, flops=0.0
    ) -> int:
        return self.add(
            Task(
                resource="cpu",
                kind=kind,
                phase=phase,
                step=step,
                layer=layer,
                duration_s=float(duration_s),
                nbytes=nbytes,
                flops=flops,
                deps=tuple(deps),
                issue_s=self.ctx.gpu.runtime.sync_us.value * 1e-6 / 2,  # hand-off to the CPU worker thread
            )
        )

    # ---- the parts of every step: embedding, the layer's work around attention, attention, LM head ----------
    def embed(self, phase: str, step: int, C, alloc: dict[str, float]) -> int:
        """A step's first task: the embedding, after the forward's preamble on the host (runtime.step_us: the
        framework's set-up of a step outside its layers; the executor issues nothing of the step before it)."""
        m = self.ctx.model
        first = self.compute(
            ops.embed_ops(m, C, self.ctx.work.batch),
            phase,
            step,
            kind="vector",
            name="embed",
            alloc=alloc,
        )
        self.tasks[first].issue_s += self.ctx.gpu.runtime.step_s()
        return first

    def pre(self, s: StepSpec, li: int, deps) -> int:
        m, B = self.ctx.model, self.ctx.work.batch
        return self.compute(
            ops.pre_attention_ops(m, s.C, B),
            s.phase,
            s.step,
            li,
            name="pre_attention",
            deps=deps,
        )

    def attention(
        self, s: StepSpec, li: int, deps, slot=None, kv_heads=None, keys=None, streamed=False
    ) -> int:
        op = ops.attention_op(
            self.ctx.model,
            s.C,
            s.P,
            self.ctx.work.batch,
            kv_heads=kv_heads,
            keys=keys,
            streamed_calls=int(streamed),
        )
        a = self.compute([op], s.phase, s.step, li, slot, kind="attention", deps=deps, name="attention")
        self.new_shape(a, kv_heads, s.P if keys is None else keys, s.C)
        return a

    def new_shape(self, task: int, kv_heads, past, C) -> None:
        """A prefill attention call at a shape the run has not attended yet (the executor's warm-up ran one with no
        past and one after a chunk's) first pays the kernel's per-shape set-up on the host."""
        shape = (kv_heads or self.ctx.model.n_kv_heads, past, C)
        if self.tasks[task].phase == "prefill" and past not in (0, C) and shape not in self.shapes:
            self.shapes.add(shape)
            self.tasks[task].issue_s += self.ctx.gpu.runtime.attention_shape_s()

    def post(self, s: StepSpec, li: int, deps, extra=()) -> int:
        m, B = self.ctx.model, self.ctx.work.batch
        return self.compute(
            ops.post_attention_ops(m, s.C, B) + list(extra),
            s.phase,
            s.step,
            li,
            name="post_attention",
            deps=deps,
        )

    def finish(self, s: StepSpec, prev: int, alloc: dict[str, float]) -> None:
        """LM head on the last token, free the step's activations, and the host waits (sampling)."""
        m, B = self.ctx.model, self.ctx.work.batch
        last = self.compute(ops.head_ops(m, B), s.phase, s.step, name="lm_head", deps=(prev,), free=alloc)
        self.sync(last, s.phase, s.step)

    def sync(self, on: int, phase, step) -> None:
        """The host waits for task `on` (e.g. .item() or stream.synchronize())."""
        t = self.tasks[on]
        t.host_wait = True
        t.issue_s += self.ctx.gpu.runtime.sync_us.value * 1e-6


class WeightStream:
    """Weights streamed per layer (FlexGen's case): double-buffered, layer j+2's copy waits for layer j to finish."""

    def __init__(self, b: Builder, phase: str, step: int, streamed: bool):
        self.b, self.phase, self.step = b, phase, step
        self.bytes, self.copies = weight_stream(b.ctx, streamed)
        self.layers = b.ctx.model.n_layers
        self.ids: dict[int, int] = {}
        self.post: dict[int, int] = {}
        self._issue(0)
        self._issue(1)

    def _issue(self, li: int) -> None:
        if self.bytes and li < self.layers and li not in self.ids:
            deps = (self.post[li - 2],) if li - 2 in self.post else ()
            self.ids[li] = self.b.copy(
                "h2d",
                self.bytes,
                self.phase,
                self.step,
                li,
                copies=int(self.copies),
                deps=deps,
                name="weights",
                stream="h2d_weights",  # its own stream: a copy waiting for its buffer must not block the KV's
            )

    def dep(self, li: int) -> tuple[int, ...]:
        return (self.ids[li],) if li in self.ids else ()

    def done(self, li: int, post_id: int) -> None:
        self.post[li] = post_id
        self._issue(li + 2)


# ---- the streamed-layer step shared by most families -------------------------------------------------------------


@dataclass
class Ring:
    """Slot buffers: unit u's copy may start only once the unit that last used its buffer is released."""

    buffers: int
    releases: list[int] = field(default_factory=list)

    def dep(self) -> tuple[int, ...]:
        if len(self.releases) >= self.buffers:
            return (self.releases[-self.buffers],)
        return ()


def streamed_step(
    b: Builder,
    phase: str,
    step: int,
    C: float,
    P: float,
    layers: list[list[Unit]],
    *,
    depth: int,
    buffers: int,
    d2h_on_compute: bool = False,
    syncs_per_unit: int = 0,
    streamed_weights: bool = False,
    cpu_heads: int = 0,
    logits: bool = True,
) -> int:
    """Append one step's tasks; returns the id of its last task."""
    ctx = b.ctx
    m, B = ctx.model, ctx.work.batch
    alloc = {"activations": activation_bytes(ctx, int(C))}
    first = b.embed(phase, step, C, alloc)
    weights = WeightStream(b, phase, step, streamed_weights)
    ring = Ring(max(1, buffers))
    # the stream of (layer, unit) copies, issued `depth` ahead of their attention
    order = [(li, ui) for li, units in enumerate(layers) for ui, u in enumerate(units) if u.streamed]
    copy_ids: dict[tuple[int, int], int] = {}
    issued = 0
    eff_depth = min(depth, buffers - 1)

    def issue_copies(upto: int):
        nonlocal issued
        while issued < min(upto, len(order)):
            li, ui = order[issued]
            u = layers[li][ui]
            copy_ids[(li, ui)] = b.copy(
                "h2d", u.h2d_bytes, phase, step, li, ui, copies=u.h2d_copies, deps=ring.dep()
            )
            issued += 1

    consumed = 0
    prev = first
    pre_ops = ops.pre_attention_ops(m, C, B)
    post_ops = ops.post_attention_ops(m, C, B)
    for li, units in enumerate(layers):
        wdep = weights.dep(li)
        pre = b.compute(pre_ops, phase, step, li, name="pre_attention", deps=wdep)
        if li == 0:  # the step's first prefetches go out at layer 0's cache update (after its projections)
            issue_copies(eff_depth if eff_depth > 0 else 0)
        attn_ids = []
        for ui, u in enumerate(units):
            deps = [pre]
            if u.streamed:
                if eff_depth == 0:
                    issue_copies(consumed + 1)
                else:
                    issue_copies(consumed + 1 + eff_depth)
                deps.append(copy_ids[(li, ui)])
            wb = None
            if u.streamed and not u.full_write_back and u.d2h_bytes:
                share = float(ops.write_back_share(C, u.write_back_tokens))
                wb = b.copy("d2h", u.d2h_bytes, phase, step, li, ui, copies=B * share, deps=(pre,))
            if u.streamed and d2h_on_compute and u.full_write_back:
                wb = b.copy("d2h", u.d2h_bytes, phase, step, li, ui, copies=B, deps=(pre,))
                deps.append(wb)
            op = ops.attention_op(
                m,
                C,
                P,
                B,
                kv_heads=u.heads,
                keys=u.keys,
                streamed_calls=int(u.streamed),
                write_back_tokens=u.write_back_tokens,
                tail_kernels=u.tail_kernels,
            )
            a = b.compute([op], phase, step, li, ui, kind="attention", deps=deps, name="attention")
            for past in u.pasts(P):
                b.new_shape(a, u.heads, past, C)
            attn_ids.append(a)
            if u.streamed:
                release = a
                if u.full_write_back and not d2h_on_compute:
                    release = b.copy("d2h", u.d2h_bytes, phase, step, li, ui, copies=B, deps=(a,))
                for _ in range(syncs_per_unit):
                    b.sync(a, phase, step)
                ring.releases.append(release)
                consumed += 1
        post = b.compute(
            post_ops,
            phase,
            step,
            li,
            name="post_attention",
            deps=attn_ids,
        )
        weights.done(li, post)
        prev = post
    head_ops = ops.head_ops(m, B) if logits else []
    last = b.compute(
        head_ops or [ops.Op("noop", "vector", 0.0, 0.0, 0)],
        phase,
        step,
        kind="gemm",
        name="lm_head",
        deps=(prev,),
        free=alloc,
    )
    return last


# ---- per-family programs ----------------------------------------------------------------------------------------


def _slot_units(
    ctx: Ctx,
    C,
    P,
    group: int,
    resident: list[int],
    write_back: str,
    token_block,
    heads: int | None = None,
    write_back_tokens: int = 1,
):
    m = ctx.model
    heads = m.n_kv_heads if heads is None else heads
    slots = heads // group
    N = write_back_tokens
    from_tail = min(P, float(ops.tail_pending(C, N))) if N > 1 else 0.0
    layers = []
    for r in resident:
        units = []
        for s in range(slots):
            streamed = s >= r and P > 0
            blocks = max(1, math.ceil(P / token_block)) if token_block else 1
            full = write_back == "full"
            units.append(
                Unit(
                    heads=group,
                    streamed=s >= r,
                    h2d_bytes=kv_bytes(ctx, P - from_tail, group) if streamed else 0.0,
                    h2d_copies=blocks,
                    d2h_bytes=kv_bytes(ctx, P + C if full else C, group),
                    full_write_back=full,
                    write_back_tokens=N,
                    tail_kernels=float(ops.TAIL_KERNELS) if N > 1 and s == r and C < N else 0.0,
                    token_block=token_block if s >= r else None,
                )
            )
        layers.append(
            sorted(units, key=lambda u: not u.streamed)
        )  # the executor attends streamed slots first
    return layers


@dataclass
class StepSpec:
    phase: str
    step: int
    C: float
    P: float


def prefill_chunks(ctx: Ctx, chunk: int | None) -> int:
    w = ctx.work
    return math.ceil(w.context / min(chunk or w.context, w.context))


def sampled(n: int, sample: int | None) -> list[int]:
    """Chunk indices to simulate: all, or `sample` evenly spaced ones including the first and the last."""
    if sample is None or n <= sample:
        return list(range(n))
    return sorted({round(i * (n - 1) / (sample - 1)) for i in range(sample)})


def steps_of(
    ctx: Ctx, chunk: int | None, decode_steps: int, prefill: bool = True, prefill_sample: int | None = None
) -> list[StepSpec]:
    w = ctx.work
    c = min(chunk or w.context, w.context)
    out = []
    if prefill:
        out = [
            StepSpec("prefill", k, float(min(c, w.context - k * c)), float(k * c))
            for k in sampled(prefill_chunks(ctx, chunk), prefill_sample)
        ]
    out += [StepSpec("decode", t, 1.0, float(w.context + t)) for t in range(decode_steps)]
    return out


def build(
    plan: Plan, ctx: Ctx, decode_steps: int, prefill: bool = True, prefill_sample: int | None = None
) -> tuple[list[Task], dict[str, float]]:
    """All tasks of the run, and the GPU memory present from the start (weights, resident KV, buffers).
    Every step ends with a host synchronisation, so steps are independent and may be sampled."""
    b = Builder(ctx)
    m, w = ctx.model, ctx.work
    streamed_w = plan.weights == "streamed"
    steps = steps_of(ctx, plan.prefill_chunk, decode_steps, prefill, prefill_sample)
    T = w.max_tokens
    base = {"weights": _weights(ctx, streamed_w), "logits": logits_bytes(ctx)}

    if isinstance(plan, (ResidentPlan, LayerOffloadPlan, HeadOffloadPlan)):
        if isinstance(plan, ResidentPlan):
            group, resident, depth, buffers, wb, tb, syncs = (
                m.n_kv_heads,
                [1] * m.n_layers,
                1,
                2,
                "incremental",
                None,
                0,
            )
        elif isinstance(plan, LayerOffloadPlan):
            group, resident, depth, buffers, wb, tb, syncs = (
                m.n_kv_heads, [0] * m.n_layers, 1, 2, plan.write_back, None, plan.syncs_per_layer
            )  # fmt: skip
        else:
            group = plan.kv_heads_per_slot
            r = plan.resident_slots
            resident = [r] * m.n_layers if isinstance(r, int) else list(r)
            depth, buffers, wb, tb, syncs = (
                plan.prefetch_depth,
                plan.slot_buffers,
                plan.write_back,
                plan.token_block,
                plan.syncs_per_slot,
            )
        slot_full = kv_bytes(ctx, T, group)
        streaming = any(m.n_kv_heads // group - r for r in resident)
        base["kv_resident"] = sum(resident) * slot_full
        base["kv_buffers"] = (
            buffers * (kv_bytes(ctx, min(T, tb), group) if tb else slot_full) if streaming else 0.0
        )
        if isinstance(plan, HeadOffloadPlan) and plan.slot_alloc == "cat" and streaming:
            base["kv_buffers"] = CAT_PEAK_SLOTS * slot_full
        wbt = getattr(plan, "write_back_tokens", 1)
        chunk = min(plan.prefill_chunk or w.context, w.context)
        base["kv_buffers"] += tail_bytes(ctx, resident, m.n_kv_heads // group, wbt, chunk)
        d2h_on_compute = isinstance(plan, LayerOffloadPlan) and plan.write_back == "full"
        for s in steps:
            layers = _slot_units(ctx, s.C, s.P, group, resident, wb, tb, write_back_tokens=wbt)
            last = streamed_step(
                b, s.phase, s.step, s.C, s.P, layers, depth=depth, buffers=buffers,
                d2h_on_compute=d2h_on_compute, syncs_per_unit=syncs, streamed_weights=streamed_w,
            )  # fmt: skip
            b.sync(last, s.phase, s.step)
    elif isinstance(plan, KvprPlan):
        _kvpr(b, plan, steps, base)
    elif isinstance(plan, CpuAttentionPlan):
        _cpu_attention(b, plan, steps, base)
    elif isinstance(plan, SparseFetchPlan):
        _sparse_fetch(b, plan, steps, base)
    elif isinstance(plan, EvictPlan):
        _evict(b, plan, steps, base)
    else:  # pragma: no cover
        raise TypeError(plan)
    return b.tasks, base


def _weights(ctx: Ctx, streamed: bool) -> float:
    from roofsim.families.base import weights_gpu_bytes

    return weights_gpu_bytes(ctx, streamed)


def _layerwise_prefill_step(b: Builder, s: StepSpec, streamed_weights: bool) -> None:
    """A prefill chunk with whole layers streamed (kvpr, sparse_fetch): history up, new tokens back."""
    m = b.ctx.model
    layers = _slot_units(b.ctx, s.C, s.P, m.n_kv_heads, [0] * m.n_layers, "incremental", None)
    last = streamed_step(
        b, s.phase, s.step, s.C, s.P, layers, depth=1, buffers=2, streamed_weights=streamed_weights
    )
    b.sync(last, s.phase, s.step)


def _kvpr(b: Builder, plan: KvprPlan, steps: list[StepSpec], base: dict) -> None:
    ctx = b.ctx
    m, gpu, B = ctx.model, ctx.gpu, ctx.work.batch
    a, k, r = per_token(ctx)
    T = ctx.work.max_tokens

    def split_at(P: float) -> float:
        if plan.recompute_tokens != "auto":
            return float(min(plan.recompute_tokens, P))
        rest = float(work(ops.layer_ops(m, 1, P, B), gpu).total_s)
        bw = gpu.link.h2d_gbps.value * 1e9
        return float(np.floor(optimal_split(P, a, k, r, bw, gpu.tensor_flops, rest, plan.overlap)))

    # the two ring buffers hold a layer's KV and the X of the longest prefix recomputed, from the start (the
    # executor sizes them for its capacity)
    base["kv_buffers"] = 2 * (kv_bytes(ctx, T, m.n_kv_heads) + a * split_at(T - 1))
    for s in steps:
        if s.phase == "prefill":
            _layerwise_prefill_step(b, s, plan.weights == "streamed")
            continue
        split = split_at(s.P)
        alloc = {"activations": activation_bytes(ctx, 1), "workspace": recompute_peak_bytes(ctx, split)}
        first = b.embed(s.phase, s.step, s.C, alloc)
        prefetch = plan.overlap == "inter_layer"
        copies: dict[int, tuple[int | None, int]] = {}
        releases: list[int] = []

        def issue(li: int, s=s, split=split, copies=copies, releases=releases):
            deps = (releases[li - 2],) if li >= 2 else ()
            act = (
                b.copy("h2d", a * split, s.phase, s.step, li, name="activations", deps=deps)
                if split > 0
                else None
            )
            kv = b.copy("h2d", k * (s.P - split), s.phase, s.step, li, deps=deps)
            copies[li] = (act, kv)

        weights = WeightStream(b, s.phase, s.step, plan.weights == "streamed")
        prev = first
        for li in range(m.n_layers):
            pre = b.pre(s, li, (prev, *weights.dep(li)))
            if prefetch and li == 0:  # the step's first prefetch goes out at layer 0's cache update
                issue(0)
            if not prefetch:
                issue(li)
            elif li + 1 < m.n_layers:
                issue(li + 1)
            act, kv = copies[li]
            deps = [pre, kv]
            if act is not None:
                deps.append(
                    b.compute(
                        recompute_ops(ctx, split),
                        s.phase,
                        s.step,
                        li,
                        kind="recompute",
                        deps=(act,),
                        name="recompute",
                    )
                )
            b.copy("d2h", k + (a if split > 0 else 0.0), s.phase, s.step, li, deps=(pre,))
            att = b.attention(s, li, deps, streamed=True)
            releases.append(att)
            prev = b.post(s, li, (att,))
            weights.done(li, prev)
        b.finish(s, prev, alloc)


def _cpu_attention(b: Builder, plan: CpuAttentionPlan, steps: list[StepSpec], base: dict) -> None:
    ctx = b.ctx
    m, host, B, e = ctx.model, ctx.host, ctx.work.batch, ctx.model.dtype_bytes
    hc, g = plan.cpu_kv_heads, plan.kv_heads_per_slot
    T = ctx.work.max_tokens
    resident_heads = plan.resident_slots * g
    base["kv_resident"] = m.n_layers * kv_bytes(ctx, T, resident_heads)
    gpu_heads = m.n_kv_heads - hc
    pg = prefill_slot_heads(hc, g, m.n_kv_heads)
    gc = cpu_slot_heads(hc, g)
    # the ring's slots fit a GPU slot and a CPU one (streamed at prefill)
    base["kv_buffers"] = plan.slot_buffers * kv_bytes(ctx, T, ring_slot_heads(m.n_kv_heads, hc, g))
    q_bytes = float(B * hc * m.group * m.head_dim * e)
    out_bytes = q_bytes + B * hc * m.group * 4
    for s in steps:
        if s.phase == "prefill":
            if pg is None:  # the executor's own slots: the GPU heads' of g, the CPU heads' of gc
                gpu_units = _slot_units(
                    ctx, s.C, s.P, g, [plan.resident_slots] * m.n_layers, "incremental", None, heads=gpu_heads
                )
                cpu_units = _slot_units(ctx, s.C, s.P, gc, [0] * m.n_layers, "incremental", None, heads=hc)
                layers = [
                    sorted(a + c, key=lambda u: not u.streamed)
                    for a, c in zip(gpu_units, cpu_units, strict=True)
                ]
            else:
                layers = _slot_units(
                    ctx, s.C, s.P, pg, [resident_heads // pg] * m.n_layers, "incremental", None
                )
            last = streamed_step(
                b,
                s.phase,
                s.step,
                s.C,
                s.P,
                layers,
                depth=plan.prefetch_depth,
                buffers=plan.slot_buffers,
                streamed_weights=plan.weights == "streamed",
            )
            b.sync(last, s.phase, s.step)
            continue
        layers = (
            _slot_units(
                ctx, s.C, s.P, g, [plan.resident_slots] * m.n_layers, "incremental", None, heads=gpu_heads
            )
            if gpu_heads
            else [[] for _ in range(m.n_layers)]
        )
        cpu_kv = kv_bytes(ctx, 1, hc) * (s.P + 1)
        cpu_s = max(
            host.cpu_attention_s(
                cpu_kv,
                calls=cpu_slot_count(hc, plan.kv_heads_per_slot),
                group=m.group,
                heads=cpu_slot_heads(hc, plan.kv_heads_per_slot),
            ),
            4.0 * B * hc * m.group * m.head_dim * (s.P + 1) / (host.cpu_tflops.value * 1e12),
        )

        merge = [ops.Op("merge", "vector", 4.0 * out_bytes / e, 3.0 * out_bytes, 2)] if hc else []
        # while the worker scans, the issuing thread dispatches at the host's rate beside it (a calibrated ratio)
        with b.driven_by(ctx.gpu.beside_cpu_worker() if hc else ctx.gpu):
            _cpu_decode_step(
                b,
                plan,
                s,
                layers,
                hc,
                q_bytes + kv_bytes(ctx, 1, hc),
                cpu_s + ctx.gpu.worker_round_trip_s,  # the worker's wake-up and the issuing thread's
                cpu_kv,
                merge,
            )


def _cpu_decode_step(
    b: Builder, plan, s: StepSpec, layers, hc: int, q_and_new_kv, cpu_s, cpu_kv, merge
) -> None:
    """Per layer, the CPU heads' round trip (q and the new K/V down, CPU attention into pinned memory) runs
    beside the GPU heads' attention; the merge after attention waits for both, and is issued once the issuing
    thread has joined the worker. It reads the output where the CPU wrote it (zero-copy), so it does not wait
    behind the prefetch issued meanwhile on the H2D stream, as a copy of it did (in l2-planner-32k-24gb's
    measured trace on the H100 of validation/results/h100/s19, a layer's output waited 1.8 ms for the next
    layer's 252 MB slot)."""
    B = b.ctx.work.batch
    alloc = {"activations": activation_bytes(b.ctx, 1)}
    prev = b.embed(s.phase, s.step, s.C, alloc)
    ring = Ring(max(1, plan.slot_buffers))
    order = [(li, ui) for li, units in enumerate(layers) for ui, u in enumerate(units) if u.streamed]
    ids: dict[tuple[int, int], int] = {}
    issued = 0
    depth = min(plan.prefetch_depth, plan.slot_buffers - 1)

    def issue(upto):
        nonlocal issued
        while issued < min(upto, len(order)):
            li, ui = order[issued]
            ids[(li, ui)] = b.copy("h2d", layers[li][ui].h2d_bytes, s.phase, s.step, li, ui, deps=ring.dep())
            issued += 1

    weights = WeightStream(b, s.phase, s.step, plan.weights == "streamed")
    consumed = 0
    for li, units in enumerate(layers):
        pre = b.pre(s, li, (prev, *weights.dep(li)))
        if li == 0:  # the step's first prefetches go out at layer 0's cache update
            issue(depth)
        deps_post = []
        cpu_op = None
        if hc:
            q = b.copy(
                "d2h",
                q_and_new_kv,
                s.phase,
                s.step,
                li,
                deps=(pre,),
                copies=1 + cpu_slot_count(hc, plan.kv_heads_per_slot),
                name="q_and_new_kv",
            )
            cpu_op = b.cpu(cpu_s, s.phase, s.step, li, deps=(q,), nbytes=cpu_kv)
            deps_post.append(cpu_op)
        for ui, u in enumerate(units):
            deps = [pre]
            if u.streamed:
                issue(consumed + 1 + depth if depth else consumed + 1)
                deps.append(ids[(li, ui)])
                b.copy("d2h", u.d2h_bytes, s.phase, s.step, li, ui, copies=B, deps=(pre,))
            a = b.attention(s, li, deps, slot=ui, kv_heads=u.heads, streamed=u.streamed)
            deps_post.append(a)
            if u.streamed:
                ring.releases.append(a)
                consumed += 1
        if cpu_op is not None:  # the issuing thread joins the CPU worker before it goes on (job.result())
            b.sync(b.cpu(0.0, s.phase, s.step, li, kind="sync", deps=(cpu_op,)), s.phase, s.step)
            deps_post.append(cpu_op)  # the merge reads the output from pinned memory
        prev = b.post(s, li, deps_post, extra=merge)
        weights.done(li, prev)
    b.finish(s, prev, alloc)


def _sparse_fetch(b: Builder, plan: SparseFetchPlan, steps: list[StepSpec], base: dict) -> None:
    ctx = b.ctx
    m, host, B = ctx.model, ctx.host, ctx.work.batch
    T = ctx.work.max_tokens
    dense = min(plan.dense_layers, m.n_layers)
    layer_kv = kv_bytes(ctx, T, m.n_kv_heads)
    fetch_buf = kv_bytes(ctx, int(np.ceil(plan.fetch_fraction * T)), m.n_kv_heads)
    sparse = m.n_layers - dense
    base["kv_buffers"] = 2 * (layer_kv if dense else fetch_buf)
    base["workspace"] = (
        sparse * layer_kv / 2 * plan.partial_key_ratio
        + sparse * m.hidden * m.n_heads * plan.partial_key_ratio * m.head_dim * m.dtype_bytes
    )
    for s in steps:
        if s.phase == "prefill":
            _layerwise_prefill_step(b, s, plan.weights == "streamed")
            continue
        alloc = {"activations": activation_bytes(ctx, 1)}
        prev = b.embed(s.phase, s.step, s.C, alloc)
        sel = float(np.ceil(plan.fetch_fraction * s.P))
        fetched = kv_bytes(ctx, sel, m.n_kv_heads)
        gather_s = 2 * fetched / host.gather_bytes_per_s
        scale = link.gathered_share(ctx.gpu)  # the stage the CPU has just written copies at its own rate
        dense_copy = b.copy("h2d", kv_bytes(ctx, s.P, m.n_kv_heads), s.phase, s.step, 0) if dense else None
        fetch: dict[int, int] = {}

        def select_for(
            li: int, after: int, s=s, sel=sel, fetched=fetched, gather_s=gather_s, fetch=fetch, scale=scale
        ):
            """Layer li's tokens are picked by its own query, after its pre-attention work (the executor's order:
            the fetch is on the critical path, not hidden behind layer li-1 as InfiniGen speculates it)."""
            spec = b.compute(
                selection_ops(ctx, s.P, plan.partial_key_ratio, plan.fetch_fraction),
                s.phase,
                s.step,
                li,
                kind="vector",
                deps=(after,),
                name="select tokens",
            )
            # the host KV block's row of each picked token's K and V per KV head, int64 (executor/sparse.py)
            rows = 8.0 * B * m.n_kv_heads * 2 * sel
            idx = b.copy("d2h", rows, s.phase, s.step, li, deps=(spec,), name="indices")
            b.sync(idx, s.phase, s.step)
            g = b.cpu(gather_s, s.phase, s.step, li, kind="cpu_gather", deps=(idx,), nbytes=2 * fetched)
            b.sync(g, s.phase, s.step)  # the issuing thread gathers itself: it issues nothing meanwhile
            fetch[li] = b.copy(
                "h2d", fetched, s.phase, s.step, li, deps=(g,), name="selected_kv", rate_scale=scale
            )

        weights = WeightStream(b, s.phase, s.step, plan.weights == "streamed")
        for li in range(m.n_layers):
            pre = b.pre(s, li, (prev, *weights.dep(li)))
            if li < dense:
                deps = [pre, dense_copy]
                if li + 1 < dense:
                    nxt = b.copy("h2d", kv_bytes(ctx, s.P, m.n_kv_heads), s.phase, s.step, li + 1)
                keys = None
            else:
                select_for(li, pre)
                deps = [pre, fetch[li]]
                keys = sel
            b.copy("d2h", kv_bytes(ctx, 1, m.n_kv_heads), s.phase, s.step, li, deps=(pre,))
            att = b.attention(s, li, deps, keys=keys, streamed=True)
            if li < dense and li + 1 < dense:
                dense_copy = nxt
            prev = b.post(s, li, (att,))
            weights.done(li, prev)
        b.finish(s, prev, alloc)


def _evict(b: Builder, plan: EvictPlan, steps: list[StepSpec], base: dict) -> None:
    ctx = b.ctx
    m, w = ctx.model, ctx.work
    bud = plan.budget_tokens
    for s in steps:
        alloc = {"activations": activation_bytes(ctx, int(s.C))}
        if s.phase == "prefill":
            cached = min(s.P, bud)
            kv_now = m.n_layers * kv_bytes(ctx, min(s.P + s.C, bud + s.C), m.n_kv_heads)
            alloc["kv_resident"] = kv_now
            alloc["workspace"] = evict_workspace(ctx, cached + s.C)
        else:
            cached = min(s.P, bud + plan.local_tokens + (s.P - w.context))
            alloc["kv_resident"] = m.n_layers * kv_bytes(
                ctx, min(w.max_tokens, bud + plan.local_tokens + w.gen), m.n_kv_heads
            )
        prev = b.embed(s.phase, s.step, s.C, alloc)
        weights = WeightStream(b, s.phase, s.step, plan.weights == "streamed")
        evict = []
        if s.phase == "prefill" and s.P + s.C > bud:
            evict = evict_ops(ctx, cached + s.C, s.C, min(s.P + s.C, bud))
        for li in range(m.n_layers):
            pre = b.pre(s, li, (prev, *weights.dep(li)))
            att = b.attention(s, li, (pre,), keys=cached)
            if evict:  # scored and evicted right after the chunk's attention, as the executor does
                att = b.compute(evict, s.phase, s.step, li, kind="vector", deps=(att,), name="evict")
            prev = b.post(s, li, (att,))
            weights.done(li, prev)
        b.finish(s, prev, alloc)
