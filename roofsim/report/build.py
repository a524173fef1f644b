"""The four reports, each a Page: a prediction (`predict --report`), a plan search (`plan --report`), one trace
(`report trace.json`, measured ones beside their simulated prediction), and a validation results directory
(`report validation/results/<gpu>/`)."""

from __future__ import annotations

import math
from pathlib import Path

from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.planner.search import PlanResult
from roofsim.predict import predict
from roofsim.report import alternatives
from roofsim.report.header import RunInfo, header_section
from roofsim.report.memory import memory_figure
from roofsim.report.page import Page, Raw, Section, esc, paragraph, table
from roofsim.report.resolve import resolve
from roofsim.report.roofline import roofline_figure
from roofsim.report.style import MEMORY_LABELS
from roofsim.report.summary import phase_table
from roofsim.report.timeline import timeline_figure
from roofsim.report.validation import Results, find_pairs, headline, pairs_table, scatter_figure
from roofsim.sim import simulate
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import Trace, TraceHeader
from roofsim.units import fmt_bytes, fmt_tokens
from roofsim.workload import Workload

MAX_SIMULATED_CHUNKS = 256  # beyond this, simulate evenly spaced prefill chunks and interpolate the rest


def simulate_plan(
    plan, model: ModelSpec, gpu: GpuSpec, host: HostSpec, work: Workload, limits: Limits, decode_steps: int
) -> Trace:
    """The plan's predicted trace, keeping spans for the first, middle and last prefill chunk and the first
    and last decode step (what the timeline draws)."""
    chunk = min(work.context, plan.prefill_chunk or work.context)
    chunks = math.ceil(work.context / chunk)
    sample = None if chunks <= MAX_SIMULATED_CHUNKS else 65
    return simulate(
        plan, model, gpu, host, work, limits, decode_steps=decode_steps, keep="sample", prefill_sample=sample
    )


def _run_info(h: TraceHeader, model: ModelSpec | None, gpu: GpuSpec | None, host: HostSpec | None) -> RunInfo:
    """What the header section shows of a trace: the names it gives and the specs they resolved to."""
    return RunInfo(
        h.model,
        h.gpu,
        h.host,
        h.workload,
        h.plan,
        model,
        gpu,
        host,
        h.fingerprint,
        list(h.notes),
        h.gpu_mem_bytes,
        h.host_mem_bytes,
        h.profile,
    )


def _title(model_name: str, gpu_name: str, work: Workload | None, plan=None) -> str:
    ctx = f", {fmt_tokens(work.context)} tokens" if work else ""
    fam = f": {plan.family}" if plan is not None else ""
    return f"{model_name} on {gpu_name}{ctx}{fam}"


def _detail_sections(
    page: Page,
    info: RunInfo,
    pred: Trace | None,
    traces: list[Trace],
    limits: Limits,
    extra_notes: list[str] | None = None,
) -> None:
    """Where the time goes, the roofline, the timeline and the memory of one plan."""
    s = page.add(
        Section(
            "Where the time goes",
            "Per phase: time, peak memory, the resource that binds and the busy share of each resource. "
            "Analytic: the roofline per operator and the link model; simulated: the discrete-event simulator "
            "playing the plan's issue order on streams, copy engines, CPU and host thread.",
            anchor="summary",
        )
    )
    s.blocks.append(phase_table(pred, traces))
    for note in extra_notes or []:
        s.blocks.append(paragraph(note, "note"))
    if (
        info.model is not None
        and info.gpu is not None
        and info.workload is not None
        and info.plan is not None
    ):
        fig, skipped = roofline_figure(info.model, info.gpu, info.host, info.workload, info.plan, pred)
        s = page.add(
            Section(
                "Roofline",
                "Each operator of one decoder layer is a point at its FLOPs per HBM byte and the FLOP/s it "
                "attains at its predicted time (colour: what binds it). The lines are the ceilings of this "
                "GPU and host; hover a line for the spec numbers it comes from. Stars place each whole phase "
                "per byte of each stream it moves: a decode step on the PCIe H2D line is bound by the link.",
                anchor="roofline",
            )
        )
        s.blocks.append(fig)
        if skipped:
            s.blocks.append(paragraph(f"not drawn (no FLOPs or no bytes): {', '.join(skipped)}", "note"))
    fig = timeline_figure(traces)
    s = page.add(
        Section(
            "Timeline",
            "What each resource does during one prefill chunk (the middle one kept) and one decode step (the "
            "first kept), from the start of that step. Hover a bar for its layer, slot, bytes and FLOPs.",
            anchor="timeline",
        )
    )
    s.blocks.append(
        paragraph("No spans in the trace (it was written with spans kept: none).", "note")
        if fig is None
        else fig
    )
    fig = memory_figure(
        traces,
        capacity_bytes=info.gpu.capacity_bytes if info.gpu else None,
        usable_bytes=limits.gpu_bytes(info.gpu) if info.gpu else None,
    )
    s = page.add(
        Section(
            "Memory",
            "GPU memory over the run, stacked by kind; the dashed line is what the plan may use (capacity "
            "less the CUDA context and allocator reserve). Host memory is the pinned KV store.",
            anchor="memory",
        )
    )
    s.blocks.append(paragraph("No memory samples in the trace.", "note") if fig is None else fig)
    if pred is not None and pred.summary.memory is not None:
        s.blocks.append(Raw("<h3>At the peak, by kind (analytic)</h3>"))
        s.blocks.append(memory_table(pred))
        notes = [
            n
            for t in traces
            if t.header.producer == "predicted"
            for n in t.header.notes
            if "interpolated" in n or "simulated" in n
        ]
        for note in dict.fromkeys(notes):
            s.blocks.append(paragraph(f"simulator: {note}", "note"))
        for t in traces:
            if t.memory and t.header.producer == "measured":
                first, last = t.memory[0].t_s, t.memory[-1].t_s
                text = f"measured: {len(t.memory)} memory samples, from {first:.3g} s to {last:.3g} s"
                s.blocks.append(paragraph(text, "note"))


