"""Streamed weights (weights="streamed") on the CPU stand-in: same logits as resident weights, the bytes the model
prices (every decoder layer's parameters H2D per forward), two layer buffers on the "GPU", spans named "weights",
and a missing wait for a layer's copy shows as wrong logits (the stand-in's copies run late)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402
from roofsim.executor.weights import decoder_layers  # noqa: E402

from roofsim.families import (  # noqa: E402
    CpuAttentionPlan,
    EvictPlan,
    HeadOffloadPlan,
    KvprPlan,
    LayerOffloadPlan,
    ResidentPlan,
    SparseFetchPlan,
)

PROMPT, CHUNK, GEN = 37, 8, 4
FORWARDS = -(-PROMPT // CHUNK) + GEN
STREAMED = {
    "resident": ResidentPlan(weights="streamed"),
    "head": HeadOffloadPlan(weights="streamed"),
    "head_resident_depth2": HeadOffloadPlan(
        resident_slots=1, prefetch_depth=2, slot_buffers=3, weights="streamed"
    ),
    "layer_full": LayerOffloadPlan(write_back="full", weights="streamed"),
    "layer_incremental": LayerOffloadPlan(write_back="incremental", weights="streamed"),
}


def _nbytes(p):
    return p.numel() * p.element_size()


def _layer_bytes(model):
    return [sum(_nbytes(p) for p in layer.parameters()) for layer in decoder_layers(model)]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    model = random_model(tiny_config(request.param, layers=3), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    try:
        ref = greedy_logits(model, cache, ids, CHUNK, GEN)
    finally:
        cache.close()
    return model, ids, ref


@pytest.mark.parametrize("name", list(STREAMED))
def test_streamed_weights_match_resident_weights(tiny, name):
    model, ids, ref = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cache = make_cache(model, STREAMED[name], max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
        w = cache.runtime.weights
        assert w.bytes_copied == FORWARDS * sum(_layer_bytes(model))
        assert w.copies == FORWARDS * len(decoder_layers(model))  # one copy per layer per forward
    finally:
        cache.close()
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-5, name
    # closing puts every parameter back, unchanged and out of the host region
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_streamed_weights_memory_and_spans(tiny):
    model, ids, _ = tiny
    layers = decoder_layers(model)
    per_layer = _layer_bytes(model)
    resident = sum(_nbytes(p) for p in model.parameters()) - sum(per_layer)
    cache = make_cache(model, HeadOffloadPlan(weights="streamed"), max_tokens=PROMPT + GEN, record=True)
    try:
        w = cache.runtime.weights
        rec = cache.runtime.rec
        rec.start()
        # between forwards the decoder layers' parameters live in the host region, the rest does not
        host = w.pool.buffer
        lo, hi = host.data_ptr(), host.data_ptr() + host.numel()
        streamed_ids = {id(p) for layer in layers for p in layer.parameters()}
        for p in model.parameters():
            assert (lo <= p.data_ptr() < hi) == (id(p) in streamed_ids)
        # "GPU" side: the resident embeddings, norm and head, plus two layers' buffers
        gpu_params = sum(_nbytes(p) for p in model.parameters() if not lo <= p.data_ptr() < hi)
        assert gpu_params == resident
        assert w.buffer_bytes == 2 * max(per_layer)
        assert cache.gpu_bytes()["weights"] == resident + 2 * max(per_layer)
        assert w.host_bytes == sum(per_layer) and cache.pinned_host_bytes == 0  # not pinned on the CPU
        greedy_logits(model, cache, ids, CHUNK, GEN)
        cache.runtime.engine.synchronize()
        rec.flush()
    finally:
        cache.close()
    spans = [s for s in rec.spans if s.name == "weights"]
    assert all(s.resource == "h2d" and s.kind == "h2d" for s in spans)
    by_step = {}
    for s in spans:
        by_step.setdefault((s.phase, s.step), []).append(s)
    assert len(by_step) == FORWARDS
    for (phase, step), ss in by_step.items():
        assert sorted(s.layer for s in ss) == list(range(len(layers))), (phase, step)
        assert sum(s.bytes for s in ss) == sum(per_layer)
    assert ("prefill", 0) in by_step and ("decode", GEN - 1) in by_step
    # KV copies are recorded beside them, without the name
    assert any(s.kind == "h2d" and s.name is None for s in rec.spans)


def test_missing_wait_for_the_weight_copy_gives_wrong_logits(tiny):
    """Without the compute stream's wait on a layer's ready event, the late copy has not landed: wrong logits."""
    model, ids, ref = tiny
    for guard in (False, True):
        cache = make_cache(model, ResidentPlan(weights="streamed"), max_tokens=PROMPT + GEN)
        cache.runtime.weights.guard = guard
        try:
            got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
        finally:
            cache.close()
        assert (rel_err(got, ref) < 1e-5) == guard


@pytest.mark.parametrize(
    "plan",
    [
        KvprPlan(recompute_tokens=10, weights="streamed"),
        CpuAttentionPlan(weights="streamed"),
    ],
    ids=lambda p: p.family,
)
def test_other_exact_families_stream_weights(plan):
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=3)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(4))
    ref = reference_logits(model, ids, CHUNK, GEN)
    cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
    finally:
        cache.close()
    assert rel_err(got, ref) < 1e-5, plan.family


def test_approximate_families_run_with_streamed_weights():
    model = random_model(tiny_config("mistral"), "cpu", torch.float32, seed=5)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(6))
    ref = reference_logits(model, ids, CHUNK, GEN)
    tokens = ref[:-1].argmax(-1).T
    for plan in (
        SparseFetchPlan(fetch_fraction=1.0, dense_layers=0, weights="streamed"),
        EvictPlan(budget_tokens=64, prefill_chunk=CHUNK, weights="streamed"),
    ):
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
        try:
            got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens)
        finally:
            cache.close()
        assert rel_err(got, ref) < 1e-5, plan.family


def test_generate_with_streamed_weights_matches_stock():
    model = random_model(tiny_config("qwen2"), "cpu", torch.float32, seed=7)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(8))
    model.set_attn_implementation("sdpa")
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    cache = make_cache(model, HeadOffloadPlan(resident_slots=1, weights="streamed"), max_tokens=PROMPT + 6)
    try:
        got = model.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False)
    finally:
        cache.close()
    assert torch.equal(got, ref)


def test_one_streaming_cache_per_model():
    from roofsim.errors import UserError

    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=9)
    cache = make_cache(model, ResidentPlan(weights="streamed"), max_tokens=64)
    with pytest.raises(UserError, match="already streamed"):
        make_cache(model, ResidentPlan(weights="streamed"), max_tokens=64)
    cache.close()
    make_cache(model, ResidentPlan(weights="streamed"), max_tokens=64).close()


def test_run_plan_traces_streamed_weights(tmp_path):
    from roofsim.executor.runner import run_plan

    from roofsim.trace import Trace

    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=11)
    per_layer = _layer_bytes(model)
    total = sum(_nbytes(p) for p in model.parameters())
    plan = HeadOffloadPlan(prefill_chunk=16, weights="streamed")
    out = tmp_path / "trace.json"
    run_plan(plan, model, model_name="tiny", prompt_len=40, gen=4, out=out, trace_steps=-1)
    t = Trace.read(out)
    assert t.complete and t.header.plan.weights == "streamed"
    assert all(m.gpu["weights"] == total - sum(per_layer) + 2 * max(per_layer) for m in t.memory)
    weights = [s for s in t.spans if s.name == "weights"]
    assert sum(s.bytes for s in weights) == (3 + 4) * sum(per_layer)  # 3 prefill chunks + 4 decode steps
    # the run closed its cache: the parameters are back
    assert sum(_nbytes(p) for p in model.parameters()) == total
    assert model(torch.zeros(1, 3, dtype=torch.long)).logits.isfinite().all()


def test_a_forward_that_breaks_off_leaves_streaming_consistent(tiny):
    """A forward that fails inside layer 0 (after its copies were issued) does not spoil the next ones."""
    from roofsim.errors import UserError

    model, ids, ref = tiny
    cache = make_cache(model, HeadOffloadPlan(weights="streamed"), max_tokens=PROMPT + GEN)
    try:
        with pytest.raises(UserError, match="holds"):
            model(torch.zeros(1, PROMPT + GEN + 1, dtype=torch.long), past_key_values=cache)
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=ref[:-1].argmax(-1).T)
    finally:
        cache.close()
    assert rel_err(got, ref) < 1e-5


def test_layers_can_stay_on_the_host_while_the_rest_goes_to_the_device():
    """load_model(layers_device="cpu") for streamed plans: only embeddings, norm, LM head and RoPE buffers go to
    the device (here the meta device stands in for the GPU); tied weights stay one Parameter."""
    from roofsim.executor.models import place_outside_layers

    model = random_model(tiny_config("llama"), "meta", torch.float32, layers_device="cpu")
    inside = {id(p) for layer in decoder_layers(model) for p in layer.parameters()}
    assert inside and all((p.device.type == "cpu") == (id(p) in inside) for p in model.parameters())
    assert all(b.device.type == "meta" for b in model.buffers())
    model = random_model(tiny_config("llama"), "cpu", torch.float32)
    model.lm_head.weight = model.model.embed_tokens.weight
    place_outside_layers(model, "meta")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.device.type == "meta"
    assert all(p.device.type == "cpu" for layer in decoder_layers(model) for p in layer.parameters())


def test_roofsim_run_with_streamed_weights(tmp_path, capsys):
    import json

    from roofsim.cli import main
    from roofsim.trace import Trace

    config = tmp_path / "config.json"
    tiny_config("llama").to_json_file(config)
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"plan": {"family": "layer_offload", "prefill_chunk": 16, "weights": "streamed"}})
    )
    out = tmp_path / "measured.json"
    args = ["run", str(plan), "--model", str(config), "--prompt-len", "40", "--gen", "4", "-o", str(out)]
    assert main([*args, "--device", "cpu", "--dtype", "fp32", "--trace-steps", "-1"]) == 0
    t = Trace.read(out)
    assert t.complete and t.header.plan.weights == "streamed"
    assert any("weights streamed" in n for n in t.header.notes)
    weights = [s for s in t.spans if s.name == "weights"]
    assert {(s.phase, s.step) for s in weights} == {("prefill", i) for i in range(3)} | {
        ("decode", i) for i in range(4)
    }
    assert {s.layer for s in weights} == {0, 1}


def test_streamed_weights_warm_up_attends_but_streams_no_weight(tiny):
    """With streamed weights the warm-up before the prefill runs the kernel race and the attention calls, not a
    forward: the run copies exactly its own forwards' weights, and its logits are a cold run's."""
    from roofsim.executor.runner import run_plan

    model = tiny[0]
    runs, copied = [], []
    for warm in (False, True):
        r = run_plan(
            ResidentPlan(weights="streamed", prefill_chunk=CHUNK),
            model,
            model_name="tiny",
            prompt_len=PROMPT,
            gen=GEN,
            keep_logits=True,
            prefill_warmup=warm,
            keep_cache=True,
        )
        copied.append(r.cache.runtime.weights.bytes_copied)
        r.cache.close()
        runs.append(r)
    assert copied == [FORWARDS * sum(_layer_bytes(model))] * 2
    assert all(torch.equal(a, b) for a, b in zip(runs[0].logits, runs[1].logits, strict=True))
    assert any("no warm-up forward" in n for n in runs[1].trace.header.notes)
    assert not any("ran first, untimed" in n for n in runs[0].trace.header.notes)
