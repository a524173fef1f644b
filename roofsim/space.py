"""The plan space: what the planner and `roofsim predict`'s sweep screen. Each family's module enumerates its own
candidates from a SearchSpace (roofsim.families.registry); this module holds the space's options and the knob
ranges families share."""

from __future__ import annotations

from dataclasses import dataclass, replace

from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload

CHUNKS = (2048, 4096, 8192, 16384, 32768)
"""Prefill chunks screened: those shorter than the prompt, or the whole prompt where none is."""


@dataclass(frozen=True)
class SearchSpace:
    allow_approximate: bool = False
    restrict: str | None = None  # a preset (a published system's own shape), e.g. "headinfer"
    fetch_fraction: float = 0.2  # sparse_fetch: InfiniGen's cap in all its scripts
    evict_budget: int | None = None  # evict: Locret's 16384 (Llama-3.1-8B) or 6000 (Phi-3-mini) by default
    families: tuple[str, ...] | None = None
    stream_weights: bool = False  # also try streaming the weights per layer (set when they do not fit)
    kvpr_overlaps: tuple[str, ...] = (
        "inter_layer",
        "intra_layer",
    )  # intra_layer alone: KVPR's paper schedule
    # the KV storage types screened (roofsim.kvformat): fp8 plans are approximate, so only on request
    # (--kv-dtype fp8 alone, or with bf16 under --allow-approximate)
    kv_dtypes: tuple[str, ...] = ("bf16",)
    # the tensor-parallel degrees screened (roofsim.tensor_parallel): each family's candidates are written for the
    # shard one rank holds
    tps: tuple[int, ...] = (1,)


def chunks(work: Workload) -> list[int | None]:
    fitting = [c for c in CHUNKS if c < work.context]
    return fitting or [None]


def weights_options(space: SearchSpace) -> tuple[str, ...]:
    return ("resident", "streamed") if space.stream_weights else ("resident",)


def placements(model: ModelSpec, space: SearchSpace) -> list[dict]:
    """Weight and expert placements to try, as plan knobs: weights_options, and for a MoE model its routed experts
    streamed from host memory with none, a quarter, half or three quarters of the MoE layers keeping theirs on
    the GPU (the trade between experts and KV; streamed weights carry their experts with them)."""
    out = [{"weights": w} for w in weights_options(space)]
    moe = model.moe_layers
    if moe:
        kept = sorted({moe * q // 4 for q in range(4)})
        out[1:1] = [{"experts": "streamed", "resident_expert_layers": r} for r in kept]
    return out


def resident_totals(layers: int, slots: int) -> list[int]:
    """Resident slot counts to try: whole slots per layer, and half-steps spread over the layers."""
    totals = {r * layers for r in range(slots)}
    totals |= {r * layers + layers // 2 for r in range(slots - 1)}
    return sorted(t for t in totals if t < layers * slots)


def with_weights_rule(space: SearchSpace, model: ModelSpec, usable_gpu_bytes: float) -> SearchSpace:
    """Weights that leave no room for the KV (over 85% of the usable GPU memory) are also tried streamed, per
    layer over the link (FlexGen's case)."""
    if model.weight_bytes > 0.85 * usable_gpu_bytes and not space.stream_weights:
        return replace(space, stream_weights=True)
    return space
