"""Committed H100 runs predicted again with the current model must give the numbers the docs show.

A subset of validation/results/h100/campaign (one configuration per exact family the campaign runs, and one planner
configuration) is copied to a temporary folder and re-predicted with `roofsim.validate.repredict`, each with the
calibrated profile validation/repredict_h100.sh gives it. A predicted prefill or decode time that moves by more than
0.5% from docs/validation.md's table fails: a model change that moves predictions has to re-predict the campaign
(`bash validation/repredict_h100.sh`) and show the new table in the docs. The README's accuracy figures are held to
what `summarize` computes from the committed results.
"""

import collections
import json
import re
import shutil
from pathlib import Path

import pytest

from roofsim.plan import plan_from_dict
from roofsim.specs import load_gpu
from roofsim.specs.hardware import default_host_of
from roofsim.validate import format_table, summarize

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "validation" / "results" / "h100"
CAMPAIGN = RESULTS / "campaign"
DOC = ROOT / "docs" / "validation.md"
REPREDICT = ROOT / "validation" / "repredict_h100.sh"
TOLERANCE = 0.005  # relative: the table rounds to 3 decimals of s (prefill) and ms (decode), well inside this

GOLDEN = (
    "l3-resident-16k",  # resident
    "l2-layer-inc-32k",  # layer_offload
    "l3-head-g1-64k",  # head_offload
    "l3-kvpr-64k",  # kvpr
    "q7-cpu1-64k",  # cpu_attention
    "l2-planner-32k-24gb",  # the planner's pick and runners-up
)

_ROW = re.compile(
    r"^(?P<config>\S+)\s+(?P<family>\S+)\s+"
    r"(?P<prefill_pred>[\d.]+)/(?P<prefill_meas>[\d.]+) \([-+\d.]+%\)(?: \[[\d.]+-[\d.]+\]!?)?\s+"
    r"(?P<decode_pred>[\d.]+)/(?P<decode_meas>[\d.]+) \([-+\d.]+%\)"
)


