"""How closely each host-pace gauge follows the decode step timed right after it, per run of a campaign folder.

For every measured trace under the folder, the Pearson correlation of the summary's host_pace_us (the loop),
launch_pace_us and step_pace_us (the tiny decode step) against decode_step_s; "-" where a gauge was not timed.
    python validation/pace_correlation.py validation/results/h200-s18/c/campaign
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

GAUGES = (("loop", "host_pace_us"), ("launches", "launch_pace_us"), ("tiny step", "step_pace_us"))


def summary(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)["summary"]


def main(folder: str) -> None:
    print(f"{'run':28s}" + "".join(f"{name:>11s}" for name, _ in GAUGES))
    for path in sorted(Path(folder).glob("*/measured.json*")):
        s = summary(path)
        steps = np.asarray(s["decode_step_s"])
        cells = []
        for _, key in GAUGES:
            xs = np.asarray(s.get(key) or [])
            ok = len(xs) == len(steps) and len(steps) > 2 and xs.std() > 0 and steps.std() > 0
            cells.append(f"{np.corrcoef(xs, steps)[0, 1]:11.2f}" if ok else f"{'-':>11s}")
        print(f"{path.parent.name:28s}" + "".join(cells))


if __name__ == "__main__":
    main(sys.argv[1])
