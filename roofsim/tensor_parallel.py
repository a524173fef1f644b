"""Tensor parallelism by heads (Megatron's split): what one rank of a tp-way plan holds.

Rank r of tp holds query heads [r*H/tp, (r+1)*H/tp) with the KV heads they read ([r*G/tp, (r+1)*G/tp) of G),
the matching columns of q/k/v and rows of o, and 1/tp of the MLP's intermediate width (columns of gate/up,
rows of down); embeddings, norms and the LM head are replicated. Each rank's attention output and MLP output
are partial sums of the hidden state: one all-reduce of hidden values per token after each (2 per layer).
So a rank is the same model with H/tp heads, G/tp KV heads and intermediate/tp, and every per-head quantity
(KV bytes, attention FLOPs, q/k/v/o weights) divides by tp exactly: the shard's KV bytes times tp equal the
whole model's.
"""

from __future__ import annotations

from roofsim.errors import UserError
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
        }
    )


def allreduce_bytes(model: ModelSpec, tokens: int) -> int:
    """Bytes of hidden state one all-reduce sums over `tokens` tokens (each rank's contribution)."""
    return tokens * model.hidden * model.dtype_bytes
