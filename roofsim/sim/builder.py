"""The simulator's program builder: the tasks a plan issues, in the order the executor issues them, with their
dependencies. Each family's module writes its program with these pieces (roofsim.families.registry).

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

from roofsim import link, ops
from roofsim.families.pipeline import (
    EXPERT_TENSORS,
    Ctx,
    activation_bytes,
    expert_fetch_s,
    kv_bytes,
    logits_bytes,
    weight_stream,
    weights_gpu_bytes,
    window_kv_bytes,
    write_back_rows,
)
from roofsim.geometry import block_lengths
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
    window: int | None = None  # a window layer's: it keeps and attends at most window + sinks past tokens
    sinks: int = 0

    def pasts(self, P) -> list:
        """Key lengths of the unmasked calls this unit's attention makes after a past of P tokens: P, or with
        token blocks each block's (the executor attends them one by one and merges)."""
        if self.keys is not None:
            return [self.keys]
        if self.window is not None:
            return [min(P, self.window + self.sinks)]
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
                op.head_dim,
                float(op.extra_bytes),
                float(op.fp8_bytes),
                float(op.fp8_write_bytes),
                float(op.fp8_calls),
                float(op.expert_calls),
                float(op.moe_layers),
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
        self,
        direction,
        nbytes,
        phase,
        step,
        layer=None,
        slot=None,
        copies=1,
        deps=(),
        kind=None,
        issue_s=None,
        **kw,
    ) -> int:
        """A copy task; the host issues it in `issue_s` (default: `copies` at runtime.copy_issue_us)."""
        issue = copies * self.ctx.gpu.runtime.copy_issue_us.value * 1e-6 if issue_s is None else issue_s
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
            kv_dtype=self.ctx.kv_dtype,
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
            ops.post_attention_ops(m, s.C, B, moe=m.is_moe(li)) + list(extra),
            s.phase,
            s.step,
            li,
            name="post_attention",
            deps=deps,
        )

    def finish(self, s: StepSpec, prev: int, alloc: dict[str, float], replay_from: int | None = None) -> None:
        """LM head on the last token, free the step's activations, and the host waits (sampling). replay_from:
        the step's tasks from that one on, the LM head's too, are one replay of a CUDA graph (`replayed`)."""
        m, B = self.ctx.model, self.ctx.work.batch
        last = self.compute(ops.head_ops(m, B), s.phase, s.step, name="lm_head", deps=(prev,), free=alloc)
        if replay_from is not None:
            self.replayed(replay_from)
        self.sync(last, s.phase, s.step)

    def replayed(self, first: int) -> None:
        """The tasks from `first` on are one decode step replayed from a CUDA graph: the host issues them all with
        one replay (charged to the step's first task) instead of one dispatch per kernel, and a global layer's
        attention call attends each sequence of the batch in a call of its own (pipeline.replayed)."""
        per_sequence = (self.ctx.work.batch - 1) * self.ctx.gpu.decode_sequence_call_s
        for t in self.tasks[first:]:
            t.issue_s = 0.0
            if t.kind == "attention" and t.layer is not None and self.ctx.model.window(t.layer) is None:
                t.duration_s += per_sequence
        self.tasks[first].issue_s = self.ctx.gpu.replay_s()

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


def expert_layers(ctx: Ctx, streamed: int) -> set[int]:
    """The layers whose routed experts stream: the last `streamed` MoE layers."""
    moe = [i for i in range(ctx.model.n_layers) if ctx.model.is_moe(i)]
    return set(moe[len(moe) - streamed :]) if streamed else set()


def picked_experts_copy(b: Builder, phase: str, step: int, li: int, C: float, deps) -> int:
    """The experts the step's tokens picked in layer li, fetched once its router (after attention) has chosen
    them (on the compute stream, as the executor copies them)."""
    m = b.ctx.model
    picked = float(m.experts_touched(b.ctx.work.batch * C))
    return b.copy(
        "h2d",
        picked * m.expert_params * m.dtype_bytes,
        phase,
        step,
        li,
        copies=max(1, round(picked * EXPERT_TENSORS)),
        issue_s=float(expert_fetch_s(b.ctx.gpu, picked)),
        deps=tuple(deps),
        name="experts",
        stream="h2d_weights",
        gap_s=link.gap_s(b.ctx.gpu, allocated=True),
    )


