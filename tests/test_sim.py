"""The discrete-event simulator: differential against the analytic model, conservation, metamorphic relations,
the duplex penalty of full write-back, the many-small-copies curve, and infeasibility."""

import json
from pathlib import Path

import pytest

from roofsim.families import (
    CpuAttentionPlan,
    EvictPlan,
    HeadOffloadPlan,
    KvprPlan,
    LayerOffloadPlan,
    ResidentPlan,
    SparseFetchPlan,
)
from roofsim.limits import Limits
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.sim.engine import Machine, Task
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.sourced import Sourced
from roofsim.trace import Trace, compare
from roofsim.workload import Workload

GPU = load_gpu("rtx4090")
H100 = load_gpu("h100-sxm")
HOST = load_host("epyc-rome-milan")
LLAMA = load_model("llama-3-8b")
PROBE = Path(__file__).parent.parent / "validation/results/h100/h100-probe.json"


def _with(gpu, section, **values):
    sec = getattr(gpu, section)
    update = {k: Sourced(value=v, assumed="test") for k, v in values.items()}
    return gpu.model_copy(update={section: sec.model_copy(update=update)})


def free_link(gpu):
    """A link that costs nothing: what the analytic model must equal when nothing contends."""
    gpu = _with(gpu, "link", h2d_gbps=1e9, d2h_gbps=1e9, copy_latency_us=0, copy_min_us=0, copy_gap_us=0)
    return _with(gpu, "runtime", copy_issue_us=0, sync_us=0)


def both(plan, ctx, gpu=GPU, gen=4, **kw):
    work = Workload(context=ctx, gen=gen)
    return predict(plan, LLAMA, gpu, HOST, work), simulate(plan, LLAMA, gpu, HOST, work, **kw)


@pytest.mark.parametrize("ctx", [8192, 32768])
def test_resident_equals_analytic_within_1pct(ctx):
    p, t = both(ResidentPlan(prefill_chunk=4096), ctx, gpu=_with(GPU, "runtime", copy_issue_us=0, sync_us=0))
    assert t.summary.prefill_s == pytest.approx(p.summary.prefill_s, rel=0.01)
    assert t.summary.decode.step_s[0] == pytest.approx(p.summary.decode_s_per_token, rel=0.01)
    assert t.summary.peak_gpu_bytes == pytest.approx(p.summary.peak_gpu_bytes, rel=0.01)


@pytest.mark.parametrize(
    "plan",
    [
        HeadOffloadPlan(prefill_chunk=8192),
        HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=1, write_back="full", prefill_chunk=8192),
        LayerOffloadPlan(prefill_chunk=8192),
        KvprPlan(prefill_chunk=8192),
        CpuAttentionPlan(cpu_kv_heads=2, prefill_chunk=8192),
        SparseFetchPlan(prefill_chunk=8192),
        EvictPlan(),
    ],
    ids=lambda p: p.family,
)
def test_offload_with_a_free_link_equals_analytic_within_1pct(plan):
    p, t = both(plan, 65536, gpu=free_link(GPU))
    assert t.summary.prefill_s == pytest.approx(p.summary.prefill_s, rel=0.01)
    # cpu_attention's decode: the issuing thread joins the CPU worker in every layer, and sparse_fetch's gathers
    # on the issuing thread after a sync, so the kernels after the join run as a chain of each kernel's issue and
    # GPU time (the simulator's), where the analytic model has only their sums: ~4-6% apart on the 4090, the
    # simulator slower
    rel = 0.08 if plan.family in ("cpu_attention", "sparse_fetch") else 0.01
    assert t.summary.decode.step_s[0] == pytest.approx(p.summary.decode_s_per_token, rel=rel)
    assert t.summary.decode.step_s[0] >= p.summary.decode_s_per_token * 0.99


def _span_bytes(trace, resource, phase):
    return sum(s.bytes for s in trace.spans if s.resource == resource and s.phase == phase)


