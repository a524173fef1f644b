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


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_gpu_readme_holds_the_whole_table(gpu):
    readme = (ROOT / "validation" / "results" / gpu / "README.md").read_text()
    assert _summary(gpu) in readme


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_readme_quotes_the_last_lines(gpu):
    readme = (ROOT / "README.md").read_text()
    for line in _summary(gpu).strip().splitlines()[-2:]:
        assert line in readme, line


def test_trace_facts_print_what_the_h100_readme_quotes():
    """The figures the H100 README takes from the traces beyond the table (first-call excess, CPU attention per
    layer) are what validation/trace_facts.py prints from the committed files."""
    out = _run("trace_facts.py")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["l3-head-g1-64k"][3:] == ["0.239", "+0.010"]
    assert rows["l2-planner-32k-24gb/pick"][2:5] == ["3.99", "2.02", "11.4"]
    assert rows["q7-cpu1-64k/pick"][2:5] == ["1.81", "0.99", "19.9"]
    assert rows["l3-sparse-64k/pick"][1:] == ["55.0", "14.7", "74.1", "59.3"]
    assert rows["l3-cpu2-64k/pick"][2:4] == ["2.31", "3.22"]


def test_trace_facts_print_what_the_h200_readme_quotes():
    out = _run("trace_facts.py", "h200")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["l3-resident-16k"][1:] == ["16384", "13.60", "11.73", "9.10"]
    assert rows["l2-resident-16k"][2:4] == ["12.83", "11.47"]
    assert rows["q7-cpu1-64k/pick"][2:5] == ["3.04", "1.30", "11.8"]
    assert rows["l3-planner-128k-24gb/pick"][2:4] == ["4.29", "4.24"]
    assert rows["l3-sparse-64k/pick"][1] == "63.5" and rows["l3-sparse-64k/pick"][4] == "91.2"
    h100 = {line.split()[0]: line.split() for line in _run("trace_facts.py").splitlines() if line.strip()}
    assert h100["l3-resident-16k"][1:] == ["16384", "13.54", "13.14", "9.42"]
    out = _run("trace_facts.py", "h200-repeats")
    repeats = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert repeats["rep1/q7-resident-32k"][1:] == "38 38 38 37 38 38 38 38 36 35 28 24 25 26 24".split()
