"""Stock transformers models for the executor: a built-in roofsim model name or a config.json, built with random
weights, or a local checkpoint directory (config.json + *.safetensors). Nothing is downloaded.

Random weights: built on the meta device, `to_empty` on the target device, then `initialize_weights()`, which
draws every weight and recomputes the RoPE buffers (`to_empty` leaves `inv_freq` as garbage).

`layers_device="cpu"` (plans with weights="streamed", a model whose weights need not fit on the GPU): the decoder
layers stay in host memory and only the embeddings, final norm, LM head and RoPE buffers go to `device`;
`make_cache` then moves the layers into its pinned region.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from roofsim.errors import UserError
from roofsim.specs.model import ModelSpec

FAMILIES = ("llama", "qwen2", "mistral", "phi3", "qwen3", "qwen3_moe", "mixtral", "gemma3_text", "gpt_oss")
# model_type of a spec's family where transformers names it otherwise
_MODEL_TYPE = {"gemma3": "gemma3_text"}
_NOT_RUN = {  # families roofsim prices but the executor does not run, and why
    "deepseek_v2": "transformers caches MLA's decompressed K and V per head, not the latent the plan prices",
    "opt": "its learned positions and attention are not wired to the plan cache",
}

_ROPE_THETA = {
    "llama-3": 500000.0,
    "llama-2": 10000.0,
    "qwen2.5": 1000000.0,
    "qwen3": 1000000.0,
    "gemma-3": 1000000.0,
    "mistral-7b-v0.3": 1000000.0,
}
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def config_for_spec(spec: ModelSpec, max_positions: int | None = None):
    """A transformers config with the spec's shapes (RoPE per the public config; Phi-3's longrope factors are
    not reproduced: default RoPE)."""
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    if _MODEL_TYPE.get(spec.family, spec.family) not in FAMILIES:
        why = f" ({_NOT_RUN[spec.family]})" if spec.family in _NOT_RUN else ""
        raise UserError(
            f"model {spec.name!r} is {spec.family}{why}; the executor runs {', '.join(FAMILIES)} models"
        )
    theta = next((v for k, v in _ROPE_THETA.items() if spec.name.startswith(k)), 10000.0)
    rope = (
        dict(_LLAMA31_ROPE)
        if spec.name.startswith("llama-3.1")
        else {"rope_type": "default", "rope_theta": theta}
    )
    common = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=max(spec.max_positions, max_positions or 0),
        tie_word_embeddings=spec.tied_embeddings,
        rope_parameters=rope,
    )
    if spec.family == "llama":
        return LlamaConfig(**common, attention_bias=spec.qkv_bias, rms_norm_eps=1e-5)
    if spec.family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False, rms_norm_eps=1e-6)
    if spec.family == "mistral":
        return MistralConfig(**common, sliding_window=None, rms_norm_eps=1e-5)
    if spec.family in ("qwen3", "qwen3_moe", "mixtral", "gemma3", "gpt_oss"):
        return _kinds_config(spec, common)
    common.pop("head_dim")
    return Phi3Config(**common, rms_norm_eps=1e-5)


def _kinds_config(spec: ModelSpec, common: dict):
    """Qwen3, Qwen3-MoE, Mixtral, Gemma 3 (text) and gpt-oss configs of a spec's shapes, its windows and experts."""
    from transformers import Gemma3TextConfig, GptOssConfig, MixtralConfig, Qwen3Config, Qwen3MoeConfig

    if spec.family == "qwen3":
        return Qwen3Config(**common, attention_bias=False, use_sliding_window=False, rms_norm_eps=1e-6)
    moe = dict(num_experts_per_tok=spec.experts_per_token)
    if spec.family == "qwen3_moe":
        return Qwen3MoeConfig(
            **common, **moe, num_experts=spec.n_experts, moe_intermediate_size=spec.expert_intermediate,
            decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, use_sliding_window=False,
            rms_norm_eps=1e-6,
        )  # fmt: skip
    if spec.family == "gpt_oss":
        common["intermediate_size"] = spec.expert_intermediate
        types = ["full_attention" if w is None else "sliding_attention" for w in spec.layer_windows]
        window = max(w for w in spec.layer_windows if w is not None)
        return GptOssConfig(
            **common, **moe, num_local_experts=spec.n_experts, sliding_window=window, layer_types=types,
            attention_bias=spec.qkv_bias,
        )  # fmt: skip
    if spec.family == "mixtral":
        common["intermediate_size"] = spec.expert_intermediate
        return MixtralConfig(**common, **moe, num_local_experts=spec.n_experts, sliding_window=None)
    windows = {w for w in spec.layer_windows if w is not None}
    types = ["full_attention" if w is None else "sliding_attention" for w in spec.layer_windows]
    # Gemma 3 keeps one RoPE per layer type: the spec's for the global layers, base 10,000 for the window layers
    # (the released configs' rope_local_base_freq); transformers validates it as a dict keyed by layer type
    local = {"rope_type": "default", "rope_theta": 10000.0}
    common["rope_parameters"] = {"full_attention": common["rope_parameters"], "sliding_attention": local}
    return Gemma3TextConfig(
        **common, sliding_window=max(windows) if windows else None, layer_types=types or None,
        query_pre_attn_scalar=spec.head_dim, rms_norm_eps=1e-6,
    )  # fmt: skip


