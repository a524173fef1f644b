"""A simple sweep of each family's knobs, for `roofsim predict` without --plan: the best feasible plan of each
family by decode time per token (prefill time breaks ties). The planner (roofsim plan) searches wider."""

from __future__ import annotations

from collections.abc import Iterator

from roofsim.errors import UserError
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
from roofsim.predict import Limits, predict
from roofsim.prediction import Prediction
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload

CHUNKS = (None, 4096, 16384)


def candidates(family: str, model: ModelSpec, work: Workload) -> Iterator[Plan]:
    chunks = [c for c in CHUNKS if c is None or c < work.context]
    hkv = model.n_kv_heads
    if family == "resident":
        for c in chunks:
            yield ResidentPlan(prefill_chunk=c)
    elif family == "layer_offload":
        for wb in ("full", "incremental"):
            for c in chunks:
                yield LayerOffloadPlan(write_back=wb, prefill_chunk=c)
    elif family == "head_offload":
        for g in divisors(hkv):
            slots = hkv // g
            for r in sorted({0, 1, slots // 2, slots - 1} & set(range(slots))):
                for c in chunks:
                    yield HeadOffloadPlan(kv_heads_per_slot=g, resident_slots=r, prefill_chunk=c)
    elif family == "kvpr":
        for overlap in ("inter_layer", "intra_layer"):
            for c in chunks:
                yield KvprPlan(overlap=overlap, prefill_chunk=c)
    elif family == "cpu_attention":
        for hc in range(1, hkv + 1) if hkv <= 16 else sorted({1, hkv // 4, hkv // 2, 3 * hkv // 4, hkv}):
            for c in chunks:
                yield CpuAttentionPlan(cpu_kv_heads=hc, prefill_chunk=c)
    elif family == "sparse_fetch":
        for c in chunks:
            yield SparseFetchPlan(prefill_chunk=c)
    elif family == "evict":
        yield EvictPlan()
    else:
        raise UserError(f"unknown plan family {family!r}; families are {', '.join(FAMILIES)}")


def rank_key(p: Prediction):
    return (not p.feasible, p.decode.time_s if p.feasible else p.peak_gpu_bytes, p.prefill.time_s)


def best_of_family(
    family: str, model: ModelSpec, gpu: GpuSpec, host: HostSpec, work: Workload, limits: Limits | None = None
) -> Prediction:
    limits = limits or Limits()
    preds = []
    for plan in candidates(family, model, work):
        try:
            preds.append(predict(plan, model, gpu, host, work, limits))
        except UserError:
            continue  # a knob combination this model cannot take
    return min(preds, key=rank_key)


def best_per_family(
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits | None = None,
    families: list[str] | None = None,
) -> list[Prediction]:
    return [best_of_family(f, model, gpu, host, work, limits) for f in families or list(FAMILIES)]
