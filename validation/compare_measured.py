"""Compare the measured traces of two results folders run by `roofsim validate` (the committed campaign and a
re-run of some of its configurations): for each configuration in both, the re-run's measured prefill and decode
over the committed ones, and as its last line the largest difference.

    python validation/compare_measured.py validation/results/h100/campaign /tmp/recheck/campaign

Both sides are measurements: nothing here is predicted. A code change that should not change how fast the
executor runs (a refactor) is checked by re-running a few configurations and comparing with this.
"""

from __future__ import annotations

import sys
from pathlib import Path

from roofsim.trace import Trace, json_exists


def _measured(folder: Path) -> Trace | None:
    path = folder / "measured.json"
    return Trace.read(path) if json_exists(path) else None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python validation/compare_measured.py COMMITTED_DIR RERUN_DIR", file=sys.stderr)
        return 2
    committed, rerun = Path(argv[0]), Path(argv[1])
    worst = 0.0
    n = 0
    print(f"{'config':34s} {'prefill s committed/rerun':>28s} {'decode ms committed/rerun':>30s}")
    for runs in sorted(rerun.rglob("runs.json")):
        name = runs.parent.relative_to(rerun)
        old, new = _measured(committed / name), _measured(runs.parent)
        if old is None or new is None or not new.complete:
            print(f"{str(name):34s} {'missing or incomplete':>28s}")
            continue
        cells = []
        for phase, unit in (("prefill", 1.0), ("decode", 1e3)):
            a, b = old.summary.phase(phase).time_s, new.summary.phase(phase).time_s
            diff = 100.0 * (b / a - 1)
            worst = max(worst, abs(diff))
            cells.append(f"{a * unit:.3f}/{b * unit:.3f} ({diff:+.1f}%)")
        n += 1
        print(f"{str(name):34s} {cells[0]:>28s} {cells[1]:>30s}")
    print(f"n={n} max_abs_diff_pct={worst:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
