"""KV in fp8 (a plan's kv_dtype, roofsim.kvformat): the model prices half the bytes plus the scales, the planner
offers fp8 plans only on request and marks them approximate, and the executor stores fp8 with a power-of-two scale
per (token block, K or V, head), giving logits close to the model dtype's on tiny models, outlier keys included."""

import math

import pytest
from pydantic import ValidationError

from roofsim.errors import UserError
from roofsim.families import CpuAttentionPlan, HeadOffloadPlan, KvprPlan, LayerOffloadPlan, ResidentPlan
from roofsim.kvformat import KV_SCALE_BLOCK, SCALE_BYTES
from roofsim.limits import Limits
from roofsim.plan import plan_from_dict
from roofsim.planner import SearchSpace, search
from roofsim.planner.search import _longest
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.workload import Workload

FP8 = "fp8_e4m3"
GPU = load_gpu("h100-sxm")
HOST = default_host_of("h100-sxm", GPU)
MODEL = load_model("llama-3-8b")
STREAMED = HeadOffloadPlan(kv_heads_per_slot=1, prefetch_depth=2, slot_buffers=3, prefill_chunk=16384)


def _fp8(plan):
    return plan.model_copy(update={"kv_dtype": FP8})


def _pair(plan, context=256 * 1024, limits=None):
    work = Workload(context=context, gen=16)
    return [predict(p, MODEL, GPU, HOST, work, limits) for p in (plan, _fp8(plan))]


def test_a_plan_in_the_model_dtype_is_written_as_before_and_fp8_round_trips():
    assert "kv_dtype" not in STREAMED.model_dump() and "kv_dtype" not in STREAMED.model_dump_json()
    assert not STREAMED.approximate
    p = _fp8(STREAMED)
    assert p.approximate and p.model_dump()["kv_dtype"] == FP8
    assert plan_from_dict(p.model_dump(mode="json")) == p
    assert "kd=fp8_e4m3" in p.knobs(compact=True)


def test_link_bytes_are_half_plus_the_scales():
    """Conservation: every streamed slot brings P tokens; in fp8 each element is one byte, and each block of
    KV_SCALE_BLOCK tokens adds one fp32 scale per (K or V, head)."""
    bf16, fp8 = _pair(STREAMED)
    P = 256 * 1024
    scales = MODEL.n_layers * MODEL.n_kv_heads * P * 2 * SCALE_BYTES / KV_SCALE_BLOCK
    assert bf16.summary.decode.h2d_bytes == pytest.approx(MODEL.n_layers * P * MODEL.kv_bytes_per_token_layer)
    assert fp8.summary.decode.h2d_bytes == pytest.approx(
        bf16.summary.decode.h2d_bytes / 2 + scales, rel=1e-12
    )
    # the write-back: the scale blocks the new token touches (one block of each streamed slot)
    block = MODEL.n_layers * MODEL.n_kv_heads * KV_SCALE_BLOCK * (2 * MODEL.head_dim + 2 * SCALE_BYTES / 16)
    assert fp8.summary.decode.d2h_bytes == pytest.approx(block)


def test_memory_halves_host_and_resident_kv_and_adds_one_scratch():
    bf16, fp8 = _pair(STREAMED)
    assert fp8.summary.memory.host["kv"] == pytest.approx(bf16.summary.memory.host["kv"] / 2, rel=2e-3)
    res_bf16, res_fp8 = _pair(ResidentPlan(prefill_chunk=16384), context=64 * 1024)
    kv16, kv8 = res_bf16.summary.memory.gpu["kv_resident"], res_fp8.summary.memory.gpu["kv_resident"]
    assert kv8 == pytest.approx(kv16 / 2, rel=2e-3)
    # the scratch: one layer's KV in the model dtype (resident: a slot is a whole layer)
    extra = res_fp8.summary.memory.gpu["kv_buffers"] - res_bf16.summary.memory.gpu["kv_buffers"]
    assert extra == pytest.approx(kv16 / MODEL.n_layers, rel=1e-3)


