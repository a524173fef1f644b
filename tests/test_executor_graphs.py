"""Decode steps replayed from a CUDA graph (executor/graphs.py): the static-input step (device position,
index_copy_ into the preallocated buffer, attention up to a device key count) gives the eager step's logits; on
the CPU a run asked for graphs runs eager and says why; on a GPU the captured replay gives the eager logits."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.attention import _DECODE_KERNELS, _decode_masked, attend, decode_attend, kv_views  # noqa: E402
from roofsim.executor.build import make_cache  # noqa: E402
from roofsim.executor.check import greedy_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.graphs import graph_unsupported  # noqa: E402
from roofsim.executor.models import random_model  # noqa: E402
from roofsim.executor.runner import run_plan  # noqa: E402

from roofsim.families import EvictPlan, HeadOffloadPlan, ResidentPlan  # noqa: E402

PROMPT, CHUNK, GEN = 21, 8, 5


@pytest.fixture(scope="module")
def tiny():
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    return model, ids


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_over_a_device_key_count_matches_attention_over_the_keys(batch):
    g = torch.Generator().manual_seed(0)
    T, H, G, D = 40, 2, 3, 16
    buf = torch.randn(T, batch, 2, H, D, generator=g)
    q = torch.randn(batch, H * G, 1, D, generator=g)
    counts = [7, 40, 23][:batch]
    out = _decode_masked(q, *kv_views(buf, 0, T), torch.tensor(counts, dtype=torch.int32), D**-0.5)
    for b, n in enumerate(counts):
        K, V = kv_views(buf[:, b : b + 1], 0, n)
        ref, _ = attend(q[b : b + 1], K, V, causal=False, scale=D**-0.5)
        assert torch.allclose(out[b : b + 1], ref, atol=1e-5), (b, n)


def _varlen_segments(qs, k, v, cu_q, cu_k, used, L, scale):
    """What FlashAttention-2's varlen call returns for the split decode's ranges, written out: range s attends keys
    cu_k[s]..cu_k[s] + used[s] of k, v [T, g, D] (query head h reads KV head h // G); a range without keys gives
    zeros and a log-sum-exp of +inf, as FlashAttention writes."""
    S, Hq, D = qs.shape
    g = k.shape[1]
    outs, lses = [], []
    for s in range(S):
        a, n = int(cu_k[s]), int(used[s])
        if n == 0:
            outs.append(torch.zeros(Hq, D, dtype=qs.dtype))
            lses.append(torch.full((Hq,), float("inf")))
            continue
        ks = k[a : a + n].repeat_interleave(Hq // g, dim=1)  # [n, Hq, D]
        vs = v[a : a + n].repeat_interleave(Hq // g, dim=1)
        sc = torch.einsum("hd,nhd->hn", qs[s].float(), ks.float()) * scale
        lses.append(torch.logsumexp(sc, dim=-1))
        outs.append(torch.einsum("hn,nhd->hd", torch.softmax(sc, dim=-1), vs.float()).to(qs.dtype))
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("heads,group", [(4, 1), (2, 4)])
def test_the_split_decode_merges_its_key_ranges_into_attention_over_the_keys(heads, group):
    """The split decode (flash-decoding by hand for MHA) cuts 1300 keys into 3 ranges of 434; for key counts inside
    the first range (the others then empty), on a boundary and past it, and per sequence of a batch, merging the
    ranges by their log-sum-exp gives attention over the first n keys."""
    from roofsim.executor.attention import split_decode, split_lengths

    g = torch.Generator().manual_seed(3)
    T, D = 1300, 16
    sp = split_lengths(torch.device("cpu"), T)
    assert sp.cu_k.tolist() == [0, 434, 868, 1300] and sp.lengths.tolist() == [434, 434, 432]
    assert sp.cu_q.tolist() == [0, 1, 2, 3] and sp.longest == 434
    buf = torch.randn(T, 2, 2, heads, D, generator=g)
    q = torch.randn(2, heads * group, 1, D, generator=g)
    for counts in ([1, 5], [433, 434], [435, 1300], [868, 869]):
        n_keys = torch.tensor(counts, dtype=torch.int32)
        out = split_decode(q, *kv_views(buf, 0, T), n_keys, D**-0.5, _varlen_segments)
        for b, n in enumerate(counts):
            K, V = kv_views(buf[:, b : b + 1], 0, n)
            ref, _ = attend(q[b : b + 1], K, V, causal=False, scale=D**-0.5)
            assert torch.allclose(out[b : b + 1], ref, atol=1e-5), (counts, b)


def test_a_key_range_without_keys_carries_no_weight_whatever_its_lse():
    from roofsim.executor.attention import merge_segments

    out = torch.stack([torch.ones(2, 3), torch.full((2, 3), 7.0), torch.full((2, 3), 9.0)])
    for bad in (float("inf"), float("-inf"), float("nan")):
        lse = torch.tensor([[0.5, 0.5], [bad, bad], [0.5, 0.5]])
        assert torch.allclose(merge_segments(out, lse), torch.full((2, 3), 5.0))


def test_keys_past_the_count_do_not_matter():
    g = torch.Generator().manual_seed(1)
    buf = torch.randn(30, 1, 2, 2, 8, generator=g)
    q = torch.randn(1, 4, 1, 8, generator=g)
    n = torch.tensor([12], dtype=torch.int32)
    a = decode_attend(q, *kv_views(buf, 0, 30), n, 0.3)
    buf[12:] = 1e4
    assert torch.equal(a, decode_attend(q, *kv_views(buf, 0, 30), n, 0.3))


def test_a_resident_buffer_holds_no_garbage_past_its_keys(tiny):
    """The masked decode multiplies V past the key count by 0; uninitialized memory there (NaN) would leak in."""
    model, ids = tiny
    cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    try:
        greedy_logits(model, cache, ids, CHUNK, 1)
        buffers = [s.gpu for layer in cache.layers for s in layer.slots if s.gpu is not None]
        assert buffers and all(b.shape[0] == PROMPT + GEN for b in buffers)  # preallocated past the keys
        for layer in cache.layers:
            for slot in layer.slots:
                assert torch.count_nonzero(slot.gpu[layer.seen :]) == 0
    finally:
        cache.close()


@pytest.mark.parametrize(
    "plan",
    [
        ResidentPlan(),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=2),
        ResidentPlan(kv_dtype="fp8_e4m3"),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=2, kv_dtype="fp8_e4m3"),
        EvictPlan(budget_tokens=6, local_tokens=2, prefill_chunk=CHUNK),
    ],
    ids=["resident", "head_all_res", "resident_fp8", "head_all_res_fp8", "evict"],
)
def test_the_static_input_step_gives_the_eager_logits(tiny, plan):
    model, ids = tiny
    got = {}
    for mode in (None, "static"):
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN)
        try:
            got[mode] = greedy_logits(model, cache, ids, CHUNK, GEN, graphs=mode)
            assert cache.layers[0].seen == PROMPT + GEN
        finally:
            cache.close()
    assert rel_err(got["static"], got[None]) < 1e-5


@pytest.mark.parametrize(
    "family, plan",
    [(f, ResidentPlan()) for f in ("llama", "mistral", "qwen2", "phi3")]
    + [("llama", EvictPlan(budget_tokens=6, local_tokens=2, prefill_chunk=CHUNK))],
    ids=["llama", "mistral", "qwen2", "phi3", "llama-evict"],
)
def test_the_static_input_step_gives_the_eager_logits_at_batch_2(family, plan):
    """A batch of two: one device position for the batch, one key count per sequence (resident and evict plans
    replay by default, so every model the executor runs takes this path on a GPU)."""
    model = random_model(tiny_config(family), "cpu", torch.float32, seed=3)
    ids = torch.randint(0, 128, (2, PROMPT), generator=torch.Generator().manual_seed(4))
    got = {}
    for mode in (None, "static"):
        cache = make_cache(model, plan, max_tokens=PROMPT + GEN, batch_size=2)
        try:
            got[mode] = greedy_logits(model, cache, ids, CHUNK, GEN, graphs=mode)
        finally:
            cache.close()
    assert rel_err(got["static"], got[None]) < 1e-5


def test_only_fixed_shape_decode_can_be_replayed(tiny):
    model, _ = tiny
    streamed = make_cache(model, HeadOffloadPlan(), max_tokens=PROMPT + GEN)
    resident = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    try:
        assert "CUDA" in graph_unsupported(resident)  # on the CPU
        assert graph_unsupported(streamed) is not None
    finally:
        streamed.close()
        resident.close()


def test_a_run_asked_for_graphs_on_the_cpu_runs_eager_and_says_why(tiny):
    model, _ = tiny
    plan = ResidentPlan(decode_graphs=True)
    r = run_plan(plan, model, model_name="tiny", prompt_len=PROMPT, gen=3, keep_logits=True)
    ref = run_plan(ResidentPlan(), model, model_name="tiny", prompt_len=PROMPT, gen=3, keep_logits=True)
    assert any("decode ran eager: CUDA graphs need a CUDA device" in n for n in r.trace.header.notes)
    assert rel_err(torch.stack(r.logits), torch.stack(ref.logits)) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "plan",
    [
        ResidentPlan(),
        HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=2),
        HeadOffloadPlan(resident_slots=1),
        EvictPlan(budget_tokens=64, local_tokens=16, prefill_chunk=128),
    ],
    ids=["resident", "head_all_resident", "head_streamed_eager", "evict"],
)
def test_replayed_graph_gives_the_eager_logits_on_the_gpu(plan):
    model = random_model(tiny_config("llama", layers=3), "cuda", torch.bfloat16, seed=1)
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(2)).cuda()
    got = {}
    for mode in (None, "capture"):
        cache = make_cache(model, plan, max_tokens=300 + 8)
        try:
            got[mode] = greedy_logits(model, cache, ids, 128, 8, graphs=mode)
        finally:
            cache.close()
    assert rel_err(got["capture"], got[None]) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("H,G,T", [(2, 4, 300), (4, 1, 1300)])
def test_every_decode_kernel_matches_attention_per_sequence_on_the_gpu(batch, H, G, T):
    """Every decode kernel offered for the shape (the split one for MHA only, over 1300 keys in 3 ranges)."""
    g = torch.Generator().manual_seed(0)
    D = 128
    buf = torch.randn(T, batch, 2, H, D, generator=g).to("cuda", torch.bfloat16)
    q = torch.randn(batch, H * G, 1, D, generator=g).to("cuda", torch.bfloat16)
    counts = torch.tensor([37, T, 151][:batch], dtype=torch.int32, device="cuda")
    for name, kernel in _DECODE_KERNELS.items():
        if name == "flash_split" and G > 1:
            with pytest.raises(NotImplementedError):
                kernel(q, *kv_views(buf, 0, T), counts, D**-0.5)
            continue
        out = kernel(q, *kv_views(buf, 0, T), counts, D**-0.5)
        for b, n in enumerate(counts.tolist()):
            K, V = kv_views(buf[:, b : b + 1], 0, n)
            ref, _ = attend(q[b : b + 1], K, V, causal=False, scale=D**-0.5)
            assert rel_err(out[b : b + 1], ref) < 2e-2, (name, b, n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_graph_run_replays_and_matches_eager_on_the_gpu():
    model = random_model(tiny_config("llama", layers=3), "cuda", torch.bfloat16, seed=1)
    kw = dict(model_name="tiny", prompt_len=300, gen=6, keep_logits=True)
    r = run_plan(ResidentPlan(decode_graphs=True), model, **kw)
    ref = run_plan(ResidentPlan(decode_graphs=False), model, **kw)
    assert any("replayed from a CUDA graph" in n for n in r.trace.header.notes)
    assert rel_err(torch.stack(r.logits), torch.stack(ref.logits)) < 2e-2
    assert len(r.trace.summary.decode.step_s) == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gemma3_run_replays_its_window_layers_from_a_ring_on_the_gpu():
    """Window layers no longer keep a model's decode eager: the run replays (its window of 5 wrapping during the
    decode) and its logits are the eager run's."""
    model = random_model(tiny_config("gemma3", layers=3), "cuda", torch.bfloat16, seed=1)
    kw = dict(model_name="tiny", prompt_len=300, gen=8, keep_logits=True)
    r = run_plan(ResidentPlan(decode_graphs=True), model, **kw)
    ref = run_plan(ResidentPlan(decode_graphs=False), model, **kw)
    assert any("replayed from a CUDA graph" in n for n in r.trace.header.notes), r.trace.header.notes
    assert rel_err(torch.stack(r.logits), torch.stack(ref.logits)) < 2e-2


