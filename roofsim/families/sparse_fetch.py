"""InfiniGen (OSDI'24): the whole KV lives in host RAM. A GPU-resident partial key cache (ratio r of the key
columns) scores the cached tokens; the CPU gathers the selected rows into a pinned buffer and one bulk copy
brings them up. The first `dense_layers` layers fetch their whole KV. Approximate: attention sees only the
fetched tokens. InfiniGen speculates layer i's tokens from layer i-1 to hide the fetch; roofsim's executor
selects with the layer's own query (executor/sparse.py), so the fetch is on the critical path, and this model
prices that.

Per sparse layer and step: H2D = f*P tokens of KV, CPU RAM = 2x that (scattered read, pinned write),
GPU extra = the partial-q GEMV, scores over P keys x r*d columns (reads r of K), a top-k, one host sync.
"""

from __future__ import annotations

import numpy as np

from roofsim import link
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
from roofsim.families.streaming import first_unit_fill, layerwise_loads
from roofsim.ops import Op, topk_op
from roofsim.plan import SparseFetchPlan
from roofsim.roofline import work


def selection_ops(ctx: Ctx, P, r: float, fraction: float) -> list[Op]:
    """What the executor runs to pick a layer's tokens (executor/sparse.py): the query's r*d key columns, their
    scores against the partial key cache, the max over each KV head's query group, a top-k of fraction*P tokens
    per KV head (sorted), and the flat row numbers of the host gather."""
    m, B, e = ctx.model, ctx.work.batch, ctx.model.dtype_bytes
    cols = max(1.0, round(r * m.head_dim))
    k = np.ceil(fraction * np.asarray(P, dtype=float))
    return [
        Op("select_q", "vector", 0.0, 2.0 * B * m.n_heads * (m.head_dim + cols) * e, 3),
        Op(
            "select_scores",
            "gemm",
            2.0 * B * m.n_heads * P * cols,
            (B * m.n_kv_heads * P * cols + B * m.n_heads * P) * e,
            1,
        ),
        Op("select_amax", "vector", B * m.n_heads * P, (B * m.n_heads * P + B * m.n_kv_heads * P) * e, 1),
        topk_op("select_topk", B * m.n_kv_heads, P, k, e),
        Op("select_rows", "vector", 12.0 * B * m.n_kv_heads * k, 6 * 8.0 * 2 * B * m.n_kv_heads * k, 8),
    ]


def evaluate_sparse_fetch(plan: SparseFetchPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu, host = ctx.model, ctx.work, ctx.gpu, ctx.host
    dense = min(plan.dense_layers, m.n_layers)
    sparse = m.n_layers - dense
    streamed = plan.weights == "streamed"
    dec = decode_steps([w.context, w.context + w.gen])
    loads = []
    if dense:
        loads += layerwise_loads(ctx, dec, dense, streamed)
    if sparse:
        sel = np.ceil(plan.fetch_fraction * dec.P)
        w_bytes, w_copies = weight_stream(ctx, streamed)
        fetched = kv_bytes(ctx, 1, m.n_kv_heads) * sel
        gather_s = 2 * fetched / host.gather_bytes_per_s
        nonattn = nonattn_work(ctx, dec)
        spec = work(selection_ops(ctx, dec.P, plan.partial_key_ratio, plan.fetch_fraction), gpu)
        attn = attn_work(ctx, dec, keys=sel, streamed_calls=1)
        # the executor selects with the layer's own query after its pre-attention work, so the fetch (indices
        # to the host, a sync, the CPU gather, the copy) is on the critical path: InfiniGen's speculation from
        # the previous layer, which hides it, is not what runs
        rows = 8.0 * w.batch * m.n_kv_heads * 2 * sel  # int64 host rows of the picked tokens' K and V
        roundtrip = link.isolated_copy_s(rows, gpu, "d2h") + gpu.runtime.sync_us.value * 1e-6
        # the gathered rows copy at the rate of a stage the CPU has just written: as bytes at the pinned rate
        fetch_s = (
            roundtrip
            + gather_s
            + link.engine_s(fetched / link.gathered_share(gpu) + w_bytes, 1.0 + w_copies, gpu, "h2d")
        )
        override = attn.total_s + nonattn.total_s + spec.total_s + fetch_s
        loads.append(
            LayerLoad(
                count=sparse,
                nonattn=nonattn + spec,
                attn=attn,
                override_s=override,
                h2d_bytes=fetched + w_bytes,
                h2d_copies=1.0 + w_copies,
                d2h_bytes=kv_bytes(ctx, 1, m.n_kv_heads) * dec.C,
                d2h_copies=np.ones_like(dec.P),
                units=np.ones_like(dec.P),
                depth=1,
                pre_copy_s=gather_s,
                host_work_s=gather_s,  # on the issuing thread (executor/sparse.py), after the indices' sync
                syncs=1,
                cpu_ram_s=gather_s,
                cpu_bytes=2 * fetched,
            )
        )
    decode = combine(
        loads, outside_layers(ctx, dec), first_unit_fill(ctx, dec, m.n_kv_heads, None, dense > 0), gpu
    )

    pre = prefill_steps(w.context, plan.prefill_chunk)
    pre_loads = layerwise_loads(ctx, pre, m.n_layers, streamed)
    prefill = combine(
        pre_loads, outside_layers(ctx, pre), first_unit_fill(ctx, pre, m.n_kv_heads, None, True), gpu
    )

    T = w.max_tokens
    layer_kv = kv_bytes(ctx, T, m.n_kv_heads)
    fetch_buf = kv_bytes(ctx, int(np.ceil(plan.fetch_fraction * T)), m.n_kv_heads)
    partial_k = sparse * layer_kv / 2 * plan.partial_key_ratio
    partial_wq = sparse * m.hidden * m.n_heads * plan.partial_key_ratio * m.head_dim * m.dtype_bytes
    gpu_kv = {
        "kv_buffers": 2 * (layer_kv if dense else fetch_buf),
        "workspace": partial_k + partial_wq,
    }
    host_mem = {"kv": m.n_layers * layer_kv, "activations": 2 * fetch_buf}
    c = int(pre.C.max())
    mem = peak_memory(
        ctx,
        [
            ({**gpu_kv, "activations": activation_bytes(ctx, c), "logits": logits_bytes(ctx)}, host_mem),
            ({**gpu_kv, "activations": activation_bytes(ctx, 1), "logits": logits_bytes(ctx)}, host_mem),
        ],
        streamed,
    )
    notes = [
        f"approximate: attends {plan.fetch_fraction:.0%} of each layer's tokens after layer {dense - 1}"
        if dense
        else f"approximate: attends {plan.fetch_fraction:.0%} of each layer's tokens"
    ]
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)
