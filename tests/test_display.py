"""Terminal output: every table of predict, plan, simulate and roofline fits 100 columns when the output is not a
terminal (COLUMNS=100, or COLUMNS unset), knobs are never cut in two, the best plan is marked and the footer says
what the marks and short names mean; --wide keeps the long form."""

import pytest

from roofsim.cli import main
from roofsim.families.registry import families
from roofsim.limits import Limits
from roofsim.plan import knob_abbreviation, knob_abbreviations, plan_from_dict, unique_abbreviations
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.sweep import best_per_family
from roofsim.units import fmt_bytes_both, fmt_bytes_si
from roofsim.workload import Workload

PREDICT_1M = "predict --gpu rtx4090 --model llama-3-8b --context 1M".split()
COMMANDS = {
    "predict": PREDICT_1M,
    "predict-simulate": "predict --gpu rtx4090 --context 256K --simulate".split(),
    "predict-sweep": "predict --gpu rtx4090 --host-mem 8GB".split(),
    "predict-roofline": "predict --gpu h100-sxm --context 128K --plan head_offload --roofline".split(),
    "plan": "plan --gpu rtx4090 --context 1M --host-mem 1TB --top 3".split(),
    "plan-weights": "plan --gpu rtx4090 --model qwen2.5-14b --context 256K --top 2".split(),
    "simulate": "simulate --gpu rtx4090 --context 128K --plan {plan} --gen 4".split(),
    "roofline": "roofline --gpu rtx4090 --context 128K --chunk 4096".split(),
    "gpus": ["gpus"],
    "hosts": ["hosts"],
    "models": ["models"],
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str, family: str) -> list[str]:
    """A predict table's row of `family` (its first line), by the family's column."""
    return [line for line in out.splitlines() if line.split()[:1] == [family] and "does not fit" not in line]


def test_output_that_is_no_terminal_is_columns_wide_else_100(monkeypatch):
    """What the output tests below rely on: captured output (no terminal) is COLUMNS wide, else WIDTH (100), so a
    test without COLUMNS sees what a 100-column terminal would."""
    from roofsim.display import WIDTH, console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert WIDTH == 100 and console().width == 100
    monkeypatch.setenv("COLUMNS", "73")
    assert console().width == 73


@pytest.mark.parametrize("command", list(COMMANDS))
def test_default_output_fits_100_columns(capsys, monkeypatch, tmp_path, command):
    monkeypatch.delenv("COLUMNS", raising=False)
    plan = tmp_path / "plan.json"
    plan.write_text(
        '{"family": "cpu_attention", "prefill_chunk": 8192, "cpu_kv_heads": 4, "kv_heads_per_slot": 2}'
    )
    code, out, err = run(capsys, *(arg.replace("{plan}", str(plan)) for arg in COMMANDS[command]))
    assert code == 0, err
    too_long = [line for line in out.splitlines() if len(line) > 100]
    assert not too_long, "\n".join(too_long)