@pytest.mark.parametrize(
    "plan",
    [
        HeadOffloadPlan(prefill_chunk=8192),
        HeadOffloadPlan(kv_heads_per_slot=4, resident_slots=1, prefill_chunk=8192),
        LayerOffloadPlan(write_back="full", prefill_chunk=16384),
    ],
    ids=["head", "head-g4-r1", "layer-full"],
)
def test_bytes_over_each_link_equal_what_the_plan_needs(plan):
    gen = 3
    p, t = both(plan, 40000, gen=gen, keep="all")
    assert _span_bytes(t, "h2d", "prefill") == pytest.approx(p.summary.prefill.h2d_bytes, rel=1e-9)
    assert _span_bytes(t, "d2h", "prefill") == pytest.approx(p.summary.prefill.d2h_bytes, rel=1e-9)
    first = [s for s in t.spans if s.phase == "decode" and s.step == 0]
    assert sum(s.bytes for s in first if s.resource == "h2d") == pytest.approx(
        p.summary.decode.h2d_bytes, rel=1e-9
    )
    assert sum(s.bytes for s in first if s.resource == "d2h") == pytest.approx(
        p.summary.decode.d2h_bytes, rel=1e-9
    )


def test_every_kv_byte_is_written_once_with_incremental_write_back():
    ctx, gen = 30000, 5
    plan = HeadOffloadPlan(resident_slots=2, prefill_chunk=7000)
    t = simulate(plan, LLAMA, GPU, HOST, Workload(context=ctx, gen=gen), keep="all")
    streamed_heads = LLAMA.n_layers * (LLAMA.n_kv_heads - 2)
    per_token = streamed_heads * LLAMA.head_dim * 2 * LLAMA.dtype_bytes
    written = _span_bytes(t, "d2h", "prefill") + _span_bytes(t, "d2h", "decode")
    assert written == pytest.approx(per_token * (ctx + gen))


def _decode(plan, gpu=GPU, ctx=131072):
    t = simulate(plan, LLAMA, gpu, HOST, Workload(context=ctx, gen=2), keep="none")
    return t.summary.decode.step_s[0], t.summary.prefill_s, t.summary.peak_gpu_bytes


@pytest.mark.parametrize("k", [1.5, 3.0])
def test_more_link_bandwidth_is_never_slower(k):
    plan = HeadOffloadPlan(prefill_chunk=16384)
    slow = _decode(plan)
    fast = _decode(plan, _with(GPU, "link", h2d_gbps=25 * k, d2h_gbps=26.5 * k))
    assert fast[0] <= slow[0] and fast[1] <= slow[1]


def test_more_buffers_deeper_prefetch_more_resident_never_slower_and_memory_grows():
    base = dict(kv_heads_per_slot=1, prefill_chunk=16384)
    variants = [
        HeadOffloadPlan(**base, slot_buffers=1, prefetch_depth=1),
        HeadOffloadPlan(**base, slot_buffers=2, prefetch_depth=1),
        HeadOffloadPlan(**base, slot_buffers=3, prefetch_depth=2),
        HeadOffloadPlan(**base, slot_buffers=4, prefetch_depth=3),
    ]
    runs = [_decode(v, ctx=65536) for v in variants]
    for a, b in zip(runs, runs[1:], strict=False):
        assert b[0] <= a[0] * (1 + 1e-9) and b[1] <= a[1] * (1 + 1e-9)
        assert b[2] > a[2]
    assert runs[0][0] > runs[1][0] and runs[0][1] > runs[1][1]  # one buffer serialises copy and compute
    resident = [_decode(HeadOffloadPlan(**base, resident_slots=r), ctx=65536) for r in (0, 2, 4)]
    for a, b in zip(resident, resident[1:], strict=False):
        assert b[0] <= a[0] and b[2] > a[2]


def test_full_write_back_is_slower_by_the_duplex_efficiency():
    """HeadInfer's traffic (the whole KV back every step) against incremental write-back: both directions move
    the whole KV at once, each at duplex_efficiency of its rate, so the step is 1/0.85 slower."""
    full = _decode(HeadOffloadPlan(write_back="full", prefill_chunk=16384), ctx=262144)[0]
    incremental = _decode(HeadOffloadPlan(prefill_chunk=16384), ctx=262144)[0]
    assert full / incremental == pytest.approx(1 / GPU.link.duplex_efficiency.value, rel=0.03)


