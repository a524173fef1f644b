"""The calibration's framework-cost measurement runs the executor's real decode path (on the CPU here)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.calibrate import decode_layer_cost  # noqa: E402


def test_decode_layer_cost_is_measured_through_the_executor():
    per_layer_s, spec = decode_layer_cost("cpu", steps=5)
    assert 0 < per_layer_s < 0.5  # a tiny layer's decode step on a CPU: well under a second
    assert spec.n_layers == 1 and spec.hidden == 64
