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
from roofsim.executor.window import WindowLayer, banded_attention  # noqa: E402

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


def _masked_window(q, K, V, P, kept, W, scale):
    """The band as transformers masks it (kv > q - window, kv <= q), in float64: (out, lse)."""
    G = q.shape[1] // K.shape[1]
    qp, kp = torch.arange(P, P + q.shape[2]), torch.arange(P - kept, P + q.shape[2])
    mask = (kp[None] <= qp[:, None]) & (kp[None] > qp[:, None] - W)
    s = q.double() @ K.repeat_interleave(G, 1).double().transpose(-1, -2) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ V.repeat_interleave(G, 1).double(), torch.logsumexp(s, -1)


@pytest.mark.parametrize("W", [4, 7])
@pytest.mark.parametrize("P", [0, 2, 3, 6, 20])
@pytest.mark.parametrize("C", [1, 3, 4, 8, 15, 17])
def test_banded_window_attention_equals_the_masked_band(W, P, C):
    """Blocks of W queries as causal squares (own keys, and the keys before reversed) merged by LSE give the
    masked band, at the sequence's start (fewer than W-1 keys before), mid-sequence and with a partial block."""
    g = torch.Generator().manual_seed(W * 1000 + P * 10 + C)
    kept = min(W - 1, P)
    q = torch.randn(2, 4, C, 8, generator=g)
    K, V = torch.randn(2, 2, kept + C, 8, generator=g), torch.randn(2, 2, kept + C, 8, generator=g)
    out, lse = banded_attention(q, K, V, kept, W, 0.3)
    ref, ref_lse = _masked_window(q, K, V, P, kept, W, 0.3)
    assert (out.double() - ref).abs().max() < 1e-5
    assert (lse.double() - ref_lse).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("W,P,C", [(7, 0, 37), (7, 3, 37), (7, 20, 37), (64, 500, 300), (1024, 5000, 2048)])
def test_window_prefill_on_cuda_takes_flash_own_window_and_equals_the_masked_band(W, P, C):
    """On CUDA in bf16 a window layer's chunk is one FlashAttention-2 call with its own sliding window
    (flash_window_ok passes its self-check) and gives the masked band to bf16 accuracy, head dims 128 and 256."""
    from roofsim.executor.window import flash_window_ok

    for D in (128, 256):
        assert flash_window_ok(torch.device("cuda"), torch.bfloat16, D)
        g = torch.Generator(device="cpu").manual_seed(W + P + C + D)
        kept = min(W - 1, P)
        q = torch.randn(1, C, 8, D, generator=g).transpose(1, 2)
        K, V = torch.randn(1, 2, kept + C, D, generator=g), torch.randn(1, 2, kept + C, D, generator=g)
        to = lambda x: x.to("cuda", torch.bfloat16)  # noqa: E731
        out, lse = banded_attention(to(q), to(K), to(V), kept, W, D**-0.5)
        ref, ref_lse = _masked_window(to(q).cpu().double(), to(K).cpu(), to(V).cpu(), P, kept, W, D**-0.5)
        assert (out.cpu().double() - ref).norm() / ref.norm() < 2e-2
        assert (lse.cpu().double() - ref_lse).abs().max() < 5e-2


def test_random_moe_routing_is_balanced_and_the_same_in_every_plan():
    """A random-weight MoE model from load_model routes by token position (experts.balance_routing): a chunk's
    tokens reach nearly all experts, as a trained model's balancing makes them, and the streamed-experts plan
    gives the resident plan's logits."""
    from roofsim.executor.models import load_model

    cfg = tiny_config("qwen3_moe", layers=2)
    cfg.num_experts = 32  # 41 tokens x 2 picks: ~30 distinct experts a layer if spread uniformly
    picked: dict[int, set] = {}
    got = []
    for plan in (ResidentPlan(), ResidentPlan(experts="streamed")):
        model = random_model(cfg, "cpu", torch.float32, seed=1)
        model.roofsim_random_weights = True
        hooks = [
            layer.mlp.gate.register_forward_hook(
                lambda mod, inp, out, i=i: picked.setdefault(i, set()).update(out[2].flatten().tolist())
            )
            for i, layer in enumerate(model.model.layers)
        ]
        ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
        try:
            got.append(greedy_logits(model, cache, ids, CHUNK, GEN))
        finally:
            cache.close()
        for h in hooks:
            h.remove()
    E = cfg.num_experts
    assert all(len(s) >= 0.75 * E for s in picked.values())
    assert rel_err(got[1], got[0]) < 1e-5
    assert load_model  # load_model marks its random weights (models._random)


def test_the_warm_up_runs_each_banded_shape_a_window_prefill_makes(tiny, monkeypatch):
    """warm_up_kernels' cache-less forward never calls banded_attention, so warm_up_windows runs it once per window
    for a first chunk (no kept rows) and a chunk after a full window; a model without window layers runs none."""
    import roofsim.executor.window as window_mod

    model, _, _ = tiny
    calls = []
    real = window_mod.banded_attention
    monkeypatch.setattr(
        window_mod,
        "banded_attention",
        lambda q, K, V, kept, W, s: calls.append((kept, W, q.shape[2])) or real(q, K, V, kept, W, s),
    )
    cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    try:
        window_mod.warm_up_windows(cache.layers, CHUNK)
        windows = sorted({layer.window for layer in cache.layers if isinstance(layer, WindowLayer)})
    finally:
        cache.close()
    assert calls == [(kept, W, CHUNK) for W in windows for kept in (0, W - 1)]
    assert bool(calls) == (model.config.model_type in ("gemma3_text", "gpt_oss"))