@pytest.mark.parametrize("prompt", [3, PROMPT], ids=["prompt_shorter_than_the_window", "prompt_past_it"])
def test_window_layers_replay_from_a_ring_and_give_the_eager_logits(prompt):
    """Gemma 3's window layers (window 5 in the tiny config) in the static-input step: the kept rows move into a
    ring of 5 rows, each step writes at position mod 5 and attends min(position + 1, 5) rows; the decode runs past
    the window and wraps the ring, the buffer keeps one shape, and the logits are the eager ones."""
    from roofsim.executor.window import WindowLayer

    model = random_model(tiny_config("gemma3", layers=3), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, prompt), generator=torch.Generator().manual_seed(2))
    gen = 7  # past the window of 5 from either prompt
    got, shapes = {}, {}
    for mode in (None, "static"):
        cache = make_cache(model, ResidentPlan(), max_tokens=prompt + gen)
        try:
            got[mode] = greedy_logits(model, cache, ids, CHUNK, gen, graphs=mode)
            windows = [layer for layer in cache.layers if isinstance(layer, WindowLayer)]
            assert len(windows) == 2 and all(layer.graph_ready() for layer in windows)
            shapes[mode] = {(layer.ring, layer.k.shape[2]) for layer in windows}
        finally:
            cache.close()
    assert shapes == {None: {(False, 4)}, "static": {(True, 5)}}
    assert rel_err(got["static"], got[None]) < 1e-5


