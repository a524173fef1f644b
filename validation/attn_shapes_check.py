"""The operator model's prefill attention against the swept calls of validation/prefill_attn_shapes.py (no GPU): for
each (KV heads, chunk, past) the measured time, the time roofsim's attention operator gets with a profile, and
the error; then, from each shape's two pasts, the call's split into a fixed part and a rate over the past's keys
(the slope, as an efficiency over the bf16 peak). Prints a table and the median and p90 of |error|.

    python validation/attn_shapes_check.py validation/results/h200-s15/probes/call6-shapes/prefill_attn_shapes.json \
        --gpu validation/results/h200-s15/calibrated/h200-calibrated.toml
"""

from __future__ import annotations

import argparse
import json
import statistics

from roofsim import ops
from roofsim.roofline import work
from roofsim.specs import load_gpu, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--model", default="llama-3-8b")
    args = ap.parse_args()
    gpu, m = load_gpu(args.gpu), load_model(args.model)
    calls = json.load(open(args.sweep))["calls"]
    errs = []
    print(
        f"{'kv heads':>8} {'chunk':>6} {'past':>6} {'rows':>7} {'measured ms':>12} {'model ms':>9} {'err':>7}"
    )
    for c in calls:
        op = ops.attention_op(m, c["chunk"], c["past"], 1, kv_heads=c["kv_heads"])
        t = float(work([op], gpu).total_s)
        err = (t / c["seconds"] - 1) * 100
        errs.append(abs(err))
        print(
            f"{c['kv_heads']:8d} {c['chunk']:6d} {c['past']:6d} {c['rows']:7d} {c['seconds'] * 1e3:12.3f} "
            f"{t * 1e3:9.3f} {err:+6.1f}%"
        )
    ranked = sorted(errs)
    print(
        f"n={len(errs)} median_abs_err_pct={statistics.median(errs):.1f} "
        f"p90_abs_err_pct={ranked[int(0.9 * (len(ranked) - 1))]:.1f}"
    )
    peak = gpu.compute.bf16_tflops.value * 1e12
    by: dict[tuple[int, int], dict[int, float]] = {}
    for c in calls:
        by.setdefault((c["kv_heads"], c["chunk"]), {})[c["past"]] = c["seconds"]
    print(f"\n{'kv heads':>8} {'chunk':>6} {'rows':>7} {'rate over the past (eff)':>25} {'fixed ms':>9}")
    for (h, C), times in sorted(by.items(), key=lambda kv: (kv[0][0] * kv[0][1], kv[0])):
        if len(times) < 2:
            continue
        p1, p2 = min(times), max(times)
        per_key = 4.0 * h * m.group * m.head_dim * C  # FLOPs per key of the past
        slope = (times[p2] - times[p1]) / ((p2 - p1) * per_key)
        fixed = times[p1] - slope * per_key * (p1 + (C + 1) / 2)
        print(f"{h:8d} {C:6d} {h * m.group * C:7d} {1 / slope / peak:25.3f} {fixed * 1e3:9.3f}")


if __name__ == "__main__":
    main()
