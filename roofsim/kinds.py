"""What a model's layer kinds mean for every plan, in words: window layers keep their KV on the GPU, only the
global layers' KV follows the plan, and a MoE model's routed experts are a placement of their own."""

from __future__ import annotations

from roofsim.specs.model import ModelSpec
from roofsim.units import fmt_bytes, fmt_tokens
from roofsim.workload import Workload


def layer_kinds_notes(model: ModelSpec, work: Workload) -> list[str]:
    """Sentences for `roofsim predict` and `roofsim plan`'s explanation (none for a dense model whose every layer
    attends the whole context)."""
    m, notes = model, []
    tokens = work.max_tokens
    if m.window_layers:
        windows = sorted({m.window(i) for i in m.window_layers})
        window_text = " or ".join(f"{w:,}" for w in windows)
        window_kv = sum(
            work.batch * float(m.window_keys(i, tokens)) * m.kv_bytes_per_token_layer for i in m.window_layers
        )
        global_kv = work.batch * work.context * m.kv_bytes_per_token
        sinks = f" (and its {m.sink_tokens} first tokens)" if m.sink_tokens else ""
        notes.append(
            f"{len(m.window_layers)} of {m.name}'s {m.n_layers} layers attend a {window_text}-token window{sinks}: "
            f"their KV ({fmt_bytes(window_kv)}) stays resident on the GPU in every plan; the plan places the "
            f"{m.kv_layers} global layers' KV ({fmt_bytes(global_kv)} at {fmt_tokens(work.context)} tokens)."
        )
    if m.moe_layers:
        shared = " and its shared experts" if m.shared_intermediate else ""
        notes.append(
            f"{m.name} routes each token to {m.experts_per_token} of {m.n_experts} experts in {m.moe_layers} "
            f"layers{shared}; its routed experts ({fmt_bytes(m.moe_layers * m.expert_weight_bytes)}) stay on the "
            "GPU, or with experts=streamed (but for resident_expert_layers) in host memory, and each step fetches "
            "the ones its tokens picked once the router has chosen them."
        )
    if m.is_mla:
        notes.append(
            f"{m.name} caches one latent of {m.kv_latent} values per token and layer (MLA), which every head reads."
        )
    return notes
