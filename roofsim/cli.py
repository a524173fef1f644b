"""Command line: `roofsim predict | roofline | gpus | hosts | models`.

User mistakes print one line `roofsim: error: ...` and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from roofsim import argchecks, ops, roofline
from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.outpath import check_output_dir, check_output_file
from roofsim.plan import family_names, plan_from_dict
from roofsim.predict import predict
from roofsim.specs import list_gpus, list_hosts, list_models, load_gpu, load_host, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.sweep import best_per_family
from roofsim.units import MAX_TOKENS, fmt_bytes_both, fmt_tokens, parse_tokens
from roofsim.workload import Workload


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every user error
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _common(p: argparse.ArgumentParser, context_required: bool = False) -> None:
    p.add_argument("--gpu", required=True, help="GPU name (see `roofsim gpus`) or path to a GPU spec TOML")
    p.add_argument(
        "--model",
        help="model name (see `roofsim models`) or path to a HF config.json (default: a plan file's model, "
        "else llama-3-8b)",
    )
    p.add_argument(
        "--context", required=context_required, help="prompt tokens: 512000, 128K, 1M (K, M = 1024, 1024^2)"
    )
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--gen", default="32", help="tokens generated per sequence (default 32)")
    p.add_argument("--host", help="host platform (default: the GPU spec's) or path to a host spec TOML")
    p.add_argument("--gpu-mem", help="cap GPU memory below the card's, e.g. 24GB")
    p.add_argument("--host-mem", help="host RAM available for the KV, e.g. 1TB (default: the host spec's)")


def _kv_dtype_option(p: argparse.ArgumentParser, plan: bool = False) -> None:
    more = (
        " (default: bf16, and fp8 beside it under --allow-approximate)"
        if plan
        else " (default bf16); fp8 plans are approximate"
    )
    p.add_argument(
        "--kv-dtype",
        metavar="TYPE",
        help="store the KV in bf16 or fp8 (fp8_e4m3: half the bytes, a scale per 16-token block and head)"
        + more,
    )


def _tp_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tp",
        metavar="N",
        help="tensor parallel over N GPUs of a multi-GPU board: each holds 1/N of the heads (and streams their KV "
        "over its own link) and of the MLP, with two all-reduces per layer (default: a plan file's, else 1)",
    )


def _gpu_and_host(args):
    """The GPU spec --gpu names and the host --host names, or the GPU spec's own host."""
    gpu = load_gpu(args.gpu)
    return gpu, load_host(args.host) if args.host is not None else default_host_of(args.gpu, gpu)


def _model(args):
    """--model, else the model a plan file was made for (its spec travels in the document), else llama-3-8b."""
    if args.model is not None:
        return load_model(args.model)
    doc = _plan_document(args.plan) if getattr(args, "plan", None) is not None else None
    if isinstance(doc, dict) and isinstance(doc.get("model_spec"), dict):
        from pydantic import ValidationError

        from roofsim.specs.model import ModelSpec
        from roofsim.specs.tomlfile import first_error

        try:
            return ModelSpec.model_validate(doc["model_spec"])
        except ValidationError as e:
            raise UserError(
                f"plan file {args.plan!r}: its model_spec is not valid: {first_error(e)}"
            ) from None
    if isinstance(doc, dict) and isinstance(doc.get("model"), str):
        return load_model(doc["model"])
    return load_model("llama-3-8b")


def _specs(args):
    gpu, host = _gpu_and_host(args)
    model = _model(args)
    argchecks.positive_int(args.batch, "--batch", argchecks.MAX_BATCH, "sequences")
    return model, gpu, host, argchecks.limits(args.gpu_mem, args.host_mem, gpu)


def _plan_document(text: str) -> dict | None:
    """The JSON document of a plan file (a bare plan or `roofsim plan -o`'s document), or None where `text` names
    a family rather than a file."""
    from roofsim.jsonfile import read_json_object

    path = Path(text)
    if not (text.endswith(".json") or path.exists()):
        return None
    return read_json_object(path, "plan file")


