"""`make_cache(model, plan)`: the plan's Cache for a loaded transformers model, with the attention registered.

    cache = make_cache(model, plan, max_tokens=len(prompt) + new_tokens)
    model.generate(input_ids, past_key_values=cache, max_new_tokens=new_tokens)
    cache.close()                       # unregisters the pinned host store

The model's attention implementation is switched to "roofsim" (plain causal attention when no plan cache is
passed). Batches must hold sequences of equal length: attention masks (padding) are not applied.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import torch
from roofsim.executor.cache import ATTN_NAME, Ring, RoofCache, Runtime, Shape, register_attention
from roofsim.executor.engine import make_engine
from roofsim.executor.hostpool import HostPool
from roofsim.executor.recorder import Recorder
from roofsim.executor.slots import Slot, SlotLayer, cut_slots

from roofsim.errors import UserError
from roofsim.families.base import check_divides
from roofsim.plan import PLAN_ADAPTER, plan_from_dict


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
        from roofsim.plan import default_plan

        return default_plan(text)
    if isinstance(plan, dict):
        return plan_from_dict(plan)
    return PLAN_ADAPTER.validate_python(plan)


def _check_model(model, max_tokens: int | None) -> None:
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
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
    _check_model(model, max_tokens)
    shape = shape_of(model, batch_size)
    engine = engine or make_engine(shape.device)
    rt = Runtime(shape, plan, engine, Recorder(engine, enabled=record), max_tokens)
    if plan.family not in ("resident", "evict") and max_tokens is None:
        raise UserError(f"plan {plan.family} keeps KV in host memory: pass max_tokens (prompt + new tokens)")
    builder = _builders()[plan.family]
    layers = builder(rt, plan, model, gpu_spec=gpu_spec)
    cache = RoofCache(rt, layers)
    if plan.weights == "streamed":
        from roofsim.executor.weights import WeightStreamer

        rt.weights = WeightStreamer(rt, model)
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


def _builders():
    from roofsim.executor import cpu_attn, evict, kvpr, sparse

    return {
        "resident": build_resident,
        "layer_offload": build_layer_offload,
        "head_offload": build_head_offload,
        "kvpr": kvpr.build,
        "cpu_attention": cpu_attn.build,
        "sparse_fetch": sparse.build,
        "evict": evict.build,
    }


# ---- slot families ---------------------------------------------------------------------------------------------


def host_pool(rt: Runtime) -> HostPool:
    pool = HostPool(pinned=rt.engine.kind == "cuda")
    rt.pool = pool
    return pool


def attach_host(rt: Runtime, slots_by_layer: list[list[Slot]]) -> None:
    """One pinned block per streamed slot, [capacity, B, 2, g, D], from one pool allocated once."""
    sh = rt.shape
    pool = rt.pool or host_pool(rt)
    handles = []
    for slots in slots_by_layer:
        for s in slots:
            if not s.resident:
                shape = (rt.capacity, sh.batch, 2, s.g, sh.head_dim)
                handles.append((s, pool.reserve(shape, sh.dtype), shape))
    pool.allocate()
    for s, h, shape in handles:
        s.host = pool.block(h, shape, sh.dtype)


def make_ring(rt: Runtime, n: int, tokens: int, heads: int, depth: int, extra: int = 0) -> None:
    sh = rt.shape
    n = max(n, 1)
    rt.ring = Ring(n, tokens * sh.batch * 2 * heads * sh.head_dim + extra, sh.dtype, sh.device)
    rt.depth = min(depth, n - 1)
    if depth > n - 1:
        rt.notes.append(f"prefetch_depth {depth} capped at slot_buffers - 1 = {n - 1}")


def build_resident(rt, plan, model, **_):
    sh = rt.shape
    return [SlotLayer(rt, i, [Slot(0, 0, sh.n_kv_heads, resident=True)]) for i in range(sh.n_layers)]


def build_layer_offload(rt, plan, model, **_):
    sh = rt.shape
    slots = [[Slot(0, 0, sh.n_kv_heads, resident=False)] for _ in range(sh.n_layers)]
    attach_host(rt, slots)
    make_ring(rt, 2, rt.capacity, sh.n_kv_heads, 1)
    full = plan.write_back == "full"
    if full:
        rt.notes.append("layer_offload full: whole-layer write-back on the compute stream before attention")
    return [
        SlotLayer(
            rt,
            i,
            s,
            write_back=plan.write_back,
            d2h_on_compute=full,
            syncs=plan.syncs_per_layer,
            write_back_tokens=plan.write_back_tokens,
        )
        for i, s in enumerate(slots)
    ]


def resident_per_layer(value, n_layers: int, slots: int) -> list[int]:
    values = [value] * n_layers if isinstance(value, int) else list(value)
    if len(values) != n_layers:
        raise UserError(f"resident_slots lists {len(values)} layers but the model has {n_layers}")
    for r in values:
        if not 0 <= r <= slots:
            raise UserError(f"resident_slots={r} is outside 0..{slots} (slots per layer)")
    return values


def build_head_offload(rt, plan, model, **_):
    sh = rt.shape
    g = plan.kv_heads_per_slot
    check_divides(sh.n_kv_heads, g, "kv_heads_per_slot")
    resident = resident_per_layer(plan.resident_slots, sh.n_layers, sh.n_kv_heads // g)
    slots = [cut_slots(sh.n_kv_heads, g, r) for r in resident]
    if getattr(plan, "slot_alloc", "ring") != "ring":
        rt.notes.append(
            f"slot_alloc={plan.slot_alloc} is run with the ring of slot buffers: HeadInfer's torch.cat growth "
            "(and its extra GPU memory) is not reproduced"
        )
    if any(not s.resident for layer in slots for s in layer):
        attach_host(rt, slots)
        make_ring(rt, plan.slot_buffers, plan.token_block or rt.capacity, g, plan.prefetch_depth)
    return [
        SlotLayer(
            rt,
            i,
            s,
            write_back=plan.write_back,
            syncs=plan.syncs_per_slot,
            token_block=plan.token_block,
            write_back_tokens=plan.write_back_tokens,
        )
        for i, s in enumerate(slots)
    ]


def release_gpu(*objs) -> None:
    """Free what a run held on the GPU (caller drops its own references first)."""
    import gc

    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resident_copy(cache: RoofCache, model) -> RoofCache:
    """A resident-plan cache holding the same KV as a slot-plan cache (resident, layer or head offload): the
    'same context, nothing streamed' reference of the benchmark, without a second prefill."""
    from roofsim.plan import ResidentPlan

    rt = cache.runtime
    for layer in cache.layers:
        layer.flush()
    rt.engine.synchronize()
    sh = rt.shape
    n = cache.layers[0].seen
    out = make_cache(model, ResidentPlan(), max_tokens=rt.capacity, batch_size=sh.batch)
    for src, dst in zip(cache.layers, out.layers, strict=True):
        slot = dst.slots[0]
        dst.P = 0
        dst._grow(slot, max(n, 1))
        for s in src.slots:
            data = s.gpu[:n] if s.resident else s.host[:n].to(sh.device)
            slot.gpu[:n, :, :, s.h0 : s.h1].copy_(data)
        dst.seen = n
    return out
