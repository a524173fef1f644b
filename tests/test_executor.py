"""Executor on the CPU: exact plans give stock transformers' logits on tiny models of each family, with the CPU
stand-in for the copy engines (copies run late unless ordered, so a missing guard shows as wrong logits)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402

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
EXACT = {
    "resident": ResidentPlan(),
    "layer_full": LayerOffloadPlan(write_back="full"),
    "layer_incremental": LayerOffloadPlan(write_back="incremental"),
    "head": HeadOffloadPlan(),
    "head_resident_depth2": HeadOffloadPlan(resident_slots=1, prefetch_depth=2, slot_buffers=3),
    "head_blocks": HeadOffloadPlan(token_block=5),
    "head_full_syncs": HeadOffloadPlan(write_back="full", syncs_per_slot=2, prefetch_depth=0, slot_buffers=1),
    "head_pairs_per_layer_resident": HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=[1, 0]),
    "head_write_back_tail": HeadOffloadPlan(write_back_tokens=3, resident_slots=[1, 0]),
    "head_tail_over_prefill_chunks": HeadOffloadPlan(write_back_tokens=16),
    "layer_write_back_tail": LayerOffloadPlan(write_back="incremental", write_back_tokens=2),
    "kvpr": KvprPlan(recompute_tokens=10),
    "kvpr_intra_all": KvprPlan(recompute_tokens=1000, overlap="intra_layer"),
    "cpu_attention": CpuAttentionPlan(),
    "cpu_attention_all": CpuAttentionPlan(cpu_kv_heads=2),
    "cpu_attention_one_slot": CpuAttentionPlan(cpu_kv_heads=2, kv_heads_per_slot=2),
    "cpu_attention_resident": CpuAttentionPlan(resident_slots=1),
}


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "phi3"])
def tiny(request):
    model = random_model(tiny_config(request.param), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    return model, ids, reference_logits(model, ids, CHUNK, GEN)


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_plans_match_stock_logits(tiny, name):
    model, ids, ref = tiny
    cache = make_cache(model, EXACT[name], max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
    finally:
        cache.close()
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-5, name


def test_mha_kvpr_recomputes_and_matches():
    """MHA (a < k): KVPR sends X for the prefix instead of its KV, so fewer H2D bytes, same logits."""
    model = random_model(tiny_config("llama", kv_heads=4), "cpu", torch.float32, seed=3)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(4))
    ref = reference_logits(model, ids, CHUNK, GEN)
    moved = {}
    for name, plan in {
        "layer": LayerOffloadPlan(write_back="incremental"),
        "kvpr": KvprPlan(recompute_tokens=20),
    }.items():
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
        cache.runtime.engine.synchronize()
        moved[name] = cache.runtime.engine.stats["h2d"].bytes
        cache.close()
        assert rel_err(got, ref) < 1e-5, name
    # at each decode step 20 tokens come up as X (hidden 64) instead of KV (2 x 4 heads x 16)
    per_token_saving = 2 * 4 * 16 * 4 - 64 * 4
    assert moved["layer"] - moved["kvpr"] == GEN * 2 * 20 * per_token_saving


def test_bf16_on_cpu_close_to_stock():
    model = random_model(tiny_config("llama"), "cpu", torch.bfloat16, seed=5)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(6))
    ref = reference_logits(model, ids, CHUNK, GEN)
    tokens = ref[:-1].argmax(-1).T
    for plan in (HeadOffloadPlan(resident_slots=1), KvprPlan(recompute_tokens=10), CpuAttentionPlan()):
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
        got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens)
        cache.close()
        assert rel_err(got, ref) < 2e-2, plan.family


def test_generate_under_a_plan_matches_stock_generate():
    model = random_model(tiny_config("qwen2"), "cpu", torch.float32, seed=7)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(8))
    model.set_attn_implementation("sdpa")
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    cache = make_cache(model, HeadOffloadPlan(resident_slots=1), max_tokens=PROMPT + 6)
    got = model.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False)
    cache.close()
    assert torch.equal(got, ref)
    assert cache.get_seq_length() == PROMPT + 5


def test_sparse_fetch_all_tokens_is_exact_and_fraction_is_measured():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=9)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(10))
    ref = reference_logits(model, ids, CHUNK, GEN)
    tokens = ref[:-1].argmax(-1).T
    cache = make_cache(model, SparseFetchPlan(fetch_fraction=1.0, dense_layers=0), max_tokens=PROMPT + GEN)
    assert rel_err(greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens), ref) < 1e-5
    st = cache.runtime.sparse_state
    assert st.fetched_bytes == st.full_bytes > 0
    cache.close()
    cache = make_cache(model, SparseFetchPlan(fetch_fraction=0.25, dense_layers=1), max_tokens=PROMPT + GEN)
    got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens)
    st = cache.runtime.sparse_state
    assert got.shape == ref.shape and torch.isfinite(got).all()
    # memory: the one sparse layer keeps r = 20% of the key columns (3 of 16) for every token on the GPU
    assert cache.gpu_bytes()["workspace"] == 1 * 2 * (PROMPT + GEN) * 3 * 4
    # ceil(0.25 * P) rows per decode step of the one sparse layer, P = 37..40
    assert st.fetched_bytes / st.full_bytes == pytest.approx(
        sum(-(-p // 4) for p in range(37, 41)) / sum(range(37, 41))
    )
    cache.close()


def test_evict_keeps_budget_plus_local_and_is_exact_within_budget():
    model = random_model(tiny_config("mistral"), "cpu", torch.float32, seed=11)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(12))
    ref = reference_logits(model, ids, CHUNK, GEN)
    tokens = ref[:-1].argmax(-1).T
    cache = make_cache(model, EvictPlan(budget_tokens=64, prefill_chunk=CHUNK))
    assert rel_err(greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens), ref) < 1e-5
    cache = make_cache(model, EvictPlan(budget_tokens=10, local_tokens=5, prefill_chunk=CHUNK))
    cache.set_prompt_length(PROMPT)
    got = greedy_logits(model, cache, ids, CHUNK, GEN, tokens=tokens)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert [layer.kept for layer in cache.layers] == [10 + 5 + GEN] * 2
    kept = cache.layers[0].pos[0, :, : cache.layers[0].kept]
    assert (kept[:, -(5 + GEN) :] == torch.arange(PROMPT - 5, PROMPT + GEN)).all()  # local + generated kept
    assert cache.get_seq_length() == PROMPT + GEN  # positions continue from the tokens seen


def test_evict_counts_its_protected_tokens_on_the_host_as_the_cache_holds_them(monkeypatch):
    """The never-evicted tokens, counted on the host (no read-back), are the cache's last rows: exactly its
    positions at or after prompt_end - local, at every eviction of a prefill with and without a known prompt."""
    from roofsim.executor.families import evict as E

    checked = []
    real = E.EvictLayer._evict

    def check(self, q, scale, n):
        end = self.rt.prompt_end if self.rt.prompt_end is not None else self.seen
        pos = self.pos[0, 0, :n]
        k = self.protected_count(end)
        assert k == int((pos >= end - self.local).sum())
        assert (pos[n - k :] >= end - self.local).all() and (pos[: n - k] < end - self.local).all()
        checked.append(k)
        return real(self, q, scale, n)

    monkeypatch.setattr(E.EvictLayer, "_evict", check)
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=13)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(14))
    for known in (True, False):
        cache = make_cache(model, EvictPlan(budget_tokens=24, local_tokens=40, prefill_chunk=32))
        if known:
            cache.set_prompt_length(200)
        greedy_logits(model, cache, ids, 32, 2)
    assert len(checked) > 8 and max(checked) > 0


def test_evict_memory_stays_near_the_budget():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=13)
    prompt, chunk = 600, 64
    ids = torch.randint(0, 128, (1, prompt), generator=torch.Generator().manual_seed(14))
    cache = make_cache(model, EvictPlan(budget_tokens=32, local_tokens=8, prefill_chunk=chunk))
    cache.set_prompt_length(prompt)
    greedy_logits(model, cache, ids, chunk, 2)
    row = 2 * 2 * 16 * 4  # K and V, 2 KV heads, fp32
    kv = cache.gpu_bytes()["kv_resident"]
    assert [layer.kept for layer in cache.layers] == [32 + 8 + 2] * 2
    # storage for budget + local + one chunk (+ slack), not the whole prompt
    assert kv < 2 * (32 + 8 + chunk + 64) * 1.25 * (row + 2 * 8)
    assert kv < 2 * prompt * row / 2


def test_plan_errors_are_user_errors():
    from roofsim.errors import UserError

    model = random_model(tiny_config("llama"), "cpu", torch.float32)
    with pytest.raises(UserError, match="kv_heads_per_slot"):
        make_cache(model, HeadOffloadPlan(kv_heads_per_slot=3), max_tokens=64)
    with pytest.raises(UserError, match="max_tokens"):
        make_cache(model, HeadOffloadPlan())
    with pytest.raises(UserError, match="cpu_kv_heads"):
        make_cache(model, CpuAttentionPlan(cpu_kv_heads=3), max_tokens=64)
    cache = make_cache(model, HeadOffloadPlan(), max_tokens=8)
    with pytest.raises(UserError, match="holds 8 tokens"):
        model(torch.zeros(1, 9, dtype=torch.long), past_key_values=cache)


@pytest.mark.parametrize("tokens,heads,group", [(9000, 2, 4), (4097, 1, 7)])
def test_cpu_decode_split_over_keys_matches_one_call(monkeypatch, tokens, heads, group):
    """The CPU decode kernel cut into key ranges (so every thread has work) gives the one-call output and LSE,
    remainder range included, on the cache's strided token-major views."""
    from roofsim.executor import attention as A

    g = torch.Generator().manual_seed(1)
    buf = torch.randn(tokens, 1, 2, heads, 64, generator=g)
    K, V = A.kv_views(buf, 0, tokens)
    q = torch.randn(1, heads * group, 1, 64, generator=g)
    monkeypatch.setattr(A, "_MIN_SPLIT_KEYS", 10**9)
    ref, ref_lse = A.attend(q, K, V, causal=False, scale=0.125)
    monkeypatch.setattr(A, "_MIN_SPLIT_KEYS", 1000)
    monkeypatch.setattr(A.torch, "get_num_threads", lambda: 8 * heads)
    assert A._cpu_splits(q.reshape(1, heads, group, 64), K) == min(8, tokens // 1000)
    out, lse = A.attend(q, K, V, causal=False, scale=0.125)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)


