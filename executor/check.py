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
    return _kinds_config(family, common, head_dim)


def _kinds_config(family: str, common: dict, head_dim: int):
    """Tiny configs of the families with layer kinds: Qwen3 (q/k norms), Qwen3-MoE and Mixtral (4 experts, 2 per
    token), Gemma 3 (window layers of 5 tokens around one global layer in three)."""
    from transformers import Gemma3TextConfig, GptOssConfig, MixtralConfig, Qwen3Config, Qwen3MoeConfig

    if family == "qwen3":
        return Qwen3Config(**common, head_dim=head_dim, use_sliding_window=False)
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            **common, head_dim=head_dim, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
        )  # fmt: skip
    if family == "mixtral":
        return MixtralConfig(
            **common, head_dim=head_dim, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        )
    if family == "gpt_oss":
        layers = common["num_hidden_layers"]
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        common["intermediate_size"] = 32
        return GptOssConfig(
            **common, head_dim=head_dim, num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
            layer_types=types, attention_bias=True,
        )  # fmt: skip
    if family == "gemma3":
        layers = common["num_hidden_layers"]
        types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(layers)]
        local = {"rope_type": "default", "rope_theta": 1000.0}  # one RoPE per layer type, keyed by the type
        common["rope_parameters"] = {"full_attention": common["rope_parameters"], "sliding_attention": local}
        return Gemma3TextConfig(
            **common, head_dim=head_dim, sliding_window=5, layer_types=types, query_pre_attn_scalar=head_dim
        )
    raise ValueError(family)


@torch.no_grad()
def greedy_logits(
    model,
    cache,
    ids: torch.Tensor,
    chunk: int,
    gen: int,
    tokens: torch.Tensor | None = None,
    graphs: str | None = None,
):
    """Last-position logits after the prefill and after each of `gen` decode steps, [gen + 1, B, vocab] fp32.
    `tokens` forces the decode inputs (so two runs see the same tokens even if their argmax differs).
    graphs: None decodes with model(...); "capture" replays a CUDA graph where the cache allows it (eager
    otherwise); "static" runs the graph's static-input step eagerly (any device)."""
    out = []
    o = None
    for a in range(0, ids.shape[1], chunk):
        o = model(ids[:, a : a + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    last = o.logits[:, -1]
    nxt = None
    decoder = None
    if graphs is not None:
        from roofsim.executor.graphs import GraphDecoder, graph_unsupported

        if graphs == "static" or graph_unsupported(cache) is None:
            decoder = GraphDecoder(model, cache, capture=graphs == "capture")
    for i in range(gen + 1):
        if i:
            if decoder is None:
                last = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            else:
                last = decoder.step(nxt)
        out.append(last.float().clone())
        nxt = last.argmax(-1, keepdim=True) if tokens is None or i >= gen else tokens[:, i : i + 1]
    return torch.stack(out)


def reference_logits(model, ids, chunk: int, gen: int, tokens=None):
    """Stock transformers: DynamicCache with SDPA attention (eager for gpt-oss, which has no SDPA path)."""
    from roofsim.executor.models import stock_attention
    from transformers import DynamicCache

    prev = model.config._attn_implementation
    model.set_attn_implementation(stock_attention(model.config))
    try:
        return greedy_logits(model, DynamicCache(config=model.config), ids, chunk, gen, tokens)
    finally:
        model.set_attn_implementation(prev)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over all logits."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def word_tokenizer(vocab_size: int, chat_template: str | None = None):
    """A tokenizer built here, for checkpoints with random weights (tests, GPU runs with no network): whitespace-
    separated words, one id each. Ids 0, 1, 2 are <unk>, <s>, </s> (tiny_config's BOS and EOS), then "user",
    "assistant", "system", ":" (for a chat template), then "w0", "w1", ... up to `vocab_size` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "user", "assistant", "system", ":"]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def write_checkpoint(path, config, *, seed: int = 0, dtype=torch.float32, device="cpu", chat_template=None):
    """A checkpoint directory: `config` with random weights (safetensors) and a `word_tokenizer` of its vocabulary."""
    from roofsim.executor.models import random_model

    model = random_model(config, device, dtype, seed)
    model.save_pretrained(path)
    word_tokenizer(config.vocab_size, chat_template).save_pretrained(path)
    del model
    return path


def stock_greedy_text(path, ids: list[int], new_tokens: int) -> str:
    """transformers' own answer: the checkpoint loaded afresh, greedy `generate` with its default cache, the new
    tokens decoded by the checkpoint's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)
