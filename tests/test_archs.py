"""Today's model architectures: window layers, mixtures of experts and MLA, from their configs to the plans.

Layer kinds change what a plan places: a window layer's KV stays on the GPU (it never grows past its window), only
the global layers' KV follows the plan, and a MoE model's routed experts are resident or streamed per layer."""

import json

import numpy as np
import pytest

from roofsim import ops
from roofsim.cli import main
from roofsim.errors import UserError
from roofsim.families import HeadOffloadPlan, KvprPlan, LayerOffloadPlan, ResidentPlan
from roofsim.families.pipeline import context, kv_bytes
from roofsim.kinds import layer_kinds_notes
from roofsim.limits import Limits
from roofsim.planner import SearchSpace, explain, search
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.specs.model import BUILTIN, from_hf_config
from roofsim.workload import Workload

NEW = [
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-32b",
    "qwen3-30b-a3b",
    "gemma-3-12b",
    "gemma-3-27b",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "mixtral-8x7b",
    "llama-3.1-70b",
    "llama-3.3-70b",
    "deepseek-v2-lite",
]
K128 = Workload(context=131072)


def _specs(gpu_name):
    gpu = load_gpu(gpu_name)
    return gpu, default_host_of(gpu_name, gpu)


# ---- specs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, total, active",
    [  # published parameter counts (billions; Gemma 3's without its vision tower)
        ("qwen3-8b", 8.19, 8.19),
        ("qwen3-14b", 14.8, 14.8),
        ("qwen3-32b", 32.8, 32.8),
        ("qwen3-30b-a3b", 30.5, 3.3),
        ("gemma-3-12b", 11.8, 11.8),
        ("gemma-3-27b", 27.0, 27.0),
        ("gpt-oss-20b", 20.9, 4.2),
        ("gpt-oss-120b", 116.8, 5.7),
        ("mixtral-8x7b", 46.7, 12.9),
        ("deepseek-v2-lite", 15.7, 2.66),
    ],
)
def test_builtin_parameter_counts_match_the_published_ones(name, total, active):
    m = BUILTIN[name]
    assert m.source == f"https://huggingface.co/{m.source.split('huggingface.co/')[1]}"
    assert m.source.endswith("/config.json")
    assert m.params / 1e9 == pytest.approx(total, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active, rel=0.03)


def test_layer_kinds_of_the_builtins():
    gemma = BUILTIN["gemma-3-12b"]
    assert gemma.global_layers == [5, 11, 17, 23, 29, 35, 41, 47]  # five of every six layers attend a window
    assert {gemma.window(i) for i in gemma.window_layers} == {1024}
    oss = BUILTIN["gpt-oss-20b"]
    assert oss.window(0) == 128 and oss.window(1) is None and oss.kv_layers == 12
    assert oss.experts_per_token == 4 and oss.n_experts == 32 and oss.attention_sinks
    ds = BUILTIN["deepseek-v2-lite"]
    assert ds.kv_bytes_per_token_layer == 576 * 2  # the latent, bf16
    assert ds.moe_layers == 26 and ds.shared_intermediate == 2 * 1408
    assert BUILTIN["qwen3-30b-a3b"].kv_layers == 48 and not BUILTIN["qwen3-30b-a3b"].window_layers


