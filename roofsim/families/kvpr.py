"""KVPR (arXiv 2411.17089): per layer, send the activations X of the first l tokens and recompute their K/V on the
GPU while the KV of the other s - l tokens streams.

Per token and layer: a = B*h*dtype bytes of X, k = B*2*Hkv*d*dtype bytes of KV, r = 2*B*h*2*Hkv*d recompute FLOPs.
    intra_layer (the paper):  T(l) = a*l/Bw + max(r*l/F, k*(s-l)/Bw) + rest
    inter_layer (their code): T(l) = max((a*l + k*(s-l))/Bw, r*l/F + rest)    (layer j+1's copies under layer j)
Both are piecewise linear in l, so the optimum is at 0, s or where the two lines cross. For MHA the intra form
gives l* = s / (1 + h*Bw/F). Sending X pays only while a < k, i.e. GQA group g < 2: for Llama-3 (g = 4) l* = 0.
RoPE models pay the rotary re-application on the recomputed K.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from roofsim import link, ops
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
from roofsim.ops import Op
from roofsim.plan import PlanBase
from roofsim.roofline import work
from roofsim.sim.builder import Builder, StepSpec, WeightStream, layerwise_prefill_step
from roofsim.space import SearchSpace, chunks, weights_options
from roofsim.specs.model import ModelSpec
from roofsim.units import MAX_TOKENS
from roofsim.workload import Workload


class KvprPlan(PlanBase):
    """KVPR: for each layer send the activations of the first l tokens and recompute their K/V on the GPU while
    the KV of the other tokens streams. recompute_tokens="auto" re-solves l at every step."""

    family: Literal["kvpr"] = "kvpr"
    recompute_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] | Literal["auto"] = "auto"
    overlap: Literal["intra_layer", "inter_layer"] = Field(
        "inter_layer",
        description="intra_layer: the paper's act + max(recompute, kv); inter_layer: its code's",
    )


def closed_form_split(s, hidden: int, bw: float, flops: float):
    """The paper's optimum for MHA with fp16 X and KV: l* = s / (1 + h*Bw/F)."""
    return np.asarray(s, dtype=float) / (1.0 + hidden * bw / flops)


def optimal_split(
    s, a: float, k: float, r: float, bw: float, flops: float, rest_s=0.0, overlap: str = "intra_layer"
):
    """The split l in [0, s] minimising the step time of the chosen overlap form (vectorised over s and rest_s)."""
    s = np.asarray(s, dtype=float)
    rest = np.asarray(rest_s, dtype=float)
    if a >= k:  # sending X costs at least as much as sending the KV it replaces
        return np.zeros_like(s)
    if overlap == "intra_layer":
        l_cross = s * (k / bw) / (r / flops + k / bw)
    else:
        l_cross = (k * s / bw - rest) / ((k - a) / bw + r / flops)
    return np.clip(l_cross, 0.0, s)


def split_time(split, s, a, k, r, bw, flops, rest_s=0.0, overlap: str = "intra_layer"):
    split = np.asarray(split, dtype=float)
    if overlap == "intra_layer":
        return a * split / bw + np.maximum(r * split / flops, k * (s - split) / bw) + rest_s
    return np.maximum((a * split + k * (s - split)) / bw, r * split / flops + rest_s)


def per_token(ctx: Ctx) -> tuple[float, float, float]:
    """(a, k, r): X bytes, KV bytes and recompute FLOPs per token per layer for the batch."""
    m, B = ctx.model, ctx.work.batch
    return (
        float(B * m.hidden * m.dtype_bytes),
        kv_bytes(ctx, 1, m.n_kv_heads),
        float(2 * B * m.hidden * 2 * m.kv_dim),
    )


def recompute_ops(ctx: Ctx, tokens) -> list[Op]:
    m, B = ctx.model, ctx.work.batch
    rows = B * np.asarray(tokens, dtype=float)
    e = m.dtype_bytes
    n = 2 * m.kv_dim
    ops = [
        Op("kv_recompute", "gemm", 2.0 * rows * m.hidden * n, (m.hidden * n + rows * (m.hidden + n)) * e, 2)
    ]
    if m.positions == "rope":
        # the executor re-applies rotary with the model's own apply_rotary_pos_emb(one head of K, K, cos, sin): HF's
        # rotary (~10 bytes moved per byte of K, executor/kvpr.py) on K and on the one head its query argument
        # gets, plus the cos/sin of the l positions in fp32
        rope = (1.0 + 1.0 / m.n_kv_heads) * 10.0 * rows * m.kv_dim * e + 6 * rows * m.head_dim * 4
        ops.append(Op("rope_recompute", "vector", 6.0 * rows * m.kv_dim, rope, 16))
    return ops


def recompute_peak_bytes(ctx: Ctx, tokens) -> float:
    """GPU memory the recompute of `tokens` tokens' K/V holds at its peak in the executor: K and V, and with
    rotary the rotation's k*cos and rotate_half(k)*sin as they are added into the rotated K (5 K-sized tensors;
    2 without rotary)."""
    m = ctx.model
    per = float(ctx.work.batch) * float(tokens) * m.kv_dim * m.dtype_bytes
    return (5.0 if m.positions == "rope" else 2.0) * per


