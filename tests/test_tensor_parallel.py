"""Tensor-parallel pricing (roofsim.tensor_parallel): each rank priced on its shard with its own link, the ranks'
links drawing on host RAM together, two all-reduces per layer on the GPU interconnect."""

from __future__ import annotations

import pytest

from roofsim import ops
from roofsim.cli import main
from roofsim.errors import UserError
from roofsim.families.head_offload import HeadOffloadPlan
from roofsim.families.resident import ResidentPlan
from roofsim.planner.candidates import candidates
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.space import SearchSpace
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.tensor_parallel import link_share, rank_specs, shard_model
from roofsim.workload import Workload

K512 = Workload(context=512 * 1024, gen=4)
LLAMA = load_model("llama-3-8b")


def _h100():
    gpu = load_gpu("h100-sxm")
    return gpu, default_host_of("h100-sxm", gpu)


def _decode(plan, gpu=None, host=None, work=K512):
    g, h = _h100()
    return predict(plan, LLAMA, gpu or g, host or h, work).summary


def test_one_gpu_is_priced_with_the_specs_themselves():
    gpu, host = _h100()
    assert rank_specs(LLAMA, gpu, host, 1) == (LLAMA, gpu, host)
    assert rank_specs(LLAMA, gpu, host, 1)[1] is gpu
    assert not [op for op in ops.post_attention_ops(LLAMA, 1, 1) if op.kind == "allreduce"]
    one = _decode(HeadOffloadPlan(prefill_chunk=32768))
    assert "allreduce" not in one.decode.ceiling_s
    assert one == _decode(HeadOffloadPlan(prefill_chunk=32768, tp=1))


def test_head_offload_decode_at_512k_halves_over_two_links_and_stops_scaling_at_eight():
    """Link-bound decode: each rank streams half the KV over its own link (about 2x); at tp=8 the ranks share the
    host's links and RAM, so the step shrinks far less than 8-fold."""
    gpu, host = _h100()
    t = {tp: _decode(HeadOffloadPlan(prefill_chunk=32768, tp=tp)).decode.time_s for tp in (1, 2, 4, 8)}
    assert 1.7 <= t[1] / t[2] <= 2.0
    assert t[1] / t[8] < 8
    assert t[8] <= t[4] <= t[2] <= t[1]
    assert link_share(gpu, host, 2) == (1.0, "link")
    assert link_share(gpu, host, 8)[0] < 1.0  # a shared host link or host RAM binds each rank


def test_host_ram_binds_where_the_links_draw_more_than_it_gives():
    gpu = load_gpu("h100-sxm")
    slow = load_host("desktop-ddr5")  # 67 GB/s sustained: two 55 GB/s links want more
    k, why = link_share(gpu, slow, 2)
    assert why == "host RAM" and k == pytest.approx(slow.ram_bytes_per_s / 2 / 55e9)
    rank_gpu = rank_specs(LLAMA, gpu, slow, 2)[1]
    assert rank_gpu.link.h2d_gbps.value == pytest.approx(55.0 * k)
    one = _decode(HeadOffloadPlan(prefill_chunk=32768), host=slow).decode.time_s
    two = _decode(HeadOffloadPlan(prefill_chunk=32768, tp=2), host=slow).decode.time_s
    assert one / two < 1.7


def test_kv_bytes_are_conserved_over_the_ranks():
    one = _decode(HeadOffloadPlan(prefill_chunk=32768))
    for tp in (2, 4, 8):
        s = _decode(HeadOffloadPlan(prefill_chunk=32768, tp=tp))
        assert s.decode.h2d_bytes * tp == pytest.approx(one.decode.h2d_bytes, rel=1e-9)
        assert s.memory.host["kv"] == pytest.approx(one.memory.host["kv"], rel=1e-9)  # the sum over ranks


def test_gpu_memory_per_rank_shrinks():
    peaks = [
        _decode(ResidentPlan(prefill_chunk=32768, tp=tp), work=Workload(context=65536)) for tp in (1, 2, 4)
    ]
    assert peaks[0].memory.gpu["weights"] > peaks[1].memory.gpu["weights"] > peaks[2].memory.gpu["weights"]
    assert peaks[0].peak_gpu_bytes > peaks[1].peak_gpu_bytes > peaks[2].peak_gpu_bytes
    # embeddings and the LM head are whole on every rank: the shard's weights are more than 1/tp of the model's
    assert peaks[1].memory.gpu["weights"] > peaks[0].memory.gpu["weights"] / 2


