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

from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from roofsim import link
from roofsim.families.pipeline import (
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
from roofsim.families.registry import Family, register
from roofsim.families.slot_stream import first_unit_fill, layerwise_loads
from roofsim.ops import Op, topk_op
from roofsim.plan import PlanBase
from roofsim.roofline import work
from roofsim.sim.builder import Builder, StepSpec, WeightStream, layerwise_prefill_step
from roofsim.space import SearchSpace, chunks, weights_options
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


class SparseFetchPlan(PlanBase):
    """InfiniGen: a GPU-resident partial key cache (ratio r of the key columns) speculates which tokens the next
    layer needs; only a fraction f of each layer's KV is gathered on the CPU and fetched. Approximate."""

    family: Literal["sparse_fetch"] = "sparse_fetch"
    fetch_fraction: float = Field(0.2, gt=0, le=1, description="f: share of each layer's tokens fetched")
    partial_key_ratio: float = Field(0.2, gt=0, le=1, description="r: share of key columns kept on the GPU")
    dense_layers: int = Field(2, ge=0, description="first layers fetched in full")

    @property
    def approximate(self) -> bool:
        return True


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


def evaluate(plan: SparseFetchPlan, ctx: Ctx) -> Evaluation:
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
    host_mem = host_memory(plan, ctx)
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


def program(b: Builder, plan: SparseFetchPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
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
            layerwise_prefill_step(b, s, plan.weights == "streamed")
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


def host_memory(plan: SparseFetchPlan, ctx: Ctx) -> dict[str, float]:
    """Every layer's KV, and two pinned stages of the selected rows."""
    m, T = ctx.model, ctx.work.max_tokens
    fetch_buf = kv_bytes(ctx, int(np.ceil(plan.fetch_fraction * T)), m.n_kv_heads)
    return {"kv": m.n_layers * kv_bytes(ctx, T, m.n_kv_heads), "activations": 2 * fetch_buf}


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[SparseFetchPlan]:
    for weights in weights_options(space):
        for c in chunks(work):
            yield SparseFetchPlan(fetch_fraction=space.fetch_fraction, prefill_chunk=c, weights=weights)


FAMILY = register(
    Family(
        plan_type=SparseFetchPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
    )
)