@pytest.mark.parametrize(
    "plan",
    [
        ResidentPlan(prefill_chunk=8),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=1, prefill_chunk=8),
        KvprPlan(prefill_chunk=8),
        CpuAttentionPlan(cpu_kv_heads=1, kv_heads_per_slot=1, prefill_chunk=8),
        SparseFetchPlan(prefill_chunk=8),
        EvictPlan(prefill_chunk=8),
    ],
    ids=lambda p: p.family,
)
def test_prefill_warm_up_is_untimed_and_changes_nothing(plan):
    """The untimed warm-up forward (no cache) leaves the plan's state and logits exactly as a cold run's (the
    families that hook the layers, kvpr's X capture and evict's scoring, included)."""
    from roofsim.executor.runner import run_plan

    runs = []
    for warm in (False, True):
        model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=0)
        runs.append(
            run_plan(
                plan, model, model_name="tiny", prompt_len=20, gen=3, keep_logits=True, prefill_warmup=warm
            )
        )
    assert all(torch.equal(a, b) for a, b in zip(runs[0].logits, runs[1].logits, strict=True))
    assert any("untimed forward" in n for n in runs[1].trace.header.notes)
    assert not any("untimed forward" in n for n in runs[0].trace.header.notes)
    assert len(runs[1].trace.summary.prefill.step_s) == 3


