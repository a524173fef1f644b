"""The prediction's band (roofsim.band): calibrate keeps the spread of the unsteady resources it measured, predict
prices the plan at their slow and fast ends, the planner's decode-worst objective ranks by the upper end, and the
validation summary counts how often the band holds the measured time."""

import json
import sys
from pathlib import Path

import pytest

from roofsim.calibration import Measurements, fit_spread, host_pace_ratios
from roofsim.families import CpuAttentionPlan, HeadOffloadPlan, ResidentPlan
from roofsim.limits import Limits
from roofsim.predict import predict
from roofsim.specs import load_gpu
from roofsim.specs.hardware import SpreadSpec, default_host_of, load_host
from roofsim.specs.model import load_model
from roofsim.specs.sourced import Sourced
from roofsim.units import fmt_band
from roofsim.workload import Workload

ROOT = Path(__file__).parent.parent
S22 = ROOT / "validation" / "results" / "h100" / "s22"
PROFILE = str(S22 / "h100-sxm-calibrated.toml")
SETS = ROOT / "validation" / "model_error_sets.toml"
L3 = load_model("llama-3-8b")
WORK = Workload(context=65536, gen=8)


def _measurements() -> Measurements:
    return Measurements.model_validate_json((S22 / "h100-sxm-calibrated-measurements.json").read_text())


def _ratio(v: float) -> Sourced:
    return Sourced(value=v, measured="test")


def test_a_profile_without_a_spread_gives_a_zero_width_band():
    gpu = load_gpu("h100-sxm")
    host = default_host_of("h100-sxm", gpu)
    assert gpu.spread is None and host.cpu_attention_low is None
    for plan in (ResidentPlan(), HeadOffloadPlan(), CpuAttentionPlan(cpu_kv_heads=2)):
        s = predict(plan, L3, gpu, host, WORK, band=True).summary
        for phase in ("prefill", "decode"):
            assert s.phase(phase).band_s == (s.phase(phase).time_s, s.phase(phase).time_s)


def test_the_spread_is_fitted_from_what_calibrate_measured():
    m = _measurements()
    gpu, host = fit_spread(m)
    ratios = host_pace_ratios(m)
    assert len(ratios) == len(m.host_pace_us)
    assert min(ratios) <= gpu["host_pace_low"][0] <= 1.0 <= gpu["host_pace_high"][0] <= max(ratios)
    assert gpu["link_low"][0] <= 1.0 <= gpu["link_high"][0]
    assert 0 < host["cpu_attention_low"][0] <= 1.0 <= host["cpu_attention_high"][0]
    # the committed profile carries what the fit gives (validation/add_spread.py)
    profile = load_gpu(PROFILE)
    assert profile.spread.host_pace_high.value == pytest.approx(gpu["host_pace_high"][0], rel=1e-5)
    assert default_host_of(PROFILE, profile).cpu_attention_low.value == pytest.approx(
        host["cpu_attention_low"][0], rel=1e-5
    )


def test_a_measurements_file_without_gauges_gives_no_host_pace_spread():
    m = _measurements().model_copy(
        update={"host_pace_us": None, "launch_pace_us": None, "step_pace_us": None}
    )
    gpu, _ = fit_spread(m)
    assert "host_pace_low" not in gpu and "link_low" in gpu


def test_a_spread_ratio_on_the_wrong_side_of_one_is_refused():
    with pytest.raises(ValueError, match="host_pace_high"):
        SpreadSpec(host_pace_high=_ratio(0.9))
    with pytest.raises(ValueError, match="link_low"):
        SpreadSpec(link_low=_ratio(1.2))


