"""Physics of the analytic model: conservation of bytes, monotonicity, limits."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roofsim.families import (
    CpuAttentionPlan,
    EvictPlan,
    HeadOffloadPlan,
    KvprPlan,
    LayerOffloadPlan,
    ResidentPlan,
    SparseFetchPlan,
    families,
)
from roofsim.families.pipeline import prefill_steps
from roofsim.predict import predict
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.sourced import Sourced
from roofsim.workload import Workload

GPU = load_gpu("rtx4090")
HOST = load_host("epyc-rome-milan")
LLAMA = load_model("llama-3-8b")

PLANS = [
    ResidentPlan(prefill_chunk=4096),
    LayerOffloadPlan(prefill_chunk=4096),
    LayerOffloadPlan(write_back="incremental", prefill_chunk=4096),
    HeadOffloadPlan(prefill_chunk=4096),
    HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=1, write_back="full", prefill_chunk=8192),
    HeadOffloadPlan(token_block=16384, prefill_chunk=4096),
    KvprPlan(prefill_chunk=4096),
    KvprPlan(overlap="intra_layer"),
    CpuAttentionPlan(cpu_kv_heads=3, prefill_chunk=4096),
    SparseFetchPlan(prefill_chunk=4096),
    EvictPlan(),
]


def _scaled(gpu, section, field, k):
    sec = getattr(gpu, section)
    old = getattr(sec, field)
    new = Sourced(value=old.value * k, derived=f"{old.value} x {k}")
    return gpu.model_copy(update={section: sec.model_copy(update={field: new})})


def _faster_link(gpu, k):
    gpu = _scaled(gpu, "link", "h2d_gbps", k)
    return _scaled(gpu, "link", "d2h_gbps", k)


contexts = st.integers(min_value=4096, max_value=2 * 2**20)
factors = st.floats(min_value=1.0, max_value=8.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ctx=contexts, k=factors, plan=st.sampled_from(PLANS), batch=st.integers(1, 4))
def test_more_link_bandwidth_is_never_slower(ctx, k, plan, batch):
    work = Workload(context=ctx, batch=batch)
    slow = predict(plan, LLAMA, GPU, HOST, work)
    fast = predict(plan, LLAMA, _faster_link(GPU, k), HOST, work)
    assert fast.summary.decode.time_s <= slow.summary.decode.time_s * (1 + 1e-12)
    assert fast.summary.prefill.time_s <= slow.summary.prefill.time_s * (1 + 1e-12)


@settings(max_examples=20, deadline=None)
@given(ctx=contexts, k=factors, plan=st.sampled_from(PLANS))
def test_more_hbm_bandwidth_or_flops_is_never_slower(ctx, k, plan):
    work = Workload(context=ctx)
    base = predict(plan, LLAMA, GPU, HOST, work)
    for section, field in (("memory", "bandwidth_gbps"), ("compute", "bf16_tflops")):
        better = predict(plan, LLAMA, _scaled(GPU, section, field, k), HOST, work)
        assert better.summary.decode.time_s <= base.summary.decode.time_s * (1 + 1e-12)
        assert better.summary.prefill.time_s <= base.summary.prefill.time_s * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(ctx=contexts, g=st.sampled_from([1, 2, 4, 8]), wb=st.sampled_from(["full", "incremental"]))
def test_more_resident_slots_never_slower_never_less_gpu_memory(ctx, g, wb):
    work = Workload(context=ctx)
    preds = [
        predict(
            HeadOffloadPlan(kv_heads_per_slot=g, resident_slots=r, write_back=wb, prefill_chunk=4096),
            LLAMA,
            GPU,
            HOST,
            work,
        )
        for r in range(8 // g + 1)
    ]
    for fewer, more in zip(preds, preds[1:], strict=False):
        assert more.summary.decode.time_s <= fewer.summary.decode.time_s * (1 + 1e-12)
        assert more.summary.prefill.time_s <= fewer.summary.prefill.time_s * (1 + 1e-12)
        assert more.summary.memory.gpu["kv_resident"] > fewer.summary.memory.gpu["kv_resident"]
        assert more.summary.memory.host["kv"] < fewer.summary.memory.host["kv"]


@pytest.mark.parametrize(
    "plan", [p for p in PLANS if p.family in ("layer_offload", "head_offload", "cpu_attention", "kvpr")]
)
def test_doubling_context_doubles_decode_kv_traffic(plan):
    one = predict(plan, LLAMA, GPU, HOST, Workload(context=64 * 1024))
    two = predict(plan, LLAMA, GPU, HOST, Workload(context=128 * 1024))
    extra = 1e6  # fixed per-step bytes: q and outputs of CPU attention, the new token's write-back
    assert two.summary.decode.h2d_bytes == pytest.approx(2 * one.summary.decode.h2d_bytes, abs=extra)


@pytest.mark.parametrize("g,r", [(1, 0), (2, 1), (4, 0), (8, 0)])
@pytest.mark.parametrize("batch", [1, 3])
def test_link_bytes_equal_what_the_plan_needs(g, r, batch):
    """head_offload: decode brings up every streamed slot's history once and writes back the new token once;
    prefill brings up each chunk's history and writes every KV byte exactly once (incremental)."""
    ctx, chunk = 100_000, 8192
    m, e = LLAMA, LLAMA.dtype_bytes
    plan = HeadOffloadPlan(kv_heads_per_slot=g, resident_slots=r, prefill_chunk=chunk)
    p = predict(plan, m, GPU, HOST, Workload(context=ctx, batch=batch))
    streamed_heads = m.n_layers * (m.n_kv_heads - r * g)
    per_token = batch * streamed_heads * m.head_dim * 2 * e
    assert p.summary.decode.h2d_bytes == pytest.approx(per_token * ctx)
    assert p.summary.decode.d2h_bytes == pytest.approx(per_token * 1)
    steps = prefill_steps(ctx, chunk)
    assert p.summary.prefill.h2d_bytes == pytest.approx(per_token * steps.P.sum())
    assert p.summary.prefill.d2h_bytes == pytest.approx(per_token * ctx)  # every KV byte written once
    assert p.summary.memory.host["kv"] == pytest.approx(per_token * (ctx + 32))


