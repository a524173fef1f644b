"""Model specs: the shapes that set FLOPs and bytes. Built in with the URL of each public config.json, or read
from a Hugging Face config.json of the Llama, Qwen2, Mistral, Phi-3 or OPT families."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    family: Literal["llama", "qwen2", "mistral", "phi3", "opt"]
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

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        return self

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
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer: 2 * Hkv * d * dtype."""
        return 2 * self.kv_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.n_layers * self.kv_bytes_per_token_layer

    @property
    def layer_params(self) -> int:
        h = self.hidden
        attn = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        mlp = (3 if self.mlp == "gated" else 2) * h * self.intermediate
        if self.family == "opt":
            attn += self.q_dim + 2 * self.kv_dim + h  # OPT has biases on q, k, v and out
            mlp += self.intermediate + h
        norms = 2 * h * (2 if self.norm == "layer" else 1)
        return attn + mlp + norms

    @property
    def embedding_params(self) -> int:
        emb = self.vocab * self.hidden
        lm_head = 0 if self.tied_embeddings else self.vocab * self.hidden
        pos = self.max_positions * self.hidden if self.positions == "learned" else 0
        return emb + lm_head + pos + self.hidden  # final norm

    @property
    def params(self) -> int:
        return self.n_layers * self.layer_params + self.embedding_params

    @property
    def layer_weight_bytes(self) -> int:
        return self.layer_params * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes


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
        _hf(
            "llama-3.1-70b",
            "meta-llama/Llama-3.1-70B",
            family="llama",
            n_layers=80,
            hidden=8192,
            n_heads=64,
            n_kv_heads=8,
            head_dim=128,
            intermediate=28672,
            vocab=128256,
            max_positions=131072,
        ),
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
    "mistral": "mistral",
    "phi3": "phi3",
    "opt": "opt",
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
        return ModelSpec(
            name=name,
            source=source,
            family=_FAMILY[model_type],
            n_layers=n_layers,
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=count("head_dim", hidden // n_heads or None),
            intermediate=count("intermediate"),
            vocab=count("vocab"),
            max_positions=count("max_positions", 4096),
            tied_embeddings=_flag(cfg, "tie_word_embeddings", source, False),
            qkv_bias=_flag(cfg, "attention_bias", source, model_type == "qwen2"),
            fused_qkv=model_type == "phi3",
        )
    except ValidationError as e:
        raise UserError(f"{source}: {first_error(e)}") from None


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