@pytest.mark.parametrize(
    "copies,key",
    [
        (16, "h2d_64MB_in_16_chunks_GBps"),
        (256, "h2d_64MB_in_256_chunks_GBps"),
        (1024, "h2d_64MB_in_1024_chunks_GBps"),
    ],
)
def test_many_small_copies_reproduce_the_h100_probe(copies, key):
    """64 MB issued back to back from Python as 16, 256 and 1024 copies: 53, 35 and 8.8 GB/s on the H100. The
    host's ~7.5 us issue cost per copy overlaps the engine's work; small copies are bound by the host thread."""
    measured = json.loads(PROBE.read_text())[key]
    size = 64 * 2**20 / copies
    issue = H100.runtime.copy_issue_us.value * 1e-6
    tasks = [
        Task(resource="h2d", kind="h2d", phase="decode", step=0, nbytes=size, issue_s=issue)
        for _ in range(copies)
    ]
    res = Machine(H100, {}, 1e12).run(tasks)
    assert 64 * 2**20 / res.end_s / 1e9 == pytest.approx(measured, rel=0.15)


def test_a_plan_over_gpu_memory_is_infeasible_with_moment_and_shortfall():
    work = Workload(context=2**20, gen=2)
    t = simulate(ResidentPlan(prefill_chunk=65536), LLAMA, GPU, HOST, work, decode_steps=1, keep="none")
    assert t.summary.feasible is False
    assert "exceeds GPU memory at t=" in t.summary.reason and "GiB" in t.summary.reason
    ok = simulate(HeadOffloadPlan(prefill_chunk=16384), LLAMA, GPU, HOST, work, decode_steps=1, keep="none")
    assert ok.summary.feasible is True
    capped = simulate(
        HeadOffloadPlan(prefill_chunk=16384),
        LLAMA,
        GPU,
        HOST,
        work,
        Limits(gpu_mem_bytes=12e9),
        decode_steps=1,
    )
    assert capped.summary.feasible is False


def test_memory_over_time_shows_prefill_activations():
    t = simulate(
        HeadOffloadPlan(prefill_chunk=8192), LLAMA, GPU, HOST, Workload(context=32768, gen=2), keep="all"
    )
    totals = [s.gpu_bytes for s in t.memory]
    assert max(totals) > totals[0]  # activations come and go
    assert t.memory[-1].gpu.get("activations", 0) == pytest.approx(0, abs=1)


def test_trace_round_trip_and_compare(tmp_path):
    t = simulate(HeadOffloadPlan(prefill_chunk=8192), LLAMA, GPU, HOST, Workload(context=32768, gen=3))
    path = tmp_path / "t.json"
    t.write(path)
    again = Trace.read(path)
    assert again == t
    c = compare(t, again)
    assert all(r.error_pct == 0 for r in c.phases)
    assert {r.name for r in c.span_kinds["decode"]} >= {"h2d", "attention"}


@pytest.mark.parametrize(
    "plan", [HeadOffloadPlan(prefill_chunk=2048), LayerOffloadPlan(prefill_chunk=2048)], ids=["head", "layer"]
)
def test_sampled_prefill_equals_the_full_simulation(plan):
    """The planner simulates 16 evenly spaced prefill chunks and interpolates the rest (noted in the header)."""
    work = Workload(context=80 * 2048, gen=2)
    full = simulate(plan, LLAMA, GPU, HOST, work, decode_steps=1, keep="none")
    short = simulate(plan, LLAMA, GPU, HOST, work, decode_steps=1, keep="none", prefill_sample=8)
    assert len(short.summary.prefill.step_s) == len(full.summary.prefill.step_s) == 80
    assert short.summary.prefill_s == pytest.approx(full.summary.prefill_s, rel=0.01)
    assert any("interpolated" in n for n in short.header.notes)
    assert not any("interpolated" in n for n in full.header.notes)


