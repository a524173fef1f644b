"""Where does a cpu_attention run lose its CPU scan rate? Runs one plan with the executor (random weights), timing
every CPU attention call of its decode and snapshotting each thread's CPU time (/proc/self/task) at the start of
every decode step, then, on the run's own host blocks (the cache kept), times the same calls again with nothing
else running: right after the run, after a second's idle, and right after the issuing thread ran a parallel CPU op.
Before the run it times the same call over cold blocks of the same shape (calibrate's setting). One line per
measurement; writes OUT/<name>.json.

    python validation/cpu_attn_in_run.py PLAN.json --model qwen2.5-7b --context 65536 --out $OUT   # GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch
from roofsim.executor import cpu_attn
from roofsim.executor.calibrate import cold_kv_blocks, timed_scans
from roofsim.executor.cpu_attn import _worker


def thread_times() -> dict[int, tuple[str, int]]:
    """tid -> (name, user+system clock ticks) of every thread of this process."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    return out


def busy(before: dict, after: dict, seconds: float) -> list[dict]:
    """Threads that used CPU between two snapshots, busiest first, as the share of a core over `seconds`."""
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for tid, (name, t) in after.items():
        used = (t - before.get(tid, (name, 0))[1]) / tick
        if used > 0:
            rows.append({"tid": tid, "name": name, "cpu_s": used, "core_share": used / seconds})
    return sorted(rows, key=lambda r: -r["cpu_s"])


def scan(blocks_per_call: list[list[torch.Tensor]], q, length: int, out) -> list[float]:
    """attend_host over each call's blocks on the CPU worker, each timed (two passes)."""

    def run():
        return timed_scans(q, blocks_per_call, length, out)

    return _worker().submit(run).result() + _worker().submit(run).result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("--model", required=True)
    ap.add_argument("--context", type=int, required=True)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default=".")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from roofsim.executor.models import load_model
    from roofsim.executor.runner import run_plan

    from roofsim.families.cpu_attention import cpu_slot_count, cpu_slot_heads
    from roofsim.plan import plan_from_dict

    doc = json.loads(Path(args.plan).read_text())
    plan = plan_from_dict(doc.get("plan", doc), where=args.plan)
    name = args.name or Path(args.plan).parent.name
    result: dict = {
        "command": f"python validation/cpu_attn_in_run.py {args.plan} --model {args.model} --context {args.context}",
        "plan": plan.model_dump() if hasattr(plan, "model_dump") else str(plan),
        "parallel_info": torch.__config__.parallel_info(),
    }
    out_file = Path(args.out, f"{name}.json")

    def keep(key: str, value) -> None:
        result[key] = value
        out_file.write_text(json.dumps(result, indent=1))

    def report(key: str, times: list[float], nbytes: int) -> None:
        med = statistics.median(times)
        keep(key, {"median_ms": med * 1e3, "max_ms": max(times) * 1e3, "gbps": nbytes / med / 1e9})
        print(
            f"{name:24s} {key:34s} {nbytes / med / 1e9:6.1f} GB/s  median {med * 1e3:7.3f} ms/call",
            flush=True,
        )

    model, _ = load_model(args.model, device=args.device, max_positions=args.context + args.gen)
    cfg = model.config.get_text_config(decoder=True)
    D = cfg.hidden_size // cfg.num_attention_heads
    G = cfg.num_attention_heads // cfg.num_key_value_heads
    gh = cpu_slot_heads(plan.cpu_kv_heads, plan.kv_heads_per_slot)
    n = cpu_slot_count(plan.cpu_kv_heads, plan.kv_heads_per_slot)
    L = args.context + 1
    q = torch.randn(1, plan.cpu_kv_heads * G, 1, D, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    call_bytes = n * L * 2 * gh * D * 2
    cold = cold_kv_blocks(gh, L, D)
    report(
        "cold blocks before the run",
        scan([cold[i : i + n] for i in range(0, len(cold) - n + 1, n)], q, L, out),
        call_bytes,
    )
    del cold

    calls, snaps = [], []
    original = cpu_attn.attend_host

    def timed(q_, blocks, length, scale, out_):
        if not calls or calls[-1][0] != length:
            snaps.append((time.perf_counter(), thread_times()))
        t0 = time.perf_counter()
        original(q_, blocks, length, scale, out_)
        calls.append((length, time.perf_counter() - t0, threading.get_native_id()))

    cpu_attn.attend_host = timed
    res = run_plan(
        plan,
        model,
        model_name=args.model,
        prompt_len=args.context,
        gen=args.gen,
        keep_cache=True,
        out=Path(args.out, f"{name}-measured.json"),
    )
    cpu_attn.attend_host = original
    s = res.trace.summary
    keep("decode_step_ms", [x * 1e3 for x in s.decode_step_s])
    steps = sorted({c[0] for c in calls})
    late = [c[1] for c in calls if c[0] in steps[2:]]
    report("in the run (steps after the second)", late, call_bytes)
    worker_tid = calls[-1][2]
    (t_a, a), (t_b, b) = snaps[2], snaps[-1]
    threads = busy(a, b, t_b - t_a)
    for r in threads:
        r["role"] = "main" if r["tid"] == os.getpid() else "cpu worker" if r["tid"] == worker_tid else ""
    keep("threads_during_decode", threads)
    keep("decode_wall_s", t_b - t_a)
    print(f"{name:24s} threads busy during decode ({t_b - t_a:.2f} s):")
    for r in threads[:40]:
        print(
            f"    {r['tid']:8d} {r['name']:18s} {r['role']:10s} {r['cpu_s']:6.2f} s  {r['core_share']:.2f} of a core"
        )

    layers = res.cache.layers
    own = [[cs.host for cs in layer.cpu_slots] for layer in layers]
    length = steps[-1]
    report("run's blocks right after", scan(own, q, length, out), call_bytes)
    time.sleep(1.0)
    report("run's blocks after 1 s idle", scan(own, q, length, out), call_bytes)
    x = torch.randn(1 << 24)
    x.exp_()
    report("run's blocks after a main-thread op", scan(own, q, length, out), call_bytes)
    res.cache.close()


if __name__ == "__main__":
    main()
