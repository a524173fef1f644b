"""KVPR (arXiv 2411.17089): per layer the host holds the whole KV and the attention input X of the first l_max
tokens. At decode, for split l (fixed, or re-solved each step with the analytic model when "auto"):

    H2D   X[:l]  -> ring buffer's X region          then   KV[l:P] -> ring buffer's KV region[l:P]
    compute: K, V of tokens [0, l) = k_proj/v_proj(X) with RoPE re-applied at positions 0..l-1 (stock modules)
    attention over the recomputed part and the streamed part + new token, merged by LSE (fp32)
    D2H   new KV (and the new tokens' X while they fall below l_max)

inter_layer overlap prefetches layer j+1's copies under layer j (depth 1); intra_layer issues a layer's copies at
its own start (X first, then KV) and recomputes while its KV is still arriving. Prefill streams the whole KV as
layer_offload with incremental write-back, and sends the prefix's X down.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import torch
from roofsim.executor.attention import attend_parts, chunk_parts, kv_views, pack_kv
from roofsim.executor.cache import PlanLayer, Runtime, Unit
from roofsim.executor.families import register_builder
from roofsim.executor.slots import host_pool, make_ring

from roofsim.errors import UserError


def decoder_layers(model):
    base = getattr(model, "model", model)
    return base.layers


def rotary_of(model):
    base = getattr(model, "model", model)
    return base.rotary_emb


def model_spec_of(model):
    from roofsim.specs.model import from_hf_config

    cfg = model.config.to_dict()
    return from_hf_config(cfg, name=cfg.get("model_type", "model"), source="model config")


class Splitter:
    """l for a decode step with P cached tokens."""

    def __init__(self, plan, model, batch: int, gpu_spec: str | None):
        self.fixed = plan.recompute_tokens if isinstance(plan.recompute_tokens, int) else None
        self.overlap = plan.overlap
        if self.fixed is None:
            from roofsim import link
            from roofsim.families.kvpr import per_token
            from roofsim.families.pipeline import Ctx, attn_work, decode_steps, nonattn_work
            from roofsim.specs import load_gpu
            from roofsim.specs.hardware import default_host_of
            from roofsim.workload import Workload

            gpu = load_gpu(gpu_spec or "h100-sxm")
            spec = model_spec_of(model)
            host = default_host_of(gpu_spec or "h100-sxm", gpu)
            self.ctx = Ctx(spec, gpu, host, Workload(context=1, batch=batch))
            self.a, self.k, self.r = per_token(self.ctx)
            self.bw, self.flops = link.rate(gpu, "h2d"), gpu.tensor_flops
            self._parts = (attn_work, decode_steps, nonattn_work)
            self.note = f"recompute split solved per step with the {gpu.name} spec ({self.overlap})"
        else:
            self.note = f"recompute split l = min({self.fixed}, P)"

    def __call__(self, P: int) -> int:
        if P <= 0:
            return 0
        if self.fixed is not None:
            return min(self.fixed, P)
        from roofsim.families.kvpr import optimal_split

        attn_work, decode_steps, nonattn_work = self._parts
        dec = decode_steps([P])
        rest = nonattn_work(self.ctx, dec).total_s + attn_work(self.ctx, dec).total_s
        split = optimal_split(dec.P, self.a, self.k, self.r, self.bw, self.flops, rest, self.overlap)
        return int(np.floor(split[0]))


def recompute_kv(module, x: torch.Tensor, rotary, n_kv: int, head_dim: int):
    """K, V [B, Hkv, l, D] of tokens 0..l-1 from their attention input x [B, l, hidden], with RoPE."""
    B, L, _ = x.shape
    if hasattr(module, "k_proj"):
        k, v = module.k_proj(x), module.v_proj(x)
    else:  # Phi-3: fused qkv_proj
        qkv = module.qkv_proj(x)
        q_end = qkv.shape[-1] - 2 * n_kv * head_dim
        k, v = qkv[..., q_end : q_end + n_kv * head_dim], qkv[..., q_end + n_kv * head_dim :]
    k = k.view(B, L, n_kv, head_dim)
    v = v.view(B, L, n_kv, head_dim).transpose(1, 2)
    pos = torch.arange(L, device=x.device)[None].expand(B, L)
    cos, sin = rotary(x, position_ids=pos)
    apply = sys.modules[type(module).__module__].apply_rotary_pos_emb
    # the model's own rotary, on K in its projection's [B, L, H, D] layout (every operand read in order, not a
    # transposed view against a contiguous one) and once: the query argument gets one head of K, then dropped
    _, k = apply(k[:, :, :1], k, cos, sin, unsqueeze_dim=2)
    return k.transpose(1, 2), v


class KvprLayer(PlanLayer):
    def __init__(self, rt: Runtime, idx: int, host_kv, host_x, l_max: int, module, rotary):
        super().__init__(rt, idx)
        self.host_kv, self.host_x, self.l_max = host_kv, host_x, l_max
        self.module, self.rotary = module, rotary
        self.kv_written = self.x_written = None

    def views(self, flat):
        sh, T = self.rt.shape, self.rt.capacity
        n_kv = T * sh.batch * 2 * sh.n_kv_heads * sh.head_dim
        kv = flat[:n_kv].view(T, sh.batch, 2, sh.n_kv_heads, sh.head_dim)
        x = flat[n_kv : n_kv + self.l_max * sh.batch * sh.hidden].view(self.l_max, sh.batch, sh.hidden)
        return kv, x

    def units(self, P: int, C: int) -> list[Unit]:
        split = self.rt.kvpr_l
        return [
            Unit((self.idx, 0), self.idx, 0, partial(self._load, P, split), [self.kv_written, self.x_written])
        ]

    def _load(self, P: int, split: int, flat):
        kv, x = self.views(flat)
        items = [(x[:split], self.host_x[:split])] if split else []
        items.append(None)
        if P > split:
            items.append((kv[split:P], self.host_kv[split:P]))
        return items

    def _attend(self, module, q, scale):
        rt, eng, rec, sh = self.rt, self.rt.engine, self.rt.rec, self.rt.shape
        P, C, split = self.P, self.C, rt.kvpr_l
        x_new = rt.x_pending.pop(self.idx)
        new = pack_kv(self.k_new, self.v_new)
        flat, unit = rt.acquire((self.idx, 0), wait=False)
        kv, xbuf = self.views(flat)
        parts = []
        if split:
            eng.wait(eng.compute, unit.stages[0])
            r0 = rec.mark(eng.compute)
            xl = xbuf[:split].transpose(0, 1)
            k_r, v_r = recompute_kv(module, xl, self.rotary, sh.n_kv_heads, sh.head_dim)
            rec.span(
                "compute",
                "recompute",
                r0,
                rec.mark(eng.compute),
                layer=self.idx,
                flops=2.0 * sh.batch * split * sh.hidden * 2 * sh.n_kv_heads * sh.head_dim,
                nbytes=xl.numel() * xl.element_size(),
            )
            parts.append((k_r, v_r, False))
        eng.wait(eng.compute, unit.ready)
        kv[P : P + C].copy_(new)
        x_end = min(P + C, self.l_max)
        if x_end > P:
            xbuf[P:x_end].copy_(x_new[:, : x_end - P].transpose(0, 1))
        a0 = rec.mark(eng.compute)
        K, V = kv_views(kv, split, P + C)
        parts += chunk_parts(K, V, P - split, C)
        out, _ = attend_parts(q, parts, scale)
        done = eng.event(eng.compute)
        self.attn_span(a0, done, 0, P + C, sh.n_kv_heads, C)
        eng.wait(eng.d2h, done)
        d0 = rec.mark(eng.d2h)
        eng.copy(eng.d2h, self.host_kv[P : P + C], kv[P : P + C])
        nbytes = C * sh.kv_row_bytes(sh.n_kv_heads)
        if x_end > P:
            eng.copy(eng.d2h, self.host_x[P:x_end], xbuf[P:x_end])
            nbytes += (x_end - P) * xbuf[0].numel() * xbuf.element_size()
        rel = self.kv_written = self.x_written = eng.event(eng.d2h)
        rec.span("d2h", "d2h", d0, rel, layer=self.idx, nbytes=nbytes)
        rt.release(unit, rel)
        return out


@register_builder("kvpr")
def build(rt: Runtime, plan, model, gpu_spec: str | None = None, **_):
    sh = rt.shape
    splitter = Splitter(plan, model, sh.batch, gpu_spec)
    l_max = splitter(rt.capacity - 1)
    rt.notes.append(f"kvpr: {splitter.note}; activations of up to {l_max} tokens kept on the host")
    pool = host_pool(rt)
    kv_shape = (rt.capacity, sh.batch, 2, sh.n_kv_heads, sh.head_dim)
    x_shape = (l_max, sh.batch, sh.hidden)
    handles = [
        (pool.reserve(kv_shape, sh.dtype), pool.reserve(x_shape, sh.dtype)) for _ in range(sh.n_layers)
    ]
    pool.allocate()
    make_ring(
        rt,
        2,
        rt.capacity,
        sh.n_kv_heads,
        1 if plan.overlap == "inter_layer" else 0,
        extra=l_max * sh.batch * sh.hidden,
    )
    rotary = rotary_of(model)
    mods = [layer.self_attn for layer in decoder_layers(model)]
    if len(mods) != sh.n_layers:
        raise UserError(f"kvpr: found {len(mods)} attention modules for {sh.n_layers} layers")

    def grab(i):
        def hook(module, args, kwargs):
            # only in a forward with this cache: otherwise the warm-up forward's inputs stay held
            # (docs/evidence.md#ev-kvpr-hooks-memory)
            if rt.in_forward:
                rt.x_pending[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    rt.hooks += [m.register_forward_pre_hook(grab(i), with_kwargs=True) for i, m in enumerate(mods)]
    rt.kvpr_l = 0
    begin = rt.begin_step

    def begin_step(P, C):
        rt.C = C
        rt.kvpr_l = splitter(P) if rt.phase == "decode" else 0
        begin(P, C)

    rt.begin_step = begin_step
    return [
        KvprLayer(
            rt,
            i,
            pool.block(hk, kv_shape, sh.dtype),
            pool.block(hx, x_shape, sh.dtype),
            l_max,
            mods[i],
            rotary,
        )
        for i, (hk, hx) in enumerate(handles)
    ]
