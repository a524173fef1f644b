"""`roofsim validate`: predict each configuration in advance (analytic and simulated, with a calibrated profile
alone, each phase with its band), run it with the executor, and write the predicted Trace, the measured Trace and
their comparison, per configuration.

The executor runs in a process of its own per run (`roofsim run`, forked from a server that has imported torch:
roofsim.runproc), so a crash or an out-of-memory in one configuration costs only that configuration, GPU memory is
free again for the next, and what was measured is kept.
Configurations come from a TOML file:

    [[config]]
    name = "llama3-8b-head-64k"
    model = "llama-3-8b"
    context = "64K"
    plan = "head_offload"            # a family, an inline table of knobs, or "planner" (its pick, runners-up and
                                     # the best plan of every other exact family that fits)
    gen = 16
    gpu_mem = "24GB"                 # optional cap
    other_families = ["kvpr"]        # planner: whose best plans the regret also measures (default: every exact
                                     # family that fits; false: none)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from roofsim import runproc
from roofsim.argchecks import MAX_BATCH, MAX_TOP, limits
from roofsim.band import scaled
from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.plan import PlanBase, default_plan, family_of, plan_from_dict
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import load_model
from roofsim.specs.tomlfile import first_error, read_toml
from roofsim.trace import Summary, Trace, compare, eager_if_unsaid, json_exists
from roofsim.units import MAX_TOKENS, parse_bytes, parse_tokens
from roofsim.workload import Workload


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    model: str
    context: StrictStr | StrictInt
    plan: str | dict[str, Any]
    batch: int = Field(1, gt=0, le=MAX_BATCH)
    gen: int = Field(16, gt=0, le=MAX_TOKENS)
    gpu_mem: str | None = None
    runners_up: int = Field(
        2, ge=0, le=MAX_TOP, description="planner configs: how many runners-up are measured for the regret"
    )
    other_families: bool | list[StrictStr] = Field(
        True,
        description="planner configs: also measure the best plan of every other exact family that fits (true), "
        "of the families named (a list), or of none (false)",
    )


def load_configs(path: str) -> list[Config]:
    data = read_toml(Path(path), "configuration file")
    tables = data.get("config", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UserError(f"{path}: 'config' must be [[config]] tables, one per configuration")
    configs = []
    for i, table in enumerate(tables):
        try:
            configs.append(Config.model_validate(table))
        except ValidationError as e:
            raise UserError(
                f"{path}: configuration {i + 1} ({table.get('name', 'no name')}): {first_error(e)}"
            ) from None
    names = [c.name for c in configs]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise UserError(
            f"{path}: two configurations are called {dup!r}; each writes its own folder, give each a name"
        )
    return configs


def check_config(cfg: Config, path: str, gpu: GpuSpec) -> None:
    """A configuration's model, context, memory cap and plan, as validate_one reads them: a mistake in the last
    configuration is said before the first one runs."""
    where = f"{path}: configuration {cfg.name}"
    try:
        load_model(cfg.model)
        parse_tokens(cfg.context, "context")
        if cfg.gpu_mem is not None:
            limits(cfg.gpu_mem, None, gpu)
        if isinstance(cfg.plan, dict):
            plan_from_dict(cfg.plan, where="plan")
        elif cfg.plan != "planner":
            family_of(cfg.plan, "plan")
        if isinstance(cfg.other_families, list):
            for name in cfg.other_families:
                family_of(name, "other_families")
    except UserError as e:
        raise UserError(f"{where}: {str(e).replace('--gpu-mem', 'gpu_mem')}") from None


def _pick_and_runners_up(ranked: list[PlanBase], runners_up: int) -> list[PlanBase]:
    """The first plan and the next best that differ from every plan taken in more than the prefill chunk (the
    regret is measured on decode, where plans that differ only in their chunk run the same decode program, so
    their difference is run-to-run variance: docs/evidence.md#ev-regret-chunk-only-fill-ins); plans differing
    only in the chunk fill in where too few others were ranked."""

    plans, keys = [], set()
    for p in ranked:
        key = _decode_key(p.model_dump())
        if key not in keys:
            keys.add(key)
            plans.append(p)
    for p in ranked:
        if len(plans) >= 1 + runners_up:
            break
        if p not in plans:
            plans.append(p)
    return plans[: 1 + runners_up]


def _other_families(
    ranked: list[PlanBase], taken: list[PlanBase], only: bool | list[str] = True
) -> list[PlanBase]:
    """The best-ranked plan of each exact family the plans taken lack (of the families `only` names, where it is
    a list), in the ranking's order: the regret is measured against every family that fits, not only against the
    pick's near-ties, so that a family the model misprices can show up."""
    if only is False:
        return []
    have = {p.family for p in taken}
    out = []
    for p in ranked:
        if only is not True and p.family not in only:
            continue
        if p.family not in have and not p.approximate:
            have.add(p.family)
            out.append(p)
    return out


def _plans(cfg: Config, model, gpu, host, work, limits) -> tuple[list[tuple[str, PlanBase]], str]:
    """The plans to measure, each with its run's tag: the configured one ("pick"), or the planner's pick, its
    runners-up ("alt<i>") and the best plan of each other exact family that fits ("best-<family>"); at most
    1 + runners_up + the number of families runs."""
    if cfg.plan == "planner":
        from roofsim.planner import search

        result = search(model, gpu, host, work, limits, refine_top=5)
        refined = [c.plan for c in result.ranked if c.simulated is not None]
        picked = _pick_and_runners_up(refined, cfg.runners_up)
        tagged = [("pick" if i == 0 else f"alt{i}", p) for i, p in enumerate(picked)]
        others = _other_families([c.plan for c in result.ranked], picked, cfg.other_families)
        return tagged + [(f"best-{p.family}", p) for p in others], "planner"
    if isinstance(cfg.plan, dict):
        return [("pick", plan_from_dict(cfg.plan, where=f"config {cfg.name}"))], "given"
    return [("pick", default_plan(cfg.plan))], "given"


def run_executor(
    plan_path: Path,
    cfg: Config,
    work: Workload,
    out: Path,
    device: str | None,
    timeout_s: float,
    gpu_arg: str | None = None,
    force: bool = False,
) -> dict:
    """Run one plan with the executor in its own process (roofsim.runproc). gpu_arg, the profile the prediction
    used, also sets what the executor solves with at run time (kvpr's recompute split with recompute_tokens="auto")."""
    model = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
    argv = [
        "run", str(plan_path.resolve()), "--model", model,
        "--prompt-len", str(work.context), "--gen", str(work.gen), "--batch", str(work.batch),
        "-o", str(out.resolve()),
    ]  # fmt: skip
    if gpu_arg:
        argv += ["--gpu", str(Path(gpu_arg).resolve()) if Path(gpu_arg).is_file() else gpu_arg]
    if cfg.gpu_mem:
        argv += ["--gpu-mem", cfg.gpu_mem]
    if device:
        argv += ["--device", device]
    if force:
        argv += ["--force"]
    t0 = time.perf_counter()
    done = runproc.run(argv, out.parent, timeout_s)
    if done.returncode is None:
        status = {
            "returncode": None,
            "stderr_tail": f"timed out after {timeout_s:.0f} s\n{done.stderr[-1900:]}",
        }
    else:
        status = {"returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}
    status.update(command=" ".join(runproc.command(argv)[1:]), wall_s=time.perf_counter() - t0)
    return status


def validate_one(
    cfg: Config,
    gpu_arg: str,
    gpu: GpuSpec,
    host: HostSpec,
    out_dir: Path,
    device: str | None,
    timeout_s: float,
    force: bool = False,
) -> dict:
    """Predict and run each plan of one configuration into its folder. A plan the model says does not fit under
    the configuration's memory is not run (run.json says why) unless `force`."""
    model = load_model(cfg.model)
    work = Workload(context=parse_tokens(cfg.context), batch=cfg.batch, gen=cfg.gen)
    limits = Limits(gpu_mem_bytes=parse_bytes(cfg.gpu_mem, "gpu_mem") if cfg.gpu_mem else None)
    plans, how = _plans(cfg, model, gpu, host, work, limits)
    folder = out_dir / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.model_dump_json(indent=1))
    runs = []
    for tag, plan in plans:
        sub = folder if tag == "pick" else folder / tag
        sub.mkdir(exist_ok=True)
        predicted = _predict_into(sub, plan, model, gpu, host, work, limits, gpu_arg)
        plan_path = sub / "plan.json"
        plan_path.write_text(
            json.dumps({"plan": plan.model_dump(), "model": cfg.model, "workload": work.model_dump()})
        )
        if predicted.feasible or force:
            status = run_executor(
                plan_path, cfg, work, sub / "measured.json", device, timeout_s, gpu_arg, force=force
            )
        else:
            status = {
                "returncode": None,
                "refused": f"the model says it does not fit: {predicted.summary.reason}; --force runs it anyway",
            }
        (sub / "run.json").write_text(json.dumps(status, indent=1))
        row = {
            "config": cfg.name,
            "run": tag,
            "plan": plan.model_dump(),
            "how": how,
            "status": status["returncode"],
        }
        _at_run_pace(sub, row, (plan, model, gpu, host, work, limits))
        _compare_into(sub, predicted, row)
        runs.append(row)
    (folder / "runs.json").write_text(json.dumps(runs, indent=1))
    return {"config": cfg.name, "runs": runs}


def _predict_into(sub: Path, plan, model, gpu, host, work, limits, gpu_arg: str) -> Trace:
    """Write the analytic summary and the simulated Trace of one run's plan into its folder: the prediction made
    in advance, from the profile alone, each phase with its band (roofsim.band; the simulator's point carries
    the analytic band's ratios)."""
    analytic = predict(plan, model, gpu, host, work, limits, band=True)
    predicted = simulate(plan, model, gpu, host, work, limits, keep="sample")
    predicted.header.profile = gpu_arg
    for phase in ("prefill", "decode"):
        a, p = analytic.summary.phase(phase), predicted.summary.phase(phase)
        p.band_s = scaled(p.time_s, a.band_s, a.time_s)
        p.spread_band_s = scaled(p.time_s, a.spread_band_s, a.time_s)
    name = "predicted.json.gz" if (sub / "predicted.json.gz").is_file() else "predicted.json"
    predicted.write(sub / name)  # as it was kept: compressed in committed results
    (sub / "analytic.json").write_text(analytic.model_dump_json(indent=1, exclude={"spans", "memory"}))
    return predicted


PACE_RATIOS = (
    "loop_pace_ratio",
    "launch_pace_ratio",
    "step_pace_ratio",
)  # each gauge's own, in runs.json rows
RUN_PACE = ("prefill_s", "decode_s_per_token")


def _at_run_pace(sub: Path, row: dict, args: tuple) -> None:
    """A diagnostic beside the prediction, never its input: the simulated times again with the host-side costs
    at the host's pace in the run (GpuSpec.at_host_pace; the gauges the executor timed before each decode step
    against the profile's), as `<phase>_predicted_at_run_pace`, with the ratio priced (`host_pace_ratio`) and
    each gauge's own (PACE_RATIOS). It says how much of an error the host's pace in the run explains; the
    headline is the prediction in advance (docs/validation.md#in-advance)."""
    for key in [
        k
        for k in row
        if k.endswith(("_as_calibrated", "_at_run_pace")) or k in (*PACE_RATIOS, "host_pace_ratio")
    ]:
        del row[key]
    plan, model, gpu, host, work, limits = args
    measured_path = sub / "measured.json"
    ref = gpu.runtime.host_pace_us
    if ref is None or not json_exists(measured_path):
        return
    summary = Trace.read(measured_path).summary
    paces = summary.host_pace_us
    if not paces:
        return
    pace = statistics.median(paces)
    launches, launch_ref = summary.launch_pace_us, gpu.runtime.launch_pace_us
    launch = statistics.median(launches) if launches and launch_ref is not None else None
    steps, step_ref = summary.step_pace_us, gpu.runtime.step_pace_us
    step = statistics.median(steps) if steps and step_ref is not None else None
    row["host_pace_ratio"] = gpu.host_pace_ratio(pace, launch, step)
    if launch is not None:
        row["loop_pace_ratio"] = pace / ref.value
        row["launch_pace_ratio"] = launch / launch_ref.value
    if step is not None:
        row["step_pace_ratio"] = step / step_ref.value
    paced = simulate(plan, model, gpu.at_host_pace(pace, launch, step), host, work, limits, keep="none")
    for phase in RUN_PACE:
        row[f"{phase}_predicted_at_run_pace"] = getattr(paced.summary, phase)


def _compare_into(sub: Path, predicted: Trace, row: dict) -> None:
    """Compare with the measured Trace (if the run wrote one) and add both sides' phase numbers to the row."""
    for key in [
        k
        for k in row
        if k.endswith(
            ("_predicted", "_measured", "_predicted_low", "_predicted_high", "_spread_low", "_spread_high")
        )
    ]:
        del row[key]
    measured_path = sub / "measured.json"
    if json_exists(measured_path):
        measured = Trace.read(measured_path)
        comparison = compare(predicted, measured)
        (sub / "comparison.json").write_text(comparison.model_dump_json(indent=1))
        row.update(
            complete=measured.complete,
            error=measured.error,
            **{f"{r.name}_predicted": r.predicted for r in comparison.phases},
            **{f"{r.name}_measured": r.measured for r in comparison.phases},
        )
    for phase in ("prefill", "decode"):  # the band, in the phase names compare() gives the times
        stats = predicted.summary.phase(phase)
        name = "prefill_s" if phase == "prefill" else "decode_s_per_token"
        if stats.band_s is not None:
            row[f"{name}_predicted_low"], row[f"{name}_predicted_high"] = stats.band_s
        # the spread band alone: what validation/fit_model_error.py fits the widening on
        if stats.spread_band_s is not None:
            row[f"{name}_spread_low"], row[f"{name}_spread_high"] = stats.spread_band_s


def repredict(results_dir: str | Path, gpu_arg: str, gpu: GpuSpec, host: HostSpec) -> int:
    """Predict every run of a results folder again with the current model and the given profile, and compare with
    the measured Traces already there (no GPU needed): a model fix is checked against the committed measurements
    without running the campaign again. The runs themselves, and what they measured, are left untouched."""
    root = Path(results_dir)
    jobs = [
        _saved_runs(runs_file) for runs_file in sorted(root.rglob("runs.json"))
    ]  # all read before any work
    count = 0
    for runs_file, cfg, runs, saved in jobs:
        model = load_model(cfg.model)
        limits = Limits(gpu_mem_bytes=parse_bytes(cfg.gpu_mem, "gpu_mem") if cfg.gpu_mem else None)
        for row, (sub, plan, work) in zip(runs, saved, strict=True):
            predicted = _predict_into(sub, plan, model, gpu, host, work, limits, gpu_arg)
            _at_run_pace(sub, row, (plan, model, gpu, host, work, limits))
            _compare_into(sub, predicted, row)
            count += 1
        runs_file.write_text(json.dumps(runs, indent=1))
    return count


def _saved_runs(runs_file: Path) -> tuple[Path, Config, list[dict], list[tuple[Path, PlanBase, Workload]]]:
    """One configuration folder of a results folder, as validate_one wrote it: its configuration, its runs.json
    rows and each run's plan and workload (a folder that is not one is a user error naming the file)."""
    from roofsim.jsonfile import read_json, read_json_object

    folder = runs_file.parent
    what = "file of a results folder (written by roofsim validate)"
    try:
        cfg = Config.model_validate(read_json_object(folder / "config.json", what))
    except ValidationError as e:
        raise UserError(
            f"{folder / 'config.json'}: not a configuration written by roofsim validate: {first_error(e)}"
        ) from None
    runs = read_json(runs_file, what)
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and isinstance(r.get("run"), str) for r in runs
    ):
        raise UserError(
            f"{runs_file}: not a runs.json written by roofsim validate (a list of runs, each with 'run')"
        )
    saved = []
    for row in runs:
        sub = folder if row["run"] == "pick" else folder / row["run"]
        doc = read_json_object(sub / "plan.json", what)
        plan = plan_from_dict(eager_if_unsaid(doc.get("plan")), where=str(sub / "plan.json"))
        try:
            work = Workload.model_validate(doc.get("workload"))
        except ValidationError as e:
            raise UserError(f"{sub / 'plan.json'}: its workload is not valid: {first_error(e)}") from None
        saved.append((sub, plan, work))
    return runs_file, cfg, runs, saved