def _resolve_plan(
    text: str,
    model,
    gpu,
    host,
    work: Workload,
    limits: Limits,
    kv_dtype: str | None = None,
    tp: int | None = None,
):
    """--plan: a plan file as written, or a family name, which means that family's best knobs within the limits
    (the candidates `roofsim plan` screens, ranked by the analytic model as `roofsim predict` shows them).
    --kv-dtype stores the plan's KV in that type, --tp runs it over that many GPUs (a plan file's own knobs
    otherwise kept)."""
    plan = _resolve_plan_dtype(text, model, gpu, host, work, limits, kv_dtype, tp or 1)
    if tp is None or tp == plan.tp:
        return plan
    return type(plan).model_validate({**plan.model_dump(), "tp": tp})


def _resolve_plan_dtype(text, model, gpu, host, work, limits, kv_dtype, tp: int):
    from roofsim.families.registry import check_kv_dtype
    from roofsim.plan import family_of
    from roofsim.planner.candidates import in_kv_dtype
    from roofsim.sweep import best_of_family

    doc = _plan_document(text)
    if doc is not None:
        plan = plan_from_dict(doc, where=f"plan file {text!r}")
        if kv_dtype is None or kv_dtype == plan.kv_dtype:
            return plan
        check_kv_dtype(plan.model_construct(**{**dict(plan), "kv_dtype": kv_dtype}))
        moved = in_kv_dtype(plan, kv_dtype)
        if moved is None:
            raise UserError(
                f"plan file {text!r}: its knobs do not take --kv-dtype {kv_dtype} (fp8 streams whole slots: no "
                "token_block, write_back_tokens=1)"
            )
        return moved
    family_of(text, "--plan")
    return best_of_family(text, model, gpu, host, work, limits, kv_dtype or "bf16", tp).plan


def _title(model, gpu, host, work: Workload | None, limits: Limits | None = None) -> str:
    w = f", context {fmt_tokens(work.context)}, batch {work.batch}, gen {work.gen}" if work else ""
    caps = ""
    if limits is not None and limits.gpu_mem_bytes:  # in both bases: 24GB is 22.35 GiB
        caps += f", GPU memory cap {fmt_bytes_both(limits.gpu_mem_bytes)}"
    if limits is not None and limits.host_mem_bytes:
        caps += f", host memory cap {fmt_bytes_both(limits.host_mem_bytes)}"
    return f"{model.name} on {gpu.name} (host {host.name}){w}{caps}"


def cmd_predict(args) -> int:
    from roofsim.display import console, context_sweep_table, predictions_table, roofline_table
    from roofsim.kinds import layer_kinds_notes
    from roofsim.planner.explain import bf16_counterpart

    _check_predict_flags(args)
    model, gpu, host, limits = _specs(args)
    gen = parse_tokens(args.gen, "--gen")
    out = console(args.wide)
    if args.context is None:
        return _context_sweep(model, gpu, host, limits, args, gen, out, context_sweep_table)
    work = Workload(context=parse_tokens(args.context), batch=args.batch, gen=gen)
    kv_dtype = argchecks.kv_dtype(args.kv_dtype)
    tp = _tp(args, model, gpu)
    if args.plan is not None:
        plan = _resolve_plan(args.plan, model, gpu, host, work, limits, kv_dtype, tp)
        preds = [predict(plan, model, gpu, host, work, limits, band=True)]
    else:
        preds = [
            predict(p.plan, model, gpu, host, work, limits, band=True)
            for p in best_per_family(model, gpu, host, work, limits, kv_dtype=kv_dtype or "bf16", tp=tp or 1)
        ]
    traces = _simulate_all(preds, model, gpu, host, work, limits) if args.simulate else None
    if args.json:
        doc = {
            "model": model.name,
            "gpu": gpu.name,
            "host": host.name,
            "workload": work.model_dump(),
            "predictions": [_prediction_doc(p) for p in preds],
        }
        if traces:
            for d, t in zip(doc["predictions"], traces, strict=True):
                d["simulated"] = t.summary.model_dump(mode="json")
        print(json.dumps(doc, indent=2))
    else:
        title = _title(model, gpu, host, work, limits)
        approximate = args.allow_approximate or kv_dtype not in (None, "bf16")  # fp8 was asked for
        out.print(predictions_table(preds, title, traces, args.wide, approximate))
        for p in preds if args.plan else []:
            for note in p.header.notes:
                out.print(f"note: {note}")
            versus = bf16_counterpart(p.plan, p, model, gpu, host, work, limits)
            if versus:
                out.print(f"note: {versus}")
        for note in layer_kinds_notes(model, work):
            out.print(f"note: {note}")
        if args.roofline:
            from roofsim.tensor_parallel import shard_model

            chunk = min(work.context, getattr(preds[0].plan, "prefill_chunk", None) or work.context)
            shard = shard_model(model, preds[0].plan.tp)  # one GPU's operators, its all-reduces with them
            _print_roofline(out, roofline_table, shard, gpu, work, chunk)
    if args.report is not None:
        from roofsim.report.cli import report_prediction

        report_prediction(args.report, preds, model, gpu, host, work, limits, quiet=args.json)
    if args.plan and not preds[0].feasible:
        raise UserError(
            f"plan {preds[0].plan.family} does not fit: {preds[0].summary.reason}; try `roofsim predict` without --plan"
        )
    return 0


