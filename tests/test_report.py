"""HTML reports: each chart builder, escaping, the results-folder pairing and the CLI paths. The browser check
is in test_report_browser.py. Traces come from the simulator at small contexts; "measured" ones are simulated on
a slower link and relabelled, so predicted and measured differ as they would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from roofsim import ops, roofline
from roofsim.cli import main
from roofsim.families import HeadOffloadPlan, ResidentPlan
from roofsim.limits import Limits
from roofsim.planner import search
from roofsim.predict import predict
from roofsim.report import alternatives, build, memory, summary, timeline, validation
from roofsim.report.page import Page, Section, esc, table
from roofsim.report.resolve import gpu_by_device_name, resolve
from roofsim.report.roofline import operator_points, roofline_figure
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.sourced import Sourced
from roofsim.trace import Fingerprint, MemorySample, Span, Trace
from roofsim.units import fmt_bytes
from roofsim.workload import Workload

GPU = load_gpu("h100-sxm")
HOST = load_host(GPU.default_host)
MODEL = load_model("llama-3-8b")
WORK = Workload(context=32768, gen=4)
PLAN = HeadOffloadPlan(prefill_chunk=8192)
EVIL = "<script>alert(1)</script>"


def predicted_trace(plan=PLAN, work=WORK, model=MODEL, keep="sample", decode_steps=2) -> Trace:
    return simulate(plan, model, GPU, HOST, work, decode_steps=decode_steps, keep=keep)


def measured_trace(
    plan=PLAN, work=WORK, keep="all", h2d_gbps=40.0, gpu_name="NVIDIA H100 80GB HBM3"
) -> Trace:
    """A stand-in for the executor's trace: the simulator on a slower link, named as the executor names it."""
    link = GPU.link.model_copy(update={"h2d_gbps": Sourced(value=h2d_gbps, assumed="test")})
    t = simulate(plan, MODEL, GPU.model_copy(update={"link": link}), HOST, work, decode_steps=2, keep=keep)
    t.header.producer = "measured"
    t.header.tool = "roofsim.executor"
    t.header.gpu = gpu_name
    t.header.host = "INTEL(R) XEON(R) PLATINUM 8480+"
    t.header.fingerprint = Fingerprint(gpu_name=gpu_name, driver="580.159.04", torch="2.11.0", pcie_gen=5)
    t.header.notes = ["test stand-in for a measured run"]
    t.header.profile = None  # an executor run given no GPU spec names none
    return t


