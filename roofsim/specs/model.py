"""Model specs: the shapes that set FLOPs and bytes. Built in with the URL of each public config.json, or read
from a Hugging Face config.json of the Llama, Qwen2, Qwen3, Qwen3-MoE, Mistral, Mixtral, Phi-3, OPT, Gemma 3,
gpt-oss or DeepSeek-V2 families.

Layers have kinds: each layer attends the whole context (global) or a window of the last `layer_windows[i]` tokens
(plus `sink_tokens` first ones); its MLP is dense or a mixture of experts (`n_experts` routed experts of
`expert_intermediate`, `experts_per_token` of them per token, plus always-active shared experts of
`shared_intermediate` in all); its KV is K and V per KV head, or one latent per token (MLA: `kv_latent` values,
kv_lora_rank + qk_rope_head_dim, shared by all heads, which the geometry counts as one KV head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roofsim.errors import UserError
from roofsim.specs.tomlfile import first_error

_MAX = {  # generous bounds on a model's shapes (the largest public models are 10 to 100 times smaller)
    "n_layers": 1024,
    "hidden": 2**18,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "head_dim": 4096,
    "intermediate": 2**20,
    "vocab": 2**22,
    "max_positions": 2**32,
}


class ModelSpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True
    )  # "64" or true for a number is a mistake

    name: str
    source: str = Field(description="URL of the public config.json, or the path it was read from")
    family: Literal[
        "llama",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "mistral",
        "mixtral",
        "phi3",
        "opt",
        "gemma3",
        "gpt_oss",
        "deepseek_v2",
    ]
    n_layers: int = Field(gt=0, le=_MAX["n_layers"])
    hidden: int = Field(gt=0, le=_MAX["hidden"])
    n_heads: int = Field(gt=0, le=_MAX["n_heads"])
    n_kv_heads: int = Field(gt=0, le=_MAX["n_kv_heads"])
    head_dim: int = Field(gt=0, le=_MAX["head_dim"])
    intermediate: int = Field(gt=0, le=_MAX["intermediate"])
    vocab: int = Field(gt=0, le=_MAX["vocab"])
    max_positions: int = Field(gt=0, le=_MAX["max_positions"])
    tied_embeddings: bool = False
    qkv_bias: bool = False
    fused_qkv: bool = False
    mlp: Literal["gated", "plain"] = "gated"
    norm: Literal["rms", "layer"] = "rms"
    positions: Literal["rope", "learned"] = "rope"
    dtype_bytes: int = Field(2, ge=1, le=8)
    # layer kinds (defaults: every layer global, dense, K and V per head)
    layer_windows: tuple[int | None, ...] = Field(
        (), description="per layer: the attention window in tokens, None for a global layer; () = all global"
    )
    sink_tokens: int = Field(0, ge=0, description="first tokens a window layer keeps besides its window")
    attention_sinks: bool = Field(False, description="a learned sink logit per head (gpt-oss): no KV")
    qk_norm: bool = Field(False, description="RMSNorm of each head's q and k (Qwen3, Gemma 3)")
    sandwich_norm: bool = Field(False, description="norms after attention and after the MLP too (Gemma 3)")
    n_experts: int = Field(0, ge=0, le=4096, description="routed experts per MoE layer (0: dense MLP)")
    experts_per_token: int = Field(0, ge=0, le=4096)
    expert_intermediate: int = Field(0, ge=0, le=_MAX["intermediate"])
    shared_intermediate: int = Field(
        0, ge=0, le=_MAX["intermediate"], description="always-active shared experts' intermediate size, all"
    )
    dense_layers: int = Field(0, ge=0, description="first layers of a MoE model with a dense MLP")
    kv_latent: int = Field(0, ge=0, le=_MAX["head_dim"], description="MLA: cached values per token and layer")
    kv_lora_rank: int = Field(0, ge=0, le=_MAX["head_dim"], description="MLA: the latent's no-RoPE part")
    v_head_dim: int = Field(0, ge=0, le=_MAX["head_dim"], description="MLA: value width per head")
    tp: int = Field(
        1,
        ge=1,
        exclude=True,
        description="the tensor-parallel degree this model is one rank's shard of (roofsim.tensor_parallel."
        "shard_model): each layer's attention and MLP end with an all-reduce of the hidden state over tp GPUs; "
        "1: the whole model on one GPU. Never written: a spec file or plan document holds the whole model",
    )

    @field_validator("layer_windows", mode="before")
    @classmethod
    def _windows_from_json(cls, v):
        return tuple(v) if isinstance(v, list) else v  # a plan document's model_spec holds a JSON list

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.layer_windows and len(self.layer_windows) != self.n_layers:
            raise ValueError(
                f"layer_windows lists {len(self.layer_windows)} layers, the model has {self.n_layers}"
            )
        if any(w is not None and w <= 0 for w in self.layer_windows):
            raise ValueError("a window is a positive number of tokens (None for a global layer)")
        if self.layer_windows and all(w is not None for w in self.layer_windows):
            raise ValueError("every layer has a window: at least one layer must be global")
        if self.n_experts:
            if not 0 < self.experts_per_token <= self.n_experts or not self.expert_intermediate:
                raise ValueError(
                    f"a MoE model needs 1..{self.n_experts} experts per token and an expert_intermediate"
                )
            if self.dense_layers >= self.n_layers:
                raise ValueError(f"dense_layers {self.dense_layers} leaves no MoE layer of {self.n_layers}")
        if self.kv_latent and (self.n_kv_heads != 1 or not self.kv_lora_rank or not self.v_head_dim):
            raise ValueError("an MLA model has one KV head (the latent), a kv_lora_rank and a v_head_dim")
        if self.kv_latent and not self.kv_lora_rank < self.kv_latent < self.kv_lora_rank + self.head_dim:
            raise ValueError("an MLA latent is kv_lora_rank plus a RoPE key narrower than head_dim")
        return self

    # ---- layer kinds -------------------------------------------------------------------------------------------

    def window(self, layer: int) -> int | None:
        """The attention window of `layer` in tokens, None where it attends the whole context."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def global_layers(self) -> list[int]:
        """The layers that attend the whole context: those whose KV a plan places (resident or offloaded)."""
        return [i for i in range(self.n_layers) if self.window(i) is None]

    @property
    def window_layers(self) -> list[int]:
        """The layers that attend a window: their KV (window + sinks tokens) stays on the GPU in every plan."""
        return [i for i in range(self.n_layers) if self.window(i) is not None]

    @property
    def kv_layers(self) -> int:
        """How many layers' KV a plan places: the global ones (window(i) is None)."""
        if not self.layer_windows:
            return self.n_layers
        return sum(w is None for w in self.layer_windows[: self.n_layers])

    def window_keys(self, layer: int, tokens):
        """Keys a window layer keeps after `tokens` tokens: min(tokens, window + sinks)."""
        import numpy as np

        return np.minimum(tokens, self.window(layer) + self.sink_tokens)

    def is_moe(self, layer: int) -> bool:
        return self.n_experts > 0 and layer >= self.dense_layers

    @property
    def moe_layers(self) -> int:
        """How many layers are MoE (is_moe): every layer from dense_layers on, where the model has experts."""
        return max(0, self.n_layers - self.dense_layers) if self.n_experts > 0 else 0

    @property
    def expert_params(self) -> int:
        """One routed expert: gate, up and down (plus gpt-oss's biases)."""
        p = 3 * self.hidden * self.expert_intermediate
        if self.family == "gpt_oss":
            p += 2 * self.expert_intermediate + self.hidden
        return p

    @property
    def expert_weight_bytes(self) -> int:
        """Routed experts of one MoE layer: what an expert placement moves off the GPU."""
        return self.n_experts * self.expert_params * self.dtype_bytes

    def experts_touched(self, tokens):
        """Distinct experts of one MoE layer that `tokens` routed tokens pick, in expectation with uniform routing:
        E * (1 - (1 - k/E)^tokens) (k for one token, all E for a long chunk)."""
        import numpy as np

        E, k = self.n_experts, self.experts_per_token
        return E * (1.0 - (1.0 - k / E) ** np.asarray(tokens, dtype=float))

    @property
    def is_mla(self) -> bool:
        return self.kv_latent > 0

    @property
    def group(self) -> int:
        """GQA group size g = query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def kv_values_per_head(self) -> int:
        """Values one token caches per KV head and layer: K and V (2d), or MLA's latent."""
        return self.kv_latent if self.is_mla else 2 * self.head_dim

    @property
    def o_dim(self) -> int:
        """Width of the attention output that o_proj reads: heads x value width."""
        return self.n_heads * (self.v_head_dim if self.is_mla else self.head_dim)

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one global layer: 2 * Hkv * d * dtype (MLA: the latent)."""
        return self.n_kv_heads * self.kv_values_per_head * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """What one more token of context adds to the KV of all layers (window layers add none past their
        window, so only the global layers count)."""
        return self.kv_layers * self.kv_bytes_per_token_layer

    def attention_params(self) -> int:
        h = self.hidden
        if self.is_mla:  # q, the latent's down projection and norm, its up projection to k_nope and v, out
            nope = self.head_dim - (self.kv_latent - self.kv_lora_rank)
            return (
                h * self.q_dim
                + h * self.kv_latent
                + self.kv_lora_rank
                + self.kv_lora_rank * self.n_heads * (nope + self.v_head_dim)
                + self.o_dim * h
            )
        attn = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        if self.family in ("opt", "gpt_oss"):
            attn += h  # out projection bias
        if self.family == "opt":
            attn += self.q_dim + 2 * self.kv_dim  # OPT has biases on q, k, v and out
        if self.qk_norm:
            attn += 2 * self.head_dim
        if self.attention_sinks:
            attn += self.n_heads
        return attn

    def layer_params_of(self, layer: int) -> int:
        h = self.hidden
        if self.is_moe(layer):
            mlp = self.n_experts * self.expert_params + 3 * h * self.shared_intermediate + h * self.n_experts
            if self.family == "gpt_oss":
                mlp += self.n_experts  # router bias
        else:
            mlp = (3 if self.mlp == "gated" else 2) * h * self.intermediate
            if self.family == "opt":
                mlp += self.intermediate + h
        norms = 2 * h * (2 if self.norm == "layer" else 1) * (2 if self.sandwich_norm else 1)
        return self.attention_params() + mlp + norms

    @property
    def layer_params(self) -> int:
        """Parameters of the average decoder layer (every layer's, for a model whose layers are all alike)."""
        if not self.n_experts:
            return self.layer_params_of(0)
        return sum(self.layer_params_of(i) for i in range(self.n_layers)) // self.n_layers

    @property
    def embedding_params(self) -> int:
        emb = self.vocab * self.hidden
        lm_head = 0 if self.tied_embeddings else self.vocab * self.hidden
        pos = self.max_positions * self.hidden if self.positions == "learned" else 0
        return emb + lm_head + pos + self.hidden  # final norm

    @property
    def params(self) -> int:
        if self.n_experts:
            return sum(self.layer_params_of(i) for i in range(self.n_layers)) + self.embedding_params
        return self.n_layers * self.layer_params + self.embedding_params

    @property
    def active_params(self) -> int:
        """Parameters one token uses: the routed experts it does not pick left out."""
        unused = self.moe_layers * (self.n_experts - self.experts_per_token) * self.expert_params
        return self.params - unused

    @property
    def layer_weight_bytes(self) -> int:
        return self.layer_params * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes


def _every_nth_global(layers: int, n: int, window: int) -> tuple[int | None, ...]:
    """Layer i attends the whole context where (i + 1) % n == 0, else a window (Gemma 3's
    sliding_window_pattern; gpt-oss's layer_types, which alternate from a window layer)."""
    return tuple(None if (i + 1) % n == 0 else window for i in range(layers))


def _hf(name: str, repo: str, **kw) -> ModelSpec:
    return ModelSpec(name=name, source=f"https://huggingface.co/{repo}/blob/main/config.json", **kw)


_LLAMA8B = dict(
    family="llama",
    n_layers=32,
    hidden=4096,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    intermediate=14336,
    vocab=128256,
)
_LLAMA70B = dict(
    family="llama",
    n_layers=80,
    hidden=8192,
    n_heads=64,
    n_kv_heads=8,
    head_dim=128,
    intermediate=28672,
    vocab=128256,
)
_OPT = dict(
    family="opt",
    mlp="plain",
    norm="layer",
    positions="learned",
    tied_embeddings=True,
    vocab=50272,
    max_positions=2048,
)

BUILTIN: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        _hf("llama-3-8b", "meta-llama/Meta-Llama-3-8B", max_positions=8192, **_LLAMA8B),
        _hf("llama-3.1-8b", "meta-llama/Llama-3.1-8B", max_positions=131072, **_LLAMA8B),
        _hf("llama-3.1-70b", "meta-llama/Llama-3.1-70B", max_positions=131072, **_LLAMA70B),
        _hf(
            "llama-2-7b",
            "meta-llama/Llama-2-7b-hf",
            family="llama",
            n_layers=32,
            hidden=4096,
            n_heads=32,
            n_kv_heads=32,
            head_dim=128,
            intermediate=11008,
            vocab=32000,
            max_positions=4096,
        ),
        *[
            _hf(
                f"qwen2.5-{size}",
                f"Qwen/Qwen2.5-{size.upper()}",
                family="qwen2",
                qkv_bias=True,
                head_dim=128,
                vocab=152064,
                max_positions=131072,
                **shape,
            )
            for size, shape in {
                "7b": dict(n_layers=28, hidden=3584, n_heads=28, n_kv_heads=4, intermediate=18944),
                "14b": dict(n_layers=48, hidden=5120, n_heads=40, n_kv_heads=8, intermediate=13824),
                "32b": dict(n_layers=64, hidden=5120, n_heads=40, n_kv_heads=8, intermediate=27648),
                "72b": dict(n_layers=80, hidden=8192, n_heads=64, n_kv_heads=8, intermediate=29568),
            }.items()
        ],
        _hf(
            "mistral-7b-v0.3",
            "mistralai/Mistral-7B-v0.3",
            family="mistral",
            n_layers=32,
            hidden=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            intermediate=14336,
            vocab=32768,
            max_positions=32768,
        ),
        _hf(
            "phi-3-mini-128k",
            "microsoft/Phi-3-mini-128k-instruct",
            family="phi3",
            n_layers=32,
            hidden=3072,
            n_heads=32,
            n_kv_heads=32,
            head_dim=96,
            intermediate=8192,
            vocab=32064,
            max_positions=131072,
            fused_qkv=True,
        ),
        _hf(
            "opt-6.7b",
            "facebook/opt-6.7b",
            n_layers=32,
            hidden=4096,
            n_heads=32,
            n_kv_heads=32,
            head_dim=128,
            intermediate=16384,
            **_OPT,
        ),
        _hf(
            "opt-13b",
            "facebook/opt-13b",
            n_layers=40,
            hidden=5120,
            n_heads=40,
            n_kv_heads=40,
            head_dim=128,
            intermediate=20480,
            **_OPT,
        ),
        _hf(
            "opt-30b",
            "facebook/opt-30b",
            n_layers=48,
            hidden=7168,
            n_heads=56,
            n_kv_heads=56,
            head_dim=128,
            intermediate=28672,
            **_OPT,
        ),
        _hf("llama-3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", max_positions=131072, **_LLAMA70B),
        *[
            _hf(
                f"qwen3-{size}",
                f"Qwen/Qwen3-{size.upper()}",
                family="qwen3",
                qk_norm=True,
                head_dim=128,
                n_kv_heads=8,
                vocab=151936,
                max_positions=40960,
                **shape,
            )
            for size, shape in {
                "8b": dict(n_layers=36, hidden=4096, n_heads=32, intermediate=12288),
                "14b": dict(n_layers=40, hidden=5120, n_heads=40, intermediate=17408),
                "32b": dict(n_layers=64, hidden=5120, n_heads=64, intermediate=25600),
            }.items()
        ],
        _hf(
            "qwen3-30b-a3b",
            "Qwen/Qwen3-30B-A3B",
            family="qwen3_moe",
            qk_norm=True,
            n_layers=48,
            hidden=2048,
            n_heads=32,
            n_kv_heads=4,
            head_dim=128,
            intermediate=6144,
            vocab=151936,
            max_positions=40960,
            n_experts=128,
            experts_per_token=8,
            expert_intermediate=768,
        ),
        *[
            _hf(
                f"gemma-3-{size}",
                f"google/gemma-3-{size}-it",
                family="gemma3",
                qk_norm=True,
                sandwich_norm=True,
                tied_embeddings=True,
                vocab=262208,
                max_positions=131072,
                layer_windows=_every_nth_global(shape["n_layers"], 6, 1024),
                **shape,
            )
            for size, shape in {
                "12b": dict(
                    n_layers=48, hidden=3840, n_heads=16, n_kv_heads=8, head_dim=256, intermediate=15360
                ),
                "27b": dict(
                    n_layers=62, hidden=5376, n_heads=32, n_kv_heads=16, head_dim=128, intermediate=21504
                ),
            }.items()
        ],
        *[
            _hf(
                f"gpt-oss-{size}",
                f"openai/gpt-oss-{size}",
                family="gpt_oss",
                qkv_bias=True,
                attention_sinks=True,
                hidden=2880,
                n_heads=64,
                n_kv_heads=8,
                head_dim=64,
                intermediate=2880,
                expert_intermediate=2880,
                experts_per_token=4,
                vocab=201088,
                max_positions=131072,
                layer_windows=_every_nth_global(layers, 2, 128),
                n_layers=layers,
                n_experts=experts,
            )
            for size, layers, experts in (("20b", 24, 32), ("120b", 36, 128))
        ],
        _hf(
            "mixtral-8x7b",
            "mistralai/Mixtral-8x7B-v0.1",
            family="mixtral",
            n_layers=32,
            hidden=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            intermediate=14336,
            vocab=32000,
            max_positions=32768,
            n_experts=8,
            experts_per_token=2,
            expert_intermediate=14336,
        ),
        _hf(
            "deepseek-v2-lite",
            "deepseek-ai/DeepSeek-V2-Lite",
            family="deepseek_v2",
            n_layers=27,
            hidden=2048,
            n_heads=16,
            n_kv_heads=1,  # the latent, which every head reads
            head_dim=192,  # qk_nope_head_dim 128 + qk_rope_head_dim 64
            intermediate=10944,
            vocab=102400,
            max_positions=163840,
            kv_latent=576,  # kv_lora_rank 512 + qk_rope_head_dim 64
            kv_lora_rank=512,
            v_head_dim=128,
            n_experts=64,
            experts_per_token=6,
            expert_intermediate=1408,
            shared_intermediate=2 * 1408,  # n_shared_experts 2 of moe_intermediate_size
            dense_layers=1,  # first_k_dense_replace
        ),
        ModelSpec(
            name="tiny-llama",
            source="roofsim: a two-layer Llama for smoke runs on a CPU (random weights; `roofsim run --device cpu`)",
            family="llama",
            n_layers=2,
            hidden=64,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            intermediate=128,
            vocab=128,
            max_positions=4096,
        ),
    ]
}


