"""Tensor parallelism by heads (Megatron's split): what one rank of a tp-way plan holds.

Rank r of tp holds query heads [r*H/tp, (r+1)*H/tp) with the KV heads they read ([r*G/tp, (r+1)*G/tp) of G),
the matching columns of q/k/v and rows of o, and 1/tp of the MLP's intermediate width (columns of gate/up,
rows of down); embeddings, norms and the LM head are replicated. Each rank's attention output and MLP output
are partial sums of the hidden state: one all-reduce of hidden values per token after each (2 per layer).
So a rank is the same model with H/tp heads, G/tp KV heads and intermediate/tp, and every per-head quantity
(KV bytes, attention FLOPs, q/k/v/o weights) divides by tp exactly: the shard's KV bytes times tp equal the
whole model's.

Pricing (rank_specs): every rank runs the same family plan on its shard at the same time, so one rank is priced
with the family's own machinery against the specs it sees: the shard model (whose layers end attention and MLP with
an all-reduce on the GPU's interconnect: ops.allreduce_op), the GPU with its host link at the rate its share of
the host allows, and the host's CPU-side rates shared by the ranks. Each rank streams its own heads' KV over its
own link; the tp links draw on host RAM together, and ranks that share a host link (more ranks than the host's
gpu_links) share its rate:

    per-rank link rate = min(link rate / ceil(tp / gpu_links), RAM rate / tp)

The GPU memory cap applies to each rank (its shard's weights, its heads' KV); host memory is the sum over ranks.
"""

from __future__ import annotations

import math

from roofsim.errors import UserError
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec


def check_degree(model: ModelSpec, tp: int) -> None:
    """A one-line error unless `tp` splits the model's heads, KV heads and MLP into equal whole shares."""
    if tp == 1:
        return
    if model.kv_latent:
        raise UserError(f"--tp {tp}: {model.name} caches one shared MLA latent per token; tp needs KV heads")
    if model.n_experts:
        raise UserError(f"--tp {tp}: {model.name} is a MoE model; tensor parallelism covers dense models")
    for what, n in (
        ("KV heads", model.n_kv_heads),
        ("attention heads", model.n_heads),
        ("MLP width", model.intermediate),
    ):
        if n % tp:
            divisors = [d for d in range(2, model.n_kv_heads + 1) if model.n_kv_heads % d == 0]
            raise UserError(
                f"--tp {tp}: {model.name}'s {n} {what} do not split {tp} ways; "
                f"tp can be {', '.join(map(str, divisors)) or '1 only'}"
            )


def shard_model(model: ModelSpec, tp: int) -> ModelSpec:
    """The model one rank of a tp-way plan runs: n_heads, n_kv_heads and intermediate divided by tp, the rest
    unchanged (hidden, vocab, layers). tp=1 returns `model` itself."""
    check_degree(model, tp)
    if tp == 1:
        return model
    return model.model_copy(
        update={
            "name": f"{model.name}/tp{tp}",
            "n_heads": model.n_heads // tp,
            "n_kv_heads": model.n_kv_heads // tp,
            "intermediate": model.intermediate // tp,
            "tp": tp,
        }
    )


def allreduce_bytes(model: ModelSpec, tokens: int) -> int:
    """Bytes of hidden state one all-reduce sums over `tokens` tokens (each rank's contribution)."""
    return tokens * model.hidden * model.dtype_bytes


def check_gpus(gpu: GpuSpec, tp: int) -> None:
    """A one-line error unless the GPU spec has an interconnect that joins at least tp GPUs."""
    if tp == 1:
        return
    ic = gpu.interconnect
    if ic is None:
        raise UserError(
            f"--tp {tp}: GPU spec {gpu.name} has no [interconnect] section (the GPUs' all-reduce fabric); use a "
            "GPU spec with one (h100-sxm) or add it to yours (`roofsim gpus --template` shows its fields)"
        )
    if tp > ic.gpus.value:
        raise UserError(
            f"--tp {tp}: {gpu.name}'s {ic.name} joins {ic.gpus.value:g} GPUs; tp can be at most that"
        )


