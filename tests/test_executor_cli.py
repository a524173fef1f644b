"""`roofsim run`, the measured Trace, checkpoints, partial traces on failure, and the GPU logits match."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.check import greedy_logits, reference_logits, rel_err, tiny_config  # noqa: E402
from roofsim.executor.models import load_model, random_model  # noqa: E402
from roofsim.executor.runner import run_plan  # noqa: E402

from roofsim.cli import main  # noqa: E402
from roofsim.families import CpuAttentionPlan, HeadOffloadPlan, KvprPlan, LayerOffloadPlan  # noqa: E402
from roofsim.trace import Trace  # noqa: E402


def test_cli_stays_torch_free():
    code = "import sys, roofsim.cli; roofsim.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_roofsim_run_writes_a_measured_trace(tmp_path, config_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"plan": {"family": "head_offload", "prefill_chunk": 16, "resident_slots": 1}})
    )
    out = tmp_path / "measured.json"
    args = ["run", str(plan), "--model", str(config_path), "--prompt-len", "40", "--gen", "4"]
    assert main([*args, "-o", str(out), "--device", "cpu", "--dtype", "fp32"]) == 0
    printed = capsys.readouterr()
    assert "head_offload" in printed.out
    # where the run is, on stderr: the stages, then the last prefill chunk and decode step at least
    for said in ("building", "model built", "cache set up", "prefill chunk 3/3", "decode step 4/4"):
        assert said in printed.err, said
    t = Trace.read(out)
    assert t.complete and t.error is None
    assert t.header.producer == "measured" and t.header.tool == "roofsim.executor"
    assert t.header.plan.family == "head_offload" and t.header.workload.context == 40
    s = t.summary
    assert len(s.prefill.step_s) == 3 and s.prefill_s >= sum(s.prefill.step_s) * 0.5
    assert len(s.decode.step_s) == 3 and s.decode_s_per_token > 0
    kinds = {sp.kind for sp in t.spans}
    assert {"h2d", "d2h", "attention", "gemm"} <= kinds
    # every decode step streams one slot per layer (2 layers x 1 streamed slot) of P = 40.. tokens
    h2d = [sp for sp in t.spans if sp.phase == "decode" and sp.kind == "h2d"]
    assert {(sp.step, sp.layer) for sp in h2d} == {
        (i, j) for i in range(1, 4) for j in range(2)
    }  # 0: warm-up
    assert all(sp.bytes == (40 + sp.step) * 2 * 16 * 4 for sp in h2d)
    assert all(sp.end_s >= sp.start_s >= 0 for sp in t.spans)
    assert t.header.fingerprint.torch == torch.__version__


def test_roofsim_run_compile_compiles_first_and_says_so(tmp_path, config_path, capsys, monkeypatch):
    """--compile: the layers compiled (aot_eager on the CPU) by an untimed run first, the trace's notes say so;
    a plan whose weights stream is refused in one line."""
    from roofsim.executor import attention

    monkeypatch.setattr(attention, "_merge_two_fn", None)
    out = tmp_path / "measured.json"
    args = [
        "run",
        "resident",
        "--model",
        str(config_path),
        "--prompt-len",
        "40",
        "--gen",
        "3",
        "--device",
        "cpu",
    ]
    assert main([*args, "--dtype", "fp32", "--compile", "-o", str(out)]) == 0
    assert "compiling" in capsys.readouterr().err
    t = Trace.read(out)
    assert t.complete and any("compiled (aot_eager)" in n for n in t.header.notes)
    plan = tmp_path / "streamed.json"
    plan.write_text(json.dumps({"plan": {"family": "resident", "weights": "streamed"}}))
    args[1] = str(plan)
    assert main([*args, "--compile", "-o", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert (
        "--compile needs the plan's weights and experts resident" in err
        and len(err.strip().splitlines()) == 1
    )


def test_run_errors_are_one_line(tmp_path, config_path, capsys):
    out = tmp_path / "m.json"
    assert main(["run", "no-such-plan", "--model", str(config_path), "-o", str(out), "--device", "cpu"]) == 2
    assert "unknown plan family" in capsys.readouterr().err
    bad = ["run", "head_offload", "--model", "no-such-model", "-o", str(out), "--device", "cpu"]
    assert main(bad) == 2


def test_interrupted_run_writes_a_partial_trace(tmp_path):
    model = random_model(tiny_config("llama"), "cpu", torch.float32)
    calls = {"n": 0}
    forward = model.forward

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 prefill chunks, then the second decode step
            raise KeyboardInterrupt
        return forward(*a, **kw)

    model.forward = flaky
    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        run_plan(HeadOffloadPlan(prefill_chunk=16), model, model_name="tiny", prompt_len=40, gen=8, out=out)
    t = Trace.read(out)
    assert not t.complete and "interrupted" in t.error
    assert t.summary.prefill_s > 0 and len(t.summary.prefill.step_s) == 3
    assert t.summary.decode_s_per_token is None  # only the warm-up step ran


def test_safetensors_checkpoint_loads_and_runs(tmp_path):
    model = random_model(tiny_config("qwen2"), "cpu", torch.float32, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    assert list((tmp_path / "ckpt").glob("*.safetensors"))
    loaded, name = load_model(str(tmp_path / "ckpt"), dtype=torch.float32)
    assert name == "ckpt"
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    ref = reference_logits(model, ids, 8, 2)
    from roofsim.executor.build import make_cache

    cache = make_cache(loaded, KvprPlan(recompute_tokens=5), max_tokens=22)
    assert rel_err(greedy_logits(loaded, cache, ids, 8, 2), ref) < 1e-5


def test_builtin_names_map_to_transformers_configs():
    from roofsim.executor.models import config_for_spec

    from roofsim.specs import load_model as load_spec

    for name, cls in (
        ("llama-3-8b", "LlamaConfig"),
        ("qwen2.5-7b", "Qwen2Config"),
        ("mistral-7b-v0.3", "MistralConfig"),
        ("phi-3-mini-128k", "Phi3Config"),
    ):
        spec = load_spec(name)
        cfg = config_for_spec(spec)
        assert type(cfg).__name__ == cls
        assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size) == (
            spec.n_layers,
            spec.n_kv_heads,
            spec.hidden,
        )


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GPU_PLANS = [
    LayerOffloadPlan(write_back="full"),
    LayerOffloadPlan(write_back="incremental"),
    HeadOffloadPlan(resident_slots=1, prefetch_depth=2, slot_buffers=3),
    HeadOffloadPlan(token_block=64),
    HeadOffloadPlan(resident_slots=1, write_back_tokens=4),
    KvprPlan(recompute_tokens=100),
    CpuAttentionPlan(),
    CpuAttentionPlan(cpu_kv_heads=2, resident_slots=1),
]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3"])
def test_gpu_exact_plans_match_resident(family):
    """bf16 on the GPU: every exact plan within 2e-2 (relative L2 of the logits) of the resident plan, fed the
    same tokens; resident within 2e-2 of stock transformers SDPA."""
    from roofsim.executor.build import make_cache

    from roofsim.families import ResidentPlan

    model = random_model(
        tiny_config(family, heads=8, kv_heads=4, head_dim=64), "cuda", torch.bfloat16, seed=1
    )
    ids = torch.randint(0, 128, (1, 700), generator=torch.Generator().manual_seed(2)).cuda()
    stock = reference_logits(model, ids, 256, 6)
    tokens = stock[:-1].argmax(-1).T
    cache = make_cache(model, ResidentPlan(), max_tokens=706)
    ref = greedy_logits(model, cache, ids, 256, 6, tokens=tokens)
    assert rel_err(ref, stock) < 2e-2
    for plan in GPU_PLANS:
        cache = make_cache(model, plan, max_tokens=706)
        got = greedy_logits(model, cache, ids, 256, 6, tokens=tokens)
        cache.close()
        assert rel_err(got, ref) < 2e-2, plan