def memory_table(pred: Trace) -> Raw:
    """GPU and host bytes by kind at the peak, from the analytic model's trace."""
    use = pred.summary.memory
    gpu, host = use.gpu, use.host
    kinds = list(dict.fromkeys([*gpu, *host]))
    rows = [
        [
            MEMORY_LABELS.get(k, k),
            fmt_bytes(gpu[k]) if k in gpu else None,
            fmt_bytes(host[k]) if k in host else None,
        ]
        for k in kinds
        if gpu.get(k) or host.get(k)
    ]
    rows.append(["total", fmt_bytes(use.gpu_bytes), fmt_bytes(use.host_bytes)])
    return table(["kind", "GPU", "host"], rows, numeric={1, 2})


def _alternatives_section(page: Page, alt: alternatives.Alternatives, gpu_limit: float, intro: str) -> None:
    s = page.add(Section("Plan comparison", intro, anchor="plans"))
    if alt.ranked:
        s.blocks.append(alternatives.pareto_figure(alt, gpu_limit))
        s.blocks.append(alternatives.alternatives_table(alt))
    else:
        s.blocks.append(paragraph("No plan fits.", "warn"))
    front = alternatives.pareto_table(alt)
    if front is not None:
        s.blocks.append(Raw("<h3>Pareto frontier: less GPU memory costs time</h3>"))
        s.blocks.append(front)
    missing = alternatives.infeasible_table(alt)
    if missing is not None:
        s.blocks.append(Raw("<h3>Families with no plan that fits</h3>"))
        s.blocks.append(missing)


def prediction_report(
    preds: list[Trace],
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    work: Workload,
    limits: Limits,
    trace: Trace | None = None,
) -> Page:
    """`predict --report`: the fastest plan that fits (by decode time per token) in detail, every family's
    best plan in the comparison."""
    feasible = [p for p in preds if p.feasible]
    chosen = min(
        feasible or preds,
        key=lambda p: (p.plan.approximate, p.summary.decode_s_per_token, p.summary.prefill_s),
    )
    if trace is None:
        trace = simulate_plan(chosen.plan, model, gpu, host, work, limits, min(work.gen, 8))
    page = Page(
        _title(model.name, gpu.name, work, chosen.plan),
        "Predicted by roofsim's analytic model and its discrete-event simulator from the spec files: not a "
        "measurement.",
        badge="predicted",
    )
    info = _run_info(chosen.header, model, gpu, host)
    if len(preds) > 1:
        info.notes.append(
            f"Shown in detail: {chosen.plan.family} ({chosen.plan.knobs()}), the "
            + (
                "fastest exact plan that fits by decode time per token"
                if feasible
                else "closest plan; none fits"
            )
            + f", of {len(preds)} predicted."
        )
    page.add(header_section(info))
    _detail_sections(page, info, chosen, [trace], limits)
    if len(preds) > 1:
        _alternatives_section(
            page,
            alternatives.from_predictions(preds, chosen),
            limits.gpu_bytes(gpu),
            "The best plan of each family from predict's sweep, by the analytic model.",
        )
    return page


