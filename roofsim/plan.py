"""Plan: where each layer's and head's KV lives, how it moves, and the knobs of that movement.

One pydantic model per family, joined as a discriminated union on `family`, serialised to JSON: the planner
writes it, `roofsim predict` prices it, and the executor runs it unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from roofsim.errors import UserError


def _compact(value) -> str:
    """[0, 0, 1, 1, 1] -> 2x0+3x1: per-layer lists stay readable."""
    if not isinstance(value, list):
        return str(value)
    runs: list[list] = []
    for v in value:
        if runs and runs[-1][1] == v:
            runs[-1][0] += 1
        else:
            runs.append([1, v])
    return "+".join(f"{n}x{v}" for n, v in runs)


class _PlanBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_chunk: int | None = Field(
        None, gt=0, description="prefill chunk in tokens; None = whole prompt at once"
    )
    weights: Literal["resident", "streamed"] = Field(
        "resident", description="streamed: each layer's weights cross the link every forward (FlexGen's case)"
    )

    @property
    def approximate(self) -> bool:
        return False

    def knobs(self) -> str:
        """Short human summary of the knobs that differ from the family's defaults."""
        default = type(self)()
        parts = []
        for name in type(self).model_fields:
            if name == "family":
                continue
            value = getattr(self, name)
            if value != getattr(default, name):
                parts.append(f"{name}={_compact(value)}")
        return " ".join(parts) or "defaults"


WriteBackTokens = Annotated[
    int,
    Field(
        ge=1,
        description="incremental write-back: new tokens gather in a GPU tail and go to the host once this many "
        "have (one copy per slot per that many tokens instead of one per slot per step)",
    ),
]


class _WriteBackTail:
    """write_back_tokens > 1 gathers new tokens on the GPU: only for an incremental write-back of whole slots."""

    @model_validator(mode="after")
    def _tail_needs_incremental(self):
        if self.write_back_tokens > 1 and (
            self.write_back != "incremental" or getattr(self, "token_block", None)
        ):
            raise ValueError(
                "write_back_tokens > 1 needs write_back='incremental' and no token_block; set write_back_tokens=1"
            )
        return self


class ResidentPlan(_PlanBase):
    """All KV on the GPU."""

    family: Literal["resident"] = "resident"


class LayerOffloadPlan(_WriteBackTail, _PlanBase):
    """Whole-layer KV in host RAM; layer j+1 is prefetched on a side stream while layer j computes.

    write_back="full" is transformers 5.x's offloaded cache: the whole layer goes back every step, on the
    compute stream ahead of attention. "incremental" writes only the new tokens, on a side stream."""

    family: Literal["layer_offload"] = "layer_offload"
    write_back: Literal["full", "incremental"] = "full"
    write_back_tokens: WriteBackTokens = 1
    syncs_per_layer: int = Field(0, ge=0, description="host synchronisations per layer (HeadInfer's code: 2)")


class HeadOffloadPlan(_WriteBackTail, _PlanBase):
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
    write_back_tokens: WriteBackTokens = 1
    token_block: int | None = Field(None, gt=0, description="stream each slot in blocks of this many tokens")
    syncs_per_slot: int = Field(
        0, ge=0, description="host synchronisations per streamed slot (HeadInfer's code: 2)"
    )
    slot_alloc: Literal["ring", "cat"] = Field(
        "ring",
        description="ring: slot_buffers preallocated buffers; cat: HeadInfer's code, which grows each slot with "
        "torch.cat, so the current slot is held twice beside the prefetched and the evicting one (4 at the peak)",
    )


class KvprPlan(_PlanBase):
    """KVPR: for each layer send the activations of the first l tokens and recompute their K/V on the GPU while
    the KV of the other tokens streams. recompute_tokens="auto" re-solves l at every step."""

    family: Literal["kvpr"] = "kvpr"
    recompute_tokens: int | Literal["auto"] = "auto"
    overlap: Literal["intra_layer", "inter_layer"] = Field(
        "inter_layer",
        description="intra_layer: the paper's act + max(recompute, kv); inter_layer: its code's",
    )


class CpuAttentionPlan(_PlanBase):
    """Decode attention for cpu_kv_heads KV heads per layer runs on the CPU beside the host KV (only q and the
    partial outputs cross the link); the other heads stream (or stay resident) as in head_offload and their
    outputs are merged. Prefill attends every head on the GPU (CPU attention would be compute-bound there)."""

    family: Literal["cpu_attention"] = "cpu_attention"
    cpu_kv_heads: int = Field(1, ge=0)
    kv_heads_per_slot: int = Field(1, gt=0)
    resident_slots: int = Field(0, ge=0)
    prefetch_depth: int = Field(1, ge=0)
    slot_buffers: int = Field(2, ge=1)


class SparseFetchPlan(_PlanBase):
    """InfiniGen: a GPU-resident partial key cache (ratio r of the key columns) speculates which tokens the next
    layer needs; only a fraction f of each layer's KV is gathered on the CPU and fetched. Approximate."""

    family: Literal["sparse_fetch"] = "sparse_fetch"
    fetch_fraction: float = Field(0.2, gt=0, le=1, description="f: share of each layer's tokens fetched")
    partial_key_ratio: float = Field(0.2, gt=0, le=1, description="r: share of key columns kept on the GPU")
    dense_layers: int = Field(2, ge=0, description="first layers fetched in full")

    @property
    def approximate(self) -> bool:
        return True


class EvictPlan(_PlanBase):
    """Locret: a fixed per-head GPU budget of b tokens; after each prefill chunk the lowest-scored KV is evicted.
    No KV crosses the link. Approximate."""

    family: Literal["evict"] = "evict"
    prefill_chunk: int | None = Field(1024, gt=0)
    budget_tokens: int = Field(16384, gt=0)
    local_tokens: int = Field(100, ge=0, description="last prompt tokens prefilled without eviction")

    @property
    def approximate(self) -> bool:
        return True


Plan = Annotated[
    ResidentPlan
    | LayerOffloadPlan
    | HeadOffloadPlan
    | KvprPlan
    | CpuAttentionPlan
    | SparseFetchPlan
    | EvictPlan,
    Field(discriminator="family"),
]
PLAN_ADAPTER: TypeAdapter[Plan] = TypeAdapter(Plan)
FAMILIES: dict[str, type[_PlanBase]] = {
    cls.model_fields["family"].default: cls
    for cls in (
        ResidentPlan,
        LayerOffloadPlan,
        HeadOffloadPlan,
        KvprPlan,
        CpuAttentionPlan,
        SparseFetchPlan,
        EvictPlan,
    )
}
EXACT_FAMILIES = [f for f, cls in FAMILIES.items() if not cls().approximate]


def plan_from_dict(data: dict, where: str = "plan") -> Plan:
    if "plan" in data and isinstance(data["plan"], dict):
        data = data["plan"]  # a plan document written by `roofsim plan`
    try:
        return PLAN_ADAPTER.validate_python(data)
    except ValidationError as e:
        from roofsim.specs.tomlfile import first_error

        raise UserError(f"{where}: {first_error(e)}; families: {', '.join(FAMILIES)}") from None


def default_plan(family: str) -> Plan:
    if family not in FAMILIES:
        import difflib

        close = difflib.get_close_matches(family, list(FAMILIES), n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown plan family {family!r}: {hint}families are {', '.join(FAMILIES)}")
    return FAMILIES[family]()