def test_the_decode_lengths_of_every_buffer_exist_before_a_capture():
    """A capture cannot copy from the host: the varlen decode call's key lengths are made beforehand for each buffer
    length the step attends, the window layers' ring (5 rows) and the global layer's capacity."""
    from roofsim.executor import attention
    from roofsim.executor.graphs import GraphDecoder

    model = random_model(tiny_config("gemma3", layers=3), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    try:
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        attention._cu_seqlens.clear()
        GraphDecoder(model, cache, capture=False)._pick_kernel(PROMPT)
        assert {T for _, T in attention._cu_seqlens} == {5, PROMPT + GEN}
    finally:
        cache.close()


def test_an_eager_chunk_after_replayed_steps_finds_the_window_rows_in_order():
    """After steps through the ring, a chunk of three tokens run eagerly (a second turn's prompt) puts the window
    layers' rows back in position order: its logits are those of a run that never replayed."""
    from roofsim.executor.graphs import GraphDecoder

    model = random_model(tiny_config("gemma3", layers=3), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    steps = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    turn = torch.randint(0, 128, (1, 3), generator=torch.Generator().manual_seed(4))
    got = []
    for static in (False, True):
        cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + 6 + 3)
        try:
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            decoder = GraphDecoder(model, cache, capture=False) if static else None
            for i in range(6):
                tok = steps[:, i : i + 1]
                if decoder is None:
                    model(tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
                else:
                    decoder.step(tok)
            out = model(turn, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            got.append(out.float())
            assert not any(getattr(layer, "ring", False) for layer in cache.layers)
        finally:
            cache.close()
    assert rel_err(got[1], got[0]) < 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_projections_give_the_same_logits(family):
    from roofsim.executor.fuse import fuse_projections

    model = random_model(tiny_config(family), "cpu", torch.float32, seed=1)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
    ref = greedy_logits(model, cache, ids, CHUNK, GEN)
    cache.close()
    params = sum(p.numel() for p in model.parameters())
    assert fuse_projections(model) == 2 * model.config.num_hidden_layers
    assert (
        sum(p.numel() for p in model.parameters()) == params
    )  # the modules' weights are views of the fused one
    for mode in (None, "static"):
        cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
        got = greedy_logits(model, cache, ids, CHUNK, GEN, graphs=mode)
        cache.close()
        assert rel_err(got, ref) < 1e-5, mode
    layer = model.model.layers[0]
    x = torch.randn(3, model.config.hidden_size)
    assert torch.allclose(
        layer.self_attn.k_proj(x),
        x @ layer.self_attn.k_proj.weight.T
        + (0 if layer.self_attn.k_proj.bias is None else layer.self_attn.k_proj.bias),
        atol=1e-5,
    )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_one_call_norms_give_the_same_logits(family):
    """fuse_norms swaps every Llama-style RMSNorm (two a layer and the final one) for F.rms_norm: in fp32 the
    logits are the stock ones; in bf16 only where the weight multiplies moves (a rounding), within the executor's
    tolerance; and the stock forward comes back."""
    from roofsim.executor.fuse import fuse_norms

    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        model = random_model(tiny_config(family), "cpu", dtype, seed=1)
        ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(2))
        cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
        ref = greedy_logits(model, cache, ids, CHUNK, GEN)
        cache.close()
        norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
        assert fuse_norms(model) == len(norms) == 2 * model.config.num_hidden_layers + 1
        assert fuse_norms(model) == 0  # already one call
        cache = make_cache(model, ResidentPlan(), max_tokens=PROMPT + GEN)
        got = greedy_logits(model, cache, ids, CHUNK, GEN)
        cache.close()
        assert rel_err(got.float(), ref.float()) < tol, dtype
        for m in norms:
            del m.forward
        x = torch.randn(2, model.config.hidden_size, dtype=dtype)
        assert torch.equal(norms[0](x), type(norms[0]).forward(norms[0], x))


def _logits_of(model, ids, mode, gen=GEN):
    cache = make_cache(model, ResidentPlan(), max_tokens=ids.shape[1] + gen)
    try:
        return greedy_logits(model, cache, ids, CHUNK, gen, graphs=mode)
    finally:
        cache.close()


@pytest.mark.parametrize("prefill", [False, True])
def test_compiled_layers_serve_the_calls_they_are_asked_for(monkeypatch, prefill):
    """fuse.compile_layers' dispatch (torch.compile stood in by a recorder): the graph step's forwards, and with
    prefill=True every forward through a plan cache, take the compiled layer; the rest keep the layer's own."""
    from roofsim.executor import fuse

    calls = []

    def fake_compile(fn, **_):
        def run(*a, **k):
            calls.append(True)
            return fn(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=5)
    ids = torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(6))
    ref = _logits_of(model, ids, "static")
    n_layers = len(model.model.layers)
    try:
        if prefill:  # decode only first, then re-wrapped with prefill on
            assert fuse.compile_layers(model) == n_layers
        assert fuse.compile_layers(model, prefill=prefill) == n_layers
        assert rel_err(_logits_of(model, ids, "static"), ref) < 1e-6
        chunks = -(-PROMPT // CHUNK)
        # the GEN static steps always; prefill's chunks only when asked for
        assert len(calls) == (GEN + (chunks if prefill else 0)) * n_layers
        calls.clear()
        model(ids[:, :4])  # no plan cache: the layer's own forward
        assert calls == []
    finally:
        for layer in model.model.layers:
            del layer.forward


def test_compiled_layers_give_the_stock_logits_in_prefill_and_decode():
    """fuse.compile_layers(prefill=True) through dynamo (the aot_eager backend: the graphs dynamo captures around
    the cache's update and the attention function, run without generated code): prefill chunks and the
    static-input decode step give the stock layers' logits. Inductor's code runs in the GPU test below."""
    from roofsim.executor import fuse

    model = random_model(tiny_config("qwen3", layers=1), "cpu", torch.float32, seed=5)
    ids = torch.randint(0, 128, (1, 2 * CHUNK), generator=torch.Generator().manual_seed(6))
    ref = _logits_of(model, ids, "static", gen=2)
    try:
        assert fuse.compile_layers(model, prefill=True, backend="aot_eager") == 1
        assert rel_err(_logits_of(model, ids, "static", gen=2), ref) < 1e-5
    finally:
        for layer in model.model.layers:
            del layer.forward


@pytest.mark.parametrize("plan", [ResidentPlan(prefill_chunk=CHUNK), HeadOffloadPlan(prefill_chunk=CHUNK)])
def test_a_run_compiled_for_roofsim_run_gives_the_stock_logits(plan, monkeypatch):
    """fuse.compile_for_run on the CPU (aot_eager: dynamo's capture around the cache's update and attention, no
    generated code): fused projections and norms, compiled layers and merge give the stock model's logits over a
    chunked prefill and decode steps, resident and streamed slots alike."""
    from roofsim.executor import attention as A
    from roofsim.executor import fuse

    monkeypatch.setattr(A, "_merge_two_fn", None)
    kw = dict(model_name="tiny", prompt_len=PROMPT, gen=3, keep_logits=True)
    model = random_model(tiny_config("llama"), "cpu", torch.float32, seed=7)
    ref = run_plan(plan, model, **kw)
    note = fuse.compile_for_run(model, "cpu")
    assert "aot_eager" in note and "2 decoder layers" in note and A._merge_two_fn is not None
    got = run_plan(plan, model, **kw)
    assert rel_err(torch.stack(got.logits), torch.stack(ref.logits)) < 1e-5


def test_a_compiled_merge_gives_the_stacked_merge_and_serves_only_prefill_sized_merges(monkeypatch):
    """fuse.compile_merge (through dynamo, the aot_eager backend) merges a chunk's two parts as the eager stacked
    merge does; merges of fewer query rows than a prefill call's and of more than two parts stay eager."""
    from roofsim.executor import attention as A
    from roofsim.executor import fuse

    monkeypatch.setattr(A, "_merge_two_fn", None)
    fuse.compile_merge(backend="aot_eager")
    compiled = A._merge_two_fn
    seen = []
    monkeypatch.setattr(A, "_merge_two_fn", lambda *a: seen.append(a[0].shape) or compiled(*a))
    g = torch.Generator().manual_seed(3)
    outs = [torch.randn(1, 4, 300, 8, generator=g) for _ in range(3)]
    lses = [torch.randn(1, 4, 300, generator=g) * 3 for _ in range(3)]
    got = A.merge(outs[:2], lses[:2])
    ref = A.merge_stacked(torch.stack(outs[:2]), torch.stack(lses[:2]))
    assert seen == [outs[0].shape]
    assert torch.allclose(got[0], ref[0], atol=1e-6) and torch.allclose(got[1], ref[1], atol=1e-6)
    A.merge(outs, lses)  # three parts
    A.merge([o[..., :1, :] for o in outs[:2]], [x[..., :1] for x in lses[:2]])  # a decode step's rows
    assert len(seen) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_layers_replayed_from_a_graph_give_the_eager_logits_on_the_gpu():
    """Inductor's Triton kernels inside the captured decode step and in prefill chunks (fuse.compile_layers with
    prefill, over fused projections and one-call norms) give the stock eager logits."""
    from roofsim.executor import fuse

    model = random_model(tiny_config("llama", layers=3), "cuda", torch.bfloat16, seed=1)
    ids = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(2)).cuda()
    cache = make_cache(model, ResidentPlan(), max_tokens=256 + 8)
    try:
        ref = greedy_logits(model, cache, ids, 128, 8)
    finally:
        cache.close()
    fuse.fuse_projections(model)
    fuse.fuse_norms(model)
    assert fuse.compile_layers(model, prefill=True) == 3
    cache = make_cache(model, ResidentPlan(), max_tokens=256 + 8)
    try:
        got = greedy_logits(model, cache, ids, 128, 8, graphs="capture")
    finally:
        cache.close()
    assert rel_err(got, ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_inductor_merge_of_two_parts_gives_the_stacked_merge_on_the_gpu(monkeypatch):
    """fuse.compile_merge's generated kernel at a prefill chunk's shape (bf16 outputs, fp32 LSEs) against the eager
    stacked merge."""
    from roofsim.executor import attention as A
    from roofsim.executor import fuse

    monkeypatch.setattr(A, "_merge_two_fn", None)
    fuse.compile_merge()
    g = torch.Generator(device="cuda").manual_seed(3)
    outs = [torch.randn(1, 32, 4096, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    lses = [torch.randn(1, 32, 4096, generator=g, device="cuda") * 3 for _ in range(2)]
    got = A.merge(outs, lses)
    ref = A.merge_stacked(torch.stack(outs), torch.stack(lses))
    assert rel_err(got[0].float(), ref[0].float()) < 1e-2
    assert torch.allclose(got[1], ref[1], atol=1e-5)