def compress_traces(root: str | Path) -> int:
    """gzip every measured.json and predicted.json under a results folder in place (name.json -> name.json.gz):
    committed campaigns stay small, and every reader here takes either form. Returns how many were compressed."""
    from roofsim.trace import write_json_text

    n = 0
    for path in sorted(Path(root).rglob("*.json")):
        if path.name in ("measured.json", "predicted.json"):
            write_json_text(path.with_name(path.name + ".gz"), path.read_text())
            path.unlink()
            n += 1
    return n


def archive_results(out_dir: Path, archive: Path) -> None:
    """Write the results folder as one .tar.gz, atomically (a half-written archive never replaces a good one)."""
    import tarfile

    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out_dir, arcname=out_dir.name)
    tmp.replace(archive)


# ---- the summary (validation/summarize.py prints it) --------------------------------------------------------------

PHASES = ("prefill_s", "decode_s_per_token", "peak_gpu_bytes")


def _err(pred, meas) -> float | None:
    if pred is None or meas in (None, 0):
        return None
    return 100.0 * (pred - meas) / meas


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


TIMES = ("prefill_s", "decode_s_per_token")


def _in_advance(row: dict, phase: str) -> float | None:
    """A run's prediction made in advance, from the profile alone: `<phase>_predicted`; rows written when the
    prediction was re-priced at the run's host pace keep the in-advance figure as `_predicted_as_calibrated`."""
    return row.get(f"{phase}_predicted_as_calibrated", row.get(f"{phase}_predicted"))


