"""`roofsim validate` end to end on a tiny model with the executor on the CPU, so the pipeline (predict, simulate,
run in a subprocess, compare, summarize) cannot rot between GPU campaigns."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.cli import main  # noqa: E402
from roofsim.validate import summarize  # noqa: E402

TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 1024,
    "head_dim": 16, "tie_word_embeddings": False,
}  # fmt: skip


def _validate(tmp_path_factory, only: str) -> Path:
    """The configurations named in `only` (of the configs.toml written here), validated with the executor on the
    CPU. Each run is a process of its own, ~9 s on a CPU, nearly all of it importing torch and transformers: a
    module fixture runs at most three (`campaign` and `planned` are measured apart, so that neither's setup is
    long)."""
    root = tmp_path_factory.mktemp("campaign")
    (root / "tiny").mkdir()
    (root / "tiny" / "config.json").write_text(json.dumps(TINY))
    model = root / "tiny" / "config.json"
    (root / "configs.toml").write_text(
        f"""
[[config]]
name = "tiny-resident"
model = "{model}"
context = 64
plan = "resident"
gen = 3

[[config]]
name = "tiny-head"
model = "{model}"
context = 64
plan = {{ family = "head_offload", prefill_chunk = 16, resident_slots = 1 }}
gen = 3

[[config]]
name = "tiny-planner"
model = "{model}"
context = 48
plan = "planner"
gen = 3
runners_up = 0
other_families = ["head_offload"]