def test_a_waiting_copy_blocks_its_own_stream_only():
    """CUDA streams are in order; the copy engine is not bound to one stream's order."""
    H = load_gpu("h100-sxm")

    def run(stream):
        tasks = [
            Task(resource="compute", kind="gemm", phase="decode", step=0, duration_s=1e-3),
            Task(resource="h2d", kind="h2d", phase="decode", step=0, nbytes=2**20, deps=(0,), stream=stream),
            Task(resource="h2d", kind="h2d", phase="decode", step=0, nbytes=2**20),
        ]
        m = Machine(H, {}, 1e12)
        m.run(tasks)
        return {s.start_s for s in m.spans if s.resource == "h2d"}

    separate = run("weights")
    assert min(separate) == 0.0  # the ready copy on the default stream starts at once
    same = run(None)
    assert min(same) >= 1e-3  # on one stream it waits behind the copy that waits for the compute


def test_a_slower_cpu_attention_group_slows_both_models_for_that_model_only():
    """A host whose CPU attention kernel runs MHA (group 1) at a tenth of its GQA-4 rate: Llama-2-7B's
    cpu_attention decode gets slower in the analytic model and the simulator alike, Llama-3-8B's (group 4, the
    measured one) does not move."""
    table = {1: Sourced(value=1.5, measured="test"), 4: Sourced(value=15.0, measured="test")}
    slow_mha = HOST.model_copy(
        update={"cpu_attention_group_gbps": table, "cpu_attention_group": Sourced(value=4, measured="test")}
    )
    plan, work = CpuAttentionPlan(cpu_kv_heads=4, prefill_chunk=8192), Workload(context=32768, gen=2)
    for name, slower in (("llama-2-7b", True), ("llama-3-8b", False)):
        model = load_model(name)
        base = predict(plan, model, H100, HOST, work).summary.decode_s_per_token
        new = predict(plan, model, H100, slow_mha, work).summary.decode_s_per_token
        sim_base = simulate(plan, model, H100, HOST, work).summary.decode.step_s[0]
        sim_new = simulate(plan, model, H100, slow_mha, work).summary.decode.step_s[0]
        if slower:
            assert new > base * 1.05 and sim_new > sim_base * 1.05
        else:
            assert new == pytest.approx(base) and sim_new == pytest.approx(sim_base)


def test_sparse_fetch_gathers_on_the_issuing_thread():
    """The executor gathers the selected rows on the issuing thread (after the indices' sync), so a slower gather
    adds its whole time to every sparse layer even where issuing the kernels takes longer than the gather."""
    plan, work = SparseFetchPlan(prefill_chunk=8192), Workload(context=65536, gen=2)
    slow_issue = _with(H100, "efficiency", kernel_us=60.0)  # the host, not the GPU, paces the layers
    steps = {}
    for gbps in (80.0, 40.0):
        host = HOST.model_copy(update={"cpu_gather_gbps": Sourced(value=gbps, measured="test")})
        steps[gbps] = (
            simulate(plan, LLAMA, slow_issue, host, work).summary.decode.step_s[0],
            predict(plan, LLAMA, slow_issue, host, work).summary.decode_s_per_token,
        )
    fetched = 2 * 0.2 * 65536 * LLAMA.n_kv_heads * LLAMA.head_dim * 2 * 2  # read plus written, K and V
    added = (LLAMA.n_layers - plan.dense_layers) * (fetched / 40e9 - fetched / 80e9)
    for i in (0, 1):  # the simulator, the analytic model
        assert steps[40.0][i] - steps[80.0][i] == pytest.approx(added, rel=0.05)


