"""Exactness checks shared by the tests and the GPU benchmark: the logits of a chunked prefill and greedy decode
under a cache, compared with stock transformers (DynamicCache + SDPA) or with the resident plan."""

from __future__ import annotations

import torch


def tiny_config(family: str, *, kv_heads: int = 2, heads: int = 4, layers: int = 2, head_dim: int = 16):
    """A 2-layer config of a supported family (hidden 64) for CPU tests."""
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(
        vocab_size=128,
        hidden_size=heads * head_dim,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    if family == "llama":
        return LlamaConfig(**common, head_dim=head_dim)
    if family == "qwen2":
        return Qwen2Config(**common, head_dim=head_dim, use_sliding_window=False)
    if family == "mistral":
        return MistralConfig(**common, head_dim=head_dim, sliding_window=None)
    if family == "phi3":
        return Phi3Config(**common)
    raise ValueError(family)


@torch.no_grad()
def greedy_logits(model, cache, ids: torch.Tensor, chunk: int, gen: int, tokens: torch.Tensor | None = None):
    """Last-position logits after the prefill and after each of `gen` decode steps, [gen + 1, B, vocab] fp32.
    `tokens` forces the decode inputs (so two runs see the same tokens even if their argmax differs)."""
    out = []
    o = None
    for a in range(0, ids.shape[1], chunk):
        o = model(ids[:, a : a + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    out.append(o.logits[:, -1].float())
    nxt = o.logits[:, -1].argmax(-1, keepdim=True)
    for i in range(gen):
        if tokens is not None:
            nxt = tokens[:, i : i + 1]
        o = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out.append(o.logits[:, -1].float())
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(out)


def reference_logits(model, ids, chunk: int, gen: int, tokens=None):
    """Stock transformers: DynamicCache with SDPA attention."""
    from transformers import DynamicCache

    prev = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        return greedy_logits(model, DynamicCache(config=model.config), ids, chunk, gen, tokens)
    finally:
        model.set_attn_implementation(prev)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over all logits."""
    return float((a.float() - b.float()).norm() / b.float().norm())
