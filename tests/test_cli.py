"""The command line: main jobs work; bad input gets one line on stderr and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from roofsim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_all_families_at_1m(capsys):
    code, out, err = run(capsys, "predict", "--gpu", "rtx4090", "--model", "llama-3-8b", "--context", "1M")
    assert code == 0, err
    for family in (
        "resident",
        "layer_offload",
        "head_offload",
        "kvpr",
        "cpu_attention",
        "sparse_fetch",
        "evict",
    ):
        assert family in out
    (resident,) = [line for line in out.splitlines() if line.startswith("resident  ")]  # its row
    assert resident.split()[2] == "no"  # resident does not fit, and the footer says by how much
    assert (
        "resident does not fit: needs 143.25 GiB of GPU memory, 120.25 GiB over the 23.00 GiB usable" in out
    )


def test_predict_json_document(capsys):
    code, out, _ = run(capsys, "predict", "--gpu", "rtx4090", "--context", "128K", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["workload"]["context"] == 131072
    for p in doc["predictions"]:
        assert p["header"]["producer"] == "predicted" and p["header"]["plan"]["family"]
        summary = p["summary"]
        for key in ("feasible", "peak_gpu_bytes", "peak_host_bytes"):
            assert key in summary
        for phase in ("prefill", "decode"):
            assert summary[phase]["time_s"] > 0 and summary[phase]["bound"] in (
                "compute",
                "h2d",
                "d2h",
                "cpu",
                "host",
            )


def test_predict_one_plan_from_json_file(capsys, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"family": "head_offload", "kv_heads_per_slot": 2, "prefill_chunk": 8192}))
    code, out, _ = run(
        capsys, "predict", "--gpu", "h100-sxm", "--context", "256K", "--plan", str(plan), "--json"
    )
    assert code == 0
    (p,) = json.loads(out)["predictions"]
    assert p["header"]["plan"]["kv_heads_per_slot"] == 2 and p["summary"]["feasible"]


def test_predict_without_context_sweeps_until_nothing_fits(capsys):
    # 128 GB of host memory: the sweep ends at 1M tokens (128 GiB of KV) instead of the 1 TB host's 8M
    code, out, _ = run(capsys, "predict", "--gpu", "rtx4090", "--host-mem", "128GB", "--json")
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["context"] == 4096 and rows[0]["best"]["header"]["plan"]["family"] == "resident"
    assert rows[-1]["best"] is None and rows[-1]["context"] == 2**20
    assert all(r["best"]["summary"]["feasible"] for r in rows[:-1])
    assert rows[-2]["context"] == 2**19  # the KV of 512K tokens (64 GiB) fits in host memory beside the rest


def test_roofline_table(capsys):
    code, out, _ = run(capsys, "roofline", "--gpu", "h100-sxm", "--context", "32K", "--chunk", "4096")
    assert code == 0
    assert "attention" in out and "qkv_proj" in out and "lm_head" in out


def test_lists(capsys):
    for kind, expect in (("gpus", "rtx4090"), ("hosts", "genoa"), ("models", "qwen2.5-72b")):
        code, out, _ = run(capsys, kind)
        assert code == 0 and expect in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["predict", "--gpu", "rtx4900"], "did you mean"),
        (["predict", "--gpu", "rtx4090", "--model", "llama-9"], "unknown model"),
        (["predict", "--gpu", "rtx4090", "--context", "0"], "positive"),
        (["predict", "--gpu", "rtx4090", "--context", "-5"], "bad context"),
        (["predict", "--gpu", "rtx4090", "--context", "12Q"], "bad context"),
        (["predict", "--gpu", "rtx4090", "--context", "1M", "--gpu-mem", "lots"], "bad --gpu-mem"),
        (["predict", "--gpu", "rtx4090", "--context", "1M", "--plan", "resident"], "does not fit: needs"),
        (
            ["predict", "--gpu", "rtx4090", "--context", "1M", "--plan", "headoffload"],
            "did you mean head_offload",
        ),
        (["predict", "--gpu", "missing.toml"], "does not exist"),
        (["predict"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("roofsim: error: ")
    assert needle in err


def test_plan_that_does_not_fit_says_by_how_much(capsys):
    code, _, err = run(capsys, "predict", "--gpu", "rtx4090", "--context", "1M", "--plan", "resident")
    assert code == 2
    assert "over the" in err and "GiB" in err


def test_bad_spec_file_names_the_field(capsys, tmp_path):
    path = tmp_path / "gpu.toml"
    path.write_text('name = "x"\nfull_name = "x"\ndefault_host = "genoa"\n')
    code, _, err = run(capsys, "predict", "--gpu", str(path), "--context", "1M")
    assert code == 2 and "field 'compute' is missing" in err


def test_console_script_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "roofsim.cli", "predict", "--gpu", "nope", "--context", "1M"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("roofsim: error: unknown GPU")
