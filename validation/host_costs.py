"""The host-side costs a calibration timed, side by side: the model-width layer alone (each sample) and beside the
streaming link and the CPU worker, and the attention calls at tiny shapes against the model's shapes
(Measurements.attention_calls_at_width_s). A diagnostic for whether an offload family's decode issues slower than
its tiny-shape price (docs/calibration.md); nothing in roofsim reads it. Beside them, the layer's GEMMs held for
seconds against their short timing (Measurements.gemm_held): whether a prefill runs at a lower clock than the
profile's GEMM rate was timed at.

    python validation/host_costs.py validation/results/h100-heldout3/calibrated/h100-sxm-calibrated-measurements.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def lines(m: dict) -> list[str]:
    """One line per figure: microseconds, and each 'beside' or 'at width' figure over its reference."""
    out = []
    samples = m.get("tiny_layer_samples_s") or [m["tiny_layer_s"]]
    last = samples[-1]
    out.append("layer alone, each sample: " + ", ".join(f"{s * 1e6:.0f} us" for s in samples))
    for key, what in (
        ("tiny_layer_beside_link_s", "link streaming"),
        ("tiny_layer_beside_cpu_s", "CPU worker"),
    ):
        v = m.get(key)
        if v is not None:
            out.append(f"layer beside the {what}: {v * 1e6:.0f} us, x{v / last:.3f} of the last sample alone")
    tiny = {
        "call": m.get("attention_call_s"),
        "streamed": m.get("streamed_call_s"),
        "fp8": m.get("fp8_call_s"),
    }
    wide = m.get("attention_calls_at_width_s") or {}
    for key in ("call", "streamed", "fp8", "fp8_resident", "fp8_streamed", "layer_over_resident"):
        t, w = tiny.get(key), wide.get(key)
        if t is None and w is None:
            continue
        row = f"{key}: tiny {t * 1e6:.0f} us" if t is not None else f"{key}: tiny -"
        if w is not None:
            row += f", at width {w * 1e6:.0f} us" + (f" (x{w / t:.3f})" if t else "")
        out.append(row)
    held = m.get("gemm_held") or []
    if held:
        from roofsim.calibration import Measurements, gemm_held_ratio

        rates = [p["flops"] / p["seconds"] / 1e12 for p in held]
        ratio = gemm_held_ratio(Measurements.model_validate(m))
        row = f"layer GEMMs held: first window {rates[0]:.0f} TFLOP/s, last {rates[-1]:.0f}"
        out.append(row + (f", second half x{ratio:.3f} of the burst timing (gemm)" if ratio else ""))
    paces = m.get("host_pace_us") or []
    if paces:
        out.append(f"host pace (loop gauge) over the calibration: median {statistics.median(paces):.0f} us")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("measurements", help="a calibration's *-measurements.json")
    args = ap.parse_args()
    print("\n".join(lines(json.loads(Path(args.measurements).read_text()))))


if __name__ == "__main__":
    main()
