"""resident: every layer's KV stays on the GPU (the reference every exact plan must match)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from roofsim.families import slot_stream
from roofsim.families.pipeline import Ctx, Evaluation, both_ways, replays
from roofsim.families.registry import Family, register
from roofsim.plan import KV_DTYPES, PlanBase
from roofsim.sim.builder import Builder, StepSpec
from roofsim.space import SearchSpace, chunks, placements
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


class ResidentPlan(PlanBase):
    """All KV on the GPU."""

    family: Literal["resident"] = "resident"
    decode_graphs: bool = Field(
        True,
        description="replay each decode step's GPU work from a CUDA graph: the host issues one replay per step "
        "instead of every kernel (CUDA only, on one GPU, with resident weights and a dense MLP; eager otherwise, "
        "and priced eager there too). false: every step issued kernel by kernel. Plans "
        "stored before this knob existed ran eager (roofsim.trace.upgrade, roofsim.validate's stored runs)",
    )


def knobs(plan: ResidentPlan, ctx: Ctx) -> slot_stream.SlotKnobs:
    """One slot per layer of all KV heads, resident."""
    m = ctx.model
    return slot_stream.SlotKnobs(
        group=m.n_kv_heads,
        resident=(1,) * m.kv_layers,
        chunk=plan.prefill_chunk,
        streamed_weights=plan.weights == "streamed",
        graphs=replays(plan, m),
        streamed_experts=plan.streamed_expert_layers(m),
    )


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[ResidentPlan]:
    """Each placement and prefill chunk, with its decode replayed from a CUDA graph, and eager too where the
    executor can replay it (`replays`; elsewhere the two are the same plan)."""
    for placement in placements(model, space):
        for c in chunks(work):
            yield from both_ways(ResidentPlan(prefill_chunk=c, **placement), model)


def evaluate(plan: ResidentPlan, ctx: Ctx) -> Evaluation:
    return slot_stream.evaluate(knobs(plan, ctx), ctx)


def program(b: Builder, plan: ResidentPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
    slot_stream.program(b, knobs(plan, b.ctx), steps, base)


def host_memory(plan: ResidentPlan, ctx: Ctx) -> dict[str, float]:
    return slot_stream.host_memory(knobs(plan, ctx), ctx)


FAMILY = register(
    Family(
        plan_type=ResidentPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        kv_dtypes=KV_DTYPES,
        layer_kinds=True,
        host_store=False,
    )
)