def test_the_band_holds_the_point_and_the_point_does_not_move():
    gpu = load_gpu(PROFILE)
    host = default_host_of(PROFILE, gpu)
    for plan in (ResidentPlan(), HeadOffloadPlan(prefill_chunk=8192), CpuAttentionPlan(cpu_kv_heads=2)):
        plain = predict(plan, L3, gpu, host, WORK).summary
        banded = predict(plan, L3, gpu, host, WORK, band=True).summary
        for phase in ("prefill", "decode"):
            assert banded.phase(phase).time_s == plain.phase(phase).time_s
            lo, hi = banded.phase(phase).band_s
            assert lo <= plain.phase(phase).time_s <= hi
    # a launch-bound plan's decode follows the host's pace: its band is the pace's spread; replayed from a CUDA
    # graph the host issues one replay a step, and the band is the model's error alone
    s = predict(ResidentPlan(decode_graphs=False), L3, gpu, host, WORK, band=True).summary
    assert s.decode.band_s[1] > s.decode.time_s * 1.1
    s = predict(ResidentPlan(), L3, gpu, host, WORK, band=True).summary
    assert s.decode.band_s[1] < s.decode.time_s * 1.1


def test_a_less_steady_cpu_widens_only_the_plans_that_scan_on_it():
    gpu = load_gpu(PROFILE)
    host = default_host_of(PROFILE, gpu)
    shaky = host.model_copy(update={"cpu_attention_low": _ratio(0.25)})
    cpu, gpu_only = CpuAttentionPlan(cpu_kv_heads=4, prefill_chunk=8192), HeadOffloadPlan(prefill_chunk=8192)
    wider = predict(cpu, L3, gpu, shaky, WORK, band=True).summary.decode.band_s[1]
    assert wider > predict(cpu, L3, gpu, host, WORK, band=True).summary.decode.band_s[1]
    assert (
        predict(gpu_only, L3, gpu, shaky, WORK, band=True).summary.decode.band_s
        == predict(gpu_only, L3, gpu, host, WORK, band=True).summary.decode.band_s
    )


def test_decode_worst_ranks_a_plan_on_an_unsteady_cpu_by_its_bad_case():
    """A cpu_attention plan that wins on its point loses under decode-worst where the CPU's slow end costs it
    more than the GPU-only plan pays at its own slow end; both scores, analytic and simulated, rank alike."""
    from roofsim.planner.search import analytic_score, simulated_score
    from roofsim.sim import simulate

    gpu = load_gpu(PROFILE)
    host = default_host_of(PROFILE, gpu).model_copy(update={"cpu_attention_low": _ratio(0.3)})
    work = Workload(context=131072, gen=8)
    limits = Limits(gpu_mem_bytes=24e9)
    cpu = CpuAttentionPlan(cpu_kv_heads=2, kv_heads_per_slot=2, resident_slots=1, prefill_chunk=16384)
    head = HeadOffloadPlan(kv_heads_per_slot=2, resident_slots=1, prefill_chunk=16384)
    p_cpu, p_head = (predict(p, L3, gpu, host, work, limits, band=True) for p in (cpu, head))
    assert p_cpu.feasible and p_head.feasible
    assert analytic_score(p_cpu, "decode") < analytic_score(p_head, "decode")
    assert analytic_score(p_cpu, "decode-worst") > analytic_score(p_head, "decode-worst")
    assert analytic_score(p_cpu, "decode-worst") == p_cpu.summary.decode.band_s[1]
    sims = [simulate(p, L3, gpu, host, work, limits, decode_steps=1, keep="none") for p in (cpu, head)]
    worst = [
        simulated_score(s.summary, work, "decode-worst", a.summary)
        for s, a in zip(sims, (p_cpu, p_head), strict=True)
    ]
    assert worst[0] > worst[1]
    assert worst[0] >= sims[0].summary.decode_s_per_token


def test_fmt_band_says_the_band_in_the_time_s_unit():
    assert fmt_band(0.150, (0.1412, 0.1725)) == "150.0 ms (141.2-172.5)"
    assert fmt_band(2.5, (2.4, 2.61)) == "2.50 s (2.40-2.61)"
    assert fmt_band(0.150, (0.150, 0.150)) == "150.0 ms"
    assert fmt_band(0.150, None) == "150.0 ms"


