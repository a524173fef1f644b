"""Where a long resident prefill's GPU time goes: the same prompt prefilled twice in one process under a resident
plan, each chunk timed, the second run under torch.profiler (CUPTI). The first run pays what a shape costs the
first time (compilation, cuDNN plan builds, allocator growth) for every chunk, not only the first; the difference
between the two runs' chunks is that cost. The second run's kernels are grouped (attention, matrix products,
Triton-fused, the rest) with their time, and the prefill's attention and linear FLOPs over those times. The
profiler covers the whole second `run_plan` call, its untimed warm-up (a cache-less forward of one chunk, the
kernel races) included, so those rates are lower bounds on the prefill's own.

    cd /tmp && TORCH_LOGS=recompiles python REPO/validation/profile_prefill.py --context 131072 --chunk 32768 \
        --fuse compiled --out $OUT/profile

Writes OUT/prefill-<model>-<context>-<fuse>.json and prints it. A diagnostic: nothing in roofsim reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from roofsim.executor import fuse
from roofsim.executor.runner import run_plan
from torch.profiler import ProfilerActivity, profile

from roofsim.families import ResidentPlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_decode import FUSE_LEVELS, _events, fused_model, table  # noqa: E402

GROUPS = {
    "attention": ("attn", "fmha", "flash", "cudnn", "sdpa"),
    "gemm": ("gemm", "nvjet", "sm90_xmma", "cutlass", "matmul"),
    "triton": ("triton",),
}


def group_of(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS.items():
        if any(k in low for k in keys):
            return g
    return "other"


def prefill_flops(cfg, context: int, chunk: int) -> tuple[float, float]:
    """(attention, linear) FLOPs of a chunked causal prefill: 4 D per query-key pair and head, 2 per weight."""
    H, Hkv, D, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    pairs = sum(
        c * p + c * (c + 1) / 2 for p, c in ((p, min(chunk, context - p)) for p in range(0, context, chunk))
    )
    attn = 4.0 * D * H * pairs * L
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    per_token = 2.0 * L * (hid * D * (H + 2 * Hkv) + H * D * hid + 3 * hid * inter)
    return attn, per_token * context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=32768)
    ap.add_argument("--fuse", choices=FUSE_LEVELS, default="compiled")
    ap.add_argument("--merge", action="store_true", help="merge a chunk's two attention parts compiled")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, name = fused_model(args.model, args.context, args.fuse, prefill=True)
    if args.merge:
        fuse.compile_merge()
    plan = ResidentPlan(prefill_chunk=args.chunk)
    got: dict = {
        "model": name,
        "context": args.context,
        "chunk": args.chunk,
        "fuse": args.fuse,
        "merge": args.merge,
    }
    got["gpu"] = torch.cuda.get_device_name()

    def once() -> list[float]:
        t0 = time.perf_counter()
        r = run_plan(plan, model, model_name=name, prompt_len=args.context, gen=1, warmup=0, trace_steps=0)
        print(
            f"run: {time.perf_counter() - t0:.1f} s wall, prefill {r.trace.summary.prefill_s:.3f} s",
            flush=True,
        )
        return [float(s) for s in r.trace.summary.prefill.step_s]

    got["first_run_chunk_s"] = once()
    print("first run chunks:", [round(s, 3) for s in got["first_run_chunk_s"]], flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        got["second_run_chunk_s"] = once()
    print("second run chunks:", [round(s, 3) for s in got["second_run_chunk_s"]], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        kernels = [e for e in _events(trace) if e.get("cat") == "kernel"]
    got["kernels"] = table(kernels)
    groups: dict[str, float] = {}
    for k in kernels:
        groups[group_of(k["name"])] = groups.get(group_of(k["name"]), 0.0) + k["dur"] / 1e6
    got["group_s"] = groups
    attn, linear = prefill_flops(model.config, args.context, args.chunk)
    got["attention_flops"], got["linear_flops"] = attn, linear
    if groups.get("attention"):
        got["attention_TFLOPs"] = attn / groups["attention"] / 1e12
    if groups.get("gemm"):
        got["gemm_TFLOPs"] = linear / groups["gemm"] / 1e12
    path = out / f"prefill-{name}-{args.context}-{args.fuse}{'-merge' if args.merge else ''}.json"
    path.write_text(json.dumps(got, indent=1))
    print(json.dumps({k: v for k, v in got.items() if k != "kernels"}, indent=1))
    print(f"busy {got['kernels']['busy_us'] / 1e6:.3f} s, span {got['kernels']['span_us'] / 1e6:.3f} s")
    for row in got["kernels"]["by_name"][:20]:
        print(f"  {row['count']:6d} {row['us'] / 1e3:9.1f} ms  {row['kernel']}")


if __name__ == "__main__":
    main()