def test_kvpr_keeps_no_activations_of_a_forward_without_its_cache():
    """kvpr's hooks capture a layer's input only inside a forward with its own cache: the warm-up forward (or a
    user's forward with another cache) held one chunk's activations per layer otherwise (+2 GB measured at 64K
    on the H100)."""
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=0)
    cache = make_cache(model, KvprPlan(prefill_chunk=8), max_tokens=40)
    try:
        ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            model(ids, use_cache=False)
        assert cache.runtime.x_pending == {}
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
        assert cache.runtime.x_pending == {}  # each layer took its own back
    finally:
        cache.close()


def test_attention_warm_up_covers_the_plans_call_shapes(monkeypatch):
    """The warm-up runs a chunk after a past and a decode step for each KV-head count one call of the plan
    covers (a whole layer, each slot size)."""
    from roofsim.executor import attention as A

    seen = []
    real = A.attend

    def spy(q, k, v, *, causal, scale):
        seen.append((k.shape[1], q.shape[-2], k.shape[-2], causal))
        return real(q, k, v, causal=causal, scale=scale)

    monkeypatch.setattr(A, "attend", spy)
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=0)
    cache = make_cache(model, HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=1), max_tokens=40)
    try:
        heads = cache.kv_heads_per_call()
        A.warm_up(cache.runtime.shape, 8, heads)
    finally:
        cache.close()
    assert heads == {1, cache.runtime.shape.n_kv_heads}
    for h in heads:
        assert (h, 8, 8, False) in seen  # the past of a chunk, unmasked
        assert (h, 8, 8, True) in seen  # the chunk's own keys, causal
        assert (h, 1, 9, False) in seen  # a decode step


