"""layer_offload: whole-layer KV in host RAM; layer j+1 is prefetched on a side stream while layer j computes.
write_back="full" is transformers 5.x's offloaded cache (the whole layer goes back every step, on the compute
stream ahead of attention); "incremental" writes only the new tokens, on a side stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from roofsim.families import slot_stream
from roofsim.families.pipeline import Ctx, Evaluation
from roofsim.families.registry import Family, register
from roofsim.plan import KV_DTYPES, PlanBase
from roofsim.sim.builder import Builder, StepSpec
from roofsim.space import SearchSpace, chunks, placements
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


class LayerOffloadPlan(slot_stream.WriteBackTail, PlanBase):
    """Whole-layer KV in host RAM; layer j+1 is prefetched on a side stream while layer j computes.

    write_back="full" is transformers 5.x's offloaded cache: the whole layer goes back every step, on the
    compute stream ahead of attention. "incremental" writes only the new tokens, on a side stream."""

    family: Literal["layer_offload"] = "layer_offload"
    write_back: Literal["full", "incremental"] = "full"
    write_back_tokens: slot_stream.WriteBackTokens = 1
    syncs_per_layer: int = Field(
        0, ge=0, le=slot_stream.MAX_SYNCS, description="host synchronisations per layer (HeadInfer's code: 2)"
    )


def knobs(plan: LayerOffloadPlan, ctx: Ctx) -> slot_stream.SlotKnobs:
    """One streamed slot per layer of all KV heads through two buffers."""
    m = ctx.model
    return slot_stream.SlotKnobs(
        group=m.n_kv_heads,
        resident=(0,) * m.kv_layers,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
        streamed_experts=plan.streamed_expert_layers(m),
        write_back=plan.write_back,
        syncs=plan.syncs_per_layer,
        d2h_on_compute=plan.write_back == "full",
        write_back_tokens=plan.write_back_tokens,
    )


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[LayerOffloadPlan]:
    for placement in placements(model, space):
        for wb in ("full", "incremental"):
            for c in chunks(work):
                yield LayerOffloadPlan(write_back=wb, prefill_chunk=c, **placement)


def evaluate(plan: LayerOffloadPlan, ctx: Ctx) -> Evaluation:
    ev = slot_stream.evaluate(knobs(plan, ctx), ctx)
    if plan.write_back == "full":
        ev.notes.append(
            "write-back of the whole layer every step, ordered before attention (transformers 5.x)"
        )
    return ev


def program(b: Builder, plan: LayerOffloadPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
    slot_stream.program(b, knobs(plan, b.ctx), steps, base)


def host_memory(plan: LayerOffloadPlan, ctx: Ctx) -> dict[str, float]:
    return slot_stream.host_memory(knobs(plan, ctx), ctx)


FAMILY = register(
    Family(
        plan_type=LayerOffloadPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        kv_dtypes=KV_DTYPES,
        layer_kinds=True,
    )
)
