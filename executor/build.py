"""`make_cache(model, plan)`: the plan's Cache for a loaded transformers model, with the attention registered.

    cache = make_cache(model, plan, max_tokens=len(prompt) + new_tokens)
    model.generate(input_ids, past_key_values=cache, max_new_tokens=new_tokens)
    cache.close()                       # unregisters the pinned host store

The model's attention implementation is switched to "roofsim" (plain causal attention when no plan cache is
passed). Batches must hold sequences of equal length: attention masks (padding) are not applied.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from pathlib import Path

import torch
from roofsim.executor.cache import ATTN_NAME, RoofCache, Runtime, Shape, register_attention
from roofsim.executor.engine import make_engine
from roofsim.executor.families import builder_for
from roofsim.executor.recorder import Recorder
from roofsim.executor.window import window_of_layers, with_window_layers

from roofsim.errors import UserError
from roofsim.families.registry import check_kv_dtype, family
from roofsim.plan import PlanBase, default_plan, plan_from_dict


def shape_of(model, batch: int) -> Shape:
    cfg = (
        model.config.get_text_config(decoder=True)
        if hasattr(model.config, "get_text_config")
        else model.config
    )
    heads = cfg.num_attention_heads
    p = next(model.parameters())
    return Shape(
        n_layers=cfg.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        hidden=cfg.hidden_size,
        batch=batch,
        dtype=p.dtype,
        device=p.device,
    )


def coerce_plan(plan):
    if isinstance(plan, (str, Path)):
        text = str(plan)
        if Path(text).is_file():
            return plan_from_dict(json.loads(Path(text).read_text()), where=f"plan file {text!r}")
        return default_plan(text)
    if isinstance(plan, PlanBase):
        return plan
    return plan_from_dict(plan)


def _check_model(model, max_tokens: int | None) -> None:
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if any(w is not None for w in window_of_layers(cfg)):
        return  # window layers by layer_types: WindowLayer attends them
    if window is not None and getattr(cfg, "use_sliding_window", True) is not False:
        if max_tokens is None or max_tokens > window:
            raise UserError(
                f"the model uses sliding-window attention ({window} tokens), which the executor does not apply; "
                "set sliding_window to null in its config or keep max_tokens within the window"
            )


def make_cache(
    model,
    plan,
    *,
    max_tokens: int | None = None,
    batch_size: int = 1,
    engine=None,
    record: bool = False,
    gpu_spec: str | None = None,
) -> RoofCache:
    """The Cache that runs `plan` (a Plan, a dict, a plan.json path or a family name) on `model`.

    max_tokens: tokens per sequence the cache must hold (prompt + generated); needed by every plan that keeps KV
    in host memory, which is allocated once. record: collect spans (the runner's measured Trace).
    gpu_spec: GPU spec name for kvpr's recompute split when recompute_tokens="auto".

    weights="streamed": the decoder layers' parameters move to a pinned host region and stream through two GPU
    layer buffers on every forward (`roofsim.executor.weights`); `cache.close()` puts them back."""
    plan = coerce_plan(plan)
    check_kv_dtype(plan)
    _check_model(model, max_tokens)
    streamed_experts = 0
    if plan.experts == "streamed":
        from roofsim.executor.experts import experts_modules

        moe = sum(m is not None for m in experts_modules(model))
        if not moe or plan.resident_expert_layers > moe:
            raise UserError(
                f"experts='streamed' with resident_expert_layers={plan.resident_expert_layers} needs a Qwen3-MoE or "
                f"Mixtral model with at least that many MoE layers; this one has {moe} whose experts can stream"
            )
        streamed_experts = moe - plan.resident_expert_layers
    shape = shape_of(model, batch_size)
    windows = window_of_layers(model.config)
    if any(w is not None for w in windows):  # the family places the global layers' KV only
        if not family(plan).layer_kinds:
            raise UserError(
                f"plan family {plan.family} does not run window layers; use resident, layer_offload or head_offload"
            )
        shape = dataclasses.replace(shape, n_layers=sum(w is None for w in windows))
    engine = engine or make_engine(shape.device)
    rt = Runtime(shape, plan, engine, Recorder(engine, enabled=record), max_tokens)
    if family(plan).host_store and max_tokens is None:
        raise UserError(f"plan {plan.family} keeps KV in host memory: pass max_tokens (prompt + new tokens)")
    layers = builder_for(plan.family)(rt, plan, model, gpu_spec=gpu_spec)
    if any(w is not None for w in windows):
        layers = with_window_layers(rt, layers, windows)
    cache = RoofCache(rt, layers)
    if plan.weights == "streamed":
        from roofsim.executor.weights import WeightStreamer

        rt.weights = WeightStreamer(rt, model)
    from roofsim.executor.experts import ExpertStreamer, balance_routing, use_expert_loop

    if streamed_experts:
        rt.experts = ExpertStreamer(rt, model, streamed_experts)
    rt.close_callbacks.append(use_expert_loop(model))
    if getattr(model, "roofsim_random_weights", False):  # load_model's random weights: balanced routing
        rt.close_callbacks.append(balance_routing(model, rt))
    register_attention()
    model.set_attn_implementation(ATTN_NAME)
    ref = weakref.ref(cache)

    def pre(module, args, kwargs):
        if kwargs.get("past_key_values") is ref():
            rt.forward_start()

    def post(module, args, kwargs, output):
        if kwargs.get("past_key_values") is ref():
            rt.in_forward = False
            rt.end_step()

    rt.hooks.append(model.register_forward_pre_hook(pre, with_kwargs=True))
    rt.hooks.append(model.register_forward_hook(post, with_kwargs=True))
    weakref.finalize(cache, rt.close)
    return cache


# ---- slot families ---------------------------------------------------------------------------------------------


def release_gpu(*objs) -> None:
    """Free what a run held on the GPU (caller drops its own references first)."""
    import gc

    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resident_copy(cache: RoofCache, model) -> RoofCache:
    """A resident-plan cache holding the same KV as a slot-plan cache (resident, layer or head offload), in the
    same KV type: the 'same context, nothing streamed' reference of the benchmark, without a second prefill."""
    from roofsim.families import ResidentPlan

    rt = cache.runtime
    for layer in cache.layers:
        layer.flush()
    rt.engine.synchronize()
    sh = rt.shape
    n = cache.layers[0].seen
    out = make_cache(
        model, ResidentPlan(kv_dtype=rt.plan.kv_dtype), max_tokens=rt.capacity, batch_size=sh.batch
    )
    if rt.fp8:
        _fp8_resident_copy(cache, out, n)
        return out
    for src, dst in zip(cache.layers, out.layers, strict=True):
        slot = dst.slots[0]
        dst.P = 0
        dst._grow(slot, max(n, 1))
        for s in src.slots:
            data = s.gpu[:n] if s.resident else s.host[:n].to(sh.device)
            slot.gpu[:n, :, :, s.h0 : s.h1].copy_(data)
        dst.seen = n
    return out


def _fp8_resident_copy(cache: RoofCache, out: RoofCache, n: int, chunk: int = 32768) -> None:
    """Each layer's slots dequantised into rows of all heads, `chunk` tokens at a time, and stored again in the
    resident fp8 slot: the scales are per head and block, so the stored bytes come out as the slots' own."""
    from roofsim.executor import kvquant

    sh = cache.runtime.shape
    dst_lay = kvquant.layout_of(sh, sh.n_kv_heads)
    for src, dst in zip(cache.layers, out.layers, strict=True):
        slot = dst.slots[0]
        dst.P = 0
        dst._grow_fp8(slot, dst_lay, max(n, 1))
        for a in range(0, n, chunk):
            m = min(chunk, n - a)
            full = torch.empty(m, sh.batch, 2, sh.n_kv_heads, sh.head_dim, dtype=sh.dtype, device=sh.device)
            for s in src.slots:
                lay = kvquant.layout_of(sh, s.g)
                lo = a // kvquant.BLK * lay.block_bytes
                store = s.gpu if s.resident else s.host
                part = store[lo : lo + lay.nbytes(m)].to(sh.device)
                scratch = torch.empty(kvquant.scratch_numel(lay, m), dtype=sh.dtype, device=sh.device)
                full[:, :, :, s.h0 : s.h1].copy_(kvquant.dequantize(lay, part, m, scratch))
            kvquant.write(dst_lay, slot.gpu[a // kvquant.BLK * dst_lay.block_bytes :], 0, full)
        dst.seen = n