def _doc_rows() -> dict[str, dict[str, float]]:
    """docs/validation.md's table rows by configuration: predicted and measured prefill (s) and decode (s/token)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            rows[m["config"]] = {
                "prefill_pred": float(m["prefill_pred"]),
                "prefill_meas": float(m["prefill_meas"]),
                "decode_pred": float(m["decode_pred"]) / 1e3,
                "decode_meas": float(m["decode_meas"]) / 1e3,
            }
    return rows


def _profiles() -> dict[str, str]:
    """The profile folder (under validation/results/h100) repredict_h100.sh predicts each configuration with: the
    whole campaign with one, then the configurations of its `for name in ...` loop, where it has one, with another."""
    text = REPREDICT.read_text()
    whole = re.search(r'--repredict "\$root/campaign" --gpu "\$root/([\w-]+)/', text)
    loop = re.search(
        r"for name in ([^;]+); do\s*\n\s*roofsim validate --repredict \"\$root/campaign/\$name\" "
        r'--gpu "\$root/([\w-]+)/',
        text,
    )
    assert whole, "validation/repredict_h100.sh no longer has the form this test reads"
    profiles = {p.name: whole[1] for p in CAMPAIGN.iterdir() if p.is_dir()}
    if loop:
        profiles.update({name: loop[2] for name in loop[1].split()})
    return profiles


def _profile_file(folder: str) -> Path:
    (path,) = (RESULTS / folder).glob("*-calibrated.toml")
    return path


@pytest.mark.parametrize("name", GOLDEN)
def test_repredicted_run_matches_the_docs_table(name, tmp_path):
    from roofsim.validate import repredict

    row = _doc_rows()[name]
    profile = _profile_file(_profiles()[name])
    gpu = load_gpu(str(profile))
    host = default_host_of(str(profile), gpu)
    folder = tmp_path / name
    shutil.copytree(CAMPAIGN / name, folder)
    assert repredict(folder, str(profile), gpu, host) >= 1
    pick = json.loads((folder / "runs.json").read_text())[0]
    # the docs' row is this configuration's committed measurement
    assert pick["prefill_s_measured"] == pytest.approx(row["prefill_meas"], abs=6e-4)
    assert pick["decode_s_per_token_measured"] == pytest.approx(row["decode_meas"], abs=6e-7)
    for phase, key in (("prefill", "prefill_s_predicted"), ("decode", "decode_s_per_token_predicted")):
        docs, now = row[f"{phase}_pred"], pick[key]
        assert abs(now - docs) <= TOLERANCE * docs, (
            f"{name}: {phase} predicted {now:.6g} s, docs/validation.md shows {docs:.6g} s "
            f"({100 * (now - docs) / docs:+.2f}%); re-predict the campaign and update the table"
        )


def test_the_golden_set_covers_every_exact_family_and_a_planner_configuration():
    picks = {}
    for runs in CAMPAIGN.glob("*/runs.json"):
        pick = json.loads(runs.read_text())[0]
        picks[pick["config"]] = pick
    exact = {p["plan"]["family"] for p in picks.values() if not plan_from_dict(p["plan"]).approximate}
    golden = {picks[name]["plan"]["family"] for name in GOLDEN if picks[name]["how"] != "planner"}
    assert exact <= golden
    assert any(picks[name]["how"] == "planner" for name in GOLDEN)


def test_docs_show_the_table_summarize_prints_from_the_committed_results():
    rows, line = summarize(RESULTS)
    text = DOC.read_text()
    assert format_table(rows) in text
    assert line in text
    assert set(_doc_rows()) == {r["config"] for r in rows}


def test_readme_accuracy_is_what_summarize_computes():
    rows, line = summarize(RESULTS)
    readme = (ROOT / "README.md").read_text()
    quoted = [x for x in readme.splitlines() if re.match(r"n=\d+ decode_median_abs_err_pct=", x)]
    assert quoted == [line]
    # the per-family view: each family's range of prefill and decode errors over the table's rows
    by_family = collections.defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)

    def span(values: list[float]) -> str:
        lo, hi = f"{min(values):+.1f}", f"{max(values):+.1f}"
        return f"{lo}%" if lo == hi else f"{lo} to {hi}%"

    for family, rs in by_family.items():
        prefill = span([r["prefill_s"][2] for r in rs])
        decode = span([r["decode_s_per_token"][2] for r in rs])
        assert f"| {family} | {len(rs)} | {prefill} | {decode} |" in readme, family


@pytest.mark.parametrize(
    "folder, quoted_keys",
    [
        ("h100-heldout", ("decode_p90_abs_err_pct", "prefill_p90_abs_err_pct", "regret_max_pct")),
        ("h100-heldout2", ("decode_p90_abs_err_pct", "mem_err_max_pct", "band_coverage_pct")),
        ("h100-heldout3", ("decode_p90_abs_err_pct", "prefill_p90_abs_err_pct", "band_coverage_pct")),
        ("h100-heldout4", ("decode_p90_abs_err_pct", "band_coverage_pct")),
    ],
)
def test_the_held_out_figures_quoted_are_what_summarize_computes(folder, quoted_keys):
    """Each held-out set ran once; docs/validation.md quotes its summary line whole and the README three of its
    figures, each as summarize computes them from the committed results."""
    _, line = summarize(ROOT / "validation" / "results" / folder)
    assert line in DOC.read_text()
    got = dict(kv.split("=") for kv in line.split()[1:])
    readme = " ".join((ROOT / "README.md").read_text().split())
    words = {
        "decode_p90_abs_err_pct": "decode p90",
        "prefill_p90_abs_err_pct": "prefill p90",
        "regret_max_pct": "regret",
        "mem_err_max_pct": "memory",
        "band_coverage_pct": "band",
    }
    quoted = ", ".join(f"{words[k]} {got[k]}%" for k in quoted_keys)
    assert quoted in readme