def _covered(row: dict, phase: str) -> bool | None:
    """Whether the measured time lies within the prediction's band (None: no band or no measurement)."""
    lo, hi, m = (
        row.get(f"{phase}_predicted_low"),
        row.get(f"{phase}_predicted_high"),
        row.get(f"{phase}_measured"),
    )
    if lo is None or hi is None or m is None:
        return None
    return lo <= m <= hi


def summarize(results_dir: str | Path) -> tuple[list[dict], str]:
    """Rows (one per configuration's pick) and the closing line, read only from the committed files: every
    figure is the prediction made in advance, from the profile alone; the run-pace re-pricing stays a
    diagnostic (the rows' `<phase>_at_run_pace`, run_pace_line)."""
    root = Path(results_dir)
    rows, mem_errs, regrets = [], [], []
    errs: dict[str, list[float]] = {phase: [] for phase in TIMES}
    covered: list[bool] = []
    for runs_file in sorted(root.rglob("runs.json")):
        runs = json.loads(runs_file.read_text())
        pick = runs[0]
        for r in runs:  # the band over every measured run: picks, runners-up and each family's best
            if r.get("complete", True):
                covered += [c for phase in TIMES if (c := _covered(r, phase)) is not None]
        if pick.get("decode_s_per_token_measured") is None:
            why = _failure(runs_file.parent)
            rows.append(
                {"config": pick["config"], "family": pick["plan"]["family"], "failed": True, "why": why}
            )
            continue
        row = {
            "config": pick["config"],
            "family": pick["plan"]["family"],
            "failed": False,
            "complete": pick.get("complete", True),  # an incomplete run's times are left out of the errors
        }
        for phase in PHASES:
            p = _in_advance(pick, phase) if phase in TIMES else pick.get(f"{phase}_predicted")
            m = pick.get(f"{phase}_measured")
            row[phase] = (p, m, _err(p, m))
            if phase in TIMES:
                band = (pick.get(f"{phase}_predicted_low"), pick.get(f"{phase}_predicted_high"))
                row[f"{phase}_band"] = band if None not in band else None
                row[f"{phase}_at_run_pace"] = _err(pick.get(f"{phase}_predicted_at_run_pace"), m)
        for phase in TIMES:
            e = row[phase][2]
            if e is not None and row["complete"]:
                errs[phase].append(abs(e))
        if row["peak_gpu_bytes"][2] is not None:
            mem_errs.append(abs(row["peak_gpu_bytes"][2]))
        others = [
            r
            for r in runs[1:]
            if r.get("decode_s_per_token_measured") and _decode_key(r["plan"]) != _decode_key(pick["plan"])
        ]
        if others:
            best = min(others, key=lambda r: r["decode_s_per_token_measured"])
            regret = 100.0 * max(
                0.0, pick["decode_s_per_token_measured"] / best["decode_s_per_token_measured"] - 1
            )
            row["regret_pct"] = regret
            row["regret_against"] = sorted({r["plan"]["family"] for r in others})
            regrets.append(regret)
        sums = _summaries(runs_file.parent)
        row["why"] = _why(runs_file.parent, *sums) if sums else ""
        row["prefill_after_first_chunk"] = _after_first_chunk(*sums) if sums else None
        rows.append(row)
    n = sum(not r["failed"] for r in rows)
    line = _closing_line(n, errs, mem_errs, regrets, covered)
    return rows, line


