"""`roofsim report X [-o out.html]` and the `--report` option of `predict` and `plan`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from roofsim.errors import UserError
from roofsim.units import fmt_bytes, fmt_tokens

if TYPE_CHECKING:
    from roofsim.report.page import Page


def add_arguments(p) -> None:
    p.add_argument(
        "input",
        help="a trace JSON (measured traces are drawn beside the simulator's prediction) or a validation "
        "results directory (validation/results/<gpu>/)",
    )
    p.add_argument(
        "-o",
        "--output",
        help="HTML file to write (default: the trace's name with .html, or cwd for a directory)",
    )
    p.add_argument(
        "--gpu",
        help="GPU spec (name or TOML, e.g. a calibrated profile) for the prediction beside a measured trace "
        "(default: the one the trace names, or the built-in matching its device name)",
    )
    p.add_argument("--host", help="host spec (name or TOML) for that prediction (default: the GPU spec's)")


def _safe(text: str) -> str:
    """A file-name piece from a model or GPU name, which may be a path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).stem if "/" in text else text).strip("-.") or "x"


def default_name(command: str, model: str, gpu: str, context: int) -> str:
    return f"roofsim-{command}-{_safe(model)}-{_safe(gpu)}-{fmt_tokens(context)}.html"


def write(page: Page, path: str | Path, stream=None) -> Path:
    """Write the page and say where; a path whose folder is missing is a user error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"report output {str(path)!r} is a directory: give a file name, e.g. {path / 'report.html'}"
        )
    if not path.parent.is_dir():
        raise UserError(f"cannot write report {str(path)!r}: folder {str(path.parent)!r} does not exist")
    try:
        size = page.write(path)
    except OSError as e:
        raise UserError(f"cannot write report {str(path)!r}: {e.strerror or e}") from None
    print(f"report written to {path} ({fmt_bytes(size)})", file=stream or sys.stdout)
    return path


def cmd_report(args) -> int:
    from roofsim.outpath import check_output_file
    from roofsim.report.build import trace_report, validation_report
    from roofsim.report.validation import has_traces
    from roofsim.trace import Trace

    src = Path(args.input)
    if args.output is not None:
        check_output_file(args.output, "-o")
    if src.is_dir():
        if args.gpu is not None or args.host is not None:
            raise UserError(
                "--gpu and --host price a trace's prediction; a results folder carries its own: drop them"
            )
        if not has_traces(src):
            raise UserError(
                f"{args.input!r} holds no predicted or measured trace: give a trace JSON or a results folder "
                "written by roofsim validate"
            )
        page = validation_report(src)
        out = args.output or Path.cwd() / f"validation-{_safe(src.resolve().name)}.html"
    elif src.is_file():
        trace = Trace.read(src)
        page = trace_report(
            trace, source=src.name, predicted=_predicted_beside(src, trace), gpu=args.gpu, host=args.host
        )
        out = args.output or src.with_suffix(".html")
    else:
        raise UserError(f"{args.input!r} does not exist: give a trace JSON or a validation results directory")
    write(page, out)
    return 0


def _predicted_beside(src: Path, trace) -> object | None:
    """The predicted trace the validation campaign writes beside a measured one (measured.json ->
    predicted.json), if it is there and describes the same plan."""
    from roofsim.trace import Trace

    if trace.header.producer != "measured" or "measured" not in src.name:
        return None
    from roofsim.trace import json_exists

    other = src.with_name(src.name.replace("measured", "predicted"))
    if not json_exists(other):
        return None
    predicted = Trace.read(other)
    same = predicted.header.plan == trace.header.plan and predicted.header.workload == trace.header.workload
    return predicted if same and predicted.header.producer == "predicted" else None


def report_prediction(path: str, preds, model, gpu, host, work, limits, quiet: bool = False) -> Path:
    """predict --report: `path` empty means the default name in the current folder."""
    from roofsim.report.build import prediction_report

    page = prediction_report(preds, model, gpu, host, work, limits)
    out = path or default_name("predict", model.name, gpu.name, work.context)
    return write(page, out, sys.stderr if quiet else None)


def report_plan(path: str, result, model, gpu, host, limits, explanation: str, quiet: bool = False) -> Path:
    from roofsim.report.build import plan_report

    page = plan_report(result, model, gpu, host, limits, explanation)
    out = path or default_name("plan", model.name, gpu.name, result.best.prediction.header.workload.context)
    return write(page, out, sys.stderr if quiet else None)
