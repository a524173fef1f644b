"""resident: one slot per layer of every KV head, kept on the GPU and grown as the context grows."""

from __future__ import annotations

from roofsim.executor.cache import Runtime
from roofsim.executor.families import register_builder
from roofsim.executor.slots import Slot, SlotLayer, reserve_scratch


@register_builder("resident")
def build(rt: Runtime, plan, model, **_) -> list[SlotLayer]:
    sh = rt.shape
    reserve_scratch(rt, sh.n_kv_heads)
    return [SlotLayer(rt, i, [Slot(0, 0, sh.n_kv_heads, resident=True)]) for i in range(sh.n_layers)]