def test_allreduce_time_grows_with_tokens_and_ranks():
    ic = load_gpu("h100-sxm").interconnect
    nbytes = [4096 * k for k in (1, 16, 256, 4096)]
    for n in (2, 4, 8):
        times = [float(ic.allreduce_s(b, n)) for b in nbytes]
        assert times == sorted(times) and times[0] < times[-1]
    for b in nbytes:
        times = [float(ic.allreduce_s(b, n)) for n in (2, 4, 8)]
        assert times == sorted(times) and times[0] < times[-1]
    assert float(ic.allreduce_s(1e9, 1)) == 0.0
    # t = base + 2 (N - 1) step + 2 (N - 1) / N * bytes / bus
    assert float(ic.allreduce_s(1e9, 4)) == pytest.approx((6.6 + 6 * 0.6) * 1e-6 + 1.5 * 1e9 / 370e9)


def test_two_allreduces_per_layer_of_the_hidden_state():
    shard = shard_model(LLAMA, 2)
    for C in (1, 4096):
        reduces = [op for op in ops.post_attention_ops(shard, C, 3) if op.kind == "allreduce"]
        assert len(reduces) == 2
        assert all(
            op.hbm_bytes == 3 * C * LLAMA.hidden * LLAMA.dtype_bytes and op.ranks == 2 for op in reduces
        )
    s = _decode(HeadOffloadPlan(prefill_chunk=32768, tp=4))
    assert s.decode.ceiling_s["allreduce"] > 0 and s.prefill.ceiling_s["allreduce"] > 0


def test_the_simulator_agrees_with_the_analytic_model_over_several_gpus():
    gpu, host = _h100()
    work = Workload(context=65536, gen=4)
    for plan in (
        HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=1, tp=2),
        HeadOffloadPlan(tp=8),
        ResidentPlan(prefill_chunk=16384, tp=4),
    ):
        a = predict(plan, LLAMA, gpu, host, work).summary
        s = simulate(plan, LLAMA, gpu, host, work, decode_steps=2, keep="none", prefill_sample=4).summary
        assert s.decode.time_s == pytest.approx(a.decode.time_s, rel=0.1), plan.knobs()
        assert s.peak_gpu_bytes == pytest.approx(a.peak_gpu_bytes, rel=0.05), plan.knobs()
        assert s.peak_host_bytes == pytest.approx(a.peak_host_bytes, rel=0.05), plan.knobs()


def test_candidates_at_each_degree_are_written_for_the_shard():
    space = SearchSpace(families=("head_offload",), tps=(1, 4))
    plans = list(candidates(LLAMA, K512, space))
    four = [p for p in plans if p.tp == 4]
    assert four and len(four) < len(plans)
    assert max(p.kv_heads_per_slot for p in four) == 2  # the shard's 2 KV heads


@pytest.mark.parametrize(
    "model, gpu, tp, says",
    [
        ("llama-3-8b", "h100-sxm", 3, "do not split 3 ways"),
        ("mixtral-8x7b", "h100-sxm", 2, "MoE"),
        ("deepseek-v2-lite", "h100-sxm", 2, "MLA"),
        ("llama-2-7b", "h100-sxm", 16, "joins 8 GPUs"),
        ("llama-3-8b", "rtx4090", 2, "[interconnect]"),
    ],
)
def test_a_degree_the_model_or_gpu_cannot_take_is_one_line(model, gpu, tp, says, capsys):
    code = main(["predict", "--gpu", gpu, "--model", model, "--context", "4K", "--tp", str(tp)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("roofsim: error: --tp") and err.count("\n") == 1
    assert says in err
    with pytest.raises(UserError):  # the same checks stop the Python API
        rank_specs(load_model(model), load_gpu(gpu), load_host("sapphire-rapids"), tp)


def test_predict_and_plan_price_tensor_parallel_plans(capsys):
    assert (
        main(["predict", "--gpu", "h100-sxm", "--context", "64K", "--plan", "head_offload", "--tp", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "t=2" in out and "note: over 2 GPUs (tp=2)" in out and "own link" in out
    assert (
        main(["plan", "--gpu", "h100-sxm", "--context", "64K", "--families", "resident", "--tp", "1,2"]) == 0
    )
    assert "tp=2" in capsys.readouterr().out  # two GPUs halve the per-GPU weights and KV reads
