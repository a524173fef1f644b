"""A corpus of bad inputs a new user could give, run through `roofsim.cli.main` in this process: each must end in
one line on stderr that starts `roofsim: error:`, exit code 2, no traceback, and nothing written where the output
would have gone. None of them is among the examples issue 30 lists (tests/test_user_errors.py fuzzes those kinds);
this is the held-out check that the fix generalises.

    python validation/bad_inputs.py            # one row per input; the last line counts them
    python validation/bad_inputs.py --verbose  # with each error message

The commands that would start long work (run, validate, calibrate, generate, serve) are given inputs that a check
must stop before any model is built; the script fails an input whose command gets that far.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from pathlib import Path
from unittest import mock

from roofsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
GPU = (ROOT / "hw_specs/gpus/rtx4090.toml").read_text()
TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 1024,
}  # fmt: skip
P = ["predict", "--gpu", "rtx4090", "--model", "llama-3-8b"]


def cases(d: Path) -> list[tuple[str, list[str]]]:
    """(what, argv) pairs; files they read are written into folder `d` first."""

    def write(name: str, text: str | bytes) -> str:
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def config(**change) -> str:
        return write(f"cfg{len(list(d.iterdir()))}.json", json.dumps({**TINY, **change}))

    gpu_no_memory = write(
        "nomem.toml", "\n".join(line for line in GPU.splitlines() if "capacity_gib" not in line)
    )
    gpu_string_rate = write("strrate.toml", GPU.replace("capacity_gib = ", 'capacity_gib = "x" # ', 1))
    gpu_negative = write(
        "neg.toml", GPU.replace("capacity_gib = { value = ", "capacity_gib = { value = -", 1)
    )
    plan_extra = write("extra.json", json.dumps({"family": "resident", "colour": "red"}))
    plan_float_chunk = write("fchunk.json", json.dumps({"family": "head_offload", "prefill_chunk": 1024.5}))
    plan_list = write("list.json", json.dumps([{"family": "resident"}]))
    trace_plan = write("trace.json", json.dumps({"family": "resident"}))
    campaign_empty = write("empty.toml", "")
    campaign_bad = write("bad.toml", "[[config]]\nname = 3\n")
    return [
        ("context zero", [*P, "--context", "0"]),
        ("context negative", [*P, "--context=-5K"]),
        ("context unknown suffix", [*P, "--context", "1.5Q"]),
        ("context hex", [*P, "--context", "0x10"]),
        ("context fraction of a token", [*P, "--context", "0.5"]),
        ("batch zero", [*P, "--context", "4K", "--batch", "0"]),
        ("batch negative", [*P, "--context", "4K", "--batch", "-2"]),
        ("batch huge", [*P, "--context", "4K", "--batch", "10000000"]),
        ("gen not a number", [*P, "--context", "4K", "--gen", "many"]),
        ("gen zero", [*P, "--context", "4K", "--gen", "0"]),
        ("unknown gpu", ["predict", "--gpu", "rtx9090", "--context", "4K"]),
        ("gpu file missing", ["predict", "--gpu", str(d / "none.toml"), "--context", "4K"]),
        ("gpu spec without capacity", ["predict", "--gpu", gpu_no_memory, "--context", "4K"]),
        ("gpu capacity a string", ["predict", "--gpu", gpu_string_rate, "--context", "4K"]),
        ("gpu capacity negative", ["predict", "--gpu", gpu_negative, "--context", "4K"]),
        ("unknown model", ["predict", "--gpu", "rtx4090", "--model", "llama-9-1t", "--context", "4K"]),
        ("unknown host", [*P, "--context", "4K", "--host", "vax"]),
        ("gpu-mem zero", [*P, "--context", "4K", "--gpu-mem", "0"]),
        ("gpu-mem negative", [*P, "--context", "4K", "--gpu-mem=-3GB"]),
        ("gpu-mem unknown unit", [*P, "--context", "4K", "--gpu-mem", "24XB"]),
        ("gpu-mem nan", [*P, "--context", "4K", "--gpu-mem", "nanGB"]),
        ("host-mem infinite", [*P, "--context", "4K", "--host-mem", "infGB"]),
        ("heads not divisible by kv heads", [*P[:3], "--model", config(num_key_value_heads=3), "--context", "4K"]),
        ("hidden size negative", [*P[:3], "--model", config(hidden_size=-64), "--context", "4K"]),
        ("layers zero", [*P[:3], "--model", config(num_hidden_layers=0), "--context", "4K"]),
        ("config empty object", [*P[:3], "--model", write("e.json", "{}"), "--context", "4K"]),
        ("config heads a float", [*P[:3], "--model", config(num_attention_heads=4.5), "--context", "4K"]),
        ("config a folder without config.json", [*P[:3], "--model", str(d), "--context", "4K"]),
        ("plan with an unknown field", [*P, "--context", "4K", "--plan", plan_extra]),
        ("plan chunk not whole", [*P, "--context", "4K", "--plan", plan_float_chunk]),
        ("plan file a JSON list", [*P, "--context", "4K", "--plan", plan_list]),
        ("plan family misspelt", [*P, "--context", "4K", "--plan", "head-offload"]),
        ("plan objective unknown", ["plan", "--gpu", "rtx4090", "--context", "4K", "--objective", "fastest"]),
        ("plan output empty", ["plan", "--gpu", "rtx4090", "--context", "4K", "-o", ""]),
        ("plan output under a file", ["plan", "--gpu", "rtx4090", "--context", "4K", "-o", f"{plan_extra}/p.json"]),
        ("simulate decode steps zero", ["simulate", "--gpu", "rtx4090", "--context", "4K", "--plan", "resident", "--decode-steps", "0"]),
        ("roofline chunk zero", ["roofline", "--gpu", "rtx4090", "--context", "4K", "--chunk", "0"]),
        ("report of a missing trace", ["report", str(d / "missing.json"), "-o", str(d / "r.html")]),
        ("report of a plan file as a trace", ["report", trace_plan, "-o", str(d / "r.html")]),
        ("report into a missing folder", ["report", trace_plan, "-o", str(d / "no" / "r.html")]),
        ("validate an empty campaign", ["validate", campaign_empty, "--gpu", "h100-sxm", "-o", str(d / "v")]),
        ("validate a campaign with a bad name", ["validate", campaign_bad, "--gpu", "h100-sxm", "-o", str(d / "v")]),
        ("run with a zero prompt", ["run", "resident", "--device", "cpu", "--prompt-len", "0", "-o", str(d / "t.json")]),
        ("run output under a file", ["run", "resident", "--device", "cpu", "-o", f"{plan_extra}/t.json"]),
        ("calibrate into a file's folder", ["calibrate", "--gpu", "h100-sxm", "-o", f"{plan_extra}/cal"]),
        ("generate a missing checkpoint", ["generate", str(d / "nockpt"), "--prompt", "hi", "--max-new-tokens", "4"]),
        ("serve on a port out of range", ["serve", str(d / "nockpt"), "--port", "99999"]),
        ("unknown command", ["forecast", "--gpu", "rtx4090"]),
        ("unknown option", [*P, "--context", "4K", "--contxt", "8K"]),
        ("generate json into a folder", ["generate", str(d), "--prompt", "hi", "--max-new-tokens", "4", "--json-out", str(d)]),
        ("plan report into a folder", ["plan", "--gpu", "rtx4090", "--context", "4K", "--report", str(d)]),
        ("host-mem smaller than a byte", [*P, "--context", "4K", "--host-mem", "0.5B"]),
        ("families list with a space only", ["plan", "--gpu", "rtx4090", "--context", "4K", "--families", " "]),
        ("tp on a GPU without an interconnect", [*P, "--context", "4K", "--tp", "2"]),
        ("tp that does not split the KV heads", ["predict", "--gpu", "h100-sxm", "--context", "4K", "--tp", "3"]),
        ("tp over more GPUs than the board", ["predict", "--gpu", "h100-sxm", "--model", "llama-2-7b", "--context", "4K", "--tp", "16"]),
        ("tp of a MoE model", ["plan", "--gpu", "h100-sxm", "--model", "mixtral-8x7b", "--context", "4K", "--tp", "2"]),
        ("tp list with a word", ["plan", "--gpu", "h100-sxm", "--context", "4K", "--tp", "1,two"]),
    ]  # fmt: skip


def check(argv: list[str]) -> tuple[bool, str]:
    """Whether argv ended as a user error should: exit 2, one stderr line `roofsim: error: ...`, no traceback."""
    out, err = io.StringIO(), io.StringIO()

    def reached(*a, **kw):
        raise AssertionError("reached the long work")

    patches = [
        "roofsim.validate.validate_one",
        "roofsim.executor.runner.run_plan",
        "roofsim.executor.models.load_model",
    ]
    with contextlib.ExitStack() as stack:
        for target in patches:
            with contextlib.suppress(ImportError, AttributeError):
                stack.enter_context(mock.patch(target, reached))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            err.write(traceback.format_exc())
            code = "traceback"
    text = err.getvalue()
    ok = (
        code == 2
        and text.startswith("roofsim: error: ")
        and text.count("\n") == 1
        and "Traceback" not in text
    )
    return ok, text.strip() if ok else f"exit {code}: {text.strip()[-400:] or out.getvalue().strip()[-300:]}"


def main_() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="print each error message")
    args = ap.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = cases(Path(tmp))
        for what, argv in corpus:
            ok, text = check(argv)
            bad += not ok
            if args.verbose or not ok:
                print(f"{'ok  ' if ok else 'FAIL'} {what}: {text}")
            else:
                print(f"ok   {what}")
    print(f"bad inputs: {len(corpus)}, one-line errors: {len(corpus) - bad}, other endings: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_())