def write_results(root, configs=("cfg-a", "cfg-b")) -> None:
    """The validation campaign's layout: a folder per configuration with predicted.json, measured.json and a
    comparison, a runner-up in alt1/, plus files the pairing must pass over or report."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "h100-probe.json").write_text(json.dumps({"copies": [1, 2]}))
    for i, name in enumerate(configs):
        work = Workload(context=16384 * (i + 1), gen=2)
        folder = root / name
        folder.mkdir()
        predicted_trace(work=work).write(folder / "predicted.json")
        measured_trace(work=work, keep="sample", h2d_gbps=45.0 + 5 * i).write(folder / "measured.json")
        (folder / "comparison.json").write_text("{}")
    alt = root / configs[0] / "alt1"
    alt.mkdir()
    other = ResidentPlan(prefill_chunk=8192)
    predicted_trace(plan=other, work=Workload(context=16384, gen=2)).write(alt / "predicted.json")
    measured_trace(plan=other, work=Workload(context=16384, gen=2), keep="sample").write(
        alt / "measured.json"
    )
    lone = root / "cfg-lone"
    lone.mkdir()
    predicted_trace(work=Workload(context=8192, gen=2)).write(lone / "predicted.json")
    broken = root / "cfg-broken"
    broken.mkdir()
    predicted_trace(work=Workload(context=8192, gen=2)).write(broken / "predicted.json")
    (broken / "measured.json").write_text('{"not": "a trace"}')


# ---- roofline ------------------------------------------------------------------------------------------------


def _trace_named(fig, name):
    return next(t for t in fig.data if t.name.startswith(name))


def test_roofline_is_log_log_with_the_spec_ceilings():
    pred = predict(PLAN, MODEL, GPU, HOST, WORK)
    fig, skipped = roofline_figure(MODEL, GPU, HOST, WORK, PLAN, pred)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    tensor = _trace_named(fig, "tensor ")
    assert list(tensor.y) == [pytest.approx(GPU.tensor_flops)] * 2
    slopes = {
        "HBM": GPU.hbm_bytes_per_s,
        "PCIe H2D": GPU.link.h2d_gbps.value * 1e9,
        "PCIe D2H": GPU.link.d2h_gbps.value * 1e9,
        "CPU RAM": HOST.ram_bytes_per_s,
    }
    for name, bandwidth in slopes.items():
        line = _trace_named(fig, name)
        assert line.y[0] / line.x[0] == pytest.approx(bandwidth)
        assert line.y[-1] == pytest.approx(GPU.tensor_flops)  # a bandwidth line meets the compute roof
        assert "GB/s" in line.hovertemplate  # with the spec numbers it comes from
    assert "kv_write (prefill)" in skipped  # no FLOPs: a log-log chart cannot place it


def test_roofline_has_every_operator_with_its_numbers():
    fig, _ = roofline_figure(MODEL, GPU, HOST, WORK, PLAN)
    chunk = PLAN.prefill_chunk
    expected = [
        r
        for rows in (
            roofline.rows(ops.layer_ops(MODEL, chunk, WORK.context - chunk, 1), GPU),
            roofline.rows(ops.layer_ops(MODEL, 1, WORK.context, 1) + ops.head_ops(MODEL, 1), GPU),
        )
        for r in rows
        if r.flops > 0 and r.hbm_bytes > 0
    ]
    points = [t for t in fig.data if t.legendgroup == "operators"]
    assert sum(len(t.x) for t in points) == len(expected)
    hovers = [h for t in points for h in t.hovertext]
    assert all(all(w in h for w in ("FLOPs", "bytes", "time", "bound")) for h in hovers)
    attention = next(r for r in expected if r.name == "attention")
    xs = [x for t in points for x in t.x]
    assert attention.intensity in [pytest.approx(x) for x in xs]


def test_roofline_places_the_decode_step_per_link_byte():
    pred = predict(PLAN, MODEL, GPU, HOST, WORK)
    fig, _ = roofline_figure(MODEL, GPU, HOST, WORK, PLAN, pred)
    h2d = next(t for t in fig.data if t.name == "decode step, per H2D byte")
    decode = pred.summary.decode
    assert h2d.x[0] == pytest.approx(decode.flops / decode.h2d_bytes)
    assert h2d.y[0] == pytest.approx(decode.flops / decode.time_s)
    points, _ = operator_points(MODEL, GPU, WORK, PLAN)
    assert {p.phase for p in points} == {"prefill", "decode"}


# ---- timeline ------------------------------------------------------------------------------------------------


def test_picks_the_middle_prefill_chunk_and_the_first_decode_step():
    t = predicted_trace(keep="all")  # 4 chunks of 8192
    assert timeline.steps_present(t, "prefill") == [0, 1, 2, 3]
    assert timeline.pick_step(t, "prefill") == 2
    assert timeline.pick_step(t, "decode") == 0
    sampled = predicted_trace(keep="sample")  # chunks 0, 2, 3 kept
    assert timeline.pick_step(sampled, "prefill") == 2
    assert timeline.nearest_step(sampled, "prefill", 1) in (0, 2)


def test_timeline_draws_every_span_of_the_picked_steps():
    t = predicted_trace()
    fig = timeline.timeline_figure([t])
    n_prefill = sum(1 for s in t.spans if s.phase == "prefill" and s.step == 2)
    n_decode = sum(1 for s in t.spans if s.phase == "decode" and s.step == 0)
    bars_1 = sum(len(b.x) for b in fig.data if b.xaxis == "x")
    bars_2 = sum(len(b.x) for b in fig.data if b.xaxis == "x2")
    assert (bars_1, bars_2) == (n_prefill, n_decode)
    assert all(min(b.base) >= 0 for b in fig.data)
    assert {b.name for b in fig.data} >= {"h2d", "attention", "gemm"}


def test_timeline_puts_predicted_and_measured_on_one_axis():
    fig = timeline.timeline_figure([predicted_trace(), measured_trace()])
    rows = {y for b in fig.data for y in b.y}
    assert "compute stream · predicted" in rows and "compute stream · measured" in rows
    assert "H2D copy · measured" in rows
    # both lanes of a panel share its x axis, and each step's end is marked
    assert {b.xaxis for b in fig.data} == {"x", "x2"}
    assert len(fig.layout.shapes) == 4


def test_merging_bounds_the_bars_and_keeps_the_totals():
    spans = [
        Span(resource="h2d", kind="h2d", phase="decode", step=0, layer=i // 100, slot=i % 8,
             start_s=i * 1e-5, end_s=i * 1e-5 + 8e-6, bytes=1e6)
        for i in range(20000)
    ]  # fmt: skip
    bars = timeline.merge_bars(spans, max_bars=500)
    assert len(bars) <= 500
    assert sum(b.count for b in bars) == 20000
    assert sum(b.nbytes for b in bars) == pytest.approx(2e10)
    assert bars[0].layers[0] == 0 and max(b.layers[1] for b in bars) == 199
    assert timeline.merge_bars(spans[:10]) and len(timeline.merge_bars(spans[:10])) == 10


def test_no_spans_no_timeline():
    t = simulate(PLAN, MODEL, GPU, HOST, WORK, decode_steps=1, keep="none")
    assert timeline.timeline_figure([t]) is None


# ---- memory --------------------------------------------------------------------------------------------------


def test_thinning_keeps_the_peak_and_the_ends():
    samples = [
        MemorySample(t_s=i * 1e-3, gpu={"weights": 1e9, "activations": (i % 7) * 1e6}) for i in range(20000)
    ]
    samples[12345] = MemorySample(t_s=12.345, gpu={"weights": 1e9, "activations": 5e9})
    thin = memory.thin(samples)
    assert len(thin) <= memory.MAX_SAMPLES + 1
    assert max(s.gpu_bytes for s in thin) == pytest.approx(6e9)
    assert thin[0] is samples[0] and thin[-1] is samples[-1]
    assert [s.t_s for s in thin] == sorted(s.t_s for s in thin)


def test_memory_is_stacked_by_kind_under_the_usable_line():
    t = predicted_trace()
    limits = Limits()
    fig = memory.memory_figure([t], GPU.capacity_bytes, limits.gpu_bytes(GPU))
    stacked = [d for d in fig.data if d.stackgroup]
    assert {d.name for d in stacked} >= {"weights", "slot buffers", "activations"}
    weights = next(d for d in stacked if d.name == "weights")
    assert max(weights.y) == pytest.approx(MODEL.weight_bytes / 2**30, rel=0.05)
    lines = [s.y0 for s in fig.layout.shapes if s.y0 == s.y1]
    assert pytest.approx(limits.gpu_bytes(GPU) / 2**30) in lines
    assert any(d.name.startswith("pinned host") for d in fig.data)


def test_memory_by_kind_at_the_peak_adds_up():
    pred = predict(PLAN, MODEL, GPU, HOST, WORK)
    html = build.memory_table(pred).markup
    assert "slot buffers" in html and "KV" in html
    use = pred.summary.memory
    assert fmt_bytes(use.gpu_bytes) in html and fmt_bytes(use.host_bytes) in html


def test_busy_from_spans_counts_overlaps_once_and_waits_not_at_all():
    def span(resource, kind, a, b, step=0):
        return Span(resource=resource, kind=kind, phase="decode", step=step, start_s=a, end_s=b)

    t = predicted_trace(keep="none").model_copy(
        update={
            "spans": [
                span("compute", "layer", 0.0, 1.0),
                span("compute", "attention", 0.2, 0.4),  # inside the layer span: no extra time
                span("h2d", "h2d", 0.0, 0.5),
                span("h2d", "h2d", 0.4, 0.8),
                span("host", "sync", 0.0, 1.0),
                span("compute", "gemm", 2.0, 2.5, step=1),
            ]
        }
    )
    busy, total = summary.busy_from_spans(t, "decode")
    assert total == pytest.approx(1.5)
    assert busy == {"compute": pytest.approx(1.5), "h2d": pytest.approx(0.8)}


# ---- plan comparison -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_result():
    return search(
        MODEL, load_gpu("rtx4090"), load_host("epyc-rome-milan"), Workload(context=131072), refine_top=3
    )


def test_pareto_chart_and_table(plan_result):
    alt = alternatives.from_plan_result(plan_result)
    fig = alternatives.pareto_figure(alt, Limits().gpu_bytes(load_gpu("rtx4090")))
    front = next(t for t in fig.data if t.name == "Pareto frontier")
    assert len(front.x) == len(plan_result.pareto) > 0
    best = next(t for t in fig.data if t.name == "chosen plan")
    assert best.y[0] == pytest.approx(plan_result.best.score)
    assert fig.layout.xaxis.type == "log"
    html = alternatives.alternatives_table(alt).markup
    assert plan_result.best.plan.family in html and "Pareto" in html
    assert sum(len(t.x) for t in fig.data if t.name in {c.plan.family for c in plan_result.ranked}) == len(
        plan_result.ranked
    )


def test_predict_alternatives_mark_the_chosen_plan():
    preds = [predict(p, MODEL, GPU, HOST, WORK) for p in (PLAN, ResidentPlan(prefill_chunk=8192))]
    alt = alternatives.from_predictions(preds, chosen=preds[0])
    assert alt.best.prediction is preds[0]
    assert len(alt.ranked) == 2 and not alt.infeasible


# ---- validation folder ---------------------------------------------------------------------------------------


def test_results_folder_pairs_and_problems(tmp_path):
    write_results(tmp_path / "h100")
    res = validation.find_pairs(tmp_path / "h100")
    assert sorted(p.name for p in res.pairs) == ["cfg-a", "cfg-a/alt1", "cfg-b"]
    problems = " ".join(res.problems)
    assert "cfg-lone/predicted.json" in problems and "cfg-broken/measured.json" in problems
    assert "probe" not in problems and "comparison" not in problems
    pair = next(p for p in res.pairs if p.name == "cfg-b")
    row = pair.comparison.row("decode_s_per_token")
    assert row.measured > row.predicted  # the stand-in measurement runs on a slower link
    fig = validation.scatter_figure(res)
    assert [fig.layout[f"xaxis{i}"].type for i in ("", "2", "3")] == ["log"] * 3
    for axis in ("x", "x2", "x3"):
        pts = [d for d in fig.data if d.xaxis == axis and d.mode == "markers"]
        assert sum(len(d.x) for d in pts) == 3
    bands = [d for d in fig.data if d.fill == "toself" and d.xaxis == "x"]
    assert sorted(d.name for d in bands) == ["±10%", "±5%"]
    err = validation.error_pct(row.predicted, row.measured)
    assert f"{err:+.1f}%" in validation.pairs_table(res).markup


def test_pairs_by_shared_name_in_one_folder(tmp_path):
    predicted_trace().write(tmp_path / "run1-predicted.json")
    measured_trace(keep="sample").write(tmp_path / "run1-measured.json")
    predicted_trace().write(tmp_path / "run2-predicted.json")
    measured_trace(keep="sample").write(tmp_path / "run2-measured.json")
    res = validation.find_pairs(tmp_path)
    assert sorted(p.name for p in res.pairs) == ["run1", "run2"] and not res.problems


def test_a_folder_without_pairs_says_so(tmp_path):
    (tmp_path / "h100-probe.json").write_text("{}")
    page = build.validation_report(tmp_path)
    html = page.render()
    assert "No predicted/measured pairs" in html and not page.figures


# ---- resolving what a measured trace names -------------------------------------------------------------------


def test_device_names_resolve_to_builtin_specs():
    assert gpu_by_device_name("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert gpu_by_device_name("NVIDIA GeForce RTX 4090").name == "rtx4090"
    assert gpu_by_device_name("NVIDIA H100") is None  # SXM or PCIe: ambiguous, so no guess
    assert gpu_by_device_name("Imaginary GPU 9000") is None
    t = measured_trace(keep="none")
    t.header.gpu_mem_bytes = 24e9
    found = resolve(t)
    assert found.complete and found.gpu.name == "h100-sxm" and found.host.name == GPU.default_host
    assert found.limits.gpu_mem_bytes == 24e9
    assert any("chosen for the device" in n for n in found.notes)


H100_RESULTS = Path(__file__).parent.parent / "validation/results/h100"
CALIBRATED = H100_RESULTS / "calibrated/h100-sxm-calibrated.toml"


@pytest.mark.skipif(not CALIBRATED.is_file(), reason="no calibrated H100 profile committed")
def test_a_calibrated_profile_brings_its_host_file():
    found = resolve(measured_trace(keep="none"), gpu=str(CALIBRATED))
    assert found.gpu.name == "h100-sxm-calibrated" and found.host is not None


@pytest.mark.skipif(not (H100_RESULTS / "campaign").is_dir(), reason="no committed H100 campaign")
def test_validation_report_headline_counts_what_summarize_counts():
    """The report's headline is validation/summarize.py's closing line (the numbers docs/validation.md and the
    README quote): the same configurations, one chosen plan each, and the same errors; its bands count those
    runs too, not the runners-up measured for the regret, which the figure and table still show."""
    from roofsim.validate import closing_numbers, summarize

    rows, line = summarize(H100_RESULTS)
    k = closing_numbers(line)
    results = validation.find_pairs(H100_RESULTS)
    lines = validation.headline(results)
    html = build.validation_report(H100_RESULTS, results).render()
    assert lines[0] == (
        f"{int(k['n'])} configurations, each one's chosen plan, as validation/summarize.py counts them: predicted "
        f"in advance, decode per token error median {k['decode_median_abs_err_pct']:.1f}%, p90 "
        f"{k['decode_p90_abs_err_pct']:.1f}%; prefill error median {k['prefill_median_abs_err_pct']:.1f}%, p90 "
        f"{k['prefill_p90_abs_err_pct']:.1f}%; peak GPU memory error at most {k['mem_err_max_pct']:.1f}%; "
        f"planner regret at most {k['regret_max_pct']:.1f}% (against the runners-up and each other family's best "
        f"where measured); the band holds {k['band_coverage_pct']:.1f}% of the measured times."
    )
    assert all(esc(text) in html for text in lines)
    n = sum(not r["failed"] for r in rows)
    for label in ("prefill", "decode per token", "peak GPU memory"):
        assert any(text.startswith(f"{label}: {n} configurations") for text in lines)
    worst_memory = max((r["peak_gpu_bytes"][2] for r in rows if not r["failed"]), key=abs)
    assert f"worst {worst_memory:+.1f}%" in lines[3] and abs(worst_memory) == pytest.approx(
        k["mem_err_max_pct"], abs=0.05
    )
    pairs = len(results.pairs)
    assert pairs > n and f"also show {pairs - n} more measured runs" in lines[-1]


@pytest.mark.skipif(
    not (H100_RESULTS / "executor_trace_head_offload_64K.json").is_file(), reason="no measured H100 trace"
)
def test_report_of_a_real_h100_trace(tmp_path, capsys):
    src = H100_RESULTS / "executor_trace_head_offload_64K.json"
    out = tmp_path / "h100.html"
    assert main(["report", str(src), "--gpu", str(CALIBRATED), "-o", str(out)]) == 0
    html = out.read_text()
    assert "measured vs predicted" in html and "NVIDIA H100 80GB HBM3" in html
    # plotly writes "·" as is with orjson installed and as \u00b7 without it
    assert any(f"compute stream {dot} measured" in html for dot in ("·", "\\u00b7"))
    assert out.stat().st_size < 10e6


# ---- pages: self-contained and escaped -----------------------------------------------------------------------


def test_page_is_self_contained_and_counts_its_figures():
    page = build.trace_report(measured_trace(), source="measured.json")
    html = page.render()
    assert len(page.figures) == 3  # roofline, timeline, memory
    assert html.count('class="plotly-graph-div"') == 3
    assert html.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined once
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing fetched: no CDN, no server
    assert html.count("<script") == 1 + len(page.figures)
    assert "measured vs predicted" in html


def test_user_strings_are_escaped_everywhere():
    evil_model = MODEL.model_copy(update={"name": EVIL})
    preds = [predict(PLAN, evil_model, GPU, HOST, WORK)]
    pages = [build.prediction_report(preds, evil_model, GPU, HOST, WORK, Limits())]
    t = measured_trace()
    t.header.model = EVIL
    t.header.gpu = EVIL
    t.header.host = EVIL
    t.header.notes.append(EVIL)
    t.header.fingerprint = Fingerprint(gpu_name=EVIL, driver=EVIL)
    t.spans[0].name = EVIL
    pages.append(build.trace_report(t, source=EVIL))
    for page in pages:
        html = page.render()
        assert EVIL not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert html.count("<script") == 1 + len(page.figures)


def test_table_and_section_escape():
    page = Page(EVIL, EVIL, badge=EVIL)
    page.add(Section(EVIL, EVIL, [table([EVIL], [[EVIL]])]))
    html = page.render()
    assert EVIL not in html and esc(EVIL) in html
    assert html.count("<script") == 1


# ---- CLI -----------------------------------------------------------------------------------------------------


def test_cli_report_of_a_measured_trace_uses_the_predicted_one_beside_it(tmp_path, capsys):
    write_results(tmp_path / "h100", configs=("cfg-a",))
    src = tmp_path / "h100" / "cfg-a" / "measured.json"
    assert main(["report", str(src)]) == 0
    out = src.with_suffix(".html")
    assert f"report written to {out}" in capsys.readouterr().out
    html = out.read_text()
    assert "written beside the measurement" in html and "measured vs predicted" in html


def test_cli_report_paths(tmp_path, capsys, monkeypatch):
    t = predicted_trace()
    t.write(tmp_path / "trace.json")
    assert main(["report", str(tmp_path / "trace.json"), "-o", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").stat().st_size < 10e6
    write_results(tmp_path / "h100", configs=("cfg-a",))
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(tmp_path / "h100")]) == 0
    assert (tmp_path / "validation-h100.html").is_file()
    capsys.readouterr()
    for argv, words in (
        (["report", str(tmp_path / "missing.json")], "does not exist"),
        (["report", str(tmp_path / "h100" / "h100-probe.json")], "is not a roofsim trace"),
        (["report", str(tmp_path / "trace.json"), "-o", str(tmp_path / "no" / "x.html")], "does not exist"),
        (["predict", "--gpu", "h100-sxm", "--report"], "--report needs --context"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and err.startswith("roofsim: error:")


def test_cli_predict_and_plan_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--gpu", "h100-sxm", "--context", "32K", "--gen", "4"]
    assert main(["predict", *args, "--plan", "head_offload", "--json", "--report", "p.html"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # the JSON document stays clean: the report line goes to stderr
    assert "report written to p.html" in captured.err
    assert main(["predict", *args, "--report"]) == 0
    assert (tmp_path / "roofsim-predict-llama-3-8b-h100-sxm-32K.html").is_file()
    assert main(["plan", *args, "--top", "2", "--report", "plan.html"]) == 0
    html = (tmp_path / "plan.html").read_text()
    assert "Plan comparison" in html and "Pareto frontier" in html
    for name in ("p.html", "plan.html"):
        assert (tmp_path / name).stat().st_size < 10e6


def test_a_trace_with_tens_of_thousands_of_spans_stays_small(tmp_path):
    base = predicted_trace(keep="none")
    spans = [
        Span(resource=r, kind=k, phase=phase, step=step, layer=i % 32, slot=i % 8,
             start_s=i * 2e-6, end_s=i * 2e-6 + 1.5e-6, bytes=4096.0, name=f"slot {i % 8}")
        for phase, step in (("prefill", 0), ("prefill", 1), ("decode", 0))
        for r, k in (("compute", "attention"), ("h2d", "h2d"), ("d2h", "d2h"))
        for i in range(10000)
    ]  # fmt: skip
    memory_samples = [
        MemorySample(t_s=i * 1e-5, gpu={"weights": 1.6e10, "kv_buffers": (i % 3) * 1e8}) for i in range(50000)
    ]
    t = base.model_copy(update={"spans": spans, "memory": memory_samples})
    fig = timeline.timeline_figure([t])
    assert sum(len(b.x) for b in fig.data if b.xaxis == "x2") <= timeline.MAX_BARS
    size = build.trace_report(t).write(tmp_path / "big.html")
    assert size < 10e6


def test_a_calibrated_profile_shows_its_host_pace_and_call_costs_in_the_header():
    """The header's GPU table lists the calibrated runtime figures (the attention calls' host cost, the host-pace
    gauges) and the gathered-stage copy rate where the profile has them, and leaves them out where it does not."""
    from roofsim.report.header import gpu_rows

    calibrated = load_gpu(
        str(Path(__file__).parent.parent / "validation/results/h100/s22/h100-sxm-calibrated.toml")
    )
    names = [row[0] for row in gpu_rows(calibrated)]
    for name in (
        "H2D of a just-gathered stage",
        "attention call (host)",
        "host pace: loop",
        "host pace: tiny step",
    ):
        assert name in names
    assert not any(n.startswith("host pace") for n in (row[0] for row in gpu_rows(load_gpu("h100-sxm"))))
