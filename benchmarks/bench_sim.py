"""Time the simulator on Llama-3-8B at 1M tokens, head-wise plan, chunked prefill and 32 decode steps, against
the 3 s target; print events per second.

    python benchmarks/bench_sim.py
"""

from __future__ import annotations

import time

from roofsim.families import HeadOffloadPlan
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.workload import Workload

TARGET_S = 3.0


def main() -> None:
    model, gpu, host = load_model("llama-3-8b"), load_gpu("rtx4090"), load_host("epyc-rome-milan")
    work = Workload(context=2**20, gen=32)
    for plan in (
        HeadOffloadPlan(prefill_chunk=16384),
        HeadOffloadPlan(prefill_chunk=10240, write_back="full", syncs_per_slot=2),
    ):
        t0 = time.perf_counter()
        trace = simulate(plan, model, gpu, host, work, decode_steps=32, keep="sample")
        dt = time.perf_counter() - t0
        # the event count is only in the note simulate writes ("... (N tasks, M events)")
        events = int(trace.header.notes[1].split("tasks, ")[1].split(" events")[0])
        print(
            f"{plan.knobs()}: {dt:.2f} s, {events / dt:,.0f} events/s, ratio to the {TARGET_S:.0f} s target {dt / TARGET_S:.2f}"
        )


if __name__ == "__main__":
    main()
