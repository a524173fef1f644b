"""Locret (arXiv 2410.01805): every layer keeps at most budget_tokens KV per head on the GPU. Prefill runs in
chunks; after each chunk the cached tokens are scored and the lowest-scored ones are evicted (top-k plus a
gather through HBM). Locret scores with trained retaining heads, which are not available: the executor scores by
the attention each token receives from the chunk's last 32 queries (SnapKV's window), and this model prices that.
The last local_tokens of the prompt are prefilled without eviction. No KV crosses the link. Approximate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from roofsim.families.pipeline import (
    Ctx,
    Evaluation,
    LayerLoad,
    activation_bytes,
    attn_work,
    both_ways,
    combine,
    decode_steps,
    kv_bytes,
    logits_bytes,
    nonattn_work,
    outside_layers,
    peak_memory,
    prefill_steps,
    replayed,
    replays,
    weight_stream,
)
from roofsim.families.registry import Family, register
from roofsim.ops import Op, topk_op
from roofsim.plan import PlanBase
from roofsim.roofline import work
from roofsim.sim.builder import Builder, StepSpec, WeightStream
from roofsim.space import SearchSpace, weights_options
from roofsim.specs.model import ModelSpec
from roofsim.units import MAX_TOKENS
from roofsim.workload import Workload


class EvictPlan(PlanBase):
    """Locret: a fixed per-head GPU budget of b tokens; after each prefill chunk the lowest-scored KV is evicted.
    No KV crosses the link. Approximate."""

    family: Literal["evict"] = "evict"
    prefill_chunk: int | None = Field(1024, gt=0, le=MAX_TOKENS)
    budget_tokens: int = Field(16384, gt=0, le=MAX_TOKENS)
    local_tokens: int = Field(
        100, ge=0, le=MAX_TOKENS, description="last prompt tokens prefilled without eviction"
    )
    decode_graphs: bool = Field(
        True,
        description="replay each decode step's GPU work from a CUDA graph (decode never evicts, so its shapes are "
        "fixed once the kept KV's buffers hold every step): the host issues one replay per step instead of every "
        "kernel (CUDA only, on one GPU, with resident weights and a dense MLP; eager otherwise, and priced eager "
        "there too). false: every step issued kernel by kernel. Plans stored before this knob existed ran eager "
        "(roofsim.trace.upgrade, roofsim.validate's stored runs)",
    )

    @property
    def approximate(self) -> bool:
        return True


WINDOW = 32  # the executor's observation window (executor/evict.py)


def evict_ops(ctx: Ctx, n, C, keep) -> list[Op]:
    """The executor's proxy scorer and eviction for one layer after a prefill chunk (executor/evict.py), over n
    cached keys (the kept ones and the chunk's), keeping `keep`: K upcast to fp32, the last WINDOW queries' scores
    against it (an fp32 matmul), the causal mask, softmax and the sum over queries, a top-k of `keep` per KV head,
    and the gather of the kept K, V and positions. Locret's trained retaining heads are not available."""
    m, B, e = ctx.model, ctx.work.batch, ctx.model.dtype_bytes
    n = np.asarray(n, dtype=float)
    w = np.minimum(WINDOW, np.asarray(C, dtype=float))
    k_elems = B * m.n_kv_heads * n * m.head_dim
    scores = B * m.n_heads * w * n
    return [
        Op("score_k_fp32", "vector", 0.0, k_elems * (e + 4), 2),
        Op(
            "score_matmul",
            "vector",
            2.0 * scores * m.head_dim,
            (k_elems + B * m.n_heads * w * m.head_dim) * 4,
            2,
        ),
        Op("score_softmax", "vector", 6.0 * scores, scores * 4 * 7, 6),
        topk_op("evict_topk", B * m.n_kv_heads, n, keep, e),
        Op("evict_gather", "vector", 0.0, 2.0 * 2 * B * m.n_kv_heads * keep * (m.head_dim * e + 8), 6),
    ]


def evict_workspace(ctx: Ctx, n) -> float:
    """The scorer's temporaries at their peak: K in fp32, the scores and their softmax (fp32)."""
    m, B = ctx.model, ctx.work.batch
    return float(B * m.n_kv_heads * n * m.head_dim * 4 + 2 * B * m.n_heads * WINDOW * n * 4)


def evaluate(plan: EvictPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu = ctx.model, ctx.work, ctx.gpu
    b = plan.budget_tokens
    streamed = plan.weights == "streamed"
    w_bytes, w_copies = weight_stream(ctx, streamed)

    pre = prefill_steps(w.context, plan.prefill_chunk)
    cached = np.minimum(pre.P, b)
    over = (pre.P + pre.C > b).astype(float)
    n_scored = cached + pre.C
    scoring = work(evict_ops(ctx, n_scored, pre.C, np.minimum(n_scored, b)), gpu).scale(over)
    pre_load = LayerLoad(
        count=m.n_layers,
        nonattn=nonattn_work(ctx, pre) + scoring,
        attn=attn_work(ctx, pre, keys=cached),
        h2d_bytes=w_bytes,
        h2d_copies=w_copies,
        units=np.full_like(pre.P, 1.0 if w_bytes else 0.0),
    )
    prefill = combine([pre_load], outside_layers(ctx, pre), 0.0, gpu)

    dec = decode_steps([w.context, w.context + w.gen])
    keys = np.minimum(dec.P, b + plan.local_tokens + (dec.P - w.context))
    graphs = replays(plan, m)
    dec_load = LayerLoad(
        count=m.n_layers,
        nonattn=nonattn_work(ctx, dec),
        attn=attn_work(ctx, dec, keys=keys),
        h2d_bytes=w_bytes,
        h2d_copies=w_copies,
        units=np.full_like(dec.P, 1.0 if w_bytes else 0.0),
    )
    if graphs:
        dec_load = replayed(ctx, dec_load)
    decode = combine(
        [dec_load], outside_layers(ctx, dec), 0.0, gpu, replay_s=gpu.replay_s() if graphs else None
    )

    c = int(pre.C.max())
    T = w.max_tokens
    kv_prefill = m.n_layers * kv_bytes(ctx, min(w.context, b + c), m.n_kv_heads)
    kv_decode = m.n_layers * kv_bytes(ctx, min(T, b + plan.local_tokens + w.gen), m.n_kv_heads)
    scorer = {"workspace": evict_workspace(ctx, min(w.context, b + c))}
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
        f"approximate: keeps {b} tokens per head ({kept:.1%} of the context), scored by the executor's proxy "
        "(the attention from the last 32 queries of each chunk)"
    ]
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)


def program(b: Builder, plan: EvictPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
    ctx = b.ctx
    m, w = ctx.model, ctx.work
    bud = plan.budget_tokens
    graphs = replays(plan, m)
    for s in steps:
        first = len(b.tasks)
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
        b.finish(s, prev, alloc, replay_from=first if graphs and s.phase == "decode" else None)


def host_memory(plan: EvictPlan, ctx: Ctx) -> dict[str, float]:
    """Nothing: every kept token stays on the GPU."""
    return {}


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[EvictPlan]:
    """Locret's budgets (16384 tokens per head for Llama-3.1-8B, 6000 for Phi-3-mini) unless the space sets one,
    in its chunks of 1024 and 3072 tokens; each with its decode replayed from a CUDA graph, and eager too where
    the executor can replay it."""
    budget = space.evict_budget or (6000 if model.family == "phi3" else 16384)
    for weights in weights_options(space):
        for c in (1024, 3072):
            yield from both_ways(EvictPlan(budget_tokens=budget, prefill_chunk=c, weights=weights), model)


FAMILY = register(
    Family(
        plan_type=EvictPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        host_store=False,
    )
)