def list_models() -> list[str]:
    return sorted(BUILTIN)


_FAMILY = {  # transformers model_type -> family
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3_moe",
    "mistral": "mistral",
    "mixtral": "mixtral",
    "phi3": "phi3",
    "opt": "opt",
    "gemma3": "gemma3",  # the multimodal config: its text_config is read
    "gemma3_text": "gemma3",
    "gpt_oss": "gpt_oss",
    "deepseek_v2": "deepseek_v2",
}
_KINDS = ("qwen3", "qwen3_moe", "mixtral", "gemma3", "gpt_oss", "deepseek_v2")  # read by _layer_kinds
# What transformers assumes where a Gemma 3 config leaves a key out (Gemma3TextConfig's defaults)
_GEMMA3_DEFAULTS = {
    "head_dim": 256,
    "vocab_size": 262208,
    "max_position_embeddings": 131072,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
}


_HF_KEY = {  # ModelSpec field -> the config.json key it is read from
    "n_layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "max_positions": "max_position_embeddings",
}


def _count(cfg: dict, key: str, field: str, source: str, default: int | None = None) -> int:
    """A whole, positive, bounded number from the config (None or absent: `default`, where there is one)."""
    value = cfg.get(key)
    if value is None:
        if default is None:
            raise UserError(f"{source}: config is missing {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{source}: {key} must be a whole number, got {value!r}")
    if not 0 < value <= _MAX[field]:
        raise UserError(f"{source}: {key} must be from 1 to {_MAX[field]}, got {value}")
    return value