def _failure(folder: Path) -> str:
    """Why a configuration's pick has no measurement, from its run.json: the refusal, or the run's last words."""
    try:
        status = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return ""
    if status.get("refused"):
        return f"not run: {status['refused']}"
    lines = [line for line in (status.get("stderr_tail") or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {status.get('returncode')}"


def _decode_key(plan: dict) -> str:
    """A plan (as dumped, and as runs.json keeps it) less its prefill chunk: plans with the same key run the same
    decode program, so the difference between their measured decode is the machine's run-to-run variance, not the
    planner's choice (docs/evidence.md#ev-regret-chunk-only-fill-ins). _pick_and_runners_up takes such plans
    only as fill-ins, and the decode regret leaves them out."""
    return json.dumps({**plan, "prefill_chunk": None}, sort_keys=True)


def _closing_line(
    n: int, errs: dict[str, list[float]], mem_errs: list[float], regrets: list[float], covered: list[bool]
) -> str:
    def med(xs):
        return statistics.median(xs) if xs else math.nan

    d, p = errs["decode_s_per_token"], errs["prefill_s"]
    coverage = 100.0 * sum(covered) / len(covered) if covered else math.nan
    return (
        f"n={n} decode_median_abs_err_pct={med(d):.1f} decode_p90_abs_err_pct={_pct(d, 0.9):.1f} "
        f"prefill_median_abs_err_pct={med(p):.1f} prefill_p90_abs_err_pct={_pct(p, 0.9):.1f} "
        f"mem_err_max_pct={max(mem_errs) if mem_errs else math.nan:.1f} "
        f"regret_max_pct={max(regrets) if regrets else math.nan:.1f} band_coverage_pct={coverage:.1f}"
    )


def closing_numbers(line: str) -> dict[str, float]:
    """The closing line's numbers by name (n, decode_median_abs_err_pct, ...): what the docs quote and the HTML
    report's headline says."""
    return {key: float(value) for key, value in (part.split("=", 1) for part in line.split())}


def run_pace_line(rows: list[dict]) -> str | None:
    """A diagnostic, not the headline: the time errors had each run been priced at the host's pace its own
    gauges read during it (which no user predicting before a run can know); None where no run was."""
    out = []
    for phase, label in (("decode_s_per_token", "decode"), ("prefill_s", "prefill")):
        xs = [
            abs(r[f"{phase}_at_run_pace"])
            for r in rows
            if not r["failed"] and r["complete"] and r.get(f"{phase}_at_run_pace") is not None
        ]
        if xs:
            out.append(
                f"{label}_median_abs_err_pct={statistics.median(xs):.1f} {label}_p90_abs_err_pct={_pct(xs, 0.9):.1f}"
            )
    if not out:
        return None
    return "diagnostic, at each run's own host pace (not known in advance): " + " ".join(out)


def band_line(results_dir: str | Path) -> str | None:
    """The band's coverage by phase over every measured run, and its median width (upper over lower end)."""
    parts = []
    runs = [r for f in sorted(Path(results_dir).rglob("runs.json")) for r in json.loads(f.read_text())]
    for phase, label in (("decode_s_per_token", "decode"), ("prefill_s", "prefill")):
        cov = [c for r in runs if r.get("complete", True) and (c := _covered(r, phase)) is not None]
        widths = [
            100.0 * (r[f"{phase}_predicted_high"] / r[f"{phase}_predicted_low"] - 1)
            for r in runs
            if r.get(f"{phase}_predicted_low")
        ]
        if cov:
            parts.append(
                f"{label} {sum(cov)}/{len(cov)} ({100.0 * sum(cov) / len(cov):.0f}%), median width "
                f"{statistics.median(widths):.0f}%"
            )
    return "band holds the measured time (every measured run): " + "; ".join(parts) if parts else None


def _summaries(folder: Path) -> tuple[Summary, Summary] | None:
    """The measured and predicted traces' summaries of a run's folder (each trace read once), if both are there."""
    try:
        return Trace.read(folder / "measured.json").summary, Trace.read(folder / "predicted.json").summary
    except UserError:
        return None


def _after_first_chunk(meas: Summary, pred: Summary) -> float | None:
    """Prefill error (%) over the chunks after the first, or None for a one-chunk prefill."""
    m, p = meas.prefill.step_s, pred.prefill.step_s
    if len(m) < 2 or len(p) != len(m):
        return None
    return _err(sum(p[1:]), sum(m[1:]))


def prefill_after_first_chunk_line(rows: list[dict]) -> str:
    """A diagnostic: the prefill error without the first chunk, which a run without a warm-up pays the process's
    cold start in (kernel loading, library handles, allocator growth)."""
    errs = [
        abs(r["prefill_after_first_chunk"]) for r in rows if r.get("prefill_after_first_chunk") is not None
    ]
    med = statistics.median(errs) if errs else math.nan
    return (
        f"prefill after the first chunk: n={len(errs)} median_abs_err_pct={med:.1f} "
        f"p90_abs_err_pct={_pct(errs, 0.9):.1f}"
    )


def _why(folder: Path, meas: Summary, pred: Summary) -> str:
    """Where each phase's error sits: the span kind whose busy time differs most (predicted - measured), and for a
    prefill the first chunk's share (it carries the process's cold start: kernel loading, allocator growth)."""
    try:
        comp = json.loads((folder / "comparison.json").read_text())
    except (OSError, ValueError):
        return ""
    parts = []
    for phase, unit, label in (("prefill", 1.0, "s"), ("decode", 1e3, "ms")):
        kinds = [k for k in comp["span_kinds"].get(phase, []) if k["name"] not in ("issue", "sync")]
        if not kinds or not meas.phase(phase).step_s:
            continue
        k = max(kinds, key=lambda k: abs(k["predicted"] - k["measured"]))  # busy time per chunk or step
        step = "chunk" if phase == "prefill" else "step"
        text = f"{phase} {k['name']} {(k['predicted'] - k['measured']) * unit:+.2f} {label}/{step}"
        if phase == "prefill" and pred.prefill.step_s:
            first = pred.prefill.step_s[0] - meas.prefill.step_s[0]
            text += f" (1st chunk {first:+.2f} s)"
        parts.append(text)
    return "; ".join(parts)


def _cell(row: dict, phase: str, unit: float, digits: int) -> str:
    p, m, e = row[phase]
    if p is None or m is None:
        return "-"
    band = row.get(f"{phase}_band")
    text = f"{p * unit:.3f}/{m * unit:.3f} ({e:+.1f}%)"
    if band is not None:
        inside = band[0] <= m <= band[1]
        text += f" [{band[0] * unit:.{digits}f}-{band[1] * unit:.{digits}f}]{' ' if inside else '!'}"
    return text


def _paced(row: dict) -> str:
    e = row.get("decode_s_per_token_at_run_pace")
    return "-" if e is None else f"{e:+.1f}%"


def format_table(rows: list[dict]) -> str:
    """Prefill in s, decode in ms per token, predicted in advance/measured (error) [band, ! where the measured
    time lies outside it]; the decode error at the run's own host pace as a diagnostic."""
    head = (
        f"{'config':26s} {'family':14s} {'prefill s pred/meas (err) [band]':>42s} "
        f"{'decode ms pred/meas (err) [band]':>46s} {'run pace':>9s} {'peak GPU':>8s} {'regret':>7s}  "
        "largest span-kind difference, predicted - measured"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["failed"]:
            lines.append(f"{r['config']:26s} {r['family']:14s} run failed: {r.get('why') or 'see run.json'}")
            continue
        mem = r["peak_gpu_bytes"][2]
        mem_text = f"{mem:+.1f}%" if mem is not None else "-"
        regret = f"{r['regret_pct']:.1f}%" if "regret_pct" in r else "-"
        lines.append(
            f"{r['config']:26s} {r['family']:14s} {_cell(r, 'prefill_s', 1, 2):>42s} "
            f"{_cell(r, 'decode_s_per_token', 1e3, 1):>46s} {_paced(r):>9s} {mem_text:>8s} {regret:>7s}  "
            f"{r.get('why', '')}"
        )
    return "\n".join(lines)