def test_gathered_rows_copy_at_their_own_rate_and_move_the_same_bytes():
    """With link.h2d_gathered_gbps at half the pinned rate, each sparse layer's copy of its gathered rows takes
    twice its time in the simulator (the same bytes moved: the trace's h2d bytes do not change), and both models'
    decode grows by the sparse layers' extra copy time; the dense layers' copies keep the pinned rate."""
    plan, work = SparseFetchPlan(prefill_chunk=8192), Workload(context=65536, gen=2)
    half = H100.link.h2d_gbps.value / 2
    slow = _with(H100, "link", h2d_gathered_gbps=half)
    base, new = (simulate(plan, LLAMA, g, HOST, work) for g in (H100, slow))

    def copies(trace, name):
        return [s for s in trace.spans if s.phase == "decode" and s.kind == "h2d" and s.name == name]

    sel_base, sel_new = copies(base, "selected_kv"), copies(new, "selected_kv")
    assert sel_base and len(sel_base) == len(sel_new)
    assert sum(s.bytes for s in sel_new) == pytest.approx(sum(s.bytes for s in sel_base))
    for a, b in zip(sel_base, sel_new, strict=True):
        assert b.end_s - b.start_s == pytest.approx(2 * (a.end_s - a.start_s), rel=0.02)
    fetched = 0.2 * 65536 * LLAMA.n_kv_heads * LLAMA.head_dim * 2 * 2
    added = (LLAMA.n_layers - plan.dense_layers) * fetched / (H100.link.h2d_gbps.value * 1e9)
    sim = new.summary.decode.step_s[0] - base.summary.decode.step_s[0]
    ana = (
        predict(plan, LLAMA, slow, HOST, work).summary.decode_s_per_token
        - predict(plan, LLAMA, H100, HOST, work).summary.decode_s_per_token
    )
    assert sim == pytest.approx(added, rel=0.1) and ana == pytest.approx(added, rel=0.1)


def test_a_slow_one_head_slot_slows_one_head_cpu_slots_only():
    """A host whose CPU slot scans of one KV head run at half the rate of four-head slots (the H100 guest's kernel
    at one head and 32K tokens): a cpu_attention plan whose CPU slots hold one head each gets a longer decode in the
    analytic model and the simulator alike; one with four-head slots does not move."""

    def table(one: float) -> dict:
        rates = {
            h: {n: Sourced(value=r, measured="test") for n in (2**20, 2**30)} for h, r in ((1, one), (4, 4.0))
        }
        return {LLAMA.group: rates}

    hosts = {one: HOST.model_copy(update={"cpu_attention_slot_gbps": table(one)}) for one in (4.0, 2.0)}
    work = Workload(context=32768, gen=2)
    for g, slower in ((1, True), (4, False)):
        plan = CpuAttentionPlan(cpu_kv_heads=4, kv_heads_per_slot=g, prefill_chunk=8192)
        base = predict(plan, LLAMA, H100, hosts[4.0], work).summary.decode_s_per_token
        new = predict(plan, LLAMA, H100, hosts[2.0], work).summary.decode_s_per_token
        sim_base = simulate(plan, LLAMA, H100, hosts[4.0], work).summary.decode.step_s[0]
        sim_new = simulate(plan, LLAMA, H100, hosts[2.0], work).summary.decode.step_s[0]
        if slower:
            assert new > base * 1.3 and sim_new > sim_base * 1.3
        else:
            assert new == pytest.approx(base) and sim_new == pytest.approx(sim_base)


def test_cpu_attention_prefill_streams_the_executors_own_slots():
    """Where the plan's slot size does not divide the CPU heads (two CPU heads, slots of 15 of Llama-2-7B's 32
    heads), the executor streams the GPU heads in slots of 15 (one resident) and each CPU head apart at prefill:
    four attention calls a layer and 17 heads' KV over PCIe, not 32 one-head slots. Both models cost those slots."""
    model = load_model("llama-2-7b")
    plan = CpuAttentionPlan(cpu_kv_heads=2, kv_heads_per_slot=15, resident_slots=1, prefill_chunk=4096)
    work = Workload(context=32768, gen=2)
    trace = simulate(plan, model, H100, HOST, work)
    last = max(s.step for s in trace.spans if s.phase == "prefill")
    spans = [s for s in trace.spans if s.phase == "prefill" and s.step == last and s.layer == 3]
    assert sum(s.kind == "attention" for s in spans) == 4
    past = 32768 - 4096
    h2d = sum(s.bytes for s in spans if s.resource == "h2d")
    assert h2d == pytest.approx(17 * past * 2 * model.head_dim * model.dtype_bytes, rel=1e-6)
    analytic = predict(plan, model, H100, HOST, work).summary.prefill_s
    assert analytic == pytest.approx(trace.summary.prefill_s, rel=0.15)


