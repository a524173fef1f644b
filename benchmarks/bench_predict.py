"""Time `roofsim predict` at 1M context for every family (process start-up included), against the 2 s target.

python benchmarks/bench_predict.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

TARGET_S = 2.0
CMD = [
    sys.executable,
    "-m",
    "roofsim.cli",
    "predict",
    "--gpu",
    "rtx4090",
    "--model",
    "llama-3-8b",
    "--context",
    "1M",
]


def main(repeats: int = 5) -> None:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(CMD, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"roofsim predict --context 1M, all families: median {med:.3f} s over {repeats} runs (min {min(times):.3f})"
    )
    print(f"ratio to the {TARGET_S:.0f} s target: {med / TARGET_S:.2f}")


if __name__ == "__main__":
    main()