def ranks_per_link(host: HostSpec, tp: int) -> int:
    """Ranks on one host link when tp ranks spread over the host's gpu_links (one link per GPU where unknown)."""
    links = tp if host.gpu_links is None else int(host.gpu_links.value)
    return math.ceil(tp / links)


def link_share(gpu: GpuSpec, host: HostSpec, tp: int) -> tuple[float, str]:
    """The share of its link's H2D rate one rank of tp gets, and what binds it: "link" (its own link at full
    rate), "shared link" (ranks sharing a host link) or "host RAM" (the tp links' draw on host memory)."""
    sharing = ranks_per_link(host, tp)
    ram = host.ram_bytes_per_s / tp / (gpu.link.h2d_gbps.value * 1e9)
    k, why = 1.0, "link"
    if sharing > 1:
        k, why = 1.0 / sharing, "shared link"
    if ram < k:
        k, why = ram, "host RAM"
    return k, why


def rank_specs(
    model: ModelSpec, gpu: GpuSpec, host: HostSpec, tp: int
) -> tuple[ModelSpec, GpuSpec, HostSpec]:
    """What one rank of a tp-way plan is priced against (the module's pricing paragraph): the shard model, the GPU
    with its link's rates times link_share, the host with its RAM bandwidth, CPU FLOPs and scan rates divided
    among the ranks. tp=1: the specs themselves (the same objects, so nothing of a one-GPU plan changes)."""
    if tp == 1:
        return model, gpu, host
    for (m, g, h, t), specs in _RECENT:  # the same objects while the specs are (pipeline.context's memo)
        if m is model and g is gpu and h is host and t == tp:
            return specs
    specs = _rank_specs(model, gpu, host, tp)
    _RECENT.insert(0, ((model, gpu, host, tp), specs))
    del _RECENT[8:]
    return specs


_RECENT: list[tuple[tuple, tuple[ModelSpec, GpuSpec, HostSpec]]] = []


def _rank_specs(
    model: ModelSpec, gpu: GpuSpec, host: HostSpec, tp: int
) -> tuple[ModelSpec, GpuSpec, HostSpec]:
    check_gpus(gpu, tp)
    shard = shard_model(model, tp)
    k, _ = link_share(gpu, host, tp)

    def times(v, f):
        return None if v is None else v.model_copy(update={"value": v.value * f})

    shared = host.scans_times(1.0 / tp).model_copy(
        update={
            "ram_bandwidth_gbps": times(host.ram_bandwidth_gbps, 1.0 / tp),
            "cpu_tflops": times(host.cpu_tflops, 1.0 / tp),
            "cpu_gather_gbps": times(host.cpu_gather_gbps, 1.0 / tp),
        }
    )
    return shard, gpu.link_times(k) if k < 1.0 else gpu, shared


def describe(gpu: GpuSpec, host: HostSpec, tp: int) -> str:
    """One line on what a tp-way plan's ranks share: the per-rank link rate and what binds it, the interconnect."""
    k, why = link_share(gpu, host, tp)
    rate = gpu.link.h2d_gbps.value * k
    ic = gpu.interconnect
    binds = {
        "link": "its own link",
        "shared link": f"{ranks_per_link(host, tp)} ranks on each of the host's GPU links",
        "host RAM": f"host RAM ({host.ram_bytes_per_s / 1e9:.0f} GB/s sustained) shared by {tp} links",
    }[why]
    return (
        f"over {tp} GPUs (tp={tp}) each holds 1/{tp} of the heads and MLP, and its link brings its own heads' KV "
        f"at up to {rate:.1f} GB/s H2D (bound by {binds}); two all-reduces per layer over {ic.name}; GPU "
        "memory is per GPU, host memory the sum over them"
    )