def test_a_host_slower_beside_the_cpu_worker_slows_cpu_attention_decode_only():
    """Where calibration found the issuing thread slower while the CPU worker scans, cpu_attention's decode steps
    (the worker scans in every layer) dispatch at that rate in the analytic model and the simulator alike: decode
    slower, prefill (every head on the GPU, no worker) and head_offload unchanged."""
    slow = H100.model_copy(
        update={
            "runtime": H100.runtime.model_copy(
                update={"issue_beside_cpu": Sourced(value=2.0, measured="test")}
            )
        }
    )
    work = Workload(context=32768, gen=2)
    cpu = CpuAttentionPlan(cpu_kv_heads=2, prefill_chunk=8192)
    for plan, slower in ((cpu, True), (HeadOffloadPlan(prefill_chunk=8192), False)):
        base, new = predict(plan, LLAMA, H100, HOST, work), predict(plan, LLAMA, slow, HOST, work)
        sim_base, sim_new = simulate(plan, LLAMA, H100, HOST, work), simulate(plan, LLAMA, slow, HOST, work)
        assert new.summary.prefill_s == pytest.approx(base.summary.prefill_s)
        assert sim_new.summary.prefill_s == pytest.approx(sim_base.summary.prefill_s)
        if slower:
            assert new.summary.decode_s_per_token > 1.1 * base.summary.decode_s_per_token
            assert sim_new.summary.decode_s_per_token > 1.1 * sim_base.summary.decode_s_per_token
        else:
            assert new.summary.decode_s_per_token == pytest.approx(base.summary.decode_s_per_token)
            assert sim_new.summary.decode_s_per_token == pytest.approx(sim_base.summary.decode_s_per_token)


def test_a_beside_ratio_below_one_prices_the_host_at_its_idle_rate():
    """issue_beside_cpu < 1 (the host's speed moved between the two tiny-layer samples) is held at 1: the same
    decode as a profile without the ratio, never faster."""

    def with_ratio(k):
        rt = H100.runtime.model_copy(update={"issue_beside_cpu": Sourced(value=k, measured="test")})
        return H100.model_copy(update={"runtime": rt})

    work = Workload(context=32768, gen=2)
    plan = CpuAttentionPlan(cpu_kv_heads=2, prefill_chunk=8192)
    idle = simulate(plan, LLAMA, H100, HOST, work).summary.decode_s_per_token
    assert simulate(plan, LLAMA, with_ratio(0.7), HOST, work).summary.decode_s_per_token == pytest.approx(
        idle
    )
    assert predict(plan, LLAMA, with_ratio(0.7), HOST, work).summary.decode_s_per_token == pytest.approx(
        predict(plan, LLAMA, H100, HOST, work).summary.decode_s_per_token
    )


def test_the_cpu_heads_output_does_not_queue_behind_the_prefetch_issued_before_it():
    """cpu_attention's merge reads each layer's CPU output from pinned memory, as the executor does (no copy up):
    with a big streamed slot, a layer's post-attention work starts before the next layer's prefetch, issued before
    the issuing thread joined the worker, is done (a copy of the output on the H2D stream would wait for it)."""
    plan = CpuAttentionPlan(cpu_kv_heads=2, kv_heads_per_slot=6, resident_slots=0, prefill_chunk=8192)
    work = Workload(context=65536, gen=2)
    trace = simulate(plan, LLAMA, H100, HOST, work, keep="all", prefill=False)
    spans = [s for s in trace.spans if s.phase == "decode" and s.step == 1]
    assert not [s for s in spans if s.resource == "h2d" and s.name == "cpu_output"]
    for li in range(LLAMA.n_layers - 1):
        cpu = next(s for s in spans if s.layer == li and s.kind == "cpu_attention")
        post = next(s for s in spans if s.layer == li and s.name == "post_attention")
        nxt = min(s.end_s for s in spans if s.resource == "h2d" and s.layer == li + 1)
        assert cpu.end_s <= post.start_s < nxt


