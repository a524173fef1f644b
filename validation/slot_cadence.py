"""The decode step's cadence in a run folder's traces, predicted against measured: for the middle decode step, the
median gap between the starts of consecutive attention spans within a layer (one slot's whole cost, where the step
is bound by the host or the link) and across a layer boundary (the last slot's call plus the layer's other work),
the median span of each kind, and the layer's "norm, projections, RoPE, MLP" span. On the GPU a span also holds the
time the stream waited for the host to issue the kernels inside it, so on a host-bound step a measured span longer
than its priced one is host time.

    python validation/slot_cadence.py validation/results/h100-fp8/replayed/campaign/l3-head-g1-fp8-64k [DIR ...]

Reads `measured.json.gz` and `predicted.json.gz` (or .json) of each folder. A diagnostic: nothing reads its output.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path


def _read(folder: Path, stem: str) -> dict | None:
    for name, opener in ((f"{stem}.json.gz", gzip.open), (f"{stem}.json", open)):
        if (folder / name).exists():
            with opener(folder / name, "rt") as f:
                return json.load(f)
    return None


def _us(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1e6, 1) if values else None


def cadence(trace: dict) -> dict:
    """Per span kind (attention, h2d, gemm) of the middle decode step: median gap within a layer and across layers
    (microseconds), median duration, count."""
    spans = [s for s in trace["spans"] if s["phase"] == "decode"]
    if not spans:
        return {}
    steps = sorted({s["step"] for s in spans})
    step = steps[len(steps) // 2]
    out = {}
    for kind in ("attention", "h2d", "gemm"):
        a = sorted(
            (s["start_s"], s["end_s"], s["layer"]) for s in spans if s["kind"] == kind and s["step"] == step
        )
        gaps = [(a[i + 1][0] - a[i][0], a[i + 1][2] == a[i][2]) for i in range(len(a) - 1)]
        out[kind] = {
            "within_us": _us([g for g, same in gaps if same]),
            "across_us": _us([g for g, same in gaps if not same]),
            "span_us": _us([e - b for b, e, _ in a]),
            "n": len(a),
        }
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for d in map(Path, argv):
        for stem in ("predicted", "measured"):
            t = _read(d, stem)
            print(d.name, stem, json.dumps(cadence(t)) if t else "(no trace)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