def test_attention_warm_up_calls_have_the_runs_query_strides(monkeypatch):
    """The chunk's causal call gets the query as the run passes it (a slot's heads sliced from the layer's
    [B, C, Hq, D]-major q): the warm-up's calls have the same shapes and strides as the run's first chunk, so a
    kernel that builds a plan per shape and stride pattern (cuDNN) has built them before the timed prefill."""
    from roofsim.executor import attention as A

    calls = {"warm": set(), "run": set()}
    phase = ["warm"]
    real = A.attend

    def spy(q, k, v, *, causal, scale):
        if causal:
            calls[phase[0]].add((tuple(q.shape), q.stride()))
        return real(q, k, v, causal=causal, scale=scale)

    monkeypatch.setattr(A, "attend", spy)
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=0)
    cache = make_cache(model, HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=1), max_tokens=40)
    try:
        A.warm_up(cache.runtime.shape, 8, cache.kv_heads_per_call())
        phase[0] = "run"
        with torch.no_grad():
            model(torch.randint(0, 128, (1, 8)), past_key_values=cache, use_cache=True)
    finally:
        cache.close()
    assert calls["run"] and calls["run"] <= calls["warm"]


def test_prefill_shapes_race_the_kernels_and_keep_the_fastest(monkeypatch):
    """Where several kernels pass the self-check, the first prefill-sized call times each and keeps the fastest
    for that kind of call; decode-sized calls use the preferred one without a race."""
    from roofsim.executor import attention as A

    calls = []
    seconds = {"slow": 0.02, "quick": 0.001}

    def kernel(name):
        def run(q, k, v, causal, scale):
            calls.append(name)
            return A._math(q, k, v, causal, scale)

        return run

    def timed(fn, device):  # the race's timer, made deterministic: each kernel takes its listed time
        fn()
        return seconds[calls[-1]]

    monkeypatch.setattr(A, "_seconds", timed)
    monkeypatch.setitem(A._KERNELS, "slow", kernel("slow"))
    monkeypatch.setitem(A._KERNELS, "quick", kernel("quick"))
    monkeypatch.setattr(A, "_candidates", lambda *a: ["slow", "quick"])
    monkeypatch.setattr(A, "_raced", {})
    q, k = torch.randn(1, 2, 300, 8), torch.randn(1, 2, 300, 8)
    A._kernel(q, k, k, True, 0.35)
    assert A._raced[("cpu", torch.float32, 8)] == "quick"
    calls.clear()
    A._kernel(q, k, k, False, 0.35)  # the race serves non-causal prefill calls too
    assert calls == ["quick"]
    calls.clear()
    A._kernel(q[:, :, :1], k, k, False, 0.35)  # a decode-sized call: the preferred kernel, no race
    assert calls == ["slow"]
    assert "quick" in A.kernels_used()


