"""Where a validation run's process spends its time outside the measured prefill and decode: from the progress
lines the executor writes on stderr (each with the seconds since its first line) that run.json keeps. Prints, over
the runs found under the folders given, the median and range of the process's wall time, of the time until the
model was built, and of the time outside the progress lines (the interpreter's imports before the first line; the
trace's writing and the exit after the last).
    python validation/run_overhead.py validation/results/h100-fp8/kernel-timed validation/results/h100-archs/moe-layer
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

STAMP = re.compile(r"^roofsim run: (.*) \(([\d.]+) s\)$")


def phases(run_json: Path) -> tuple[float, float, float] | None:
    """(wall, until 'model built', outside the progress lines) in seconds, or None where the tail lacks them."""
    status = json.loads(run_json.read_text())
    stamps = [
        (m[1], float(m[2])) for line in status.get("stderr_tail", "").splitlines() if (m := STAMP.match(line))
    ]
    built = [t for what, t in stamps if what == "model built"]
    if "wall_s" not in status or not built:
        return None
    return status["wall_s"], built[0], status["wall_s"] - stamps[-1][1]


def main(folders: list[str]) -> None:
    rows = [p for f in folders for r in sorted(Path(f).rglob("run.json")) if (p := phases(r))]
    print(f"{len(rows)} runs")
    for i, name in enumerate(("process wall", "until the model was built", "outside the progress lines")):
        xs = [r[i] for r in rows]
        print(f"{name}: median {statistics.median(xs):.1f} s ({min(xs):.1f}-{max(xs):.1f})")


if __name__ == "__main__":
    main(sys.argv[1:] or ["validation/results"])
