"""Why is launch-bound resident decode slower after a short prompt? In the H200 and H100 campaigns llama-3-8b's
resident decode step took ~50 ms (H200) and ~37 ms (H100) after a 16K prompt and ~27-31 ms after a 64K one,
though the step issues the same kernels. One model, several (context, prefill chunk) runs of the resident plan
in one process (so the process and the host are the same); after each run, on its cache, the host time of a
decode step's issue alone (no sync), the step with its sync, and a cProfile of a few steps (top functions by
own time). One line per run; writes OUT/decode_host.json.

    python validation/decode_host.py --out $OUT     # GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch
from roofsim.executor.models import load_model
from roofsim.executor.runner import run_plan

from roofsim.plan import plan_from_dict

VARIANTS = [(16384, None), (65536, 16384), (16384, 16384), (16384, 4096), (32768, None), (16384, None)]


def step_times(model, cache, nxt, n: int) -> tuple[list[float], list[float]]:
    """(host issue seconds, step seconds with its sync) of n decode steps on the run's cache."""
    issue, total = [], []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        o = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        issue.append(t1 - t0)
        total.append(t2 - t0)
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
    return issue, total


def profile(model, cache, nxt, n: int) -> str:
    pr = cProfile.Profile()
    pr.enable()
    step_times(model, cache, nxt, n)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
    return s.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    rows = []
    model, name = load_model(args.model, device="cuda", max_positions=65536 + 256)
    path = Path(args.out, "decode_host.json")
    for context, chunk in VARIANTS:
        plan = plan_from_dict({"family": "resident", "prefill_chunk": chunk})
        res = run_plan(plan, model, model_name=name, prompt_len=context, gen=args.gen, keep_cache=True)
        s = res.trace.summary
        cache = res.cache
        nxt = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        issue, total = step_times(model, cache, nxt, 10)
        prof = profile(model, cache, nxt, 3)
        row = {
            "context": context,
            "prefill_chunk": chunk,
            "decode_ms": [x * 1e3 for x in s.decode_step_s],
            "decode_median_ms": s.decode_s_per_token * 1e3,
            "issue_ms": [x * 1e3 for x in issue],
            "step_ms": [x * 1e3 for x in total],
            "profile": prof,
        }
        rows.append(row)
        print(
            f"context {context:6d} chunk {chunk!s:6s} run's decode {row['decode_median_ms']:6.1f} ms; after: "
            f"issue {statistics.median(row['issue_ms']):6.1f} ms, step {statistics.median(row['step_ms']):6.1f} ms"
        )
        print("\n".join(prof.splitlines()[:30]))
        cache.close()
        del cache, res
        torch.cuda.empty_cache()
        path.write_text(json.dumps({"command": "python validation/decode_host.py", "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
