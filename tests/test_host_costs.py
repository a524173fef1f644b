"""validation/host_costs.py: the calibration's host-side costs side by side, each 'beside' or 'at width' figure
over its reference."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _lines(m: dict) -> list[str]:
    spec = importlib.util.spec_from_file_location("host_costs", ROOT / "validation" / "host_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.lines(m)


def test_the_ratios_are_over_the_last_layer_sample_and_the_tiny_calls():
    m = {
        "tiny_layer_s": 8e-4,
        "tiny_layer_samples_s": [7e-4, 8e-4],
        "tiny_layer_beside_link_s": 9.2e-4,
        "attention_call_s": 1e-4,
        "streamed_call_s": 2e-4,
        "fp8_call_s": 3e-4,
        "attention_calls_at_width_s": {"call": 1.1e-4, "fp8_streamed": 3.6e-4, "layer_over_resident": 5e-5},
    }
    out = _lines(m)
    assert "layer beside the link streaming: 920 us, x1.150 of the last sample alone" in out
    assert "call: tiny 100 us, at width 110 us (x1.100)" in out
    assert "streamed: tiny 200 us" in out  # no at-width figure
    assert "fp8_streamed: tiny -, at width 360 us" in out
    assert not any(line.startswith("layer beside the CPU") for line in out)  # not timed


def test_a_calibration_without_the_new_figures_still_reads():
    out = _lines({"tiny_layer_s": 8e-4})
    assert out == ["layer alone, each sample: 800 us"]


def test_the_held_gemms_read_against_the_short_timing_of_their_rows():
    """The layer's GEMMs held for seconds: the first and last windows' rates, and the second half's rate over the
    short timing's at the same rows (roofsim.calibration.gemm_held_ratio)."""
    import json

    base = json.loads(
        (ROOT / "validation/results/h100/s22/h100-sxm-calibrated-measurements.json").read_text()
    )
    burst = [{"label": "layer q 16384", "flops": 8e12, "seconds": 0.01, "rows": 16384}]
    # 800 TFLOP/s for two windows, then 640 (x0.8 of the burst) for two
    held = [
        {"label": f"w{i}", "flops": 8e12, "seconds": s, "rows": 16384}
        for i, s in enumerate((0.01, 0.01, 0.0125, 0.0125))
    ]
    out = _lines(base | {"gemm": burst + [{"label": "4096 rows", "flops": 1.0, "seconds": 1.0, "rows": 4096}],
                         "gemm_held": held})  # fmt: skip
    assert (
        "layer GEMMs held: first window 800 TFLOP/s, last 640, second half x0.800 of the burst timing (gemm)"
        in out
    )