def test_the_prefill_race_runs_on_a_chunk_after_half_the_prompt(monkeypatch):
    """race_prefill times the kernels on the past part of a chunk (GQA folded, unmasked, the fewest heads a call
    attends), not on the causal square the warm-up forward starts with, and the winner serves prefill calls."""
    from roofsim.executor import attention as A
    from roofsim.executor.cache import Shape

    seen = []

    def kernel(name):
        def run(q, k, v, causal, scale):
            seen.append((name, q.shape[1], q.shape[-2], k.shape[-2], causal))
            return A._math(q, k, v, causal, scale)

        return run

    def timed(fn, device):  # the race's timer, made deterministic: "slow" is slow only over a long past
        fn()
        name, _, queries, keys, _ = seen[-1]
        return 0.02 if name == "slow" and keys > queries else 0.001

    monkeypatch.setattr(A, "_seconds", timed)
    monkeypatch.setitem(A._KERNELS, "slow", kernel("slow"))
    monkeypatch.setitem(A._KERNELS, "quick", kernel("quick"))
    monkeypatch.setattr(A, "_candidates", lambda *a: ["slow", "quick"])
    monkeypatch.setattr(A, "_raced", {})
    shape = Shape(n_layers=2, n_heads=8, n_kv_heads=2, head_dim=8, hidden=64, batch=1, dtype=torch.float32,
                  device=torch.device("cpu"))  # fmt: skip
    assert A.race_prefill(shape, 64, 1, 1000) == "quick"
    assert seen[0][1:] == (1, 4 * 64, 500, False)
    seen.clear()
    A._kernel(torch.randn(1, 1, 300, 8), torch.randn(1, 1, 300, 8), torch.randn(1, 1, 300, 8), True, 0.35)
    assert seen == [("quick", 1, 300, 300, True)]
    assert A.race_prefill(shape, 16, 1, 1000) is None  # 4 x 16 query rows: no prefill-sized call to race

    def no_memory(*a, **k):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(A, "_raced", {})
    monkeypatch.setattr(A, "kv_views", no_memory)
    assert A.race_prefill(shape, 64, 1, 1000) is None  # no room beside the cache: no race before the prefill
    assert A._raced == {}


def test_a_past_call_one_kv_head_at_a_time_gives_the_same_attention_and_the_race_keeps_the_faster(
    monkeypatch,
):
    """race_heads times the raced kernel on a chunk's call over a past as one call of all KV heads and as one call
    per head, and keeps the faster for every such call; either way attend returns the same output and LSE."""
    from roofsim.executor import attention as A
    from roofsim.executor.cache import Shape

    heads_seen = []
    flash = A._KERNELS["flash_cpu"]

    def recording(q, k, v, causal, scale):
        heads_seen.append(q.shape[1])
        return flash(q, k, v, causal, scale)

    def timed(fn, device):  # the race's timer, made deterministic: calls of one head are the fast ones
        heads_seen.clear()
        fn()
        return 0.001 * len(heads_seen) if set(heads_seen) == {1} else 0.01

    monkeypatch.setitem(A._KERNELS, "flash_cpu", recording)
    monkeypatch.setattr(A, "_seconds", timed)
    key = ("cpu", torch.float32, 8)
    monkeypatch.setattr(A, "_raced", {key: "flash_cpu"})
    monkeypatch.setattr(A, "_per_head", {})
    monkeypatch.setattr(A, "_PER_HEAD_ROWS", 256)
    shape = Shape(n_layers=2, n_heads=8, n_kv_heads=2, head_dim=8, hidden=64, batch=1, dtype=torch.float32,
                  device=torch.device("cpu"))  # fmt: skip
    assert A.race_heads(shape, 64, 1, 1000) is None  # one head a call: nothing to split
    assert A.race_heads(shape, 32, 2, 1000) is None  # 4 x 32 query rows: under the rows a split needs
    assert A.race_heads(shape, 64, 2, 1000) is True
    q, k, v = torch.randn(1, 8, 64, 8), torch.randn(1, 2, 500, 8), torch.randn(1, 2, 500, 8)
    heads_seen.clear()
    split = A.attend(q, k, v, causal=False, scale=0.35)
    assert heads_seen == [1, 1]
    A._per_head[key] = False
    heads_seen.clear()
    whole = A.attend(q, k, v, causal=False, scale=0.35)
    assert heads_seen == [2]
    assert torch.allclose(split[0], whole[0], atol=1e-6) and torch.allclose(split[1], whole[1], atol=1e-6)
    ref = A._math(q.reshape(1, 2, 4 * 64, 8), k, v, False, 0.35)[0].reshape(1, 8, 64, 8)
    assert torch.allclose(split[0], ref, atol=1e-5)
    heads_seen.clear()
    A._per_head[key] = True
    A.attend(q[:, :, :1], k, v, causal=False, scale=0.35)  # a decode-sized call is never split
    assert heads_seen == [2]

    def no_memory(*a, **k):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(A, "_past_kernel", no_memory)
    assert A.race_heads(shape, 64, 2, 1000) is None  # no room beside the cache: one call of all heads
    assert key not in A._per_head


