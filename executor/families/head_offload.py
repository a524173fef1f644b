"""head_offload: each layer's KV heads cut into slots of kv_heads_per_slot; resident_slots stay on the GPU, the
rest stream from pinned host blocks through the ring (whole, or token_block at a time)."""

from __future__ import annotations

from roofsim.executor.cache import Runtime
from roofsim.executor.families import register_builder
from roofsim.executor.slots import SlotLayer, attach_host, cut_slots, make_ring, reserve_scratch

from roofsim.geometry import check_divides, resident_per_layer


@register_builder("head_offload")
def build(rt: Runtime, plan, model, **_) -> list[SlotLayer]:
    sh = rt.shape
    g = plan.kv_heads_per_slot
    check_divides(sh.n_kv_heads, g, "kv_heads_per_slot")
    resident = resident_per_layer(plan.resident_slots, sh.n_layers, sh.n_kv_heads // g)
    slots = [cut_slots(sh.n_kv_heads, g, r) for r in resident]
    if plan.slot_alloc != "ring":
        rt.notes.append(
            f"slot_alloc={plan.slot_alloc} is run with the ring of slot buffers: HeadInfer's torch.cat growth "
            "(and its extra GPU memory) is not reproduced"
        )
    if any(not s.resident for layer in slots for s in layer):
        attach_host(rt, slots)
        make_ring(rt, plan.slot_buffers, plan.token_block or rt.capacity, g, plan.prefetch_depth)
    reserve_scratch(rt, g)
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
