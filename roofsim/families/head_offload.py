"""head_offload (HeadInfer): slots of (layer, group of KV heads); some slots per layer stay resident, the rest
stream from pinned host memory through a ring of GPU slot buffers with a prefetch depth, whole or in token
blocks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from roofsim.families import slot_stream
from roofsim.families.pipeline import Ctx, Evaluation
from roofsim.families.registry import Family, register
from roofsim.geometry import check_divides, divisors, resident_per_layer, spread
from roofsim.plan import KV_DTYPES, PlanBase
from roofsim.sim.builder import Builder, StepSpec
from roofsim.space import SearchSpace, chunks, placements, resident_totals
from roofsim.specs.model import ModelSpec
from roofsim.units import MAX_TOKENS
from roofsim.workload import Workload

CAT_PEAK_SLOTS = slot_stream.CAT_PEAK_SLOTS


class HeadOffloadPlan(slot_stream.WriteBackTail, PlanBase):
    """HeadInfer-style: slots of (layer, group of KV heads); some slots per layer stay resident, the rest stream
    from pinned host memory through a ring of GPU slot buffers with a prefetch depth."""

    family: Literal["head_offload"] = "head_offload"
    kv_heads_per_slot: int = Field(1, gt=0)
    resident_slots: int | list[int] = Field(
        0, description="slots kept on the GPU, per layer (one int for all)"
    )
    prefetch_depth: int = Field(1, ge=0, description="slots copied ahead of the one being computed")
    slot_buffers: int = Field(2, ge=1, description="GPU buffers in the ring for streamed slots")
    write_back: Literal["full", "incremental"] = "incremental"
    write_back_tokens: slot_stream.WriteBackTokens = 1
    token_block: int | None = Field(
        None, gt=0, le=MAX_TOKENS, description="stream each slot in blocks of this many tokens"
    )
    syncs_per_slot: int = Field(
        0,
        ge=0,
        le=slot_stream.MAX_SYNCS,
        description="host synchronisations per streamed slot (HeadInfer's code: 2)",
    )
    slot_alloc: Literal["ring", "cat"] = Field(
        "ring",
        description="ring: slot_buffers preallocated buffers; cat: HeadInfer's code, which grows each slot with "
        "torch.cat, so the current slot is held twice beside the prefetched and the evicting one (4 at the peak)",
    )


def check(plan: HeadOffloadPlan, n_kv_heads: int, n_layers: int) -> list[int]:
    """The resident slots of each layer, once the slot size divides the model's KV heads."""
    check_divides(n_kv_heads, plan.kv_heads_per_slot, "kv_heads_per_slot")
    return resident_per_layer(plan.resident_slots, n_layers, n_kv_heads // plan.kv_heads_per_slot)


def knobs(plan: HeadOffloadPlan, ctx: Ctx) -> slot_stream.SlotKnobs:
    m = ctx.model
    return slot_stream.SlotKnobs(
        group=plan.kv_heads_per_slot,
        resident=tuple(check(plan, m.n_kv_heads, m.kv_layers)),
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
        streamed_experts=plan.streamed_expert_layers(m),
        depth=plan.prefetch_depth,
        buffers=plan.slot_buffers,
        write_back=plan.write_back,
        token_block=plan.token_block,
        syncs=plan.syncs_per_slot,
        cat_alloc=plan.slot_alloc == "cat",
        write_back_tokens=plan.write_back_tokens,
    )


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[HeadOffloadPlan]:
    """Every slot size, resident share (whole slots per layer and half-steps spread over the layers), prefetch
    depth with its ring, token block and prefill chunk."""
    layers = model.kv_layers
    for placement in placements(model, space):
        for g in divisors(model.n_kv_heads):
            for total in resident_totals(layers, model.n_kv_heads // g):
                for depth, buffers in ((1, 2), (2, 3), (4, 6)):
                    for block in (None, 16384, 65536):
                        if block and block >= work.context:
                            continue
                        for c in chunks(work):
                            yield HeadOffloadPlan(
                                kv_heads_per_slot=g,
                                resident_slots=spread(total, layers),
                                prefetch_depth=depth,
                                slot_buffers=buffers,
                                token_block=block,
                                prefill_chunk=c,
                                **placement,
                            )


def headinfer(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[HeadOffloadPlan]:
    """HeadInfer's own shape: one KV head per slot, the whole context per slot, its code's full write-back, two
    host synchronisations per slot and torch.cat growth."""
    for c in chunks(work):
        yield HeadOffloadPlan(
            kv_heads_per_slot=1, write_back="full", syncs_per_slot=2, slot_alloc="cat", prefill_chunk=c
        )


def evaluate(plan: HeadOffloadPlan, ctx: Ctx) -> Evaluation:
    return slot_stream.evaluate(knobs(plan, ctx), ctx)


def program(b: Builder, plan: HeadOffloadPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
    slot_stream.program(b, knobs(plan, b.ctx), steps, base)


def host_memory(plan: HeadOffloadPlan, ctx: Ctx) -> dict[str, float]:
    return slot_stream.host_memory(knobs(plan, ctx), ctx)


def what_if(plan: HeadOffloadPlan, model: ModelSpec) -> tuple[HeadOffloadPlan, str] | None:
    """Two more resident KV-head groups per layer (one, where only one more fits)."""
    L = model.kv_layers
    slots = model.n_kv_heads // plan.kv_heads_per_slot
    r = plan.resident_slots
    total = r * L if isinstance(r, int) else sum(r)
    if total + L > (slots - 1) * L + L - 1:
        return None
    if total + 2 * L >= slots * L:
        more = plan.model_copy(update={"resident_slots": spread(total + L, L)})
        return more, "Keeping one more KV-head group per layer resident"
    more = plan.model_copy(update={"resident_slots": spread(total + 2 * L, L)})
    return more, "Keeping two more KV-head groups per layer resident"


FAMILY = register(
    Family(
        plan_type=HeadOffloadPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        kv_dtypes=KV_DTYPES,
        layer_kinds=True,
        what_if=what_if,
        presets={"headinfer": headinfer},
    )
)