def test_fp8_is_faster_where_the_link_binds_and_never_faster_than_half():
    for context in (64 * 1024, 256 * 1024, 512 * 1024):
        bf16, fp8 = _pair(STREAMED, context)
        ratio = bf16.summary.decode_s_per_token / fp8.summary.decode_s_per_token
        assert 1.8 < ratio <= 2.0, (context, ratio)
    # resident decode reads the KV from HBM: fp8 adds its dequantisation and is slower there
    bf16, fp8 = _pair(ResidentPlan(prefill_chunk=16384), context=64 * 1024)
    assert fp8.summary.decode_s_per_token > bf16.summary.decode_s_per_token


def test_decode_grows_with_the_context_in_fp8():
    times = [_pair(STREAMED, c)[1].summary.decode_s_per_token for c in (32768, 65536, 131072, 262144)]
    assert times == sorted(times)


def test_cpu_attention_in_fp8_halves_the_host_store_and_pays_the_dequantisation_on_the_cpu():
    plan = CpuAttentionPlan(cpu_kv_heads=4, prefill_chunk=16384)
    bf16, fp8 = _pair(plan)
    assert fp8.summary.memory.host["kv"] == pytest.approx(bf16.summary.memory.host["kv"] / 2, rel=2e-3)
    # the CPU reads the fp8 store (half the bf16 bytes), writes its bf16 scratch, passes over it three times in
    # place (shift, mask, scale: read and write each) and attends it: 0.5 + 1 + 6 + 1 of bf16's bytes
    assert fp8.summary.decode.cpu_bytes == pytest.approx(bf16.summary.decode.cpu_bytes * 8.5, rel=2e-3)
    assert fp8.summary.decode.busy_s["cpu"] > bf16.summary.decode.busy_s["cpu"]


def test_the_longest_context_on_the_host_roughly_doubles():
    """All KV on the host (one KV head per slot, none resident): the host's RAM binds, and fp8 fits about twice
    the tokens (a little less: the scales)."""
    plan = HeadOffloadPlan(kv_heads_per_slot=1, prefill_chunk=2048)
    work = Workload(context=4096, gen=16)
    n16, _ = _longest(plan, MODEL, GPU, HOST, work, Limits())
    n8, _ = _longest(_fp8(plan), MODEL, GPU, HOST, work, Limits())
    assert 1.9 < n8 / n16 <= 2.0, (n16, n8)


def test_simulator_agrees_with_the_analytic_model_in_fp8():
    work = Workload(context=65536, gen=4)
    plan = _fp8(STREAMED)
    t = simulate(plan, MODEL, GPU, HOST, work, Limits(), decode_steps=2, keep="none", prefill_sample=4)
    p = predict(plan, MODEL, GPU, HOST, work)
    assert t.summary.decode_s_per_token == pytest.approx(p.summary.decode_s_per_token, rel=0.03)
    assert t.summary.peak_gpu_bytes == pytest.approx(p.summary.peak_gpu_bytes, rel=0.03)


def test_fp8_only_where_the_family_and_its_knobs_store_it():
    with pytest.raises(UserError, match="kvpr stores its KV in bf16 only"):
        predict(KvprPlan(kv_dtype=FP8), MODEL, GPU, HOST, Workload(context=8192))
    with pytest.raises(ValidationError, match="token_block"):
        HeadOffloadPlan(kv_dtype=FP8, token_block=4096)
    with pytest.raises(ValidationError, match="write_back_tokens=1"):
        LayerOffloadPlan(kv_dtype=FP8, write_back="incremental", write_back_tokens=4)