def _flag(cfg: dict, key: str, source: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise UserError(f"{source}: {key} must be true or false, got {value!r}")
    return value


def from_hf_config(cfg: dict, name: str, source: str) -> ModelSpec:
    """Read a transformers config.json of a supported family."""
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: a config.json holds one JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in _FAMILY:
        raise UserError(
            f"{source}: model_type {model_type!r} is not supported; use one of {', '.join(sorted(_FAMILY))}"
        )

    if model_type == "gemma3":
        text = cfg.get("text_config")
        if not isinstance(text, dict):
            raise UserError(
                f"{source}: a gemma3 config holds its text model's shapes in a 'text_config' object"
            )
        cfg = {**_GEMMA3_DEFAULTS, "tie_word_embeddings": True, **text}
    elif model_type == "gemma3_text":
        cfg = {**_GEMMA3_DEFAULTS, "tie_word_embeddings": True, **cfg}

    def count(field: str, default: int | None = None, key: str | None = None) -> int:
        return _count(cfg, key or _HF_KEY[field], field, source, default)

    hidden, n_heads, n_layers = count("hidden"), count("n_heads"), count("n_layers")
    try:
        if model_type == "opt":
            if hidden % n_heads:
                raise UserError(
                    f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads} (OPT's "
                    "heads split the hidden size)"
                )
            return ModelSpec(
                name=name,
                source=source,
                family="opt",
                mlp="plain",
                norm="layer",
                positions="learned",
                n_layers=n_layers,
                hidden=hidden,
                n_heads=n_heads,
                n_kv_heads=n_heads,
                head_dim=hidden // n_heads,
                intermediate=count("intermediate", key="ffn_dim"),
                vocab=count("vocab"),
                max_positions=count("max_positions", 2048),
                tied_embeddings=_flag(cfg, "tie_word_embeddings", source, True),
            )
        n_kv_heads = count("n_kv_heads", n_heads)
        if n_heads % n_kv_heads:
            raise UserError(
                f"{source}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
            )
        kinds = (
            _layer_kinds(cfg, _FAMILY[model_type], n_layers, hidden, n_heads, source)
            if _FAMILY[model_type] in _KINDS
            else {}
        )
        if kinds.get("kv_latent"):
            n_kv_heads = 1
        head_dim = kinds.pop("head_dim", None) or count("head_dim", hidden // n_heads or None)
        return ModelSpec(
            name=name,
            source=source,
            family=_FAMILY[model_type],
            n_layers=n_layers,
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            intermediate=count("intermediate"),
            vocab=count("vocab"),
            max_positions=count("max_positions", 4096),
            tied_embeddings=_flag(cfg, "tie_word_embeddings", source, False),
            qkv_bias=_flag(cfg, "attention_bias", source, model_type in ("qwen2", "gpt_oss")),
            fused_qkv=model_type == "phi3",
            **kinds,
        )
    except ValidationError as e:
        raise UserError(f"{source}: {first_error(e)}") from None


def _layer_kinds(cfg: dict, family: str, n_layers: int, hidden: int, n_heads: int, source: str) -> dict:
    """The ModelSpec fields of layer kinds from a config: windows (layer_types, or Gemma 3's
    sliding_window_pattern), experts (num_local_experts / num_experts / n_routed_experts, num_experts_per_tok,
    moe_intermediate_size, shared experts, first_k_dense_replace) and MLA's latent (kv_lora_rank +
    qk_rope_head_dim)."""

    def count(key: str, field: str = "intermediate", default: int | None = None) -> int:
        return _count(cfg, key, field, source, default)

    out: dict = {}
    if family in ("qwen3", "qwen3_moe", "gemma3"):
        out["qk_norm"] = True
    if family == "gemma3":
        out["sandwich_norm"] = True
    if family == "gpt_oss":
        out["attention_sinks"] = True
    layer_types = cfg.get("layer_types")
    sliding = isinstance(layer_types, list) and "sliding_attention" in layer_types
    if family in ("gemma3", "gpt_oss") or sliding:
        window = count("sliding_window", "max_positions")
        if layer_types is not None:
            if not isinstance(layer_types, list) or len(layer_types) != n_layers:
                raise UserError(f"{source}: layer_types must list one kind per layer ({n_layers})")
            bad = [t for t in layer_types if t not in ("sliding_attention", "full_attention")]
            if bad:
                raise UserError(
                    f"{source}: layer_types holds {bad[0]!r}; roofsim reads sliding_attention and full_attention"
                )
            windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        else:
            n = count("sliding_window_pattern", "n_layers", 2 if family == "gpt_oss" else 6)
            windows = tuple(None if (i + 1) % n == 0 else window for i in range(n_layers))
        if all(w is not None for w in windows):
            raise UserError(
                f"{source}: every layer attends a window; roofsim needs at least one global layer"
            )
        if any(w is not None for w in windows):
            out["layer_windows"] = windows
    if family == "qwen3_moe":
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise UserError(
                f"{source}: roofsim reads MoE models whose every layer is MoE (mlp_only_layers empty)"
            )
        key = (
            "num_experts" if cfg.get("num_experts") is not None else "num_local_experts"
        )  # transformers 5 writes the latter
        out.update(
            n_experts=count(key, "n_heads"),
            experts_per_token=count("num_experts_per_tok", "n_heads"),
            expert_intermediate=count("moe_intermediate_size"),
        )
    elif family in ("mixtral", "gpt_oss"):
        out.update(
            n_experts=count("num_local_experts", "n_heads"),
            experts_per_token=count("num_experts_per_tok", "n_heads", cfg.get("experts_per_token")),
            expert_intermediate=count("intermediate_size"),
        )
    elif family == "deepseek_v2":
        if cfg.get("q_lora_rank") is not None or cfg.get("moe_layer_freq", 1) != 1:
            raise UserError(
                f"{source}: roofsim reads DeepSeek-V2 configs without a q_lora_rank and with moe_layer_freq 1 "
                "(DeepSeek-V2-Lite's shape)"
            )
        moe = count("moe_intermediate_size")
        rope, nope = count("qk_rope_head_dim", "head_dim"), count("qk_nope_head_dim", "head_dim")
        rank = count("kv_lora_rank", "head_dim")
        out.update(
            n_experts=count("n_routed_experts", "n_heads"),
            experts_per_token=count("num_experts_per_tok", "n_heads"),
            expert_intermediate=moe,
            shared_intermediate=moe * _count(cfg, "n_shared_experts", "n_heads", source, 0)
            if cfg.get("n_shared_experts")
            else 0,
            dense_layers=cfg.get("first_k_dense_replace") or 0,
            kv_latent=rank + rope,
            kv_lora_rank=rank,
            v_head_dim=count("v_head_dim", "head_dim"),
            head_dim=nope + rope,
        )
    return out


def load_model(name_or_path: str) -> ModelSpec:
    key = name_or_path.strip().lower()
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(
                f"--model {name_or_path!r} is a folder without a config.json: give the config.json"
            )
    if path.is_file() or name_or_path.endswith(".json"):
        from roofsim.jsonfile import read_json_object

        cfg = read_json_object(path, "model config")
        return from_hf_config(cfg, name=path.parent.name or path.stem, source=str(path))
    import difflib

    close = difflib.get_close_matches(key, list(BUILTIN), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(
        f"unknown model {name_or_path!r}: {hint}`roofsim models` lists them, or pass a path to a HF config.json"
    )
