"""From `roofsim plan` to `roofsim run`: a plan file carries what a run needs (the plan, the workload and the
model's spec, even for a model read from a config.json that is gone since); a family name means that family's
best knobs within the memory there is; a plan the model says does not fit is refused before anything is
allocated."""

import json
import shutil

import pytest

from roofsim.cli import main
from roofsim.trace import Trace

pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 1024,
    "head_dim": 16, "tie_word_embeddings": False,
}  # fmt: skip


def _run(plan, out, *extra):
    return main(["run", str(plan), "--device", "cpu", "--dtype", "fp32", "-o", str(out), *extra])


def test_a_plan_of_a_built_in_model_runs_as_written(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    argv = ["plan", "--gpu", "h100-sxm", "--model", "tiny-llama", "--context", "200", "--gen", "3"]
    assert main([*argv, "-o", str(plan)]) == 0
    doc = json.loads(plan.read_text())
    assert doc["model"] == "tiny-llama" and doc["model_spec"]["n_layers"] == 2
    out = tmp_path / "measured.json"
    assert _run(plan, out) == 0
    t = Trace.read(out)
    assert t.complete and t.header.model == "tiny-llama" and t.header.workload.context == 200
    assert t.header.plan.model_dump() == doc["plan"]
    assert len(t.summary.decode.step_s) == 2  # 3 steps less the warm-up one


def test_a_plan_of_a_config_json_runs_after_the_config_is_gone(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cfg2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    plan = tmp_path / "plan.json"
    argv = [
        "plan",
        "--gpu",
        "h100-sxm",
        "--model",
        str(folder / "config.json"),
        "--context",
        "96",
        "--gen",
        "2",
    ]
    assert main([*argv, "-o", str(plan)]) == 0
    shutil.rmtree(folder)  # the plan alone must say what to build
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "measured.json"
    assert _run(plan, out) == 0
    t = Trace.read(out)
    assert t.complete and t.header.model == "cfg2" and t.header.workload.context == 96
    # predict reads the same document: the model comes from it where --model is not given
    capsys.readouterr()
    assert main(["predict", "--gpu", "h100-sxm", "--context", "96", "--plan", str(plan), "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)["predictions"]
    assert doc["header"]["model"] == "cfg2"


@pytest.mark.parametrize("command", ["predict", "simulate"])
def test_a_family_name_means_its_best_knobs_within_the_limits(command, capsys):
    """At 1M tokens head_offload's defaults (the whole prompt as one prefill chunk) need 132 GiB of GPU memory; the
    name means the knobs the predict table shows for it, which fit."""
    argv = [command, "--gpu", "rtx4090", "--model", "llama-3-8b", "--context", "1M", "--plan", "head_offload"]
    if command == "simulate":
        argv += ["--decode-steps", "1"]
    assert main(argv) == 0
    assert "does not fit" not in capsys.readouterr().err


def test_run_takes_a_family_name_and_says_the_knobs_it_chose(tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["head_offload", "--model", "tiny-llama", "--prompt-len", "64", "--gen", "2"]
    assert _run(argv[0], out, *argv[1:]) == 0
    said = capsys.readouterr().out
    assert "head_offload: the best knobs for tiny-llama" in said
    assert Trace.read(out).header.plan.family == "head_offload"


def test_run_refuses_a_plan_that_does_not_fit_before_building_anything(tmp_path, capsys, monkeypatch):
    import roofsim.executor.models as models

    def never(*a, **kw):
        raise AssertionError("the model was built for a plan that does not fit")

    monkeypatch.setattr(models, "load_model", never)
    out = tmp_path / "m.json"
    argv = ["head_offload", "--model", "llama-3-8b", "--prompt-len", "16M", "--gen", "2"]
    assert _run(argv[0], out, *argv[1:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit" in err and "of host memory" in err and "--force" in err
    assert not out.exists()


def test_validate_does_not_run_a_plan_that_does_not_fit(tmp_path, capsys):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    (tmp_path / "c.toml").write_text(
        f"""
[[config]]
name = "too-big"
model = "{tmp_path / "tiny.json"}"
context = "2M"
plan = "resident"
gen = 2
gpu_mem = "1.5GB"
"""
    )
    out = tmp_path / "results"
    argv = ["validate", str(tmp_path / "c.toml"), "--gpu", "h100-sxm", "-o", str(out), "--device", "cpu"]
    assert main(argv) == 0
    status = json.loads((out / "too-big" / "run.json").read_text())
    assert "does not fit" in status["refused"] and not (out / "too-big" / "measured.json").exists()
    assert "not run: the model says it does not fit" in capsys.readouterr().out
