"""The validation figures the READMEs quote are what `validation/summarize.py` prints from the committed results:
a model change that moves them without the READMEs following fails here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _run(script: str) -> str:
    """What validation/<script> prints for the committed H100 results."""
    return subprocess.run(
        [sys.executable, str(ROOT / "validation" / script), str(ROOT / "validation" / "results" / "h100")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _summary() -> str:
    return _run("summarize.py")


def test_h100_readme_holds_the_whole_table():
    readme = (ROOT / "validation" / "results" / "h100" / "README.md").read_text()
    assert _summary() in readme


def test_readme_quotes_the_last_lines():
    readme = (ROOT / "README.md").read_text()
    for line in _summary().strip().splitlines()[-2:]:
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
