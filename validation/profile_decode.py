"""Where a replayed decode step's GPU time goes: torch.profiler (CUPTI) over `run_plan` of a resident plan whose
decode is replayed from a CUDA graph, then, for the kernels the last replay ran, per kernel name the count and GPU
time per step, their sum, and the step's span on the GPU (first kernel's start to last kernel's end): span - sum is
the time between the graph's kernels. Also, under "prefill", the same table for every kernel the profiled run
issued before its first replay (its prefill, with the run's untimed warm-up forward), beside the measured prefill.

    cd /tmp && python REPO/validation/profile_decode.py --model llama-3-8b --context 16384 --out $OUT/profile

Writes OUT/profile-<model>-<context>.json (the table) and prints it; the chrome trace is not kept (it is large).
A diagnostic: nothing in roofsim reads it.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
from roofsim.executor import fuse
from roofsim.executor.models import load_model
from roofsim.executor.runner import run_plan
from torch.profiler import ProfilerActivity, profile

from roofsim.families import ResidentPlan


def _events(trace: Path) -> list[dict]:
    return json.loads(trace.read_text()).get("traceEvents", [])


def last_replay_kernels(events: list[dict]) -> list[dict]:
    """The kernels of the last cudaGraphLaunch: those sharing its correlation id, or, where the profiler did not
    tie them, every kernel that started after it and before the next runtime call that waits for the device."""
    launches = [e for e in events if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    if not launches:
        return []
    last = max(launches, key=lambda e: e["ts"])
    corr = last.get("args", {}).get("correlation")
    tied = [k for k in kernels if corr is not None and k.get("args", {}).get("correlation") == corr]
    if tied:
        return tied
    later = sorted((k for k in kernels if k["ts"] >= last["ts"]), key=lambda k: k["ts"])
    return later


def kernels_before_first_replay(events: list[dict]) -> list[dict]:
    """Every kernel that started before the first cudaGraphLaunch (all of them where there is none)."""
    launches = [
        e["ts"] for e in events if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch"
    ]
    first = min(launches) if launches else float("inf")
    return [e for e in events if e.get("cat") == "kernel" and e["ts"] < first]


def table(kernels: list[dict]) -> dict:
    by = collections.defaultdict(lambda: [0, 0.0])
    for k in kernels:
        by[k["name"][:90]][0] += 1
        by[k["name"][:90]][1] += k["dur"]
    busy = sum(k["dur"] for k in kernels)
    span = (max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)) if kernels else 0.0
    rows = sorted(({"kernel": n, "count": c, "us": t} for n, (c, t) in by.items()), key=lambda r: -r["us"])
    return {
        "kernels": len(kernels),
        "busy_us": busy,
        "span_us": span,
        "gaps_us": span - busy,
        "by_name": rows,
    }


FUSE_LEVELS = ["none", "projections", "norms", "compiled"]
"""--fuse's choices, in order: each applies the ones before it too."""


def fused_model(model_name: str, context: int, fuse_level: str, prefill: bool = False):
    """(model, name) on CUDA for `context` tokens, with executor/fuse.py applied up to `fuse_level`; compiled
    layers serve prefill chunks too where `prefill`."""
    model, name = load_model(model_name, device="cuda", max_positions=context + 64)
    level = FUSE_LEVELS.index(fuse_level)
    if level >= 1:
        fuse.fuse_projections(model)
    if level >= 2:
        fuse.fuse_norms(model)
    if level >= 3:
        fuse.compile_layers(model, prefill=prefill)
    return model, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--fuse",
        choices=FUSE_LEVELS,
        default="none",
        help="executor/fuse.py first, each choice with the ones before it: fused q/k/v and gate/up, one-call norms, "
        "torch.compile'd layers in the replayed step",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, name = fused_model(args.model, args.context, args.fuse)
    plan = ResidentPlan(prefill_chunk=min(args.context, 16384), decode_graphs=True)
    run_plan(plan, model, model_name=name, prompt_len=args.context, gen=3, warmup=1, trace_steps=0)  # warm
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r = run_plan(plan, model, model_name=name, prompt_len=args.context, gen=4, warmup=1, trace_steps=0)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = _events(trace)
        got = table(last_replay_kernels(events))
        prefill = table(kernels_before_first_replay(events))
    prefill["prefill_s"] = r.trace.summary.prefill_s
    got.update(
        prefill=prefill,
        model=name,
        context=args.context,
        gpu=torch.cuda.get_device_name(),
        decode_step_s=r.trace.summary.decode.step_s,
        notes=[n for n in r.trace.header.notes if "decode" in n],
    )
    got["fuse"] = args.fuse
    suffix = "" if args.fuse == "none" else f"-{args.fuse}"
    (out / f"profile-{name}-{args.context}{suffix}.json").write_text(json.dumps(got, indent=1))
    print(
        f"{name} {args.context}: {got['kernels']} kernels, busy {got['busy_us']:.0f} us, span {got['span_us']:.0f} us"
    )
    for row in got["by_name"][:25]:
        print(f"  {row['count']:5d} {row['us']:9.1f} us  {row['kernel']}")
    print(
        f"prefill {prefill['prefill_s']:.3f} s measured; kernels before the first replay: busy {prefill['busy_us'] / 1e6:.3f} s"
    )
    for row in prefill["by_name"][:15]:
        print(f"  {row['count']:5d} {row['us'] / 1e3:9.1f} ms  {row['kernel']}")


if __name__ == "__main__":
    main()
