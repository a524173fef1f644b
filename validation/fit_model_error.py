"""Fit the model's own error, the widening of every prediction's spread band (roofsim.band.ModelError), on the
development set's measured runs, and write it into the package (roofsim/model_error.json).

Split conformal: for each measured run and phase, the score is how far, relative to the band's end it lies past,
the measured time falls outside the spread band ((low - measured) / low below it, (measured - high) / high above,
0 inside); q is the ceil((n + 1) * coverage)-th smallest of the n scores (the largest where that is past n). The
spread band's lower end times (1 - q) and its upper end times (1 + q) then hold at least `coverage` of the fitted
runs, and, for a new run exchangeable with them, that share of the new ones in expectation. Only complete runs
with a measurement and a spread band (`<phase>_spread_low/high`) count, every run of a configuration (picks,
runners-up, each family's best); a row without the spread fields predates them and must be re-predicted first.

Fitted on the development set as re-predicted by the current model (validation/repredict_h100.sh, which writes
the spread band into each row), never on the held-out set:

    bash validation/repredict_h100.sh
    python validation/fit_model_error.py validation/results/h100/campaign
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from roofsim.band import MODEL_ERROR_FILE, ModelError

PHASES = {"prefill": "prefill_s", "decode": "decode_s_per_token"}
COVERAGE = 0.9


def score(row: dict, key: str) -> float | None:
    """How far the run's measured time lies outside its spread band, relative to the end it passes (0: inside)."""
    m = row.get(f"{key}_measured")
    lo, hi = row.get(f"{key}_spread_low"), row.get(f"{key}_spread_high")
    if m is None or lo is None or hi is None or not row.get("complete", True):
        return None
    if m < lo:
        return (lo - m) / lo
    if m > hi:
        return (m - hi) / hi
    return 0.0


def conformal_q(scores: list[float], coverage: float = COVERAGE) -> float:
    """The ceil((n + 1) coverage)-th smallest score (the largest where that is past n)."""
    s = sorted(scores)
    k = math.ceil((len(s) + 1) * coverage)
    return s[min(k, len(s)) - 1]


def fit(folders: list[Path], command: str, coverage: float = COVERAGE) -> ModelError:
    scores: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for folder in folders:
        for runs_file in sorted(folder.rglob("runs.json")):
            for row in json.loads(runs_file.read_text()):
                for phase, key in PHASES.items():
                    if (x := score(row, key)) is not None:
                        scores[phase].append(x)
    if not all(scores.values()):
        raise SystemExit(f"no measured runs with a band under {', '.join(map(str, folders))}")
    return ModelError(
        coverage=coverage,
        prefill=round(conformal_q(scores["prefill"], coverage), 4),
        decode=round(conformal_q(scores["decode"], coverage), 4),
        runs={phase: len(xs) for phase, xs in scores.items()},
        source=[str(f) for f in folders],
        command=command,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="results folders of the development set")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent.parent / "roofsim" / MODEL_ERROR_FILE,
        help="where to write",
    )
    args = ap.parse_args()
    command = "python validation/fit_model_error.py " + " ".join(str(f) for f in args.folders)
    err = fit(args.folders, command)
    args.out.write_text(err.model_dump_json(indent=1) + "\n")
    print(
        f"prefill q={err.prefill:.4f} over {err.runs['prefill']} runs; decode q={err.decode:.4f} over "
        f"{err.runs['decode']} runs; written to {args.out}"
    )


if __name__ == "__main__":
    main()
