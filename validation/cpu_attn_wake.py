"""Is cpu_attention's scan slower in a run because the CPU worker's thread team falls asleep between layers? In a
run the worker idles a few milliseconds between two layers' scans (the GPU heads and the next layer's projections
run meanwhile); calibrate times the scans back to back. This times one layer's scan (the executor's kernel, on its
worker, cold blocks) with an idle gap before each call, at three runs' shapes, under OpenMP's default wait policy,
ACTIVE (idle threads spin) and PASSIVE (they sleep at once), each in a fresh process; then runs the given plans
with the executor under the default policy and under ACTIVE. One line per case; writes OUT/cpu_attn_wake.json.

    python validation/cpu_attn_wake.py --out $OUT --run q7=PLAN.json:qwen2.5-7b:65536 ...   # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (GQA group, KV heads per block, blocks per call, tokens) of a run's layer of CPU attention
SHAPES = {
    "l2-planner pick": (1, 1, 2, 32769),
    "q7-cpu1-64k": (7, 1, 1, 65537),
    "l3-cpu2-64k": (4, 1, 2, 65537),
}
GAPS_MS = (0.0, 0.5, 2.0, 5.0)
POLICIES = ("default", "ACTIVE", "PASSIVE")


def micro() -> list[dict]:
    """The shapes by gap, in this process (its OpenMP settings)."""
    import torch
    from roofsim.executor.calibrate import carve_kv_blocks
    from roofsim.executor.cpu_attn import on_worker
    from roofsim.executor.cpu_decode import attend_host

    d, rows = 128, []
    region = torch.empty(1 << 29, dtype=torch.bfloat16).normal_()
    for name, (G, heads, per_call, L) in SHAPES.items():
        blocks = carve_kv_blocks(region, heads, L, d, 1 << 30, least=2 * per_call)
        calls = [blocks[i : i + per_call] for i in range(0, len(blocks) - per_call + 1, per_call)]
        q = torch.randn(1, heads * per_call * G, 1, d, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        nbytes = per_call * L * 2 * heads * d * 2
        for gap_ms in GAPS_MS:

            def body(gap_s=gap_ms / 1e3, calls=calls, q=q, out=out, L=L):
                times = []
                for _ in range(3):
                    for c in calls:
                        if gap_s:
                            time.sleep(gap_s)
                        t0 = time.perf_counter()
                        attend_host(q, c, L, d**-0.5, out)
                        times.append(time.perf_counter() - t0)
                return times[len(calls) :]  # the first pass warms up

            times = on_worker(body)
            med = statistics.median(times)
            rows.append(
                {
                    "shape": name,
                    "gap_ms": gap_ms,
                    "median_ms": med * 1e3,
                    "p90_ms": sorted(times)[int(0.9 * len(times))] * 1e3,
                    "gbps": nbytes / med / 1e9,
                    "calls": len(times),
                }
            )
    return rows


def with_policy(policy: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


def run_plan(spec: str, policy: str, out: Path) -> dict:
    """One plan run by the executor (`name=plan.json:model:context`), decode step times from its measured trace."""
    name, rest = spec.split("=", 1)
    plan, model, context, *mem = rest.split(":")
    dest = out / f"run-{name}-{policy}.json"
    cmd = [sys.executable, "-m", "roofsim.cli", "run", plan, "--model", model, "--prompt-len", context]
    cmd += ["--gen", "16", "--batch", "1", "-o", str(dest)] + (["--gpu-mem", mem[0]] if mem else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=with_policy(policy), capture_output=True, text=True)
    row = {"run": name, "policy": policy, "returncode": proc.returncode, "wall_s": time.perf_counter() - t0}
    if proc.returncode or not dest.exists():
        row["stderr_tail"] = proc.stderr[-2000:]
        return row
    summary = json.loads(dest.read_text())["summary"]
    steps = summary["decode_step_s"]
    row.update(
        decode_ms_median=statistics.median(steps) * 1e3,
        decode_ms_min=min(steps) * 1e3,
        decode_ms_max=max(steps) * 1e3,
        prefill_s=summary["prefill_s"],
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--run", action="append", default=[], help="name=plan.json:model:context[:gpu-mem]")
    ap.add_argument("--micro-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.micro_only:
        print(json.dumps(micro()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python validation/cpu_attn_wake.py " + " ".join(sys.argv[1:]),
        "micro": [],
        "runs": [],
    }
    dest = args.out / "cpu_attn_wake.json"
    for policy in POLICIES:
        proc = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--micro-only"],
            env=with_policy(policy),
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            print(policy, "failed:", proc.stderr[-1500:], flush=True)
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            row["policy"] = policy
            result["micro"].append(row)
            print(
                f"{policy:8s} {row['shape']:16s} gap {row['gap_ms']:3.1f} ms: {row['median_ms']:6.2f} ms "
                f"(p90 {row['p90_ms']:6.2f}) {row['gbps']:5.1f} GB/s",
                flush=True,
            )
        dest.write_text(json.dumps(result, indent=1))
    for spec in args.run:
        for policy in ("default", "ACTIVE"):
            row = run_plan(spec, policy, args.out)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            dest.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