def test_the_planner_offers_fp8_on_request_and_says_what_it_buys():
    from roofsim.planner import candidates, explain

    work = Workload(context=256 * 1024, gen=16)
    limits = Limits(gpu_mem_bytes=24e9)
    only = ("head_offload",)
    assert {p.kv_dtype for p in candidates(MODEL, work, SearchSpace(families=only))} == {"bf16"}
    both = {p.kv_dtype for p in candidates(MODEL, work, SearchSpace(families=only, kv_dtypes=("bf16", FP8)))}
    assert both == {"bf16", FP8}
    fp8 = search(MODEL, GPU, HOST, work, limits, SearchSpace(families=only, kv_dtypes=(FP8,)), refine_top=1)
    assert all(c.plan.kv_dtype == FP8 for c in fp8.ranked)
    # beside bf16, fp8 wins where the link binds, and the explanation prices the bf16 plans it beat
    mixed = search(
        MODEL, GPU, HOST, work, limits, SearchSpace(families=only, kv_dtypes=("bf16", FP8)), refine_top=1
    )
    assert mixed.best.plan.kv_dtype == FP8
    text = explain(mixed, MODEL, GPU, HOST, limits)
    assert "approximate: its KV is stored in fp8_e4m3" in text
    assert "The best plan with bf16 KV" in text and "x as fast" in text


def test_cli_kv_dtype_option(capsys):
    from roofsim.cli import main

    code = main("predict --gpu h100-sxm --context 256K --plan head_offload --kv-dtype fp8".split())
    out = capsys.readouterr().out
    assert code == 0 and "kv_dtype=fp8_e4m3" in out.replace("kd=fp8_e4m3", "kv_dtype=fp8_e4m3")
    assert "x as fast in decode" in out
    assert main("predict --gpu h100-sxm --context 256K --plan kvpr --kv-dtype fp8".split()) == 2
    assert "stores its KV in bf16 only" in capsys.readouterr().err
    assert main("plan --gpu h100-sxm --context 64K --kv-dtype fp16".split()) == 2


# ---- the executor ------------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor import kvquant  # noqa: E402
from roofsim.executor.build import make_cache, resident_copy  # noqa: E402
from roofsim.executor.check import greedy_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402

PROMPT, CHUNK, GEN = 37, 8, 6
FP8_PLANS = {
    "resident": ResidentPlan(kv_dtype=FP8),
    "head": HeadOffloadPlan(kv_dtype=FP8),
    "head_resident_depth2": HeadOffloadPlan(
        kv_dtype=FP8, resident_slots=[1, 0], prefetch_depth=2, slot_buffers=3
    ),
    "head_full_syncs": HeadOffloadPlan(
        kv_dtype=FP8, write_back="full", syncs_per_slot=2, prefetch_depth=0, slot_buffers=1
    ),
    "layer_full": LayerOffloadPlan(kv_dtype=FP8),
    "layer_incremental": LayerOffloadPlan(kv_dtype=FP8, write_back="incremental"),
    "cpu_attention": CpuAttentionPlan(kv_dtype=FP8, resident_slots=1),
}


def outlier_keys(model, channels=(3, 11), factor=20.0):
    """Keys with a few large channels in every KV head, as trained Llama keys have: k_proj's rows for those
    channels scaled up."""
    D = model.config.head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.k_proj.weight
            for h in range(model.config.num_key_value_heads):
                for c in channels:
                    w[h * D + c] *= factor
    return model


def _tiny(outliers: bool):
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    if outliers:
        outlier_keys(model)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    ref = greedy_logits(model, make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN), ids, CHUNK, GEN)
    tokens = ref[:-1].argmax(-1).T
    res8 = make_cache(model, FP8_PLANS["resident"], max_tokens=PROMPT + GEN)
    return model, ids, ref, tokens, greedy_logits(model, res8, ids, CHUNK, GEN, tokens=tokens)


@pytest.fixture(scope="module")
def tiny():
    return _tiny(False)