def place_outside_layers(model, device) -> None:
    """Move every parameter and buffer that is not part of a decoder layer to `device` (the layers stay put)."""
    from roofsim.executor.weights import decoder_layers

    inside = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    device = torch.device(device)
    moved: dict[int, torch.nn.Parameter] = {}  # tied parameters (embeddings and LM head) stay one object
    for mod in model.modules():
        if id(mod) in inside:
            continue
        for name, p in list(mod.named_parameters(recurse=False)):
            if id(p) in moved or p.device == device:
                mod._parameters[name] = moved.get(id(p), p)
                continue
            new = p.data.to(device)
            if torch._has_compatible_shallow_copy_type(p.data, new):  # CPU <-> CUDA: keep the Parameter
                p.data = new
                moved[id(p)] = p
            else:  # e.g. the meta device
                moved[id(p)] = mod._parameters[name] = torch.nn.Parameter(new, requires_grad=p.requires_grad)
        for name, b in mod.named_buffers(recurse=False):
            if b.device != device:
                mod._buffers[name] = b.to(device)


def stock_attention(config) -> str:
    """transformers' own attention for a config: SDPA, or eager where the model has no SDPA path (gpt-oss's
    sinks)."""
    return "eager" if config.model_type == "gpt_oss" else "sdpa"


def random_model(config, device, dtype=torch.bfloat16, seed: int = 0, layers_device=None):
    from transformers import AutoModelForCausalLM

    if config.model_type not in FAMILIES:
        raise UserError(
            f"model_type {config.model_type!r} is not supported by the executor; use one of {', '.join(FAMILIES)}"
        )
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=stock_attention(config)
        )
    model.to_empty(device=layers_device or device)
    # to_empty gives each module its own tensor, a tied parameter too: tie the LM head to the input embeddings again
    # where the config ties them (Gemma), or the GPU would hold the embedding matrix twice
    model.tie_weights()
    if layers_device is not None:
        place_outside_layers(model, device)
        if torch.device(device).type == "cuda" and torch.device(layers_device).type == "cpu":
            init_layers_on(model, device)
    model.initialize_weights()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def init_layers_on(model, init_device) -> None:
    """Draw each decoder layer's random weights on `init_device`, one layer at a time, and bring them back to
    where the layer lives. The CPU draws random numbers on one thread (about 0.3 GB/s of bf16): a model whose
    layers stay in host memory (streamed weights or experts: tens to hundreds of GB) would spend minutes there,
    while the GPU draws a layer in milliseconds and the copy back runs at the link's rate. Each initialized module
    is flagged as transformers flags it (`_is_hf_initialized`), so the model's initialize_weights() afterwards
    skips the layers and initializes only what is outside them. The GPU holds one layer at a time."""
    from roofsim.executor.weights import decoder_layers

    for layer in decoder_layers(model):
        home = next(layer.parameters()).device
        layer.to_empty(device=init_device)
        for mod in layer.modules():
            model._initialize_weights(mod)
        layer.to(home)


def load_model(
    source: str, *, device="cpu", dtype=torch.bfloat16, seed: int = 0, max_positions=None, layers_device=None
):
    """(model, name): a roofsim model name, a ModelSpec or a config.json (random weights) or a checkpoint directory.
    layers_device: where the decoder layers go (default `device`); "cpu" for streamed weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(source, ModelSpec):  # a plan document's own spec: random weights of its shapes
        model = random_model(config_for_spec(source, max_positions), device, dtype, seed, layers_device)
        return _random(model), source.name
    path = Path(source)
    if path.is_dir() and any(path.glob("*.safetensors")):
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if cfg.model_type not in FAMILIES:
            raise UserError(f"{source}: model_type {cfg.model_type!r} is not supported by the executor")
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=stock_attention(cfg), local_files_only=True
        )
        if layers_device is None:
            model = model.to(device)
        else:
            model = model.to(layers_device)
            place_outside_layers(model, device)
        return model.eval().requires_grad_(False), path.name
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{str(path)!r} is not valid JSON: {e}") from None
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if max_positions and getattr(cfg, "max_position_embeddings", 0) < max_positions:
            cfg.max_position_embeddings = max_positions
        return _random(random_model(cfg, device, dtype, seed, layers_device)), path.parent.name or path.stem
    from roofsim.specs import load_model as load_spec

    spec = load_spec(source)
    model = random_model(config_for_spec(spec, max_positions), device, dtype, seed, layers_device)
    return _random(model), spec.name


def _random(model):
    """Mark a model of random weights: a plan cache routes its MoE tokens balanced (experts.balance_routing)."""
    model.roofsim_random_weights = True
    return model