def _tp(args, model, gpu) -> int | None:
    """--tp of predict and simulate: the one degree it names (checked against the model and GPU), None if not
    given."""
    return None if args.tp is None else argchecks.tp_degrees(args.tp, model, gpu)[0]


def _check_predict_flags(args) -> None:
    """Options of `predict` that need --context, or that contradict each other."""
    if args.context is None:
        if args.plan is not None:
            raise UserError(
                "--plan needs --context; without --context predict sweeps contexts with the best plan at each"
            )
        for flag, given in (("--report", args.report is not None), ("--roofline", args.roofline)):
            if given:
                raise UserError(f"{flag} needs --context: it shows one workload")
        if args.simulate:
            raise UserError("--simulate needs --context: the context sweep is analytic")
    if args.roofline and args.json:
        raise UserError("--roofline prints tables and --json prints only the document: drop one")
    if args.report:  # "" (a bare --report) is the default name in the working folder
        check_output_file(args.report, "--report")


def _prediction_doc(p) -> dict:
    """One prediction as `--json` prints it: the trace's header and summary (an analytic trace has no spans)."""
    return p.model_dump(mode="json", exclude={"spans", "memory"})


def _simulate_all(preds, model, gpu, host, work, limits):
    from rich.progress import Progress

    from roofsim.sim import simulate

    traces = []
    with Progress(transient=True) as bar:
        job = bar.add_task("simulating", total=len(preds))
        for p in preds:
            traces.append(
                simulate(p.plan, model, gpu, host, work, limits, decode_steps=min(work.gen, 8), keep="none")
            )
            bar.advance(job)
    return traces


def cmd_simulate(args) -> int:
    from roofsim.display import console, trace_table
    from roofsim.sim import simulate

    if args.json is not None:
        check_output_file(args.json, "--json")
    model, gpu, host, limits = _specs(args)
    work = Workload(context=parse_tokens(args.context), batch=args.batch, gen=parse_tokens(args.gen, "--gen"))
    steps = parse_tokens(args.decode_steps, "--decode-steps") if args.decode_steps is not None else work.gen
    plan = _resolve_plan(
        args.plan, model, gpu, host, work, limits, argchecks.kv_dtype(args.kv_dtype), _tp(args, model, gpu)
    )
    argchecks.simulation(plan, work.context, steps, args.decode_steps is not None)
    trace = simulate(plan, model, gpu, host, work, limits, decode_steps=steps, keep=args.keep)
    if args.json is not None:
        trace.write(args.json)
    console(args.wide).print(trace_table(trace, _title(model, gpu, host, work, limits), args.wide))
    if args.json is not None:
        print(f"trace written to {args.json} ({len(trace.spans)} spans, {len(trace.memory)} memory samples)")
    if not trace.summary.feasible:
        raise UserError(f"plan {plan.family} does not fit: {trace.summary.reason}")
    return 0


