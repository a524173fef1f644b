"""layer_offload: each layer's KV in one pinned host slot, streamed through two ring buffers; write_back="full"
sends the whole layer back on the compute stream before attention, as transformers' offloaded cache does."""

from __future__ import annotations

from roofsim.executor.cache import Runtime
from roofsim.executor.families import register_builder
from roofsim.executor.slots import Slot, SlotLayer, attach_host, make_ring, reserve_scratch


@register_builder("layer_offload")
def build(rt: Runtime, plan, model, **_) -> list[SlotLayer]:
    sh = rt.shape
    slots = [[Slot(0, 0, sh.n_kv_heads, resident=False)] for _ in range(sh.n_layers)]
    attach_host(rt, slots)
    make_ring(rt, 2, rt.capacity, sh.n_kv_heads, 1)
    reserve_scratch(rt, sh.n_kv_heads)
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
