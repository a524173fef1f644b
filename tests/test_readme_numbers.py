"""The validation figures the READMEs quote are what `validation/summarize.py` prints from the committed results:
a model change that moves them without the READMEs following fails here."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(script: str, results: str = "h100") -> str:
    """What validation/<script> prints for the committed results of validation/results/<results>."""
    return subprocess.run(
        [sys.executable, str(ROOT / "validation" / script), str(ROOT / "validation" / "results" / results)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _summary(gpu: str = "h100") -> str:
    return _run("summarize.py", gpu)


def _table(out: str, header: str) -> dict[str, list[str]]:
    """The rows, by their first word, of the table of `out` (trace_facts' tables part at blank lines) whose header
    line starts with `header`."""
    for block in out.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and lines[0].startswith(header):
            return {line.split()[0]: line.split() for line in lines[1:]}
    raise AssertionError(f"no table headed {header!r}")


@pytest.mark.parametrize(
    ("gpu", "readme"),
    [
        ("h100", "h100"),
        ("h100-s20/a", "h100-s20"),
        ("h100-s20/b", "h100-s20"),
        ("h200", "h200"),
        ("h200-s12", "h200-s12"),
        ("h200-s13/a", "h200-s13"),
        ("h200-s13/b", "h200-s13"),
        ("h200-s15", "h200-s15"),
        ("h200-s16/a", "h200-s16"),
        ("h200-s18/a", "h200-s18"),
        ("h200-s18/b", "h200-s18"),
        ("h200-s18/c", "h200-s18"),
    ],
)
def test_gpu_readme_holds_the_whole_table(gpu, readme):
    text = (ROOT / "validation" / "results" / readme / "README.md").read_text()
    assert _summary(gpu) in text


@pytest.mark.parametrize("gpu", ["h100", "h200", "h200-s12", "h200-s18/c"])
def test_readme_quotes_the_last_lines(gpu):
    readme = (ROOT / "README.md").read_text()
    for line in _summary(gpu).strip().splitlines()[-2:]:
        assert line in readme, line


def test_trace_facts_print_what_the_h100_readme_quotes():
    """The figures the H100 README takes from the traces beyond the table (CPU attention per layer, the sparse
    gather's rate, a resident run's steps) are what validation/trace_facts.py prints from the committed files."""
    out = _run("trace_facts.py")
    cpu = _table(out, "run                            calls/layer")
    assert cpu["l3-cpu2-64k/pick"][2:4] == ["4.45", "4.12"]
    assert cpu["l3-cpu4-128k/pick"][2:4] == ["16.31", "17.36"]
    assert "l2-planner-32k-24gb/pick" not in cpu  # machine C's planner picked head_offload
    other = {
        x: _table(_run("trace_facts.py", f"h100-s20/{x}"), "run                            calls/layer")
        for x in "ab"
    }
    assert other["a"]["l3-cpu2-64k/pick"][2:4] == ["3.13", "5.76"]
    assert other["a"]["l3-cpu4-128k/pick"][2:4] == ["8.52", "11.04"]
    assert other["a"]["q7-cpu1-64k/pick"][2:4] == ["1.75", "3.36"]
    assert other["b"]["l3-cpu2-64k/pick"][2:4] == ["1.50", "1.54"]
    assert other["b"]["l3-cpu4-128k/pick"][2:4] == ["4.78", "5.17"]
    assert other["b"]["q7-cpu1-64k/pick"][2:4] == ["0.83", "0.87"]
    gather = _table(out, "run                            gather")["l3-sparse-64k/pick"]
    assert gather[1] == "72.2" and gather[-1] == "41.6"
    steps = [int(x) for x in _table(out, "run (resident, evict)")["campaign/q7-resident-32k"][1:]]
    assert (min(steps), max(steps)) == (33, 49)


def test_cpu_scan_gaps_print_what_the_h100_readme_quotes():
    readme = (ROOT / "validation" / "results" / "h100" / "README.md").read_text()
    folder = ROOT / "validation" / "results" / "h100-s20" / "a" / "campaign" / "l2-planner-32k-24gb"
    for trace in ("measured.json.gz",):
        out = subprocess.run(
            [sys.executable, str(ROOT / "validation" / "cpu_scan_gaps.py"), str(folder / trace)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out in readme, out


def test_trace_facts_print_what_the_h200_readme_quotes():
    """The figures validation/results/h200/README.md takes from the traces are what validation/trace_facts.py
    prints (the H100 figures it compares them with are of runs now in git, at 2f2af8d)."""
    out = _run("trace_facts.py", "h200")
    spans = _table(out, "config                    chunk tokens")
    assert spans["l3-resident-16k"][1:] == ["16384", "13.60", "11.73", "9.10"]
    assert spans["l2-resident-16k"][2:4] == ["12.83", "11.47"]
    cpu = _table(out, "run                            calls/layer")
    assert cpu["q7-cpu1-64k/pick"][2:5] == ["3.04", "1.30", "11.8"]
    assert cpu["l3-planner-128k-24gb/pick"][2:4] == ["4.29", "4.24"]
    assert cpu["l3-cpu2-64k/pick"][2:4] == ["2.83", "2.47"]
    assert cpu["l2-planner-32k-24gb/pick"][2:4] == ["3.16", "2.68"]
    assert cpu["l3-cpu4-128k/pick"][2:4] == ["7.30", "7.87"]
    gather = _table(out, "run                            gather")["l3-sparse-64k/pick"]
    assert gather[1] == "63.5" and gather[4] == "91.2"
    issue = _table(out, "config (head_offload)")
    assert issue["l3-head-g1-r4-wb8-64k"][1:] == "1.37 1.33 1.38 1.34 1.33 1.33 1.35 1.34".split()
    assert issue["l3-head-g1-r4-64k"][1:] == "0.30 0.31 0.31 0.70 1.19 0.73 0.40 0.37".split()
    repeats = _table(_run("trace_facts.py", "h200-repeats"), "run (resident, evict)")
    assert repeats["rep1/q7-resident-32k"][1:] == "38 38 38 37 38 38 38 38 36 35 28 24 25 26 24".split()
