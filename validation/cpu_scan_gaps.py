"""cpu_attention's decode from a trace (predicted or measured, same schema): the median CPU scan per layer, the
median time from one layer's scan to the next, and the H2D busy time against the step. No GPU.

    python validation/cpu_scan_gaps.py validation/results/h200-s15/campaign/l3-planner-128k-24gb/measured.json.gz
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys


def main(path: str) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    spans = [s for s in trace["spans"] if s["phase"] == "decode"]
    scans, gaps, h2d, steps = [], [], [], []
    for step in sorted({s["step"] for s in spans}):
        mine = [s for s in spans if s["step"] == step]
        cpu = sorted(
            (s for s in mine if s["resource"] == "cpu" and s["kind"] == "cpu_attention"),
            key=lambda s: s["layer"],
        )
        scans += [(s["end_s"] - s["start_s"]) * 1e3 for s in cpu]
        gaps += [(b["start_s"] - a["end_s"]) * 1e3 for a, b in zip(cpu, cpu[1:], strict=False)]
        h2d.append(sum(s["end_s"] - s["start_s"] for s in mine if s["resource"] == "h2d") * 1e3)
        steps.append((max(s["end_s"] for s in mine) - min(s["start_s"] for s in mine)) * 1e3)
    print(
        f"CPU scan per layer: median {statistics.median(scans):.2f} ms, mean {statistics.fmean(scans):.2f} ms; "
        f"scan to next scan: median {statistics.median(gaps):.2f} ms; "
        f"H2D busy {statistics.median(h2d):.1f} ms of a {statistics.median(steps):.1f} ms step (medians over "
        f"{len(steps)} traced steps; decode_s_per_token {trace['summary']['decode_s_per_token'] * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    main(sys.argv[1])