@pytest.mark.parametrize("ctx", [8192, 65536])
@pytest.mark.parametrize(
    "plan",
    [ResidentPlan(prefill_chunk=4096), EvictPlan(budget_tokens=4096, prefill_chunk=4096)],
    ids=["resident", "evict"],
)
def test_replayed_decode_is_one_issue_per_step_and_analytic_equals_simulator(ctx, plan):
    """decode_graphs: the host issues one replay per decode step instead of every kernel, so a decode the host
    bound becomes the GPU's; the prefill and the GPU work are the eager plan's."""
    host_bound = _with(H100, "efficiency", kernel_us=60.0)
    eager, _ = both(plan.model_copy(update={"decode_graphs": False}), ctx, gpu=host_bound)
    p, t = both(plan, ctx, gpu=host_bound)
    assert eager.summary.decode.bound == "host"
    assert p.summary.decode.bound == "compute"
    assert p.summary.decode.busy_s["host"] == pytest.approx(host_bound.replay_s())
    assert p.summary.decode.busy_s["compute"] == pytest.approx(eager.summary.decode.busy_s["compute"])
    assert p.summary.prefill_s == eager.summary.prefill_s
    assert t.summary.decode.step_s[0] == pytest.approx(p.summary.decode_s_per_token, rel=0.01)


@pytest.mark.parametrize(
    "plan, model",
    [
        (ResidentPlan(prefill_chunk=4096, decode_graphs=True), "qwen3-30b-a3b"),
        (ResidentPlan(prefill_chunk=4096, decode_graphs=True, tp=2), "llama-3-8b"),
        (EvictPlan(budget_tokens=4096, prefill_chunk=4096), "qwen3-30b-a3b"),
        (EvictPlan(budget_tokens=4096, prefill_chunk=4096, weights="streamed"), "llama-3-8b"),
    ],
)
def test_graphs_the_executor_cannot_replay_are_priced_eager(plan, model):
    """A MoE layer (its expert loop synchronises), a tensor-parallel step (its all-reduces) and streamed weights
    (copies every layer) run eager in the executor whatever decode_graphs says (executor/graphs.py), and the model
    prices them as it runs them."""
    from roofsim.families.pipeline import replays

    spec = load_model(model)
    assert not replays(plan, spec)
    eager = plan.model_copy(update={"decode_graphs": False})
    work = Workload(context=16384, gen=4)
    a = predict(plan, spec, H100, HOST, work, Limits())
    b = predict(eager, spec, H100, HOST, work, Limits())
    assert a.summary.decode_s_per_token == b.summary.decode_s_per_token


def test_fp8_kv_replays_and_its_replayed_decode_is_the_gpus():
    """KV in fp8 replays from a CUDA graph (the row stored at the step's device position, the store dequantised
    whole): the host issues one replay, so a short context's decode, host-bound eager, is the GPU's."""
    from roofsim.families.pipeline import replays

    spec = load_model("llama-3-8b")
    plan = ResidentPlan(prefill_chunk=4096, kv_dtype="fp8_e4m3")
    assert replays(plan, spec)
    work = Workload(context=16384, gen=4)
    host_bound = _with(H100, "efficiency", kernel_us=60.0)
    eager_plan = plan.model_copy(update={"decode_graphs": False})
    graphed = predict(plan, spec, host_bound, HOST, work, Limits()).summary
    eager = predict(eager_plan, spec, host_bound, HOST, work, Limits()).summary
    assert eager.decode.bound == "host" and graphed.decode.bound == "compute"
    assert graphed.decode_s_per_token < eager.decode_s_per_token
    assert graphed.decode.busy_s["compute"] == pytest.approx(eager.decode.busy_s["compute"])
