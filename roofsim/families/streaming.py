"""KV streamed from pinned host memory in slots of (layer, group of KV heads): head_offload (HeadInfer),
layer_offload (one slot per layer: transformers' offloaded cache) and resident (every slot stays on the GPU).

Per step and layer, with S streamed slots of g KV heads and P cached tokens:
    H2D = S * B * P * g * d * 2 * dtype            (each slot's history comes up for attention)
    D2H = S * B * C * g * d * 2 * dtype            (incremental: the C new tokens)
        = S * B * (P + C) * g * d * 2 * dtype      (full write-back, as HeadInfer's and transformers' code do)
GPU KV = resident slots at full length + slot_buffers ring buffers (one slot, or one token block, each).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from roofsim import link
from roofsim.families.base import (
    Ctx,
    Evaluation,
    LayerLoad,
    Steps,
    activation_bytes,
    attn_work,
    check_divides,
    combine,
    decode_steps,
    kv_bytes,
    logits_bytes,
    nonattn_work,
    outside_layers,
    peak_memory,
    pinned_alloc,
    prefill_steps,
    weight_stream,
)
from roofsim.ops import tail_pending, write_back_share
from roofsim.plan import HeadOffloadPlan, LayerOffloadPlan, ResidentPlan

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
) -> list[LayerLoad]:
    """Layer loads for slot streaming; `resident` gives the resident slots of each layer.
    `gpu_kv_heads` (default all) is the number of KV heads the GPU attends and the slots are cut from."""
    m, B = ctx.model, ctx.work.batch
    heads = m.n_kv_heads if gpu_kv_heads is None else gpu_kv_heads
    slots = heads // group
    P, C = steps.P, steps.C
    blocks = np.ceil(P / token_block) if token_block else (P > 0).astype(float)
    w_bytes, w_copies = weight_stream(ctx, streamed_weights)
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
        d2h_tokens = C if write_back == "incremental" else P + C
        # with a GPU tail, the rows still in it come from there, and one forward in N writes back (on average)
        from_tail = np.minimum(P, tail_pending(C, write_back_tokens)) if write_back_tokens > 1 else 0.0
        loads.append(
            LayerLoad(
                count=count,
                nonattn=nonattn,
                attn=attn,
                h2d_bytes=S * kv_bytes(ctx, 1, group) * (P - from_tail) + w_bytes,
                h2d_copies=S * blocks + w_copies,
                d2h_bytes=S * kv_bytes(ctx, 1, group) * d2h_tokens,
                d2h_copies=S * B * write_back_share(C, write_back_tokens),
                units=S * blocks + (1 if w_bytes else 0),
                depth=min(depth, buffers - 1),
                d2h_on_compute=d2h_on_compute,
                syncs=S * syncs_per_slot,
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


def _evaluate(
    ctx: Ctx,
    *,
    group: int,
    resident: list[int],
    depth: int,
    buffers: int,
    write_back: str,
    token_block: int | None,
    syncs_per_slot: float,
    chunk: int | None,
    streamed_weights: bool,
    d2h_on_compute: bool = False,
    cat_alloc: bool = False,
    write_back_tokens: int = 1,
) -> Evaluation:
    m, w = ctx.model, ctx.work
    check_divides(m.n_kv_heads, group, "kv_heads_per_slot")
    slots = m.n_kv_heads // group
    streamed_slots = sum(slots - r for r in resident)
    streaming = streamed_slots > 0
    kw = dict(
        group=group,
        resident=resident,
        depth=depth,
        buffers=buffers,
        write_back=write_back,
        token_block=token_block,
        syncs_per_slot=syncs_per_slot,
        streamed_weights=streamed_weights,
        d2h_on_compute=d2h_on_compute,
        write_back_tokens=write_back_tokens,
    )
    pre = prefill_steps(w.context, chunk)
    dec = decode_steps([w.context, w.context + w.gen])
    prefill = combine(
        slot_loads(ctx, pre, **kw),
        outside_layers(ctx, pre),
        first_unit_fill(ctx, pre, group, token_block, streaming),
        ctx.gpu,
    )
    decode = combine(
        slot_loads(ctx, dec, **kw),
        outside_layers(ctx, dec),
        first_unit_fill(ctx, dec, group, token_block, streaming),
        ctx.gpu,
    )

    T = w.max_tokens
    slot_full = kv_bytes(ctx, T, group)
    unit = kv_bytes(ctx, min(T, token_block), group) if token_block else slot_full
    kv = {"kv_resident": sum(resident) * slot_full, "kv_buffers": buffers * unit if streaming else 0.0}
    if cat_alloc and streaming:
        kv["kv_buffers"] = CAT_PEAK_SLOTS * slot_full
    c = int(pre.C.max())
    kv["kv_buffers"] += tail_bytes(ctx, resident, slots, write_back_tokens, c)
    # roofsim's executor registers one exact-size pinned pool; transformers' cache (d2h_on_compute) gets each
    # layer's K and V from the caching host allocator, which rounds every block up to a power of two.
    half = slot_full / 2
    rounding = streamed_slots * 2 * (pinned_alloc(half) - half) if d2h_on_compute else 0.0
    host = {"kv": streamed_slots * slot_full, "pinned_rounding": rounding}
    mem = peak_memory(
        ctx,
        [
            ({**kv, "activations": activation_bytes(ctx, c), "logits": logits_bytes(ctx)}, host),
            ({**kv, "activations": activation_bytes(ctx, 1), "logits": logits_bytes(ctx)}, host),
        ],
        streamed_weights,
    )
    return Evaluation(prefill=prefill, decode=decode, memory=mem)


def _per_layer(ctx: Ctx, resident: int | list[int], slots: int) -> list[int]:
    from roofsim.errors import UserError

    n = ctx.model.n_layers
    values = [resident] * n if isinstance(resident, int) else list(resident)
    if len(values) != n:
        raise UserError(
            f"resident_slots lists {len(values)} layers but the model has {n}; give one value per layer"
        )
    for r in values:
        if not 0 <= r <= slots:
            raise UserError(
                f"resident_slots={r} is outside 0..{slots} (slots per layer at this kv_heads_per_slot)"
            )
    return values


def evaluate_head_offload(plan: HeadOffloadPlan, ctx: Ctx) -> Evaluation:
    check_divides(ctx.model.n_kv_heads, plan.kv_heads_per_slot, "kv_heads_per_slot")
    slots = ctx.model.n_kv_heads // plan.kv_heads_per_slot
    return _evaluate(
        ctx,
        group=plan.kv_heads_per_slot,
        resident=_per_layer(ctx, plan.resident_slots, slots),
        depth=plan.prefetch_depth,
        buffers=plan.slot_buffers,
        write_back=plan.write_back,
        token_block=plan.token_block,
        syncs_per_slot=plan.syncs_per_slot,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
        cat_alloc=plan.slot_alloc == "cat",
        write_back_tokens=plan.write_back_tokens,
    )


def evaluate_layer_offload(plan: LayerOffloadPlan, ctx: Ctx) -> Evaluation:
    full = plan.write_back == "full"
    ev = _evaluate(
        ctx,
        group=ctx.model.n_kv_heads,
        resident=[0] * ctx.model.n_layers,
        depth=1,
        buffers=2,
        write_back=plan.write_back,
        token_block=None,
        syncs_per_slot=plan.syncs_per_layer,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
        d2h_on_compute=full,
        write_back_tokens=plan.write_back_tokens,
    )
    if full:
        ev.notes.append(
            "write-back of the whole layer every step, ordered before attention (transformers 5.x)"
        )
    return ev


def evaluate_resident(plan: ResidentPlan, ctx: Ctx) -> Evaluation:
    return _evaluate(
        ctx,
        group=ctx.model.n_kv_heads,
        resident=[1] * ctx.model.n_layers,
        depth=1,
        buffers=2,
        write_back="incremental",
        token_block=None,
        syncs_per_slot=0,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
    )


__all__ = ["evaluate_head_offload", "evaluate_layer_offload", "evaluate_resident", "slot_loads"]