# The keys of each model's public config.json that roofsim reads (values as published)
CONFIGS = {
    "qwen3-8b": {
        "model_type": "qwen3", "attention_bias": False, "head_dim": 128, "hidden_size": 4096,
        "intermediate_size": 12288, "max_position_embeddings": 40960, "num_attention_heads": 32,
        "num_hidden_layers": 36, "num_key_value_heads": 8, "sliding_window": None, "tie_word_embeddings": False,
        "use_sliding_window": False, "vocab_size": 151936,
    },
    "qwen3-30b-a3b": {
        "model_type": "qwen3_moe", "attention_bias": False, "decoder_sparse_step": 1, "head_dim": 128,
        "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960, "mlp_only_layers": [],
        "moe_intermediate_size": 768, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 48, "num_key_value_heads": 4, "sliding_window": None, "tie_word_embeddings": False,
        "vocab_size": 151936,
    },
    "gemma-3-12b": {
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {
            "hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text", "num_attention_heads": 16,
            "num_hidden_layers": 48, "num_key_value_heads": 8, "sliding_window": 1024,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        },
        "vision_config": {"hidden_size": 1152},
    },
    "gpt-oss-20b": {
        "model_type": "gpt_oss", "attention_bias": True, "experts_per_token": 4, "head_dim": 64, "hidden_size": 2880,
        "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
        "max_position_embeddings": 131072, "num_attention_heads": 64, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32, "sliding_window": 128,
        "tie_word_embeddings": False, "vocab_size": 201088,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "num_local_experts": 8, "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32000,
    },
    "deepseek-v2-lite": {
        "model_type": "deepseek_v2", "first_k_dense_replace": 1, "hidden_size": 2048, "intermediate_size": 10944,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 1408, "moe_layer_freq": 1,
        "n_routed_experts": 64, "n_shared_experts": 2, "num_attention_heads": 16, "num_experts_per_tok": 6,
        "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "tie_word_embeddings": False, "v_head_dim": 128, "vocab_size": 102400,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_json_reads_back_the_builtin_shapes(name, tmp_path):
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(CONFIGS[name]))
    read = load_model(str(path))
    assert read.model_dump(exclude={"name", "source"}) == BUILTIN[name].model_dump(exclude={"name", "source"})


def test_gemma3_pattern_without_layer_types_and_bad_layer_kinds_are_one_line_errors():
    cfg = {**CONFIGS["gemma-3-12b"]["text_config"], "model_type": "gemma3_text", "sliding_window_pattern": 6}
    assert from_hf_config(cfg, "g", "g.json").global_layers == BUILTIN["gemma-3-12b"].global_layers
    q3moe = {k: v for k, v in CONFIGS["qwen3-30b-a3b"].items() if k != "num_experts"}
    written = from_hf_config(
        {**q3moe, "num_local_experts": 128}, "q", "q.json"
    )  # as transformers 5 writes it
    assert written.model_dump(exclude={"name", "source"}) == BUILTIN["qwen3-30b-a3b"].model_dump(
        exclude={"name", "source"}
    )
    oss = CONFIGS["gpt-oss-20b"]
    for bad in (
        {**oss, "layer_types": ["sliding_attention"] * 24},  # no global layer
        {**oss, "layer_types": ["sliding_attention", "chunked_attention"] * 12},
        {**oss, "layer_types": ["full_attention"] * 3},
        {**CONFIGS["deepseek-v2-lite"], "q_lora_rank": 1536},
        {**CONFIGS["qwen3-30b-a3b"], "mlp_only_layers": [0]},
        {**CONFIGS["mixtral-8x7b"], "num_experts_per_tok": 9},
    ):
        with pytest.raises(UserError) as e:
            from_hf_config(bad, "m", "m.json")
        assert "\n" not in str(e.value)


def test_a_plan_document_model_spec_with_windows_round_trips():
    m = BUILTIN["gemma-3-12b"]
    again = type(m).model_validate(json.loads(m.model_dump_json()))
    assert again == m


# ---- operators --------------------------------------------------------------------------------------------------


def test_a_window_layer_attends_and_reads_at_most_its_window():
    m = BUILTIN["gemma-3-12b"]
    short = ops.attention_op(m, 1, 1000, 1, window=1024)
    full = ops.attention_op(m, 1, 1000, 1)
    assert short.flops == pytest.approx(full.flops) and short.hbm_bytes == pytest.approx(full.hbm_bytes)
    far = ops.attention_op(m, 1, 131072, 1, window=1024)
    farther = ops.attention_op(m, 1, 524288, 1, window=1024)
    assert far.flops == farther.flops and far.hbm_bytes == farther.hbm_bytes
    # a prefill chunk: query t sees min(window, t + 1) keys
    C, P, W = 4096.0, 0.0, 1024
    mean = np.mean(np.minimum(W, P + np.arange(C) + 1))
    assert ops.window_keys_per_query(C, P, W) == pytest.approx(mean)
    assert ops.window_keys_per_query(8.0, 100.0, 1024) == pytest.approx(100 + 4.5)


def test_moe_decode_reads_the_picked_experts_and_prefill_nearly_all():
    m = BUILTIN["qwen3-30b-a3b"]
    (experts,) = [op for op in ops.post_attention_ops(m, 1, 1, moe=True) if op.name == "experts"]
    per_expert = m.expert_params * m.dtype_bytes
    assert experts.hbm_bytes == pytest.approx(m.experts_per_token * per_expert, rel=0.01)
    assert experts.flops == pytest.approx(2 * m.experts_per_token * m.expert_params, rel=0.01)
    (chunk,) = [op for op in ops.post_attention_ops(m, 4096, 1, moe=True) if op.name == "experts"]
    assert chunk.hbm_bytes > 0.99 * m.n_experts * per_expert
    dense = BUILTIN["qwen3-8b"]
    assert "experts" not in {op.name for op in ops.post_attention_ops(dense, 1, 1)}


def test_mla_caches_the_latent():
    m = BUILTIN["deepseek-v2-lite"]
    gpu, host = _specs("h100-sxm")
    ctx = context(m, gpu, host, K128)
    assert kv_bytes(ctx, 1000, 1) == 1000 * 576 * 2
    a = ops.attention_op(m, 1, 100000, 1)
    assert a.hbm_bytes == pytest.approx(100001 * 576 * 2 + (576 + 512) * 16 * 2)


# ---- plans ------------------------------------------------------------------------------------------------------


def test_window_layers_keep_their_kv_resident_and_only_global_kv_is_placed():
    m = BUILTIN["gemma-3-12b"]
    gpu, host = _specs("h100-sxm")
    short, long = Workload(context=65536), K128
    off_short = predict(LayerOffloadPlan(), m, gpu, host, short).summary
    off_long = predict(LayerOffloadPlan(), m, gpu, host, long).summary
    window = 40 * 1024 * 8 * 256 * 2 * 2
    assert off_short.memory.gpu["kv_window"] == off_long.memory.gpu["kv_window"] == window
    # the host store holds the 8 global layers' KV only
    assert off_long.memory.host["kv"] == pytest.approx(8 * long.max_tokens * 8 * 256 * 2 * 2)
    # decode brings the global layers' KV up; doubling the context doubles it
    assert off_long.decode.h2d_bytes == pytest.approx(8 * 131072 * 8 * 256 * 2 * 2)
    assert off_long.decode.h2d_bytes == pytest.approx(2 * off_short.decode.h2d_bytes)
    res = predict(ResidentPlan(), m, gpu, host, long).summary
    assert res.memory.gpu["kv_resident"] == pytest.approx(8 * long.max_tokens * 8 * 256 * 2 * 2)
    head = HeadOffloadPlan(resident_slots=[0] * 8)
    assert predict(head, m, gpu, host, long).feasible
    with pytest.raises(UserError, match="lists 48 layers but the model has 8"):
        predict(HeadOffloadPlan(resident_slots=[0] * 48), m, gpu, host, long)


def test_families_without_layer_kinds_are_not_offered_for_window_models():
    m = BUILTIN["gpt-oss-20b"]
    gpu, host = _specs("h100-sxm")
    with pytest.raises(UserError, match="does not price window layers"):
        predict(KvprPlan(), m, gpu, host, K128)
    with pytest.raises(UserError, match="does not stream experts"):
        predict(KvprPlan(experts="streamed"), BUILTIN["mixtral-8x7b"], gpu, host, K128)


def test_streamed_experts_trade_gpu_weights_for_host_memory_and_link_time():
    m = BUILTIN["qwen3-30b-a3b"]
    gpu, host = _specs("h100-sxm")
    res = predict(ResidentPlan(), m, gpu, host, K128).summary
    st = predict(ResidentPlan(experts="streamed"), m, gpu, host, K128).summary
    moved = m.moe_layers * m.expert_weight_bytes
    assert res.memory.gpu["weights"] - st.memory.gpu["weights"] == pytest.approx(moved)
    # the staged copies of one layer's picked experts (nearly all 128 for a prefill chunk) live at the MLP's
    # moment, among the activations, not beside the attention's
    assert st.memory.gpu["activations"] >= 0.99 * m.expert_weight_bytes
    assert st.memory.host["experts"] == m.moe_layers * m.expert_weight_bytes
    # decode fetches the picked experts of each layer (8 of 128), prefill every expert of every layer per chunk
    per_expert = m.expert_params * m.dtype_bytes
    assert st.decode.h2d_bytes == pytest.approx(m.moe_layers * m.experts_per_token * per_expert, rel=0.01)
    assert st.decode.time_s > res.decode.time_s
    assert st.prefill.h2d_bytes == pytest.approx(m.moe_layers * m.expert_weight_bytes, rel=0.01)
    with pytest.raises(ValueError, match="streams the experts with the layers"):
        ResidentPlan(experts="streamed", weights="streamed")
    # half the MoE layers keep their experts: half the host store, half the decode fetches
    half = predict(ResidentPlan(experts="streamed", resident_expert_layers=24), m, gpu, host, K128).summary
    assert half.memory.host["experts"] == 24 * m.expert_weight_bytes
    assert res.memory.gpu["weights"] - half.memory.gpu["weights"] == pytest.approx(24 * m.expert_weight_bytes)
    assert half.decode.h2d_bytes == pytest.approx(st.decode.h2d_bytes / 2)
    assert res.decode.time_s < half.decode.time_s < st.decode.time_s
    with pytest.raises(UserError, match="exceeds qwen3-30b-a3b's 48 MoE layers"):
        predict(ResidentPlan(experts="streamed", resident_expert_layers=49), m, gpu, host, K128)
    with pytest.raises(ValueError, match="needs experts='streamed'"):
        ResidentPlan(resident_expert_layers=2)


def _with(gpu, section: str, field: str, value: float):
    """The GPU spec with `section`.`field` (link or runtime) set to `value`."""
    part = {**getattr(gpu, section).model_dump(), field: {"value": value, "assumed": "test"}}
    return type(gpu).model_validate({**gpu.model_dump(), section: part})


def _decode_s(plan, m, gpu, host, work, simulated: bool = False) -> float:
    """A decode step's time, analytic or simulated (two steps, a few prefill chunks)."""
    if simulated:
        trace = simulate(plan, m, gpu, host, work, decode_steps=2, keep="none", prefill_sample=4)
    else:
        trace = predict(plan, m, gpu, host, work)
    return trace.summary.decode.time_s


def test_expert_copies_pay_the_gap_of_the_memory_they_come_from():
    """Streamed experts copy from torch's pinned allocator's memory: a profile whose link.copy_gap_allocated_us is
    larger than copy_gap_us makes each fetched expert tensor cost that much more, in the analytic model and the
    simulator alike (decode: 16 copies a MoE layer), and leaves a plan that streams no experts as it was."""
    m = BUILTIN["qwen3-30b-a3b"]
    gpu, host = _specs("h100-sxm")
    slow = _with(gpu, "link", "copy_gap_allocated_us", gpu.link.copy_gap_us.value + 100.0)
    plan, work = ResidentPlan(experts="streamed"), Workload(context=65536)
    copies = m.moe_layers * m.experts_per_token * 2
    more = _decode_s(plan, m, slow, host, work) - _decode_s(plan, m, gpu, host, work)
    assert more == pytest.approx(copies * 100e-6, rel=0.05)
    same = ResidentPlan()
    assert _decode_s(same, m, slow, host, work) == _decode_s(same, m, gpu, host, work)
    more = _decode_s(plan, m, slow, host, work, True) - _decode_s(plan, m, gpu, host, work, True)
    assert more == pytest.approx(copies * 100e-6, rel=0.1)


def test_a_timed_expert_fetch_prices_each_picked_expert_on_the_host():
    """runtime.expert_fetch_us (the executor's fetch of one picked expert, timed by calibrate) replaces the two
    copies' issue at copy_issue_us: where the fetch binds the decode step, each microsecond more a picked expert
    adds one a picked expert per streamed MoE layer, in the analytic model and the simulator alike; a plan that
    streams no experts does not change."""
    m = BUILTIN["qwen3-30b-a3b"]
    gpu, host = _specs("h100-sxm")
    # 8 and 16 ms a layer: far above the copies and the kernels
    slow, slower = (_with(gpu, "runtime", "expert_fetch_us", us) for us in (1000.0, 2000.0))
    plan, work = ResidentPlan(experts="streamed"), Workload(context=65536)
    picked = m.moe_layers * m.experts_per_token
    more = _decode_s(plan, m, slower, host, work) - _decode_s(plan, m, slow, host, work)
    assert more == pytest.approx(picked * 1000e-6, rel=0.02)
    assert _decode_s(plan, m, slow, host, work) > _decode_s(plan, m, gpu, host, work)
    same = ResidentPlan()
    assert _decode_s(same, m, slower, host, work) == _decode_s(same, m, gpu, host, work)
    more = _decode_s(plan, m, slower, host, work, True) - _decode_s(plan, m, slow, host, work, True)
    assert more == pytest.approx(picked * 1000e-6, rel=0.05)


def test_the_planner_trades_experts_for_kv_under_a_cap():
    """Under a cap the routed experts cannot all keep, the planner streams some of them; with room for all it
    keeps them resident."""
    m = BUILTIN["qwen3-30b-a3b"]
    gpu, host = _specs("h100-sxm")
    space = SearchSpace(families=("resident",))
    roomy = search(m, gpu, host, Workload(context=32768), Limits(), space, refine_top=2, decode_steps=1)
    assert roomy.best.plan.experts == "resident"
    tight = search(m, gpu, host, K128, Limits(gpu_mem_bytes=40e9), space, refine_top=2, decode_steps=1)
    assert tight.best.plan.experts == "streamed"
    assert tight.best.plan.resident_expert_layers > 0  # as many as fit: each saves its decode fetches


def test_the_simulator_agrees_with_the_analytic_model_on_layer_kinds():
    gpu, host = _specs("h100-sxm")
    work = Workload(context=65536, gen=4)
    for name, plan in (
        ("gemma-3-12b", HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=1)),
        ("gpt-oss-20b", LayerOffloadPlan(write_back="incremental")),
        ("qwen3-30b-a3b", ResidentPlan(experts="streamed", prefill_chunk=16384)),
        ("qwen3-30b-a3b", HeadOffloadPlan(experts="streamed", resident_expert_layers=12, resident_slots=2)),
        ("deepseek-v2-lite", LayerOffloadPlan(experts="streamed", resident_expert_layers=5)),
    ):
        m = BUILTIN[name]
        a = predict(plan, m, gpu, host, work).summary
        s = simulate(plan, m, gpu, host, work, decode_steps=2, keep="none", prefill_sample=4).summary
        assert s.decode.time_s == pytest.approx(a.decode.time_s, rel=0.1), name
        assert s.peak_gpu_bytes == pytest.approx(a.peak_gpu_bytes, rel=0.05), name


