"""The planner: what it must pick, what it must never do, and its output document."""

import json

import pytest

from roofsim.cli import main
from roofsim.families import KvprPlan, families
from roofsim.limits import Limits
from roofsim.plan import plan_from_dict
from roofsim.planner import SearchSpace, explain, search
from roofsim.planner.candidates import family_defaults
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.workload import Workload

LLAMA = load_model("llama-3-8b")
RTX4090 = load_gpu("rtx4090")
EPYC = load_host("epyc-rome-milan")
TB = Limits(host_mem_bytes=1e12)
M = 2**20


@pytest.fixture(scope="module")
def llama_1m():
    return search(LLAMA, RTX4090, EPYC, Workload(context=M), TB)


def test_llama3_8b_at_1m_on_4090_picks_a_head_granular_plan_that_fits(llama_1m):
    families_that_fit = {c.plan.family for c in llama_1m.ranked}
    assert "resident" not in families_that_fit and "layer_offload" not in families_that_fit
    assert {p.plan.family for p in llama_1m.infeasible} >= {"resident", "layer_offload"}
    best = llama_1m.best
    assert best.plan.family in ("head_offload", "cpu_attention")
    assert best.plan.kv_heads_per_slot < LLAMA.n_kv_heads  # head-granular, not whole layers
    assert best.prediction.summary.peak_gpu_bytes <= 24 * 2**30
    assert best.prediction.feasible and best.simulated is not None and best.simulated.feasible


def test_chosen_plan_is_never_slower_than_any_family_default():
    """By the planner's own model: every feasible family default is simulated like the top candidates. At 64K
    on the 4090 the defaults (the whole prompt as one prefill chunk) of the offloading families fit."""
    result = search(LLAMA, RTX4090, EPYC, Workload(context=65536), TB)
    defaults = {d.model_dump_json() for d in family_defaults(SearchSpace())}
    scored = [c for c in result.ranked if c.plan.model_dump_json() in defaults]
    assert {c.plan.family for c in scored} >= {"layer_offload", "head_offload", "kvpr", "cpu_attention"}
    for c in scored:
        assert c.simulated is not None
        assert result.best.score <= c.score


@pytest.mark.parametrize("gpu,ctx", [("h100-sxm", 8192), ("h100-sxm", 32768), ("rtx4090", 8192)])
def test_everything_fits_so_resident_wins(gpu, ctx):
    r = search(LLAMA, load_gpu(gpu), EPYC, Workload(context=ctx))
    assert r.best.plan.family == "resident"


def test_max_context_with_headinfer_granularity_lands_near_their_4m():
    """HeadInfer Table 3: 4096K tokens for Llama-3-8B on the 4090 with 1 TB of RAM; there the GPU slot buffers
    bind (their cache holds about 4 slot-sized buffers at its peak: research/headinfer.md 1.3)."""
    r = search(
        LLAMA,
        RTX4090,
        EPYC,
        Workload(context=M),
        TB,
        SearchSpace(restrict="headinfer"),
        objective="max-context",
    )
    assert r.max_context == pytest.approx(4096 * 1024, rel=0.20)
    assert "slot buffers" in r.binding
    assert r.best.plan.kv_heads_per_slot == 1 and r.best.plan.token_block is None


def test_max_context_unrestricted_goes_further_until_host_ram_binds():
    restricted = search(
        LLAMA,
        RTX4090,
        EPYC,
        Workload(context=M),
        TB,
        SearchSpace(restrict="headinfer"),
        objective="max-context",
    )
    free = search(LLAMA, RTX4090, EPYC, Workload(context=M), TB, objective="max-context")
    assert free.max_context > restricted.max_context
    assert "host memory" in free.binding
    assert free.max_context == pytest.approx(1e12 / LLAMA.kv_bytes_per_token, rel=0.02)


@pytest.mark.parametrize("model", ["llama-3-8b", "qwen2.5-7b", "mistral-7b-v0.3"])
def test_gqa_models_get_a_zero_kvpr_split(model):
    m = load_model(model)
    r = search(
        m,
        load_gpu("h100-sxm"),
        load_host("sapphire-rapids"),
        Workload(context=256 * 1024),
        space=SearchSpace(families=("kvpr",)),
    )
    assert isinstance(r.best.plan, KvprPlan)
    assert "recompute split l = 0 of" in r.best.prediction.header.notes[0]


