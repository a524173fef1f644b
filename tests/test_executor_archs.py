"""Executor on the CPU with today's architectures: tiny Qwen3, Qwen3-MoE, Mixtral, Gemma 3 and gpt-oss (window layers,
gpt-oss's attention sinks) built
by transformers with random weights; each exact plan gives stock transformers' logits. Gemma 3's window layers keep
at most window - 1 tokens on the GPU whatever the plan; the plan places the global layers' KV."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import config_for_spec, random_model  # noqa: E402
from roofsim.executor.window import WindowLayer  # noqa: E402

from roofsim.errors import UserError  # noqa: E402
from roofsim.families import HeadOffloadPlan, KvprPlan, LayerOffloadPlan, ResidentPlan  # noqa: E402
from roofsim.specs.model import BUILTIN  # noqa: E402

PROMPT, CHUNK, GEN = 37, 8, 4
PLANS = {  # one of each slot family, across their write-backs, resident shares and token blocks
    "resident": ResidentPlan(),
    "layer_full": LayerOffloadPlan(write_back="full"),
    "head_resident_blocks": HeadOffloadPlan(resident_slots=1, token_block=5),
}


@pytest.fixture(scope="module", params=["qwen3", "qwen3_moe", "mixtral", "gemma3", "gpt_oss"])
def tiny(request):
    layers = 3 if request.param in ("gemma3", "gpt_oss") else 2
    model = random_model(tiny_config(request.param, layers=layers), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    return model, ids, reference_logits(model, ids, CHUNK, GEN)


@pytest.mark.parametrize("name", list(PLANS))
def test_exact_plans_match_stock_logits(tiny, name):
    model, ids, ref = tiny
    cache = make_cache(model, PLANS[name], max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
        windows = [layer for layer in cache.layers if isinstance(layer, WindowLayer)]
        if model.config.model_type == "gemma3_text":
            assert [layer.idx for layer in windows] == [0, 1]  # the third layer is global
            assert all(layer.k.shape[2] == 5 - 1 for layer in windows)  # window - 1 tokens kept
            assert cache.gpu_bytes()["kv_window"] == 2 * 2 * (2 * 4 * 16 * 4)  # 2 layers, K and V, fp32
        elif model.config.model_type == "gpt_oss":
            assert [layer.idx for layer in windows] == [0, 2]  # window layers alternate from the first
        else:
            assert not windows
    finally:
        cache.close()
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-5, name


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize(
    "plan",
    [
        ResidentPlan(experts="streamed"),
        HeadOffloadPlan(experts="streamed", resident_expert_layers=1, write_back="incremental"),
    ],
)
def test_streamed_experts_fetch_the_picked_ones_and_match_stock_logits(family, plan):
    model = random_model(tiny_config(family, layers=3), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    ref = reference_logits(model, ids, CHUNK, GEN)
    cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
        moved = cache.runtime.experts.bytes_moved
    finally:
        cache.close()
    assert rel_err(got, ref) < 1e-5
    expert = 3 * 64 * 32 * 4 if family == "qwen3_moe" else 3 * 64 * 128 * 4  # gate, up, down; fp32
    streamed_layers = 3 - plan.resident_expert_layers
    forwards = -(-PROMPT // CHUNK) + GEN
    # each forward fetches between the 2 experts one token picks and all 4, in each streamed layer
    assert 2 * expert * streamed_layers * forwards <= moved <= 4 * expert * streamed_layers * forwards
    assert model.model.layers[2].mlp.experts.gate_up_proj.device.type == "cpu"  # put back where it was


def test_window_models_refuse_families_without_layer_kinds():
    gemma = random_model(tiny_config("gemma3", layers=3), "cpu", torch.float32, seed=1)
    with pytest.raises(UserError, match="does not run window layers"):
        make_cache(gemma, KvprPlan(), max_tokens=64)
    dense = random_model(tiny_config("qwen3"), "cpu", torch.float32, seed=1)
    with pytest.raises(UserError, match="needs a Qwen3-MoE or Mixtral model"):
        make_cache(dense, ResidentPlan(experts="streamed"), max_tokens=64)
    oss = random_model(tiny_config("gpt_oss", layers=2), "cpu", torch.float32, seed=1)
    with pytest.raises(UserError, match="has 0 whose experts can stream"):
        make_cache(oss, ResidentPlan(experts="streamed"), max_tokens=64)


@pytest.mark.parametrize("name", ["qwen3-8b", "qwen3-30b-a3b", "mixtral-8x7b", "gemma-3-12b", "gpt-oss-20b"])
def test_builtin_specs_give_transformers_configs_of_their_shapes(name):
    spec = BUILTIN[name]
    cfg = config_for_spec(spec)
    assert cfg.num_hidden_layers == spec.n_layers and cfg.num_key_value_heads == spec.n_kv_heads
    if spec.window_layers:
        assert [t == "sliding_attention" for t in cfg.layer_types] == [
            w is not None for w in spec.layer_windows
        ]
    if spec.n_experts:
        assert cfg.num_experts_per_tok == spec.experts_per_token


@pytest.mark.parametrize("name", ["deepseek-v2-lite", "opt-6.7b"])
def test_families_the_executor_does_not_run_say_why(name):
    with pytest.raises(UserError, match="the executor runs"):
        config_for_spec(BUILTIN[name])
