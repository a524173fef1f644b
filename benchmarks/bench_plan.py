"""Time `roofsim plan` for Llama-3-8B at 1M tokens on the RTX 4090 (1 TB host RAM): candidates screened with the
analytic model, the top 10 (and each family's default) refined with the simulator, against the 20 s target.

    python benchmarks/bench_plan.py
"""

from __future__ import annotations

import time

from roofsim.limits import Limits
from roofsim.planner import search
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.workload import Workload

TARGET_S = 20.0


def main() -> None:
    model, gpu, host = load_model("llama-3-8b"), load_gpu("rtx4090"), load_host("epyc-rome-milan")
    for objective in ("decode", "e2e"):
        t0 = time.perf_counter()
        r = search(
            model, gpu, host, Workload(context=2**20), Limits(host_mem_bytes=1e12), objective=objective
        )
        dt = time.perf_counter() - t0
        refined = sum(c.simulated is not None for c in r.ranked)
        print(
            f"objective {objective}: {r.screened} candidates screened, {refined} simulated, {dt:.1f} s "
            f"({r.screened / dt:,.0f} candidates/s overall); ratio to the {TARGET_S:.0f} s target {dt / TARGET_S:.2f}"
        )


if __name__ == "__main__":
    main()