def test_a_raced_kernel_that_fails_a_later_shape_hands_back_to_the_preferred(monkeypatch):
    from roofsim.executor import attention as A

    def quick(q, k, v, causal, scale):
        if q.shape[-2] > 300:
            raise RuntimeError("shape not supported")
        return A._math(q, k, v, causal, scale)

    monkeypatch.setitem(A._KERNELS, "preferred", A._math)
    monkeypatch.setitem(A._KERNELS, "quick", quick)
    monkeypatch.setattr(A, "_candidates", lambda *a: ["preferred", "quick"])
    monkeypatch.setattr(A, "_raced", {("cpu", torch.float32, 8): "quick"})
    q, k = torch.randn(1, 2, 400, 8), torch.randn(1, 2, 400, 8)
    out, _ = A._kernel(q, k, k, True, 0.35)
    assert torch.allclose(out, A._math(q, k, k, True, 0.35)[0])
    assert A._raced[("cpu", torch.float32, 8)] == "preferred"


def test_cpu_worker_leaves_the_issuing_thread_a_core_and_the_gil_often(monkeypatch):
    """cpu_attention's worker runs torch on one thread fewer than the process (the issuing thread keeps a core) and,
    once it exists, Python hands the GIL over every 0.1 ms instead of 5 ms."""
    import sys

    from roofsim.executor import cpu_worker

    monkeypatch.delenv("ROOFSIM_CPU_THREADS", raising=False)
    assert cpu_worker.worker_threads(16) == 15 and cpu_worker.worker_threads(1) == 1
    monkeypatch.setenv("ROOFSIM_CPU_THREADS", "3")
    assert cpu_worker.worker_threads(16) == 3
    pool = cpu_worker.worker_pool(2)
    assert pool.submit(torch.get_num_threads).result() == 2
    pool.shutdown()
    before = sys.getswitchinterval()
    monkeypatch.setattr(cpu_worker, "_pool", None)
    try:
        sys.setswitchinterval(0.005)
        assert cpu_worker.on_worker(torch.get_num_threads) == 3
        assert sys.getswitchinterval() == pytest.approx(cpu_worker.SWITCH_INTERVAL_S)
    finally:
        cpu_worker._pool.shutdown()
        sys.setswitchinterval(before)


@pytest.mark.parametrize("scripted", [True, False], ids=["torchscript", "op-by-op"])
def test_cpu_attention_both_cpu_paths_match_stock_logits(tiny, monkeypatch, scripted):
    """The worker's one-call TorchScript layer (cpu_decode) and its op-by-op fallback both give stock logits."""
    import roofsim.executor.cpu_decode as cd

    model, ids, ref = tiny
    calls = []

    def spy(*args):
        ok = scripted and real(*args)
        calls.append(ok)
        return ok

    real = cd.cpu_decode
    monkeypatch.setattr(cd, "cpu_decode", spy)
    cache = make_cache(model, CpuAttentionPlan(cpu_kv_heads=1, kv_heads_per_slot=1), max_tokens=PROMPT + GEN)
    try:
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
    finally:
        cache.close()
    assert calls and all(c == scripted for c in calls)
    assert rel_err(got, ref) < 1e-5


def test_kvpr_auto_split_solves_with_a_calibrated_profile_and_its_host():
    """validate hands the executor the profile it predicted with; a calibrated profile names its host file
    relative to itself, and the run-time split must load that host, not look the name up among the built-ins."""
    from pathlib import Path

    from roofsim.executor.families.kvpr import Splitter

    profile = Path(__file__).parent.parent / "validation/results/h100/calibrated/h100-sxm-calibrated.toml"
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    split = Splitter(KvprPlan(), model, batch=1, gpu_spec=str(profile))
    assert "h100-sxm-calibrated" in split.note
    assert split.ctx.host.name == "h100-sxm-calibrated-host"
    assert 0 <= split(4096) <= 4096