def test_band_coverage_counts_every_measured_run(tmp_path):
    from roofsim.validate import closing_numbers, summarize

    plan = {"family": "resident", "prefill_chunk": None, "weights": "resident"}

    def run(tag, decode_meas, lo, hi):
        return {
            "config": "c", "run": tag, "plan": {**plan, "prefill_chunk": len(tag)},
            "prefill_s_predicted": 1.0, "prefill_s_measured": 1.0,
            "prefill_s_predicted_low": 0.9, "prefill_s_predicted_high": 1.1,
            "decode_s_per_token_predicted": 0.04, "decode_s_per_token_measured": decode_meas,
            "decode_s_per_token_predicted_low": lo, "decode_s_per_token_predicted_high": hi,
            "peak_gpu_bytes_predicted": 1e9, "peak_gpu_bytes_measured": 1e9,
        }  # fmt: skip

    (tmp_path / "c").mkdir()
    runs = [run("pick", 0.041, 0.035, 0.045), run("alt1", 0.050, 0.035, 0.045)]
    (tmp_path / "c" / "runs.json").write_text(json.dumps(runs))
    k = closing_numbers(summarize(tmp_path)[1])
    assert k["band_coverage_pct"] == pytest.approx(75.0)  # 3 of 4 measured times, the runner-up's decode out
    assert k["decode_median_abs_err_pct"] == pytest.approx(100 * 0.001 / 0.041, abs=0.05)
    assert k["prefill_median_abs_err_pct"] == 0.0


def test_a_host_file_without_the_cpu_spread_loads():
    host = load_host(str(ROOT / "hw_specs" / "hosts" / "sapphire-rapids.toml"))
    assert host.spread_end("cpu_attention_low") == 1.0


def test_calibrate_writes_the_spread_into_the_profile_it_loads(tmp_path):
    from roofsim.calibration import write_profile

    base = load_gpu("h100-sxm")
    gpu_path, host_path = write_profile(base, default_host_of("h100-sxm", base), _measurements(), tmp_path)
    gpu = load_gpu(str(gpu_path))
    host = load_host(str(host_path))
    assert gpu.spread.host_pace_low.value <= 1.0 <= gpu.spread.host_pace_high.value
    assert gpu.spread.link_low.value <= 1.0 <= gpu.spread.link_high.value
    assert host.cpu_attention_low.value <= 1.0 <= host.cpu_attention_high.value


def test_the_band_is_the_spread_band_widened_by_the_models_own_error():
    """A calibrated profile's band is its spread band with the lower end times (1 - q) and the upper end times
    (1 + q), q the phase's fitted model error; the point and the spread band do not move with q."""
    from roofsim.band import model_error

    gpu = load_gpu(PROFILE)
    host = default_host_of(PROFILE, gpu)
    err = model_error()
    assert err.prefill > 0 and err.decode > 0
    for plan in (ResidentPlan(), HeadOffloadPlan(prefill_chunk=8192)):
        s = predict(plan, L3, gpu, host, WORK, band=True).summary
        for phase in ("prefill", "decode"):
            q = getattr(err, phase)
            (slo, shi), (lo, hi) = s.phase(phase).spread_band_s, s.phase(phase).band_s
            assert slo <= s.phase(phase).time_s <= shi
            assert lo == pytest.approx(slo * (1 - q)) and hi == pytest.approx(shi * (1 + q))