def cmd_plan(args) -> int:
    from rich.padding import Padding
    from rich.progress import Progress
    from rich.text import Text

    from roofsim.display import console, pareto_table, ranked_table
    from roofsim.planner import PlanDocument, SearchSpace, explain, search

    if args.output is not None:
        check_output_file(args.output, "-o")
    if args.report:  # "" (a bare --report) is the default name in the working folder
        check_output_file(args.report, "--report")
    if args.prompt is not None and args.context is not None:
        raise UserError("--prompt is another name for --context: give one of them")
    model, gpu, host, limits = _specs(args)
    context = args.prompt if args.prompt is not None else args.context
    if context is None:
        raise UserError("say how long the prompt is: --context 1M (or --prompt 1M)")
    work = Workload(context=parse_tokens(context), batch=args.batch, gen=parse_tokens(args.gen, "--gen"))
    restrict = argchecks.restrict(args.restrict, args.allow_approximate)
    names = argchecks.families(args.families, args.allow_approximate, restrict)
    fraction = argchecks.fetch_fraction(
        args.fetch_fraction, argchecks.searched("sparse_fetch", args.allow_approximate, restrict, names)
    )
    space = SearchSpace(
        allow_approximate=args.allow_approximate,
        restrict=restrict,
        evict_budget=argchecks.evict_budget(
            args.evict_budget, argchecks.searched("evict", args.allow_approximate, restrict, names)
        ),
        families=names,
        kv_dtypes=argchecks.kv_dtypes(args.kv_dtype, args.allow_approximate),
        tps=argchecks.tp_degrees(args.tp, model, gpu, many=True),
        **({} if fraction is None else {"fetch_fraction": fraction}),
    )
    argchecks.top(args.top)
    out = console(args.wide)
    with Progress(console=out, transient=True, disable=not out.is_terminal) as bar:
        job = bar.add_task("searching plans", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total)

        result = search(
            model, gpu, host, work, limits, space, args.objective, refine_top=args.top, progress=progress
        )
    best = result.best
    text = explain(result, model, gpu, host, limits)
    doc = PlanDocument(
        plan=best.plan,
        model=model.name,
        model_spec=model,
        gpu=gpu.name,
        host=host.name,
        workload=best.prediction.header.workload,
        objective=args.objective,
        gpu_mem_bytes=limits.gpu_mem_bytes,
        host_mem_bytes=limits.host_mem_bytes,
        prediction=best.prediction.summary,
        simulated=best.simulated,
        explanation=text,
    )
    if args.output is not None:
        Path(args.output).write_text(doc.model_dump_json(indent=2, by_alias=True))
    if args.report is not None:
        from roofsim.report.cli import report_plan

        report_plan(args.report, result, model, gpu, host, limits, text, quiet=args.json)
    if args.json:
        print(doc.model_dump_json(indent=2, by_alias=True))
        return 0
    title = _title(model, gpu, host, best.prediction.header.workload, limits)
    out.print(f"[bold]best plan[/bold] for {title}, objective {args.objective}:")
    out.print(Padding(Text(f"{best.plan.family} {best.plan.knobs()}\n{text}"), (0, 0, 0, 2)))
    screened = f"top alternatives ({result.screened} plans screened analytically)"
    out.print(ranked_table(result, screened, wide=args.wide))
    if result.pareto:
        out.print(pareto_table(result, args.wide))
    if args.output is not None:
        out.print(f"plan written to {args.output}: run it with `roofsim run {args.output}`")
    return 0


def _write_profile(gpu, host, m, output: str, what: str) -> tuple[Path, Path]:
    """Fit and write the profile; a fit that breaks a profile's bounds (a negative cost) names the field."""
    from pydantic import ValidationError

    from roofsim.calibration import write_profile
    from roofsim.specs.tomlfile import first_error

    try:
        return write_profile(gpu, host, m, Path(output))
    except ValidationError as e:
        raise UserError(
            f"{what}: they fit an impossible profile ({first_error(e)}); re-run roofsim calibrate on the GPU machine"
        ) from None


