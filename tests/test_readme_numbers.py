"""The validation figures the READMEs quote are what `validation/summarize.py` prints from the committed results:
a model change that moves them without the READMEs following fails here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _summary() -> str:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "validation" / "summarize.py"),
            str(ROOT / "validation" / "results" / "h100"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_h100_readme_holds_the_whole_table():
    readme = (ROOT / "validation" / "results" / "h100" / "README.md").read_text()
    assert _summary() in readme


def test_readme_quotes_the_last_lines():
    readme = (ROOT / "README.md").read_text()
    for line in _summary().strip().splitlines()[-2:]:
        assert line in readme, line