@pytest.mark.parametrize("gpu_name", ["rtx4090", "h100-sxm"])
def test_every_new_model_prices_at_128k(gpu_name):
    """Each supported family's default plan, and the experts streamed where the model has them."""
    from roofsim.families import families
    from roofsim.families.registry import supports

    gpu, host = _specs(gpu_name)
    for name in NEW:
        m = load_model(name)
        for f in families().values():
            if not supports(f, m):
                continue
            plans = [f.plan_type()]
            if m.moe_layers and f.layer_kinds:
                plans.append(f.plan_type(experts="streamed"))
            for plan in plans:
                p = predict(plan, m, gpu, host, K128)
                assert p.summary.decode.time_s > 0 and p.summary.prefill.time_s > 0, (name, plan)


@pytest.mark.parametrize(
    "name, gpu_name", [("gemma-3-12b", "rtx4090"), ("qwen3-30b-a3b", "rtx4090"), ("gpt-oss-20b", "h100-sxm")]
)
def test_the_planner_finds_a_plan_and_explains_the_layer_kinds(name, gpu_name):
    gpu, host = _specs(gpu_name)
    m = load_model(name)
    space = SearchSpace(families=("resident", "layer_offload"))
    result = search(m, gpu, host, K128, Limits(), space, refine_top=2, decode_steps=1)
    assert result.best.prediction.feasible
    text = explain(result, m, gpu, host, Limits())
    assert " ".join(layer_kinds_notes(m, K128)) in text
    if m.window_layers:
        assert "stays resident on the GPU" in text
    if m.moe_layers:
        assert f"{m.experts_per_token} of {m.n_experts} experts" in text
    if result.best.plan.experts == "streamed":  # the link carries the picked experts, not KV
        assert "of the experts it picked over the link" in text


def test_predict_says_the_window_layers_kv_stays_resident(capsys):
    code = main("predict --gpu rtx4090 --model gemma-3-12b --context 128K --plan layer_offload".split())
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "40 of gemma-3-12b's 48 layers attend a 1,024-token window" in out
    assert "their KV (320.00 MiB) stays resident on the GPU in every plan" in out


def test_models_lists_the_new_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert name in out