def _splits(plan: KvprPlan, ctx: Ctx, dec) -> np.ndarray:
    """The recompute split l of each decode step: fixed (at most the past), or solved with the step's other work."""
    if plan.recompute_tokens != "auto":
        return np.minimum(float(plan.recompute_tokens), dec.P)
    a, k, r = per_token(ctx)
    rest = nonattn_work(ctx, dec).total_s + attn_work(ctx, dec, streamed_calls=1).total_s
    bw = link.rate(ctx.gpu, "h2d")
    return np.floor(optimal_split(dec.P, a, k, r, bw, ctx.gpu.tensor_flops, rest, plan.overlap))


def evaluate(plan: KvprPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu = ctx.model, ctx.work, ctx.gpu
    a, k, r = per_token(ctx)
    dec = decode_steps([w.context, w.context + w.gen])
    nonattn = nonattn_work(ctx, dec)
    attn = attn_work(ctx, dec, streamed_calls=1)
    rest = nonattn.total_s + attn.total_s
    s = dec.P
    split = _splits(plan, ctx, dec)
    w_bytes, w_copies = weight_stream(ctx, plan.weights == "streamed")
    recompute = work(recompute_ops(ctx, split), gpu).scale((split > 0).astype(float))  # no kernels when l = 0
    h2d = a * split + k * (s - split) + w_bytes
    copies = (split > 0).astype(float) + (s - split > 0).astype(float) + w_copies
    d2h = k + a * (split > 0)  # the new token's KV, and its X while a prefix is recomputed
    load = LayerLoad(
        count=m.n_layers,
        nonattn=nonattn + recompute,
        attn=attn,
        h2d_bytes=h2d,
        h2d_copies=copies,
        d2h_bytes=d2h,
        d2h_copies=np.ones_like(s) + (split > 0),
        units=np.ones_like(s),
        depth=1,
    )
    if plan.overlap == "intra_layer":
        act_s = link.engine_s(a * split, (split > 0).astype(float), gpu, "h2d")
        kv_s = link.engine_s(k * (s - split) + w_bytes, 1.0, gpu, "h2d")
        load.override_s = act_s + np.maximum(recompute.total_s, kv_s) + rest
    fill = first_unit_fill(ctx, dec, m.n_kv_heads, None, True) if plan.overlap == "inter_layer" else 0.0
    decode = combine([load], outside_layers(ctx, dec), fill, gpu)

    pre = prefill_steps(w.context, plan.prefill_chunk)
    pre_loads = layerwise_loads(ctx, pre, m.n_layers, plan.weights == "streamed")
    l_end = float(split[-1])
    if l_end > 0:  # X of the prefix goes to the host too
        for ll in pre_loads:
            ll.d2h_bytes = ll.d2h_bytes + a * np.clip(l_end - pre.P, 0, pre.C)
    prefill = combine(
        pre_loads, outside_layers(ctx, pre), first_unit_fill(ctx, pre, m.n_kv_heads, None, True), gpu
    )

    T = w.max_tokens
    layer_kv = kv_bytes(ctx, T, m.n_kv_heads)
    gpu_kv = {
        "kv_buffers": 2 * (layer_kv + a * l_end)
    }  # the executor's ring: a layer's KV and X of the prefix
    host = host_memory(plan, ctx, l_end)
    c = int(pre.C.max())
    recompute = {"workspace": recompute_peak_bytes(ctx, l_end)}
    mem = peak_memory(
        ctx,
        [
            ({**gpu_kv, "activations": activation_bytes(ctx, c), "logits": logits_bytes(ctx)}, host),
            (
                {**gpu_kv, **recompute, "activations": activation_bytes(ctx, 1), "logits": logits_bytes(ctx)},
                host,
            ),
        ],
        plan.weights == "streamed",
    )
    notes = [f"recompute split l = {int(split[0])} of {int(s[0])} tokens ({split[0] / s[0]:.2f})"]
    if a >= k:
        notes.append(f"GQA group {m.group} >= 2: sending X costs more than the KV it replaces, so l = 0")
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)


def program(b: Builder, plan: KvprPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
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
            layerwise_prefill_step(b, s, plan.weights == "streamed")
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


def host_memory(plan: KvprPlan, ctx: Ctx, recomputed: float | None = None) -> dict[str, float]:
    """Every layer's KV, and the attention input X of the longest prefix recomputed (`recomputed` tokens; by
    default the split at the run's last decode step)."""
    m, w = ctx.model, ctx.work
    a, k, r = per_token(ctx)
    if recomputed is None:
        recomputed = float(_splits(plan, ctx, decode_steps([w.context, w.context + w.gen]))[-1])
    return {
        "kv": m.n_layers * kv_bytes(ctx, w.max_tokens, m.n_kv_heads),
        "activations": m.n_layers * a * recomputed,
    }


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[KvprPlan]:
    for weights in weights_options(space):
        for overlap in space.kvpr_overlaps:
            for c in chunks(work):
                yield KvprPlan(overlap=overlap, prefill_chunk=c, weights=weights)


def default(space: SearchSpace) -> KvprPlan:
    """The default plan in an overlap form the space allows."""
    plan = KvprPlan()
    return (
        plan
        if plan.overlap in space.kvpr_overlaps
        else plan.model_copy(update={"overlap": space.kvpr_overlaps[0]})
    )


FAMILY = register(
    Family(
        plan_type=KvprPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        default=default,
        h2d_payload="KV and the activations that recompute KV",
    )
)
