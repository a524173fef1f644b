"""Locret (arXiv 2410.01805): every layer keeps at most budget_tokens KV per head on the GPU. Prefill runs in
chunks; after each chunk a scorer (Locret's trained retaining heads: qkv -> 1024 -> Hkv per layer) ranks the
cached units and the lowest-scored ones are evicted (top-k plus a gather through HBM). The last local_tokens of
the prompt are prefilled without eviction. No KV crosses the link. Approximate.
"""

from __future__ import annotations

import numpy as np

from roofsim.families.base import (
    Ctx,
    Evaluation,
    LayerLoad,
    activation_bytes,
    attn_work,
    combine,
    decode_steps,
    kv_bytes,
    logits_bytes,
    nonattn_work,
    outside_layers,
    peak_memory,
    prefill_steps,
    weight_stream,
)
from roofsim.ops import Op
from roofsim.plan import EvictPlan
from roofsim.roofline import work

SCORER_HIDDEN = 1024  # Locret's retaining-head width


def scorer_ops(ctx: Ctx, C) -> list[Op]:
    m, B, e = ctx.model, ctx.work.batch, ctx.model.dtype_bytes
    rows = B * np.asarray(C, dtype=float)
    fan_in = (m.n_heads + 2 * m.n_kv_heads) * m.head_dim
    return [
        Op(
            "scorer_fc1",
            "gemm",
            2.0 * rows * fan_in * SCORER_HIDDEN,
            (fan_in * SCORER_HIDDEN + rows * (fan_in + SCORER_HIDDEN)) * e,
            2,
        ),
        Op(
            "scorer_fc2",
            "gemm",
            2.0 * rows * SCORER_HIDDEN * m.n_kv_heads,
            (SCORER_HIDDEN * m.n_kv_heads + rows * SCORER_HIDDEN) * e,
            1,
        ),
    ]


def scorer_params(m) -> int:
    return m.n_layers * (
        (m.n_heads + 2 * m.n_kv_heads) * m.head_dim * SCORER_HIDDEN + SCORER_HIDDEN * m.n_kv_heads
    )


def evaluate_evict(plan: EvictPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu = ctx.model, ctx.work, ctx.gpu
    b = plan.budget_tokens
    streamed = plan.weights == "streamed"
    w_bytes, w_copies = weight_stream(ctx, streamed)

    pre = prefill_steps(w.context, plan.prefill_chunk)
    cached = np.minimum(pre.P, b)
    over = (pre.P + pre.C > b).astype(float)
    evict_ops = [
        Op(
            "evict_topk",
            "vector",
            2.0 * w.batch * m.n_kv_heads * (cached + pre.C),
            4.0 * w.batch * m.n_kv_heads * (cached + pre.C) * 2,
            3,
        ),
        Op(
            "evict_gather",
            "vector",
            0.0,
            2.0 * kv_bytes(ctx, 1, m.n_kv_heads) * np.minimum(pre.P + pre.C, b) * over,
            2,
        ),
    ]
    pre_load = LayerLoad(
        count=m.n_layers,
        nonattn=nonattn_work(ctx, pre) + work(scorer_ops(ctx, pre.C) + evict_ops, gpu),
        attn=attn_work(ctx, pre, keys=cached),
        h2d_bytes=w_bytes,
        h2d_copies=w_copies,
        units=np.full_like(pre.P, 1.0 if w_bytes else 0.0),
    )
    prefill = combine([pre_load], outside_layers(ctx, pre), 0.0, gpu)

    dec = decode_steps([w.context, w.context + w.gen])
    keys = np.minimum(dec.P, b + plan.local_tokens + (dec.P - w.context))
    dec_load = LayerLoad(
        count=m.n_layers,
        nonattn=nonattn_work(ctx, dec),
        attn=attn_work(ctx, dec, keys=keys),
        h2d_bytes=w_bytes,
        h2d_copies=w_copies,
        units=np.full_like(dec.P, 1.0 if w_bytes else 0.0),
    )
    decode = combine([dec_load], outside_layers(ctx, dec), 0.0, gpu)

    c = int(pre.C.max())
    T = w.max_tokens
    kv_prefill = m.n_layers * kv_bytes(ctx, min(w.context, b + c), m.n_kv_heads)
    kv_decode = m.n_layers * kv_bytes(ctx, min(T, b + plan.local_tokens + w.gen), m.n_kv_heads)
    scorer = {"workspace": float(scorer_params(m) * m.dtype_bytes)}
    mem = peak_memory(
        ctx,
        [
            (
                {
                    "kv_resident": kv_prefill,
                    **scorer,
                    "activations": activation_bytes(ctx, c),
                    "logits": logits_bytes(ctx),
                },
                {},
            ),
            (
                {
                    "kv_resident": kv_decode,
                    **scorer,
                    "activations": activation_bytes(ctx, 1),
                    "logits": logits_bytes(ctx),
                },
                {},
            ),
        ],
        streamed,
    )
    kept = min(1.0, (b + plan.local_tokens) / w.context)
    notes = [
        f"approximate: keeps {b} tokens per head ({kept:.1%} of the context); scorer weights count as workspace"
    ]
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)