def _close(case, plan):
    """Every fp8 plan stores the same bytes (per-head scales, blocks by position), so it gives the fp8 resident
    plan's logits; those are within 3% (relative L2) of the model dtype's, same inputs fed."""
    model, ids, ref, tokens, res8 = case
    cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens)
    finally:
        cache.close()
    assert rel_err(got, res8) < 1e-5, plan
    assert rel_err(got, ref) < 3e-2, plan
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("name", list(FP8_PLANS))
def test_fp8_plans_are_close_to_the_model_dtype_and_equal_to_resident_fp8(tiny, name):
    _close(tiny, FP8_PLANS[name])


def test_keys_with_outlier_channels_stay_close():
    """A few 20x key channels in every head (trained Llama keys have them): the per-(block, head) scales keep the
    logits as close as without them."""
    case = _tiny(True)
    for name in ("head", "cpu_attention"):
        _close(case, FP8_PLANS[name])


def test_fp8_stores_hold_a_byte_an_element_and_the_scales():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    T = 64
    ids = torch.randint(0, 128, (1, T - 1), generator=torch.Generator().manual_seed(2))
    sizes = {}
    for dtype in ("bf16", FP8):
        cache = make_cache(model, HeadOffloadPlan(kv_dtype=dtype, resident_slots=[1, 0]), max_tokens=T)
        greedy_logits(model, cache, ids, CHUNK, 0)
        sh = cache.runtime.shape
        host = cache.runtime.pool.nbytes
        sizes[dtype] = (cache.gpu_bytes()["kv_resident"], host)
        cache.close()
    # the tiny model runs in fp32: fp8 is a quarter of its bytes, plus one fp32 scale per 16 tokens and head
    elem = sh.batch * 2 * sh.head_dim
    one_slot_fp8 = T * elem + T // KV_SCALE_BLOCK * sh.batch * 2 * SCALE_BYTES
    assert sizes[FP8][0] == one_slot_fp8  # layer 0's resident slot
    assert sizes["bf16"][0] == T * elem * 4


def test_resident_copy_keeps_the_fp8_bytes():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    cache = make_cache(model, HeadOffloadPlan(kv_dtype=FP8), max_tokens=PROMPT + 4)
    greedy_logits(model, cache, ids, CHUNK, 0)
    res = resident_copy(cache, model)
    tok = torch.tensor([[5]])
    a = model(tok, past_key_values=cache, use_cache=True).logits
    b = model(tok, past_key_values=res, use_cache=True).logits
    cache.close()
    res.close()
    assert rel_err(a, b) < 1e-5


def _per_tensor_fp8(x):
    """One scale for the whole tensor: the baseline the per-(block, head) scales are measured against."""
    s = x.abs().max() / 448.0
    return (x / s).to(torch.float8_e4m3fn).float() * s


def test_per_block_and_head_scales_confine_outliers():
    """Keys with large outlier channels, and one outlier token: the other heads' and blocks' rows keep fp8's own
    rounding error (~3%), where one scale for the whole tensor pushes them into fp8's subnormals."""
    g = torch.Generator().manual_seed(0)
    T, H, D = 256, 4, 64
    x = torch.randn(T, 1, 2, H, D, generator=g)
    x[:, :, 0, :, [5, 40]] *= 20  # outlier key channels in every head
    x[100, :, 0, 2] *= 1e5  # one outlier token in head 2's keys
    lay = kvquant.Layout(1, H, D)

    def stored(x, chunks):
        buf, P = torch.zeros(lay.nbytes(T), dtype=torch.uint8), 0
        for C in chunks:
            kvquant.write(lay, buf, P, x[P : P + C])
            P += C
        return buf

    def back(buf):
        return kvquant.dequantize(lay, buf, T, torch.empty(kvquant.scratch_numel(lay, T)))

    # re-scaling a block keeps its earlier rows (power-of-two scales) but those that become fp8 subnormals: how
    # the tokens were chunked moves only such rows, far below the block's maximum
    y = back(stored(x, (T,)))
    moved = back(stored(x, (1, 15, 3, 77, 1, 1, 158))) - y

    def err(a, rows):
        return float((a[rows] - x[rows]).norm() / x[rows].norm())

    away = torch.ones(T, dtype=torch.bool)
    away[96:112] = False  # the outlier's own block
    assert float(moved[away].norm() / x[away].norm()) < 1e-3
    assert err(y, away) < 0.04
    assert err(y, slice(96, 112)) < 0.04
    assert err(_per_tensor_fp8(x), away) > 5 * err(y, away)
    assert not math.isnan(err(y, slice(None)))


