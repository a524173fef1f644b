"""KV streamed from pinned host memory in slots of (layer, group of KV heads): what resident, layer_offload and
head_offload are (each maps its plan to SlotKnobs), and the part of kvpr, cpu_attention and sparse_fetch that
streams whole layers or slots.

Per step and layer, with S streamed slots of g KV heads and P cached tokens:
    H2D = S * B * P * g * d * 2 * dtype            (each slot's history comes up for attention)
    D2H = S * B * C * g * d * 2 * dtype            (incremental: the C new tokens)
        = S * B * (P + C) * g * d * 2 * dtype      (full write-back, as HeadInfer's and transformers' code do)
GPU KV = resident slots at full length + slot_buffers ring buffers (one slot, or one token block, each).
In fp8 (roofsim.kvformat) every KV byte above is the stored one (one byte an element, and the scales), the
incremental write-back sends the scale blocks the new tokens touch, and the GPU holds one slot's scratch in the
model dtype that each attention call dequantises into.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from roofsim import link
from roofsim.families.pipeline import (
    Ctx,
    Evaluation,
    LayerLoad,
    StepCost,
    Steps,
    activation_bytes,
    attn_work,
    combine,
    decode_steps,
    dequant_scratch_bytes,
    expert_stream,
    kv_bytes,
    logits_bytes,
    moe_syncs,
    new_shapes,
    nonattn_work,
    outside_layers,
    peak_memory,
    pinned_alloc,
    prefill_steps,
    replayed,
    weight_stream,
    window_loads,
    write_back_rows,
)
from roofsim.geometry import block_count
from roofsim.ops import tail_pending, write_back_share
from roofsim.sim.builder import Builder, StepSpec, slot_units, streamed_step

MAX_SYNCS = 16
"""Host synchronisations per streamed slot or layer a plan may ask for (HeadInfer's code makes 2): each is an event
of the simulator's, and thousands would stall it."""

WriteBackTokens = Annotated[
    int,
    Field(
        ge=1,
        description="incremental write-back: new tokens gather in a GPU tail and go to the host once this many "
        "have (one copy per slot per that many tokens instead of one per slot per step)",
    ),
]


class WriteBackTail:
    """write_back_tokens > 1 gathers new tokens on the GPU: only for an incremental write-back of whole slots.
    The executor stores fp8 KV whole slots at a time, written back as they go: fp8 takes neither a tail nor
    token blocks."""

    @model_validator(mode="after")
    def _tail_needs_incremental(self):
        if self.write_back_tokens > 1 and (
            self.write_back != "incremental" or getattr(self, "token_block", None)
        ):
            raise ValueError(
                "write_back_tokens > 1 needs write_back='incremental' and no token_block; set write_back_tokens=1"
            )
        if self.kv_dtype != "bf16" and (self.write_back_tokens > 1 or getattr(self, "token_block", None)):
            raise ValueError(
                f"kv_dtype={self.kv_dtype} streams whole slots written back as they go: set write_back_tokens=1 "
                "and no token_block"
            )
        return self


@dataclass(frozen=True)
class SlotKnobs:
    """How a plan streams its slots: `group` KV heads per slot, `resident[i]` slots of layer i kept on the GPU,
    the rest streamed through `buffers` ring buffers `depth` ahead, written back "incremental" (new tokens) or
    "full"; `token_block` streams a slot in blocks; `syncs` host synchronisations per streamed slot;
    `d2h_on_compute` orders the full write-back on the compute stream (transformers' offloaded cache);
    `cat_alloc` grows slots by torch.cat (HeadInfer's code: 4 slot-sized buffers at the peak);
    `write_back_tokens` > 1 gathers new tokens in a GPU tail first."""

    group: int
    resident: tuple[int, ...]
    chunk: int | None
    streamed_weights: bool
    depth: int = 1
    buffers: int = 2
    write_back: str = "incremental"
    token_block: int | None = None
    syncs: int = 0
    d2h_on_compute: bool = False
    cat_alloc: bool = False
    write_back_tokens: int = 1
    graphs: bool = False  # decode steps replayed from a CUDA graph (all slots resident, weights resident)
    streamed_experts: int = 0  # MoE layers whose routed experts stream from host memory

    def slots(self, ctx: Ctx) -> int:
        return ctx.model.n_kv_heads // self.group

    def streamed_slots(self, ctx: Ctx) -> int:
        return sum(self.slots(ctx) - r for r in self.resident)


CAT_PEAK_SLOTS = 4
"""HeadInfer's cache (research/headinfer.md 1.3): the current slot (old and torch.cat output), the prefetched next
one and the evicting previous one: about 4 slot-sized GPU buffers at the peak."""


def slot_loads(
    ctx: Ctx,
    steps: Steps,
    *,
    group: int,
    resident: list[int],
    depth: int,
    buffers: int,
    write_back: str,
    token_block: int | None,
    syncs_per_slot: float,
    streamed_weights: bool,
    d2h_on_compute: bool = False,
    gpu_kv_heads: int | None = None,
    write_back_tokens: int = 1,
    streamed_experts: int = 0,
) -> list[LayerLoad]:
    """Layer loads for slot streaming; `resident` gives the resident slots of each layer whose KV the plan
    places (the global layers). `gpu_kv_heads` (default all) is the number of KV heads the GPU attends and the
    slots are cut from; `streamed_experts` MoE layers fetch their routed experts from host memory (expert_stream)."""
    m, B = ctx.model, ctx.work.batch
    heads = m.n_kv_heads if gpu_kv_heads is None else gpu_kv_heads
    slots = heads // group
    P, C = steps.P, steps.C
    blocks = block_count(P, token_block)
    w_bytes, w_copies = weight_stream(ctx, streamed_weights)
    x = expert_stream(ctx, steps, streamed_experts)
    nonattn = nonattn_work(ctx, steps)
    attn_calls = max(slots, 1) + (int(np.max(blocks)) if token_block else 0)
    loads = []
    for r, count in sorted(Counter(resident).items()):
        S = slots - r
        attn = attn_work(
            ctx,
            steps,
            kv_heads=heads,
            calls=attn_calls,
            streamed_calls=S * blocks,
            write_back_tokens=write_back_tokens,
        )
        d2h_tokens = write_back_rows(ctx, P, C, write_back)
        # with a GPU tail, the rows still in it come from there, and one forward in N writes back (on average)
        from_tail = np.minimum(P, tail_pending(C, write_back_tokens)) if write_back_tokens > 1 else 0.0
        loads.append(
            LayerLoad(
                count=count,
                nonattn=nonattn,
                attn=attn,
                h2d_bytes=S * kv_bytes(ctx, 1, group) * (P - from_tail) + w_bytes + x.h2d_bytes,
                h2d_copies=S * blocks + w_copies + x.h2d_copies,
                h2d_gap_s=x.h2d_gap_s,
                d2h_bytes=S * kv_bytes(ctx, 1, group) * d2h_tokens,
                d2h_copies=S * B * write_back_share(C, write_back_tokens),
                units=S * blocks + (1 if w_bytes else 0),
                serial_s=x.serial_s,
                host_work_s=x.host_s,
                depth=min(depth, buffers - 1),
                d2h_on_compute=d2h_on_compute,
                syncs=S * syncs_per_slot + moe_syncs(ctx.model),
            )
        )
    return loads


def tail_bytes(ctx: Ctx, resident: list[int], slots: int, write_back_tokens: int, chunk: int) -> float:
    """GPU tails of write_back_tokens tokens, all KV heads, in each layer with streamed slots: the executor makes
    them at the first forward of fewer tokens (decode, or prefill chunks shorter than the tail)."""
    if write_back_tokens == 1 or (ctx.work.gen == 0 and chunk >= write_back_tokens):
        return 0.0
    return sum(r < slots for r in resident) * kv_bytes(ctx, write_back_tokens, ctx.model.n_kv_heads)


def layerwise_loads(ctx: Ctx, steps: Steps, layers: int, streamed_weights: bool) -> list[LayerLoad]:
    """Whole layers streamed through two buffers with incremental write-back (kvpr's and sparse_fetch's prefill,
    InfiniGen's dense layers)."""
    return slot_loads(
        ctx,
        steps,
        group=ctx.model.n_kv_heads,
        resident=[0] * layers,
        depth=1,
        buffers=2,
        write_back="incremental",
        token_block=None,
        syncs_per_slot=0,
        streamed_weights=streamed_weights,
    )


def first_unit_fill(ctx: Ctx, steps: Steps, group: int, token_block: int | None, streaming: bool):
    """The first streamed unit of a step cannot hide behind anything."""
    if not streaming:
        return np.zeros_like(steps.P)
    tokens = np.minimum(steps.P, token_block) if token_block else steps.P
    fill = link.isolated_copy_s(kv_bytes(ctx, 1, group) * tokens, ctx.gpu, "h2d")
    return np.where(steps.P > 0, fill, 0.0)


def host_memory(k: SlotKnobs, ctx: Ctx) -> dict[str, float]:
    """The pinned store: each streamed slot's KV for the whole run. roofsim's executor registers one exact-size
    pool; transformers' cache (d2h_on_compute) gets each layer's K and V from the caching host allocator, which
    rounds every block up to a power of two."""
    streamed = k.streamed_slots(ctx)
    slot_full = kv_bytes(ctx, ctx.work.max_tokens, k.group)
    half = slot_full / 2
    rounding = streamed * 2 * (pinned_alloc(half) - half) if k.d2h_on_compute else 0.0
    return {"kv": streamed * slot_full, "pinned_rounding": rounding}


def gpu_kv(k: SlotKnobs, ctx: Ctx) -> dict[str, float]:
    """GPU KV held from the start: resident slots at full length, the ring's buffers (one slot, or one token
    block, each; HeadInfer's torch.cat growth holds 4 slots), and the write-back tails."""
    T = ctx.work.max_tokens
    streaming = k.streamed_slots(ctx) > 0
    slot_full = kv_bytes(ctx, T, k.group)
    unit = kv_bytes(ctx, min(T, k.token_block), k.group) if k.token_block else slot_full
    kv = {"kv_resident": sum(k.resident) * slot_full, "kv_buffers": k.buffers * unit if streaming else 0.0}
    if k.cat_alloc and streaming:
        kv["kv_buffers"] = CAT_PEAK_SLOTS * slot_full
    chunk = min(k.chunk or ctx.work.context, ctx.work.context)
    kv["kv_buffers"] += tail_bytes(ctx, list(k.resident), k.slots(ctx), k.write_back_tokens, chunk)
    # fp8: one slot's KV back in the model dtype, which each attention call reads (the largest call: a whole slot)
    kv["kv_buffers"] += dequant_scratch_bytes(ctx, T, k.group)
    return kv


def evaluate(k: SlotKnobs, ctx: Ctx) -> Evaluation:
    """The analytic model of a slot plan: both phases' steps through slot_loads, and memory at the peak."""
    w = ctx.work
    streaming = k.streamed_slots(ctx) > 0
    kw = dict(
        group=k.group,
        resident=list(k.resident),
        depth=k.depth,
        buffers=k.buffers,
        write_back=k.write_back,
        token_block=k.token_block,
        syncs_per_slot=k.syncs,
        streamed_weights=k.streamed_weights,
        d2h_on_compute=k.d2h_on_compute,
        write_back_tokens=k.write_back_tokens,
        streamed_experts=k.streamed_experts,
    )
    pre = prefill_steps(w.context, k.chunk)
    dec = decode_steps([w.context, w.context + w.gen])

    def cost(steps: Steps, graphs: bool = False) -> StepCost:
        """The global layers' loads and the window layers': the window layers' compute before each global layer
        is time its streamed units are already coming up in (as far as the ring reaches). `graphs`: a decode step
        replayed from a CUDA graph (the host issues nothing per layer, combine's replay_s)."""
        loads = slot_loads(ctx, steps, **kw)
        windows = window_loads(ctx, steps, k.streamed_weights, k.streamed_experts)
        if graphs:
            loads = [replayed(ctx, ll) for ll in loads]
            windows = [replace(w, graphed=True) for w in windows]
        fill = first_unit_fill(ctx, steps, k.group, k.token_block, streaming)
        if windows:
            slack = sum(w.count * (w.nonattn.total_s + w.attn.total_s) for w in windows) / ctx.model.kv_layers
            for ll in loads:
                ll.slack_s = slack
            fill = np.maximum(0.0, fill - slack)
        return combine(
            loads + windows,
            outside_layers(ctx, steps),
            fill,
            ctx.gpu,
            replay_s=ctx.gpu.replay_s() if graphs else None,
        )

    prefill = cost(pre)
    decode = cost(dec, graphs=k.graphs)
    kv = gpu_kv(k, ctx)
    host = host_memory(k, ctx)
    c = int(pre.C.max())
    se = k.streamed_experts
    mem = peak_memory(
        ctx,
        [
            ({**kv, "activations": activation_bytes(ctx, c, se, k.group), "logits": logits_bytes(ctx)}, host),
            ({**kv, "activations": activation_bytes(ctx, 1, se), "logits": logits_bytes(ctx)}, host),
        ],
        k.streamed_weights,
        k.streamed_experts,
    )
    shapes = new_shapes(pre, k.token_block, any(k.resident)) if k.token_block else None
    return Evaluation(prefill=prefill, decode=decode, memory=mem, new_shapes=shapes)


def program(b: Builder, k: SlotKnobs, steps: list[StepSpec], base: dict[str, float]) -> None:
    """The simulator's program of a slot plan: each step streams its layers' units through the ring."""
    ctx = b.ctx
    base.update(gpu_kv(k, ctx))
    for s in steps:
        first = len(b.tasks)
        layers = slot_units(
            ctx, s.C, s.P, k.group, list(k.resident), k.write_back, k.token_block,
            write_back_tokens=k.write_back_tokens,
        )  # fmt: skip
        last = streamed_step(
            b, s.phase, s.step, s.C, s.P, layers, depth=k.depth, buffers=k.buffers,
            d2h_on_compute=k.d2h_on_compute, syncs_per_unit=k.syncs, streamed_weights=k.streamed_weights,
            streamed_experts=k.streamed_experts,
        )  # fmt: skip
        if k.graphs and s.phase == "decode":
            b.replayed(first)
        b.sync(last, s.phase, s.step)