def test_opt13b_on_a100_kvpr_split_matches_the_closed_form():
    """KVPR's schedule (act + max(recompute, KV) per layer): l*/s = 1 / (1 + h*B/F) with the spec's effective
    H2D rate B and GEMM rate F; 0.66 at KVPR's own 32 GB/s and 312 TFLOP/s."""
    m, gpu = load_model("opt-13b"), load_gpu("a100-40gb-pcie")
    assert 1 / (1 + m.hidden * 32e9 / 312e12) == pytest.approx(0.66, abs=0.01)
    space = SearchSpace(families=("kvpr",), kvpr_overlaps=("intra_layer",))
    r = search(m, gpu, load_host(gpu.default_host), Workload(context=16384, batch=4), space=space)
    note = r.best.prediction.header.notes[0]
    split = float(note.split("(")[1].rstrip(")"))
    expected = 1 / (1 + m.hidden * gpu.link.h2d_gbps.value * 1e9 / gpu.tensor_flops)
    assert split == pytest.approx(expected, abs=0.02)


def test_approximate_families_only_on_request_and_marked():
    work = Workload(context=512 * 1024)
    exact = search(LLAMA, RTX4090, EPYC, work, TB)
    assert not any(c.prediction.plan.approximate for c in exact.ranked)
    loose = search(LLAMA, RTX4090, EPYC, work, TB, SearchSpace(allow_approximate=True))
    assert any(c.plan.family in ("sparse_fetch", "evict") for c in loose.ranked)
    if loose.best.plan.approximate:
        assert "approximate" in explain(loose, LLAMA, RTX4090, EPYC, TB)


def test_weights_stream_when_they_do_not_fit():
    m = load_model("llama-3.1-70b")
    r = search(
        m, load_gpu("h100-sxm"), load_host("sapphire-rapids"), Workload(context=32768, gen=4), refine_top=3
    )
    assert r.best.plan.weights == "streamed"
    assert r.best.prediction.summary.peak_gpu_bytes < load_gpu("h100-sxm").usable_bytes


def test_gpu_mem_cap_is_respected():
    h100 = load_gpu("h100-sxm")
    capped = search(
        LLAMA, h100, EPYC, Workload(context=512 * 1024), Limits(gpu_mem_bytes=24e9, host_mem_bytes=1e12)
    )
    assert capped.best.prediction.summary.peak_gpu_bytes <= 24e9 - h100.memory.reserved_gib.value * 2**30
    assert capped.best.plan.family != "resident"


def test_throughput_objective_scales_with_batch():
    r = search(
        LLAMA, load_gpu("h100-sxm"), EPYC, Workload(context=65536, batch=4), TB, objective="throughput"
    )
    assert r.best.score == pytest.approx(r.best.simulated.decode_s_per_token / 4)


def test_pareto_frontier_trades_memory_for_time(llama_1m):
    front = llama_1m.pareto
    assert len(front) >= 2
    for a, b in zip(front, front[1:], strict=False):
        assert (
            b.prediction.summary.peak_gpu_bytes >= a.prediction.summary.peak_gpu_bytes and b.score < a.score
        )


def test_explanation_names_the_binding_resource(llama_1m):
    text = explain(llama_1m, LLAMA, RTX4090, EPYC, TB)
    bound = llama_1m.best.prediction.summary.decode.binding()[0]
    assert {"cpu_ram": "CPU-RAM-bound", "h2d": "PCIe-bound"}.get(bound, "bound") in text
    assert "slower" in text


def test_plan_cli_writes_a_document_the_other_commands_read(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        ["plan", "--gpu", "rtx4090", "--context", "256K", "--host-mem", "1TB", "-o", str(out), "--top", "3"]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "roofsim.plan/2" and doc["plan"]["family"] in families()
    assert doc["prediction"]["decode"]["time_s"] > 0 and doc["simulated"]["decode"]["time_s"] > 0
    plan = plan_from_dict(doc)
    again = predict(plan, LLAMA, RTX4090, EPYC, Workload(**doc["workload"]), TB)
    assert again.summary.decode_s_per_token == pytest.approx(doc["prediction"]["decode"]["time_s"])
    capsys.readouterr()
    assert (
        main(["predict", "--gpu", "rtx4090", "--context", "256K", "--host-mem", "1TB", "--plan", str(out)])
        == 0
    )
    trace = simulate(
        plan, LLAMA, RTX4090, EPYC, Workload(**doc["workload"]), TB, decode_steps=2, prefill=False
    )
    assert trace.summary.feasible


def test_nothing_fits_is_a_one_line_error(capsys):
    code = main(["plan", "--gpu", "l4", "--model", "llama-3.1-70b", "--context", "8M", "--host-mem", "64GB"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("roofsim: error: no plan fits") and err.count("\n") == 1