def test_knobs_are_never_cut_in_two(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # narrower than the tables want: they wrap at spaces
    code, out, _ = run(capsys, *PREDICT_1M)
    assert code == 0
    words = set(out.split())
    preds = best_per_family(
        load_model("llama-3-8b"),
        load_gpu("rtx4090"),
        load_host("epyc-rome-milan"),
        Workload(context=2**20),
        Limits(),
    )
    for p in preds:
        for knob in p.plan.knobs(compact=True).split():
            assert knob in words, knob


def test_the_best_plan_is_marked_and_the_footer_says_what_best_means(capsys):
    code, out, _ = run(capsys, *PREDICT_1M)
    assert code == 0
    marked = [line for line in out.splitlines() if " * " in line and not line.startswith("*")]
    assert len(marked) == 1
    preds = best_per_family(
        load_model("llama-3-8b"),
        load_gpu("rtx4090"),
        load_host("epyc-rome-milan"),
        Workload(context=2**20),
        Limits(),
    )
    fit = [p for p in preds if p.feasible and not p.plan.approximate]
    best = min(fit, key=lambda p: p.summary.decode_s_per_token)
    assert marked[0].split()[:2] == [best.plan.family, "*"]
    assert "* best: the fastest decode per token of the exact plans that fit" in out
    assert "evict ~  " in out  # faster, but approximate: listed, not marked

    code, out, _ = run(capsys, *PREDICT_1M, "--allow-approximate")
    (marked,) = [line for line in out.splitlines() if " * " in line and not line.startswith("*")]
    assert marked.split()[:3] == ["evict", "~", "*"]


def test_the_plan_command_marks_its_choice(capsys):
    code, out, _ = run(capsys, *COMMANDS["plan"])
    assert code == 0
    ranked = [
        line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "cpu_attention" in line
    ]
    assert ranked[0][:3] == ["1", "*", "cpu_attention"]
    assert all(row[1] != "*" for row in ranked[1:])
    assert "* best: the plan chosen" in out


def test_footer_explains_the_short_knob_names_and_says_why_a_plan_does_not_fit(capsys):
    code, out, _ = run(capsys, *PREDICT_1M)
    assert code == 0
    assert "pc=32K" in out and "prefill_chunk=" not in out.split("knobs (those")[0]
    footer = " ".join(out.split("knobs (those not at the family's default):")[1].split())
    for name in ("prefill_chunk", "cpu_kv_heads", "kv_heads_per_slot"):
        assert f"{knob_abbreviation(name)} = {name}" in footer
    assert "K = 1024 tokens" in footer
    for family in ("resident", "layer_offload", "kvpr", "sparse_fetch"):
        assert f"{family} does not fit: needs " in out
    assert "GiB = 2^30 bytes" in out and "under each time: what binds that phase" in out


def test_wide_keeps_the_long_form(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, _ = run(capsys, *PREDICT_1M, "--wide")
    assert code == 0
    assert "prefill_chunk=32768 cpu_kv_heads=6" in out and "pc=32K" not in out
    (resident,) = _rows(out, "resident")
    assert "no: needs 143.25 GiB of GPU memory," in resident  # the reason inline, as before
    assert "knobs (those" not in out  # nothing to abbreviate
    code, out, _ = run(capsys, *COMMANDS["plan"], "--wide")
    assert "prefill_chunk=32768 cpu_kv_heads=6 kv_heads_per_slot=2" in out


def test_compact_knobs_abbreviate_names_and_write_token_counts_short():
    plan = plan_from_dict(
        {
            "family": "head_offload",
            "prefill_chunk": 32768,
            "kv_heads_per_slot": 4,
            "resident_slots": [0, 0, 1],
            "token_block": 16384,
            "weights": "streamed",
        }
    )
    assert plan.knobs() == (
        "prefill_chunk=32768 weights=streamed kv_heads_per_slot=4 resident_slots=2x0+1x1 token_block=16384"
    )
    assert plan.knobs(compact=True) == "pc=32K w=streamed khs=4 rs=2x0+1x1 tb=16K"
    assert plan_from_dict({"family": "sparse_fetch", "fetch_fraction": 0.1}).knobs(compact=True) == "ff=0.1"
    assert plan_from_dict({"family": "evict", "prefill_chunk": 3000}).knobs(compact=True) == "pc=3000"


def test_short_knob_names_are_unique_across_families():
    names = knob_abbreviations()
    fields = {n for f in families().values() for n in f.plan_type.model_fields if n != "family"}
    assert set(names) == fields
    assert len(set(names.values())) == len(names)
    # the rule where initials collide: more letters of the last word, then a number
    assert unique_abbreviations(["syncs_per_slot", "slot_size", "sa_s"]) == {
        "syncs_per_slot": "ss",
        "slot_size": "ssi",
        "sa_s": "ss2",
    }


def test_caps_print_in_both_bases(capsys):
    assert fmt_bytes_si(1e12) == "1.00 TB" and fmt_bytes_both(1e12) == "1.00 TB (931.32 GiB)"
    code, out, _ = run(capsys, *PREDICT_1M, "--host-mem", "1TB", "--gpu-mem", "20GB")
    assert code == 0
    title = " ".join(out.split("\n\n")[0].split())
    assert "GPU memory cap 20.00 GB (18.63 GiB)" in title and "host memory cap 1.00 TB (931.32 GiB)" in title