[[config]]
name = "tiny-runners-up"
model = "{model}"
context = 48
plan = "planner"
gen = 3
runners_up = 1
other_families = false
"""
    )
    out = root / "results"
    args = ["validate", str(root / "configs.toml"), "--gpu", "h100-sxm", "-o", str(out), "--device", "cpu"]
    assert main([*args, "--timeout", "300", "--only", only]) == 0
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A configuration with a given plan (tiny-head: the resume test runs it)."""
    return _validate(tmp_path_factory, "tiny-resident")


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A planner configuration: its pick and one other family's best plan (tiny-runners-up: the runners-up
    test runs it)."""
    return _validate(tmp_path_factory, "tiny-planner")


@pytest.mark.parametrize("results,name", [("campaign", "tiny-resident"), ("planned", "tiny-planner")])
def test_every_configuration_writes_predicted_measured_and_comparison(request, results, name):
    folder = request.getfixturevalue(results) / name
    for f in (
        "config.json",
        "plan.json",
        "predicted.json",
        "analytic.json",
        "measured.json",
        "comparison.json",
    ):
        assert (folder / f).is_file(), (name, f)
    assert (folder / "runs.json").is_file()
    measured = json.loads((folder / "measured.json").read_text())
    assert measured["header"]["producer"] == "measured" and measured["summary"]["decode"]["time_s"] > 0
    predicted = json.loads((folder / "predicted.json").read_text())
    assert predicted["header"]["producer"] == "predicted"
    if name == "tiny-planner":
        assert (folder / "best-head_offload" / "measured.json").is_file()


def test_the_executor_runs_with_the_profile_the_prediction_used(campaign):
    command = json.loads((campaign / "tiny-resident" / "run.json").read_text())["command"].split()
    assert command[command.index("--gpu") + 1] == "h100-sxm"


def test_summary_ends_with_the_closing_line(planned):
    rows, line = summarize(planned)
    assert len(rows) == 1 and not any(r["failed"] for r in rows)  # a row a configuration
    keys = [part.split("=")[0] for part in line.split()]
    assert keys == [
        "n", "decode_median_abs_err_pct", "decode_p90_abs_err_pct", "prefill_median_abs_err_pct",
        "prefill_p90_abs_err_pct", "mem_err_max_pct", "regret_max_pct", "band_coverage_pct",
    ]  # fmt: skip
    assert line.startswith("n=1 ")
    assert "regret_pct" in next(r for r in rows if r["config"] == "tiny-planner")


def test_a_planner_configuration_also_measures_the_best_plan_of_other_families(planned):
    """The regret is measured against the pick's runners-up and the best plan of each other exact family that
    fits (every one by default, those named in other_families, none with false), so that a family the model
    misprices can show up in it. The campaign measures one named family; the plans of the default are checked
    without running them."""
    from roofsim.plan import default_plan
    from roofsim.validate import _other_families

    runs = json.loads((planned / "tiny-planner" / "runs.json").read_text())
    assert [r["run"] for r in runs] == ["pick", "best-head_offload"]
    assert runs[1]["plan"]["family"] == "head_offload" != runs[0]["plan"]["family"]

    ranked = [default_plan(f) for f in ("resident", "kvpr", "head_offload", "kvpr", "sparse_fetch")]
    best = _other_families(ranked, ranked[:1])  # one per exact family the pick lacks, in the ranking's order
    assert [p.family for p in best] == ["kvpr", "head_offload"] and best[0] is ranked[1]
    assert _other_families(ranked, ranked[:1], ["head_offload"]) == [ranked[2]]
    assert _other_families(ranked, ranked[:1], False) == []


def test_a_planner_configuration_measures_its_runners_up(campaign, tmp_path):
    """runners_up = 1: the pick and the next best plan that differs from it in more than the prefill chunk,
    each measured in its own folder."""
    out = tmp_path / "results"
    args = ["validate", str(campaign.parent / "configs.toml"), "--gpu", "h100-sxm", "-o", str(out)]
    assert main([*args, "--device", "cpu", "--only", "tiny-runners-up"]) == 0
    runs = json.loads((out / "tiny-runners-up" / "runs.json").read_text())
    assert [r["run"] for r in runs] == ["pick", "alt1"]
    assert (out / "tiny-runners-up" / "alt1" / "measured.json").is_file()
    assert runs[0]["plan"] != runs[1]["plan"]


def test_other_families_must_name_registered_families(tmp_path, capsys):
    """A misspelt family in other_families is a one-line error before anything runs."""
    (tmp_path / "c.toml").write_text(
        '[[config]]\nname = "x"\nmodel = "llama-3-8b"\ncontext = 64\nplan = "planner"\n'
        'other_families = ["head_ofload"]\n'
    )
    code = main(["validate", str(tmp_path / "c.toml"), "--gpu", "h100-sxm", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "other_families: unknown plan family 'head_ofload'" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("results", ["campaign", "planned"])
def test_every_prediction_carries_its_band_and_the_band_holds_the_point(request, results):
    for runs_file in request.getfixturevalue(results).rglob("runs.json"):
        for r in json.loads(runs_file.read_text()):
            for phase in ("prefill_s", "decode_s_per_token"):
                lo, hi = r[f"{phase}_predicted_low"], r[f"{phase}_predicted_high"]
                assert lo <= r[f"{phase}_predicted"] <= hi


def test_summarize_script_prints_the_same_line(campaign):
    script = Path(__file__).parent.parent / "validation" / "summarize.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(campaign)], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == summarize(campaign)[1]


def test_resume_runs_only_what_the_folder_lacks_in_the_order_named(campaign, tmp_path, capsys):
    import shutil

    out = tmp_path / "results"
    shutil.copytree(campaign / "tiny-resident", out / "tiny-resident")
    before = (out / "tiny-resident" / "runs.json").read_text()
    args = ["validate", str(campaign.parent / "configs.toml"), "--gpu", "h100-sxm", "-o", str(out)]
    args += ["--device", "cpu", "--only", "tiny-resident,tiny-head", "--resume"]
    assert main(args) == 0
    assert (out / "tiny-resident" / "runs.json").read_text() == before  # not run again
    assert (out / "tiny-head" / "runs.json").is_file() and not (out / "tiny-planner").exists()
    assert json.loads((out / "tiny-head" / "runs.json").read_text())[0]["plan"]["family"] == "head_offload"


def test_repredict_keeps_the_measurements_and_reproduces_the_predictions(campaign, tmp_path, capsys):
    """--repredict predicts every run again (nothing is run): the measured traces stay byte for byte, and with an
    unchanged model and profile the summary line is the same."""
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(campaign, copy)
    measured = {p: p.read_bytes() for p in copy.rglob("measured.json")}
    before = summarize(copy)[1]
    assert main(["validate", "--repredict", str(copy), "--gpu", "h100-sxm"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == before
    assert all(p.read_bytes() == b for p, b in measured.items())
    assert main(["validate", "--repredict", str(tmp_path / "nowhere"), "--gpu", "h100-sxm"]) == 2


def test_compressed_traces_read_the_same(campaign, tmp_path, capsys):
    """Committed campaigns keep their traces gzip-compressed: the summary, --repredict and the validation report
    read them as they read plain JSON."""
    import shutil

    from roofsim.validate import compress_traces

    copy = tmp_path / "results"
    shutil.copytree(campaign, copy)
    before = summarize(copy)[1]
    runs = len([p for p in copy.rglob("run.json")])
    assert compress_traces(copy) == 2 * runs  # every run's measured and predicted trace
    assert not list(copy.rglob("measured.json")) and list(copy.rglob("measured.json.gz"))
    assert summarize(copy)[1] == before
    assert main(["validate", "--repredict", str(copy), "--gpu", "h100-sxm"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == before
    assert not list(copy.rglob("predicted.json"))  # written back compressed, as it was kept
    assert main(["report", str(copy), "-o", str(tmp_path / "v.html")]) == 0


def test_runners_up_differ_from_the_pick_in_more_than_the_prefill_chunk():
    """Runners-up that differ only in the prefill chunk decode alike, so a decode regret over them measures
    noise: the runners-up are the best plans that differ otherwise, chunk-only variants only as a fill-in."""
    from roofsim.families import CpuAttentionPlan, HeadOffloadPlan
    from roofsim.validate import _pick_and_runners_up

    a = CpuAttentionPlan(cpu_kv_heads=2, prefill_chunk=16384)
    a8, a4 = a.model_copy(update={"prefill_chunk": 8192}), a.model_copy(update={"prefill_chunk": 4096})
    b = HeadOffloadPlan(prefill_chunk=8192)
    assert _pick_and_runners_up([a, a8, a4, b], 2) == [a, b, a8]
    assert _pick_and_runners_up([a, a8, b], 1) == [a, b]
    assert _pick_and_runners_up([a, a8], 2) == [a, a8]


def test_the_decode_regret_leaves_out_chunk_only_fill_ins(tmp_path):
    """A runner-up that differs from the pick only in the prefill chunk runs the same decode program: its faster
    measured decode is noise, not a better plan, and does not count as regret; a distinct runner-up does."""
    pick = {"family": "resident", "prefill_chunk": 16384, "weights": "resident"}
    fill_in = {**pick, "prefill_chunk": 8192}
    other = {"family": "head_offload", "prefill_chunk": 8192, "weights": "resident", "resident_slots": 1}

    def run(tag, plan, decode):
        return {
            "config": "c", "run": tag, "plan": plan, "prefill_s_predicted": 1.0, "prefill_s_measured": 1.0,
            "decode_s_per_token_predicted": 0.04, "decode_s_per_token_measured": decode,
            "peak_gpu_bytes_predicted": 1e9, "peak_gpu_bytes_measured": 1e9,
        }  # fmt: skip

    (tmp_path / "c").mkdir()
    runs = [run("pick", pick, 0.046), run("alt1", other, 0.069), run("alt2", fill_in, 0.026)]
    (tmp_path / "c" / "runs.json").write_text(json.dumps(runs))
    rows, line = summarize(tmp_path)
    assert rows[0]["regret_pct"] == 0.0 and " regret_max_pct=0.0 " in line
    runs[1]["decode_s_per_token_measured"] = 0.023  # a distinct plan measured faster: the pick's regret
    (tmp_path / "c" / "runs.json").write_text(json.dumps(runs))
    assert summarize(tmp_path)[0][0]["regret_pct"] == pytest.approx(100.0)


def test_the_run_pace_is_a_diagnostic_and_never_moves_the_prediction(campaign, tmp_path, capsys):
    """Every measured run times the host-pace gauges before its decode steps; with a profile that timed them too,
    the row gets the times priced at the run's pace as `_predicted_at_run_pace` and the ratios, while the
    prediction (the trace, `_predicted`, the closing line) stays the one made in advance from the profile."""
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(campaign, copy)
    measured = json.loads((copy / "tiny-resident" / "measured.json").read_text())
    paces = measured["summary"]["host_pace_us"]
    assert len(paces) == 2 and all(p > 0 for p in paces)  # gen 3, one warm-up step
    launches = measured["summary"]["launch_pace_us"]
    assert len(launches) == 2 and all(p > 0 for p in launches)  # the second gauge, right after each loop
    plain = json.loads((copy / "tiny-resident" / "runs.json").read_text())[0]
    assert "decode_s_per_token_predicted_at_run_pace" not in plain  # the shipped spec timed no gauge
    text = (Path(__file__).parent.parent / "hw_specs" / "gpus" / "h100-sxm.toml").read_text()
    ref = sorted(paces)[0] / 2  # the calibration's host ran twice as fast as the run's slowest step's
    text = text.replace(
        "[runtime]\n", f'[runtime]\nhost_pace_us = {{ value = {ref}, measured = "test" }}\n', 1
    )
    profile = tmp_path / "paced.toml"
    profile.write_text(text)
    before = summarize(copy)[1]
    assert main(["validate", "--repredict", str(copy), "--gpu", str(profile)]) == 0
    row = json.loads((copy / "tiny-resident" / "runs.json").read_text())[0]
    assert row["host_pace_ratio"] >= 2
    assert "launch_pace_ratio" not in row  # the profile timed the loop only: the loop's ratio alone
    assert row["decode_s_per_token_predicted"] == pytest.approx(plain["decode_s_per_token_predicted"])
    assert row["prefill_s_predicted"] == pytest.approx(plain["prefill_s_predicted"])
    assert row["decode_s_per_token_predicted_at_run_pace"] > row["decode_s_per_token_predicted"]
    notes = json.loads((copy / "tiny-resident" / "predicted.json").read_text())["header"]["notes"]
    assert not any("host pace" in n for n in notes)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == before  # the headline is the prediction in advance
    assert any(x.startswith("diagnostic, at each run's own host pace") for x in out)