def test_the_split_conformal_widening_holds_the_share_it_promises(tmp_path):
    """Fitted on runs whose measured times lie outside their spread bands by known amounts, the widened bands hold
    at least the fit's coverage of those runs, and widening by any smaller q holds fewer."""
    from roofsim.band import widen

    fme = _fit_model_error()
    rows = []
    for i in range(40):
        off = (i % 20) / 100  # 0% to 19% outside, above for even runs and below for odd ones
        m = 1.0 * (1 + off) if i % 2 == 0 else 1.0 * (1 - off)
        row = {"run": "pick", "complete": True}
        for key in ("prefill_s", "decode_s_per_token"):
            row |= {f"{key}_measured": m, f"{key}_spread_low": 1.0, f"{key}_spread_high": 1.0}
        rows.append(row)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "runs.json").write_text(json.dumps(rows))
    err = fme.fit([tmp_path], "test")
    assert err.runs == {"prefill": 40, "decode": 40}

    def held(q_err) -> float:
        lo, hi = widen((1.0, 1.0), "decode", q_err)
        return sum(lo <= r["decode_s_per_token_measured"] <= hi for r in rows) / len(rows)

    assert held(err) >= 0.9
    assert held(err.model_copy(update={"decode": err.decode * 0.9})) < 0.9


def test_the_shipped_model_error_is_the_fit_of_the_committed_runs():
    """roofsim/model_error.json is what validation/fit_model_error.py gives from the committed development set (its
    rows' spread bands, written by validation/repredict_h100.sh) and the kept re-predicted rows of the spent held-out
    sets, less the exclusions: never edited by hand, never stale."""
    from roofsim.band import model_error

    fme = _fit_model_error()
    assert fme.fit_sets(SETS, refit=True) == model_error()


def test_the_kept_rows_of_a_spent_set_are_its_committed_measurements():
    """Each spent held-out set's kept rows carry the measured times of its committed runs, run for run (only the
    prices are the current model's), and the held-out set not yet run is not among the fitted sets."""
    fme = _fit_model_error()
    sets = fme.load_sets(SETS)
    spent = [rs for rs in sets.set if rs.profile is not None]
    assert spent and all("heldout5" not in rs.campaign for rs in sets.set)
    for rs in spent:
        kept = json.loads((fme.KEPT / f"{rs.name}.json").read_text())
        committed = {(r["config"], r["run"]): r for r in fme.rows_of(ROOT / rs.campaign)}
        assert kept["campaign"] == rs.campaign and len(kept["rows"]) == len(committed)
        for row in kept["rows"]:
            c = committed[row["config"], row["run"]]
            for key in ("prefill_s_measured", "decode_s_per_token_measured"):
                assert row.get(key) == c.get(key)


def test_an_excluded_run_leaves_the_fit(tmp_path):
    """Leaving out the one run far outside its band brings q down to the others' and counts it as excluded; an
    exclusion of another phase leaves the phase it does not name alone."""
    fme = _fit_model_error()
    rows = [_row(f"c{i}", 1.0 + (0.5 if i == 0 else 0.01 * (i % 3))) for i in range(12)]
    kept = fme.fit_rows({"s": rows}, [], "t", ["s"])
    ex = fme.Exclusion(
        set="s", config="c0", phases=["decode"], why="a fixed defect", evidence="docs/evidence.md"
    )
    fitted = fme.fit_rows({"s": rows}, [ex], "t", ["s"])
    assert kept.decode == pytest.approx(0.5) and fitted.decode == pytest.approx(0.02)
    assert fitted.excluded == {"prefill": 0, "decode": 1} and fitted.runs == {"prefill": 12, "decode": 11}
    assert fitted.prefill == kept.prefill


def _row(config: str, measured: float) -> dict:
    row = {"config": config, "run": "pick", "complete": True}
    for key in ("prefill_s", "decode_s_per_token"):
        row |= {f"{key}_measured": measured, f"{key}_spread_low": 1.0, f"{key}_spread_high": 1.0}
    return row


def _fit_model_error():
    """validation/fit_model_error.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fit_model_error", ROOT / "validation" / "fit_model_error.py"
    )
    fme = importlib.util.module_from_spec(spec)
    sys.modules["fit_model_error"] = fme  # pydantic resolves the script's annotations through its module
    spec.loader.exec_module(fme)
    return fme
