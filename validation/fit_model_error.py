"""Fit the model's own error, the widening of every prediction's spread band (roofsim.band.ModelError), on measured
runs, and write it into the package (roofsim/model_error.json).

Split conformal: for each measured run and phase, the score is how far, relative to the band's end it lies past,
the measured time falls outside the spread band ((low - measured) / low below it, (measured - high) / high above,
0 inside); q is the ceil((n + 1) * coverage)-th smallest of the n scores (the largest where that is past n). The
spread band's lower end times (1 - q) and its upper end times (1 + q) then hold at least `coverage` of the fitted
runs, and, for a new run exchangeable with them, that share of the new ones in expectation. Only complete runs
with a measurement and a spread band (`<phase>_spread_low/high`) count, every run of a configuration (picks,
runners-up, each family's best).

The runs are those of validation/model_error_sets.toml: the development set's committed rows (kept current by
validation/repredict_h100.sh) and each spent held-out set re-predicted on a copy by the current model with its own
calibration (`roofsim validate --repredict`), less the runs the file excludes (each measured a defect fixed since,
with its evidence entry). The held-out set not yet run is never among them.

    bash validation/repredict_h100.sh
    python validation/fit_model_error.py validation/model_error_sets.toml          # re-predicts the spent sets
    python validation/fit_model_error.py validation/model_error_sets.toml --refit  # the rows already kept

The re-predicted rows of each spent set are kept in validation/results/model-error/<set>.json, so that the fit can
be repeated without re-predicting (--refit, and tests/test_bands.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from roofsim.band import MODEL_ERROR_FILE, ModelError
from roofsim.specs.tomlfile import tomllib

ROOT = Path(__file__).parent.parent
KEPT = ROOT / "validation" / "results" / "model-error"
PHASES = {"prefill": "prefill_s", "decode": "decode_s_per_token"}
COVERAGE = 0.9
COMMAND = "python validation/fit_model_error.py validation/model_error_sets.toml"
ROW_FIELDS = ("config", "run", "complete") + tuple(
    f"{key}_{part}"
    for key in PHASES.values()
    for part in ("measured", "predicted", "spread_low", "spread_high")
)


class ResultSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    campaign: str  # a results folder written by roofsim validate, relative to the repository root
    profile: str | None = None  # a spent held-out set's calibration: the set is re-predicted with it


class Exclusion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: str
    config: str
    phases: list[str]
    why: str
    evidence: str


class Sets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: list[ResultSet]
    exclude: list[Exclusion] = []


def load_sets(path: Path) -> Sets:
    sets = Sets.model_validate(tomllib.loads(path.read_text()))
    names = {s.name for s in sets.set}
    for ex in sets.exclude:
        if ex.set not in names or not set(ex.phases) <= set(PHASES):
            raise SystemExit(
                f"{path}: exclusion {ex.set}/{ex.config}: unknown set or phase ({sorted(PHASES)})"
            )
    return sets


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


def rows_of(folder: Path) -> list[dict]:
    """Every run row under a results folder, each with its configuration's name."""
    rows = []
    for runs_file in sorted(folder.rglob("runs.json")):
        rows += [{"config": runs_file.parent.name} | row for row in json.loads(runs_file.read_text())]
    return rows


def repredicted_rows(rs: ResultSet) -> list[dict]:
    """A spent set's rows as the current model prices them: a copy of its folder re-predicted with its profile."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "campaign"
        shutil.copytree(ROOT / rs.campaign, copy)
        cmd = ["roofsim", "validate", "--repredict", str(copy), "--gpu", str(ROOT / rs.profile)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return [{k: row[k] for k in ROW_FIELDS if k in row} for row in rows_of(copy)]


def set_rows(rs: ResultSet, refit: bool) -> list[dict]:
    """The development set's committed rows; a spent set's kept rows (refit) or re-predicted ones, then kept."""
    if rs.profile is None:
        return rows_of(ROOT / rs.campaign)
    kept = KEPT / f"{rs.name}.json"
    if refit:
        return json.loads(kept.read_text())["rows"]
    rows = repredicted_rows(rs)
    KEPT.mkdir(parents=True, exist_ok=True)
    header = {"set": rs.name, "campaign": rs.campaign, "profile": rs.profile}
    kept.write_text(json.dumps(header | {"command": COMMAND, "rows": rows}, indent=1) + "\n")
    return rows


def fit_rows(
    rows_by_set: dict[str, list[dict]],
    excludes: list[Exclusion],
    command: str,
    sources: list[str],
    coverage: float = COVERAGE,
) -> ModelError:
    """q per phase over every row's score, less the excluded (set, configuration, phase)s."""
    left_out = {(ex.set, ex.config, phase) for ex in excludes for phase in ex.phases}
    scores: dict[str, list[float]] = {phase: [] for phase in PHASES}
    excluded = dict.fromkeys(PHASES, 0)
    for name, rows in rows_by_set.items():
        for row in rows:
            for phase, key in PHASES.items():
                if (x := score(row, key)) is None:
                    continue
                if (name, row.get("config"), phase) in left_out:
                    excluded[phase] += 1
                else:
                    scores[phase].append(x)
    if not all(scores.values()):
        raise SystemExit(f"no measured runs with a band in {', '.join(sources)}")
    return ModelError(
        coverage=coverage,
        prefill=round(conformal_q(scores["prefill"], coverage), 4),
        decode=round(conformal_q(scores["decode"], coverage), 4),
        runs={phase: len(xs) for phase, xs in scores.items()},
        excluded=excluded,
        source=sources,
        command=command,
    )


def fit(folders: list[Path], command: str, coverage: float = COVERAGE) -> ModelError:
    """The fit of the rows of results folders as they are (none re-predicted, none excluded)."""
    rows = {str(f): rows_of(f) for f in folders}
    return fit_rows(rows, [], command, [str(f) for f in folders], coverage)


def fit_sets(path: Path, refit: bool) -> ModelError:
    sets = load_sets(path)
    rows = {rs.name: set_rows(rs, refit) for rs in sets.set}
    return fit_rows(rows, sets.exclude, COMMAND, [str(path.resolve().relative_to(ROOT))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", type=Path, help="validation/model_error_sets.toml")
    ap.add_argument(
        "--refit", action="store_true", help="fit the kept rows of the spent sets, re-predict none"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "roofsim" / MODEL_ERROR_FILE, help="where to write")
    args = ap.parse_args()
    if not args.sets.is_file():
        sys.exit(f"{args.sets}: no such sets file (validation/model_error_sets.toml)")
    err = fit_sets(args.sets, args.refit)
    args.out.write_text(err.model_dump_json(indent=1) + "\n")
    print(
        f"prefill q={err.prefill:.4f} over {err.runs['prefill']} runs ({err.excluded['prefill']} left out); "
        f"decode q={err.decode:.4f} over {err.runs['decode']} runs ({err.excluded['decode']} left out); "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