def cmd_calibrate(args) -> int:
    from rich.progress import Progress

    from roofsim.calibration import Measurements
    from roofsim.display import console

    check_output_dir(args.output, "-o")
    gpu, host = _gpu_and_host(args)
    if args.refit is not None:
        from pydantic import ValidationError

        from roofsim.jsonfile import read_json_object
        from roofsim.specs.tomlfile import first_error

        data = read_json_object(args.refit, "--refit measurements file")
        try:
            m = Measurements.model_validate(data)
        except ValidationError as e:
            raise UserError(
                f"--refit {args.refit}: not a measurements file written by roofsim calibrate: {first_error(e)}"
            ) from None
        gpu_path, host_path = _write_profile(gpu, host, m, args.output, f"--refit {args.refit}")
        print(f"calibrated profile (refitted): {gpu_path} (host {host_path}); use it with --gpu {gpu_path}")
        return 0
    try:
        import torch

        from roofsim.executor.calibrate import measure
    except ImportError:
        raise UserError(
            "roofsim calibrate needs torch: pip install 'roofsim[executor]' on the GPU machine"
        ) from None
    model = load_model(args.model)
    if not torch.cuda.is_available():
        raise UserError("roofsim calibrate needs a CUDA GPU; run it on the GPU machine")
    steps = [
        "pinned copies",
        "pageable and batched copies",
        "HBM copy",
        "GEMMs and attention",
        "fixed costs",
        "CPU",
    ]
    began: list[tuple[str, float]] = [("first layer timing", time.perf_counter())]  # when each step began
    with Progress(console=console(), transient=True) as bar:
        job = bar.add_task("calibrating", total=len(steps))

        def progress(step: str) -> None:
            began.append((step, time.perf_counter()))
            bar.update(job, description=step, completed=steps.index(step))

        m = measure(model, progress)
    began.append(("end", time.perf_counter()))
    spent = ", ".join(f"{a} {t1 - t0:.0f} s" for (a, t0), (_, t1) in itertools.pairwise(began))
    print(f"calibration took {began[-1][1] - began[0][1]:.0f} s: {spent}")
    gpu_path, host_path = _write_profile(gpu, host, m, args.output, "the measurements just taken")
    print(f"calibrated profile: {gpu_path} (host {host_path}); use it with --gpu {gpu_path}")
    return 0


def cmd_validate(args) -> int:
    from rich.progress import Progress

    from roofsim.display import console
    from roofsim.validate import (
        archive_results,
        band_line,
        check_config,
        format_table,
        load_configs,
        prefill_after_first_chunk_line,
        repredict,
        run_pace_line,
        summarize,
        validate_one,
    )

    def show(folder) -> None:
        rows, line = summarize(folder)
        print(format_table(rows))
        print(prefill_after_first_chunk_line(rows))
        for extra in (run_pace_line(rows), band_line(folder)):
            if extra is not None:
                print(extra)
        print(line)

    argchecks.timeout(args.timeout)
    if args.repredict is not None:
        given = [
            flag
            for flag, on in (
                ("a configuration file", args.configs),
                ("-o", args.output),
                ("--only", args.only),
                ("--resume", args.resume),
                ("--archive", args.archive),
                ("--force", args.force),
                ("--device", args.device),
            )
            if on
        ]
        if given:
            raise UserError(
                f"--repredict prices a results folder again and runs nothing: drop {', '.join(given)}"
            )
        folder = Path(args.repredict)
        if not folder.is_dir():
            raise UserError(
                f"--repredict {folder}: no such results folder (one written by roofsim validate -o)"
            )
        gpu, host = _gpu_and_host(args)
        n = repredict(folder, args.gpu, gpu, host)
        if not n:
            raise UserError(
                f"--repredict {folder}: no runs.json under it (a folder written by roofsim validate)"
            )
        show(folder)
        return 0
    if not args.configs or not args.output:
        raise UserError("roofsim validate needs a configuration file and -o (or --repredict RESULTS_DIR)")
    out = check_output_dir(args.output, "-o")
    if args.archive is not None:
        check_output_file(args.archive, "--archive")
    configs = load_configs(args.configs)
    if args.only is not None:
        order = {name.strip(): i for i, name in enumerate(args.only.split(","))}
        missing = sorted(set(order) - {c.name for c in configs})
        if missing:
            raise UserError(
                f"--only {missing[0]!r} is not a configuration of {args.configs}; it has "
                f"{', '.join(c.name for c in configs) or 'none'}"
            )
        configs = sorted((c for c in configs if c.name in order), key=lambda c: order[c.name])  # as named
    if not configs:
        raise UserError(f"{args.configs}: no configuration to run (a [[config]] table per configuration)")
    gpu, host = _gpu_and_host(args)
    for cfg in configs:  # every configuration's inputs, before the first one runs
        check_config(cfg, args.configs, gpu)
    with Progress(console=console(), transient=True) as bar:
        job = bar.add_task("validating", total=len(configs))
        for cfg in configs:
            bar.update(job, description=cfg.name)
            if args.resume and (out / cfg.name / "runs.json").is_file():
                bar.advance(job)  # measured by an earlier call into the same folder
                continue
            validate_one(cfg, args.gpu, gpu, host, out, args.device, args.timeout, force=args.force)
            if args.archive:
                archive_results(out, Path(args.archive))
            bar.advance(job)
    show(out)
    return 0