def with_window_layers(ctx: Ctx, layers: list[list[Unit]]) -> list[list[Unit]]:
    """Units of every layer from those of the global layers: each window layer attends its resident window in one
    unit of all KV heads."""
    m = ctx.model
    if not m.window_layers or len(layers) != m.kv_layers:
        return layers
    glob = iter(layers)
    return [
        next(glob)
        if m.window(i) is None
        else [Unit(heads=m.n_kv_heads, streamed=False, window=m.window(i), sinks=m.sink_tokens)]
        for i in range(m.n_layers)
    ]


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
    streamed_experts: int = 0,
) -> int:
    """Append one step's tasks; returns the id of its last task."""
    ctx = b.ctx
    m, B = ctx.model, ctx.work.batch
    call_heads = max((u.heads for units in layers for u in units if u.window is None), default=None)
    alloc = {"activations": activation_bytes(ctx, int(C), streamed_experts, call_heads)}
    first = b.embed(phase, step, C, alloc)
    weights = WeightStream(b, phase, step, streamed_weights)
    streaming = expert_layers(ctx, streamed_experts)
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
    post_ops = {
        moe: ops.post_attention_ops(m, C, B, moe=moe) for moe in {m.is_moe(i) for i in range(m.n_layers)}
    }
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
                kv_dtype=b.ctx.kv_dtype,
                window=u.window,
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
        if m.is_moe(li):  # the eager expert loop asks the GPU which experts its router picked
            b.sync(attn_ids[-1], phase, step)
        post_deps = list(attn_ids)
        if li in streaming:
            post_deps.append(picked_experts_copy(b, phase, step, li, C, attn_ids))
        post = b.compute(
            post_ops[m.is_moe(li)],
            phase,
            step,
            li,
            name="post_attention",
            deps=post_deps,
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


def slot_units(
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
                    d2h_bytes=kv_bytes(ctx, float(write_back_rows(ctx, P, C, write_back)), group),
                    full_write_back=full,
                    write_back_tokens=N,
                    tail_kernels=float(ops.TAIL_KERNELS) if N > 1 and s == r and C < N else 0.0,
                    token_block=token_block if s >= r else None,
                )
            )
        layers.append(
            sorted(units, key=lambda u: not u.streamed)
        )  # the executor attends streamed slots first
    return with_window_layers(ctx, layers)


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
    plan, ctx: Ctx, decode_steps: int, prefill: bool = True, prefill_sample: int | None = None
) -> tuple[list[Task], dict[str, float]]:
    """All tasks of the run, and the GPU memory present from the start (weights, resident KV, buffers) by kind.
    Every step ends with a host synchronisation, so steps are independent and may be sampled."""
    from roofsim.families.registry import family

    b = Builder(ctx)
    steps = steps_of(ctx, plan.prefill_chunk, decode_steps, prefill, prefill_sample)
    streamed = plan.weights == "streamed"
    base = {
        "weights": weights_gpu_bytes(ctx, streamed, plan.streamed_expert_layers(ctx.model)),
        "logits": logits_bytes(ctx),
    }
    if ctx.model.window_layers:
        base["kv_window"] = window_kv_bytes(ctx)
    family(plan).program(b, plan, steps, base)
    return b.tasks, base


def layerwise_prefill_step(b: Builder, s: StepSpec, streamed_weights: bool) -> None:
    """A prefill chunk with whole layers streamed (kvpr, sparse_fetch): history up, new tokens back."""
    m = b.ctx.model
    layers = slot_units(b.ctx, s.C, s.P, m.n_kv_heads, [0] * m.n_layers, "incremental", None)
    last = streamed_step(
        b, s.phase, s.step, s.C, s.P, layers, depth=1, buffers=2, streamed_weights=streamed_weights
    )
    b.sync(last, s.phase, s.step)