@pytest.mark.parametrize(
    "scale", [2.0**-20, 0.25, 1.0, 2.0**7, 2.0**9], ids=lambda s: f"scale=2^{math.log2(s):g}"
)
def test_the_cpu_bits_path_dequantises_every_byte_exactly(scale):
    """A bf16 scratch on the CPU takes the bits (kvquant._e4m3_bits_to_bf16): every e4m3 byte but NaN, normal,
    subnormal and zero, times a power-of-two block scale, comes out as torch's cast times the scale, bit for bit,
    in dequantize and in the one-call write-and-dequantize alike; a scale above MAX_BITS_SCALE (2^9 here) takes
    the cast."""
    lay = kvquant.Layout(1, 1, 128)
    blocks = 2 * 256 // (2 * lay.head_dim)  # every byte once, in K and V
    buf = torch.zeros(lay.nbytes(blocks * kvquant.BLK), dtype=torch.uint8)
    st = kvquant.Store(lay, buf)
    codes = torch.arange(256, dtype=torch.uint8).repeat(blocks * kvquant.BLK * 2 * 128 // 256)
    st.rows.view(torch.uint8).copy_(codes.view(st.rows.shape))
    st.scales.fill_(scale)
    nan = torch.isnan(st.rows.float())
    st.rows.view(torch.uint8)[nan] = 0
    want = (st.rows.float() * st.row_scales).to(torch.bfloat16)
    tokens = blocks * kvquant.BLK
    scratch = torch.empty(kvquant.scratch_numel(lay, tokens + 1), dtype=torch.bfloat16)
    got = kvquant.dequantize(lay, st, tokens, scratch)
    assert torch.equal(got.view(torch.int16), want.view(got.shape).view(torch.int16))
    assert kvquant._bits_apply(got, st.row_scales) == (scale <= kvquant.MAX_BITS_SCALE)
    # the inline copy of the path in the TorchScript function: its constants are the module's
    assert (kvquant.E4M3_TO_BF16_MASK, kvquant.E4M3_TO_BF16_SCALE) == (-30736, 1.329227995784916e36)
    assert kvquant.MAX_BITS_SCALE == 128.0


def test_one_call_write_and_dequantize_matches_write_then_dequantize_in_bf16():
    """store_rows_and_dequantize (TorchScript where it compiles) stores the same bytes and gives the same bf16 rows
    as write() then dequantize(), over a past with an outlier block."""
    lay = kvquant.Layout(1, 2, 128)
    g = torch.Generator().manual_seed(0)
    past = torch.randn(300, 1, 2, 2, 128, generator=g) * 3
    past[17, 0, 0, 1, 5] = 400.0
    new = (torch.randn(1, 1, 2, 2, 128, generator=g) * 3).to(torch.bfloat16)
    bufs = [torch.zeros(lay.nbytes(302), dtype=torch.uint8) for _ in range(2)]
    for b in bufs:
        kvquant.write(lay, b, 0, past.to(torch.bfloat16))
    scratches = [torch.empty(kvquant.scratch_numel(lay, 302), dtype=torch.bfloat16) for _ in range(2)]
    one = kvquant.store_rows_and_dequantize(kvquant.Store(lay, bufs[0]), 300, new, scratches[0])
    kvquant.write(lay, bufs[1], 300, new)
    two = kvquant.dequantize(lay, bufs[1], 301, scratches[1])
    assert torch.equal(bufs[0], bufs[1]) and torch.equal(one, two)