def _context_sweep(model, gpu, host, limits, args, gen, out, table) -> int:
    from roofsim.families.registry import exact_families

    rows = []
    ctx = 4096
    families = family_names() if args.allow_approximate else exact_families()
    kv_dtype = argchecks.kv_dtype(args.kv_dtype)
    tp = _tp(args, model, gpu) or 1
    while ctx <= MAX_TOKENS:
        work = Workload(context=ctx, batch=args.batch, gen=gen)
        best = [
            p
            for p in best_per_family(model, gpu, host, work, limits, families, kv_dtype or "bf16", tp)
            if p.feasible
        ]
        if not best:
            rows.append((ctx, None))
            break
        rows.append((ctx, min(best, key=lambda p: (p.summary.decode.time_s, p.summary.prefill.time_s))))
        ctx *= 2
    if args.json:
        print(
            json.dumps([{"context": c, "best": _prediction_doc(p) if p else None} for c, p in rows], indent=2)
        )
    else:
        which = "best plan" if args.allow_approximate else "best exact plan"
        if kv_dtype and kv_dtype != "bf16":
            which = f"best plan with {kv_dtype} KV"
        out.print(table(rows, f"{_title(model, gpu, host, None, limits)}: {which} by context", args.wide))
    return 0


def _print_roofline(out, table, model, gpu, work: Workload, chunk: int) -> None:
    P = work.context - chunk
    pre = ops.layer_ops(model, chunk, P, work.batch)
    dec = ops.layer_ops(model, 1, work.context, work.batch) + ops.head_ops(model, work.batch)
    out.print(
        table(roofline.rows(pre, gpu), f"one decoder layer, prefill chunk of {chunk} after {P} cached tokens")
    )
    out.print(
        table(roofline.rows(dec, gpu), f"one decoder layer and the LM head, decode at context {work.context}")
    )


def cmd_roofline(args) -> int:
    from roofsim.display import console, roofline_table

    for flag, value in (("--gpu-mem", args.gpu_mem), ("--host-mem", args.host_mem), ("--host", args.host)):
        if value is not None:
            raise UserError(
                f"{flag} changes nothing in roofline's table (each operator alone, no memory): drop it"
            )
    from roofsim.tensor_parallel import shard_model

    model, gpu, _, _ = _specs(args)
    model = shard_model(model, _tp(args, model, gpu) or 1)
    work = Workload(context=parse_tokens(args.context), batch=args.batch, gen=parse_tokens(args.gen, "--gen"))
    chunk = min(parse_tokens(args.chunk, "--chunk") if args.chunk is not None else work.context, work.context)
    _print_roofline(console(), roofline_table, model, gpu, work, chunk)
    return 0


def cmd_list(kind: str, args=None) -> int:
    from roofsim.display import console, gpus_table, hosts_table, models_table

    if getattr(args, "template", False):  # plain text: a file to save, never wrapped
        from roofsim.specs.template import spec_template

        print(spec_template(kind), end="")
        return 0
    out = console()
    if kind == "gpus":
        out.print(gpus_table({name: load_gpu(name) for name in list_gpus()}))
    elif kind == "hosts":
        out.print(hosts_table({name: load_host(name) for name in list_hosts()}))
    else:
        out.print(models_table({name: load_model(name) for name in list_models()}))
    return 0


def _no_executor(args) -> int:
    raise UserError(
        "the executor is not installed: pip install 'roofsim[executor]' (torch, transformers, safetensors)"
    )