def test_full_write_back_moves_the_whole_history_both_ways():
    p = predict(HeadOffloadPlan(write_back="full"), LLAMA, GPU, HOST, Workload(context=65536))
    assert p.summary.decode.d2h_bytes == pytest.approx(p.summary.decode.h2d_bytes * (65537 / 65536))


def test_resident_and_evict_move_no_kv_over_the_link():
    for plan in (ResidentPlan(), EvictPlan()):
        p = predict(plan, LLAMA, GPU, HOST, Workload(context=32768))
        assert p.summary.decode.h2d_bytes == p.summary.decode.d2h_bytes == p.summary.prefill.h2d_bytes == 0
        assert p.summary.decode.binding()[0] in ("hbm", "tensor", "host")


def test_resident_equals_pure_roofline():
    """With nothing streamed a step is the sum of its operators' roofline times (the datasheet prices no kernel
    issue); replayed from a CUDA graph, the replay's issue comes first."""
    from roofsim import ops, roofline

    ctx = 8192
    layer = roofline.work(ops.layer_ops(LLAMA, 1, ctx, 1), GPU).total_s
    outside = roofline.work(ops.embed_ops(LLAMA, 1, 1) + ops.head_ops(LLAMA, 1), GPU).total_s
    gpu_s = float(LLAMA.n_layers * layer + outside)
    eager = predict(ResidentPlan(decode_graphs=False), LLAMA, GPU, HOST, Workload(context=ctx))
    assert eager.summary.decode.time_s == pytest.approx(gpu_s)
    graphed = predict(ResidentPlan(), LLAMA, GPU, HOST, Workload(context=ctx))
    assert graphed.summary.decode.time_s == pytest.approx(gpu_s + GPU.replay_s())


