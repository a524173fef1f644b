"""The plan space the planner screens: every family, slot granularity (layer, KV-head groups, token blocks),
resident share (possibly different per layer), prefill chunk, prefetch depth, slot buffers, CPU-attended heads,
and streamed weights. Approximate families only on request, with the user's or the papers' parameters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from roofsim.families.base import divisors
from roofsim.plan import (
    FAMILIES,
    CpuAttentionPlan,
    EvictPlan,
    HeadOffloadPlan,
    KvprPlan,
    LayerOffloadPlan,
    Plan,
    ResidentPlan,
    SparseFetchPlan,
)
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload

CHUNKS = (2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class SearchSpace:
    allow_approximate: bool = False
    restrict: str | None = None  # "headinfer": one KV head per slot, whole context per slot, HeadInfer's code
    fetch_fraction: float = 0.2  # InfiniGen's cap in all its scripts
    evict_budget: int | None = None  # Locret: 16384 (Llama-3.1-8B) or 6000 (Phi-3-mini)
    families: tuple[str, ...] | None = None
    stream_weights: bool = False  # also try streaming the weights per layer (set when they do not fit)
    kvpr_overlaps: tuple[str, ...] = (
        "inter_layer",
        "intra_layer",
    )  # intra_layer alone: KVPR's paper schedule


def spread(total: int, layers: int) -> list[int] | int:
    """`total` resident slots over the layers as evenly as possible (later layers get the extra ones)."""
    base, extra = divmod(total, layers)
    if extra == 0:
        return base
    return [base] * (layers - extra) + [base + 1] * extra


def _chunks(work: Workload) -> list[int | None]:
    fitting = [c for c in CHUNKS if c < work.context]
    return fitting or [None]


def _resident_totals(layers: int, slots: int) -> list[int]:
    """Resident slot counts to try: whole slots per layer, and half-steps spread over the layers."""
    totals = {r * layers for r in range(slots)}
    totals |= {r * layers + layers // 2 for r in range(slots - 1)}
    return sorted(t for t in totals if t < layers * slots)


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[Plan]:
    hkv, layers = model.n_kv_heads, model.n_layers
    chunks = _chunks(work)
    wanted = set(space.families or FAMILIES)
    if space.restrict == "headinfer":
        for c in chunks:
            yield HeadOffloadPlan(
                kv_heads_per_slot=1, write_back="full", syncs_per_slot=2, slot_alloc="cat", prefill_chunk=c
            )
        return
    for weights in ("resident", "streamed") if space.stream_weights else ("resident",):
        if "resident" in wanted:
            for c in chunks:
                yield ResidentPlan(prefill_chunk=c, weights=weights)
        if "layer_offload" in wanted:
            for wb in ("full", "incremental"):
                for c in chunks:
                    yield LayerOffloadPlan(write_back=wb, prefill_chunk=c, weights=weights)
        if "head_offload" in wanted:
            for g in divisors(hkv):
                slots = hkv // g
                for total in _resident_totals(layers, slots):
                    for depth, buffers in ((1, 2), (2, 3), (4, 6)):
                        for block in (None, 16384, 65536):
                            if block and block >= work.context:
                                continue
                            for c in chunks:
                                yield HeadOffloadPlan(
                                    kv_heads_per_slot=g,
                                    resident_slots=spread(total, layers),
                                    prefetch_depth=depth,
                                    slot_buffers=buffers,
                                    token_block=block,
                                    prefill_chunk=c,
                                    weights=weights,
                                )
        if "kvpr" in wanted:
            for overlap in space.kvpr_overlaps:
                for c in chunks:
                    yield KvprPlan(overlap=overlap, prefill_chunk=c, weights=weights)
        if "cpu_attention" in wanted:
            for hc in range(1, hkv + 1):
                rest = hkv - hc
                for g in divisors(rest) if rest else [1]:
                    for r in sorted({0, 1} & set(range(rest // g + 1))):
                        for c in chunks:
                            yield CpuAttentionPlan(
                                cpu_kv_heads=hc,
                                kv_heads_per_slot=g,
                                resident_slots=r,
                                prefill_chunk=c,
                                weights=weights,
                            )
        if space.allow_approximate:
            if "sparse_fetch" in wanted:
                for c in chunks:
                    yield SparseFetchPlan(
                        fetch_fraction=space.fetch_fraction, prefill_chunk=c, weights=weights
                    )
            if "evict" in wanted:
                budget = space.evict_budget or (6000 if model.family == "phi3" else 16384)
                for c in (1024, 3072):
                    yield EvictPlan(budget_tokens=budget, prefill_chunk=c, weights=weights)


def family_defaults(space: SearchSpace) -> list[Plan]:
    """Each family's default plan: the planner's choice must never be slower than any of them."""
    if space.restrict:
        return []  # a restricted search compares only plans of the restricted shape
    out = []
    for name, cls in FAMILIES.items():
        plan = cls()
        if plan.approximate and not space.allow_approximate:
            continue
        if space.families and name not in space.families:
            continue
        if isinstance(plan, KvprPlan) and plan.overlap not in space.kvpr_overlaps:
            plan = plan.model_copy(update={"overlap": space.kvpr_overlaps[0]})
        out.append(plan)
    return out