def plan_report(
    result: PlanResult,
    model: ModelSpec,
    gpu: GpuSpec,
    host: HostSpec,
    limits: Limits,
    explanation: str = "",
    trace: Trace | None = None,
) -> Page:
    """`plan --report`: the chosen plan in detail, the alternatives and the Pareto frontier."""
    best = result.best
    work = best.prediction.header.workload
    if trace is None:
        trace = simulate_plan(best.plan, model, gpu, host, work, limits, min(work.gen, 8))
    page = Page(
        _title(model.name, gpu.name, work, best.plan),
        f"The planner's choice for objective {result.objective}, predicted by roofsim's analytic model and "
        "its discrete-event simulator: not a measurement.",
        badge="predicted plan",
    )
    info = _run_info(best.prediction.header, model, gpu, host)
    page.add(header_section(info))
    if explanation:
        page.sections[-1].blocks.insert(
            0, Raw(f'<p class="intro"><b>Why this plan:</b> {esc(explanation)}</p>')
        )
    _detail_sections(page, info, best.prediction, [trace], limits)
    screened = f"{result.screened} plans screened analytically, the best refined with the simulator. "
    _alternatives_section(
        page,
        alternatives.from_plan_result(result),
        limits.gpu_bytes(gpu),
        screened + "Each point is a plan that fits; the frontier holds those no other plan beats on both "
        "peak GPU memory and the objective.",
    )
    return page


def trace_report(
    trace: Trace,
    source: str = "",
    predicted: Trace | None = None,
    gpu: str | None = None,
    host: str | None = None,
) -> Page:
    """One trace. A measured one is drawn beside a predicted trace of the same plan: `predicted` when given (the
    validation campaign writes one beside each measurement), else the simulator's, when roofsim has specs for
    the model and hardware the trace names (or `gpu`/`host`: names or spec files); otherwise alone, with the
    reason."""
    h = trace.header
    measured = h.producer == "measured"
    found = resolve(trace, predicted if measured else None, gpu, host)
    notes = list(found.notes)
    pred: Trace | None = None
    traces = [trace]
    if measured and predicted is not None:
        traces = [predicted, trace]
        notes.append("predicted trace: the one written beside the measurement")
    if found.complete:
        try:
            pred = predict(h.plan, found.model, found.gpu, found.host, h.workload, found.limits, band=True)
            if measured and predicted is None:
                steps = len(trace.summary.decode.step_s) or len(
                    {s.step for s in trace.spans if s.phase == "decode"}
                )
                steps = max(1, min(16, steps))
                sim = simulate_plan(
                    h.plan, found.model, found.gpu, found.host, h.workload, found.limits, steps
                )
                traces = [sim, trace]
        except UserError as e:
            notes.append(f"no prediction: {e}")
    elif measured and predicted is None:
        notes.append("no prediction beside the measurement: roofsim lacks the specs named above")
    badge = ("measured vs predicted" if len(traces) > 1 else "measured") if measured else "predicted"
    subtitle = (
        f"{'Measured by' if measured else 'Predicted by'} {h.tool}"
        + (f" on {h.fingerprint.gpu_name}" if h.fingerprint else "")
        + (f", {h.created}" if h.created else "")
        + (f"; from {source}" if source else "")
    )
    page = Page(_title(h.model, h.gpu, h.workload, h.plan), subtitle, badge=badge)
    info = _run_info(h, found.model, found.gpu, found.host)
    if not trace.complete:
        info.notes.insert(0, f"this run stopped early: {trace.error or 'no reason recorded'}")
    page.add(header_section(info))
    _detail_sections(page, info, pred, traces, found.limits, notes)
    return page


def validation_report(root: str | Path, results: Results | None = None) -> Page:
    """Predicted against measured per phase for every configuration in a results directory (`results`: its
    pairs, where the caller has read them already)."""
    root = Path(root)
    results = results if results is not None else find_pairs(root)
    gpus = sorted({p.measured.header.gpu for p in results.pairs})
    page = Page(
        f"Validation: {', '.join(gpus) or root.name}",
        f"Predicted against measured, per configuration, from {root}",
        badge="validation",
    )
    s = page.add(
        Section(
            "Predicted against measured",
            "Each point is one configuration: the simulator's prediction (y) against the measurement (x). On "
            "the dotted line the prediction is exact; the shaded bands are ±5% and ±10%.",
            anchor="validation",
        )
    )
    if not results.pairs:
        s.blocks.append(
            paragraph(
                f"No predicted/measured pairs in {root}: expected *predicted*.json and *measured*.json traces, "
                "one pair per configuration folder (the validation campaign writes them).",
                "warn",
            )
        )
    else:
        for line in headline(results):
            s.blocks.append(paragraph(line))
        fig = scatter_figure(results)
        if fig is not None:
            s.blocks.append(fig)
        s.blocks.append(pairs_table(results))
    for problem in results.problems:
        s.blocks.append(paragraph(f"skipped {problem}", "note"))
    prints = {}
    for p in results.pairs:
        fp = p.measured.header.fingerprint
        if fp is not None:
            prints[fp.model_dump_json()] = fp
    if prints:
        s = page.add(Section("Measured on", anchor="fingerprints"))
        keys = sorted({k for fp in prints.values() for k in fp.model_dump(exclude_none=True)})
        rows = [[fp.model_dump().get(k) for k in keys] for fp in prints.values()]
        s.blocks.append(table(keys, rows))
    return page