def test_every_family_has_a_plan_here():
    assert {p.family for p in PLANS} == set(families())


def test_streamed_weights_add_their_bytes_per_layer():
    work = Workload(context=16384)
    base = predict(HeadOffloadPlan(), LLAMA, GPU, HOST, work)
    streamed = predict(HeadOffloadPlan(weights="streamed"), LLAMA, GPU, HOST, work)
    assert streamed.summary.decode.h2d_bytes - base.summary.decode.h2d_bytes == pytest.approx(
        LLAMA.n_layers * LLAMA.layer_weight_bytes
    )
    assert streamed.summary.peak_gpu_bytes < base.summary.peak_gpu_bytes
    assert streamed.summary.decode.time_s > base.summary.decode.time_s


def test_cpu_attention_moves_its_heads_off_the_link():
    work = Workload(context=256 * 1024)
    none = predict(CpuAttentionPlan(cpu_kv_heads=0), LLAMA, GPU, HOST, work)
    some = predict(CpuAttentionPlan(cpu_kv_heads=4), LLAMA, GPU, HOST, work)
    assert some.summary.decode.h2d_bytes < 0.55 * none.summary.decode.h2d_bytes
    assert some.summary.decode.ceiling_s["cpu_ram"] > 0 == none.summary.decode.ceiling_s["cpu_ram"]
    assert np.isclose(some.summary.decode.cpu_bytes, LLAMA.n_layers * 4 * 128 * 2 * 2 * (work.context + 1))


@pytest.mark.parametrize("plan", PLANS)
def test_plan_json_round_trip(plan):
    from roofsim.plan import plan_from_dict

    again = plan_from_dict(__import__("json").loads(plan.model_dump_json()))
    assert again == plan and type(again) is type(plan)


def test_slower_elementwise_kernels_slow_prefill():
    """A GPU whose elementwise kernels reach less of its HBM bandwidth prefills more slowly, monotonically in the
    vector efficiency (None: the copy's, 0.85 in the H200 spec)."""
    from roofsim.predict import predict
    from roofsim.specs import load_gpu, load_host, load_model
    from roofsim.specs.sourced import Sourced
    from roofsim.workload import Workload

    gpu, host, model = load_gpu("h200"), load_host("sapphire-rapids"), load_model("llama-3-8b")
    work = Workload(context=16384, gen=2)
    times = []
    for v in (None, 0.8, 0.5):
        eff = gpu.efficiency.model_copy(
            update={"vector": None if v is None else Sourced(value=v, measured="test")}
        )
        times.append(
            predict(
                ResidentPlan(), model, gpu.model_copy(update={"efficiency": eff}), host, work
            ).summary.prefill_s
        )
    assert times[0] < times[1] < times[2]


def test_q_and_k_norms_are_two_norms_of_their_own_heads():
    """Qwen3's (and Gemma 3's) attention norms q and k in two modules: two norms' kernels a layer, over the query
    heads' and the KV heads' elements, where a model without them has neither."""
    from roofsim import ops
    from roofsim.specs import load_model

    m = load_model("qwen3-8b")
    pre = {op.name: op for op in ops.pre_attention_ops(m, 1, 1)}
    norm = pre["input_norm"]
    assert pre["q_norm"].kernels == pre["k_norm"].kernels == norm.kernels
    assert pre["q_norm"].hbm_bytes / pre["k_norm"].hbm_bytes == pytest.approx(m.n_heads / m.n_kv_heads)
    assert pre["q_norm"].hbm_bytes / norm.hbm_bytes == pytest.approx(m.n_heads * m.head_dim / m.hidden)
    assert not {"q_norm", "k_norm"} & {
        op.name for op in ops.pre_attention_ops(load_model("llama-3-8b"), 1, 1)
    }