WIDE_HELP = "tables in the long form: knobs by their full names, reasons inline, at least 180 columns"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="roofsim", description="Plan, predict and run long-context inference whose KV outgrows the GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("predict", help="predict prefill and decode time and memory for each plan family")
    _common(p)
    p.add_argument(
        "--plan", help=f"a family ({', '.join(family_names())}) or a plan.json; default: best of each family"
    )
    p.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    p.add_argument("--roofline", action="store_true", help="also print the per-operator roofline table")
    p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    p.add_argument(
        "--allow-approximate", action="store_true", help="let approximate families win the context sweep"
    )
    p.add_argument(
        "--simulate", action="store_true", help="also run the discrete-event simulator on each plan"
    )
    _kv_dtype_option(p)
    _tp_option(p)
    p.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="OUT.html",
        help="also write an HTML report (default name: roofsim-predict-MODEL-GPU-CONTEXT.html)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("simulate", help="simulate one plan event by event and write its predicted trace")
    _common(p, context_required=True)
    p.add_argument("--plan", required=True, help=f"a family ({', '.join(family_names())}) or a plan.json")
    p.add_argument("--json", metavar="OUT", help="write the Trace (JSON) to this file")
    p.add_argument("--decode-steps", help="decode steps to simulate (default: --gen)")
    _kv_dtype_option(p)
    _tp_option(p)
    p.add_argument(
        "--keep", choices=["all", "sample", "none"], default="sample", help="which steps keep their spans"
    )
    p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("plan", help="search the plan space for the fastest plan that fits, and explain it")
    _common(p)
    p.add_argument("--prompt", help="same as --context")
    p.add_argument(
        "--objective",
        choices=["decode", "decode-worst", "prefill", "e2e", "throughput", "max-context"],
        default="decode",
        help="decode time per token (default), decode at its band's upper end (the profile's unsteady resources "
        "at the slow end of their calibrated spread), prefill time, prefill + gen decode steps, tokens/s at "
        "--batch, or the longest context that fits",
    )
    p.add_argument(
        "--allow-approximate",
        action="store_true",
        help="also consider sparse_fetch, evict and plans with fp8 KV",
    )
    _kv_dtype_option(p, plan=True)
    p.add_argument(
        "--tp",
        metavar="N[,N...]|auto",
        help="tensor-parallel degrees to search beside the rest: one (2), a list (1,2,4) or auto (powers of two up "
        "to the GPUs the GPU spec's interconnect joins that split the model); each GPU holds 1/N of the heads "
        "and MLP and streams its heads' KV over its own link (default 1)",
    )
    p.add_argument("--fetch-fraction", type=float, help="sparse_fetch: share of tokens fetched (0.2)")
    p.add_argument("--evict-budget", help="evict: tokens kept per head (Locret: 16384, 6000 for Phi-3)")
    p.add_argument(
        "--restrict", choices=["headinfer"], help="headinfer: one KV head per slot, as HeadInfer's code"
    )
    p.add_argument("--families", help="comma-separated families to search (default: all)")
    p.add_argument("--top", type=int, default=10, help="how many of the best plans the simulator refines")
    p.add_argument("-o", "--output", help="write the plan document (JSON) here")
    p.add_argument("--json", action="store_true", help="print the plan document instead of tables")
    p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    p.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="OUT.html",
        help="also write an HTML report (default name: roofsim-plan-MODEL-GPU-CONTEXT.html)",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "calibrate", help="measure this GPU machine (micro-benchmarks) and write a calibrated profile"
    )
    p.add_argument("--gpu", required=True, help="the base spec whose datasheet peaks the profile keeps")
    p.add_argument("--host", help="the base host spec (default: the GPU spec's)")
    p.add_argument(
        "--model", default="llama-3-8b", help="GEMM and attention shapes to measure (default llama-3-8b)"
    )
    p.add_argument(
        "-o", "--output", default="calibrated", help="folder for the profile (default ./calibrated)"
    )
    p.add_argument(
        "--refit",
        metavar="MEASUREMENTS_JSON",
        help="fit the profile again from a committed *-measurements.json (no GPU, nothing measured)",
    )
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("validate", help="predict and run configurations, write predicted and measured traces")
    p.add_argument(
        "configs",
        nargs="?",
        help="TOML file with [[config]] tables (name, model, context, plan, gen, gpu_mem)",
    )
    p.add_argument("--gpu", required=True, help="the (calibrated) GPU profile the predictions use")
    p.add_argument("--host", help="host spec (default: the profile's)")
    p.add_argument("-o", "--output", help="results folder (one subfolder per configuration)")
    p.add_argument(
        "--repredict",
        metavar="RESULTS_DIR",
        help="predict the runs of a results folder again with --gpu and the current model, compare with what "
        "they measured (no GPU needed, nothing is run); the new predictions replace the folder's own, so "
        "re-predict a copy to keep those",
    )
    p.add_argument(
        "--device", choices=["cuda", "cpu"], help="where the executor runs (default: cuda if present)"
    )
    p.add_argument("--only", help="comma-separated configuration names to run, in that order")
    p.add_argument("--timeout", type=float, default=900, help="seconds per executor run (default 900)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the configurations that already have a runs.json in the -o folder (a campaign stopped midway "
        "goes on where it stopped)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run plans the model says do not fit in memory (by default they are not run; run.json says why)",
    )
    p.add_argument(
        "--archive",
        help="also write the results folder as this .tar.gz after every configuration (one file to bring back "
        "from a machine that returns few files; a run stopped midway keeps what it measured)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("roofline", help="per-operator FLOPs, bytes, intensity, time and bound")
    _common(p, context_required=True)
    p.add_argument("--chunk", help="prefill chunk (default: the whole context)")
    p.add_argument(
        "--tp", metavar="N", help="one GPU's operators of N-way tensor parallelism, its all-reduces with them"
    )
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("run", help="run a plan for real with the torch executor and write a measured trace")
    try:
        from roofsim.executor.cli import add_arguments, run
    except ImportError:
        p.set_defaults(func=_no_executor)
    else:
        add_arguments(p)
        p.set_defaults(func=run)

    p = sub.add_parser(
        "generate", help="generate text from a checkpoint under the plan for this GPU, streamed as it comes"
    )
    try:
        from roofsim.executor.text_cli import add_generate_arguments, generate
    except ImportError:
        p.set_defaults(func=_no_executor)
    else:
        add_generate_arguments(p)
        p.set_defaults(func=generate)

    p = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API under one plan")
    try:
        from roofsim.executor.text_cli import add_serve_arguments, serve
    except ImportError:
        p.set_defaults(func=_no_executor)
    else:
        add_serve_arguments(p)
        p.set_defaults(func=serve)

    p = sub.add_parser("report", help="write an HTML report of a trace or a validation results folder")
    from roofsim.report.cli import add_arguments as add_report_arguments
    from roofsim.report.cli import cmd_report

    add_report_arguments(p)
    p.set_defaults(func=cmd_report)

    for kind, text in (
        ("gpus", "list built-in GPUs"),
        ("hosts", "list built-in host platforms"),
        ("models", "list built-in models"),
    ):
        p = sub.add_parser(kind, help=text)
        if kind != "models":
            what = kind.removesuffix("s").replace("gpu", "GPU")
            p.add_argument(
                "--template",
                action="store_true",
                help=f"print a commented {what} spec file to fill in (every field, what it means, its unit)",
            )
        p.set_defaults(func=lambda args, kind=kind: cmd_list(kind, args))
    return parser


def _no_bare_double_dash(argv: list[str]) -> None:
    """argparse reads `--opt=--` as an empty list, not the string '--' (it drops the '--' it takes for the end of
    the options), and a command would then fail on a list where it expects a name: said as a user error first."""
    for a in argv:
        if a.startswith("--") and a.endswith("=--"):
            opt = a.split("=", 1)[0]
            raise UserError(f"{a}: '--' is not a value for {opt}; give {opt} a value (see roofsim -h)")


def main(argv: list[str] | None = None) -> int:
    try:
        _no_bare_double_dash(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        text = " ".join(str(e).split())  # one line, whatever the message quotes (a path, a file's text)
        print(f"roofsim: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("roofsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
