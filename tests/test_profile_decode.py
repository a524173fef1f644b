"""validation/profile_decode.py's reading of a profiler trace: the kernels of the last graph replay, found by the
launch's correlation id or, where the trace does not tie them, by time; per kernel name its count and GPU time,
the busy time and the span, whose difference is the time between kernels."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).parent.parent / "validation" / "profile_decode.py"


def _module():
    spec = importlib.util.spec_from_file_location("profile_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch(ts, corr):
    return {"cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": ts, "args": {"correlation": corr}}


def _kernel(name, ts, dur, corr):
    return {"cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def test_the_last_replays_kernels_are_those_of_its_correlation_and_the_gaps_are_span_less_busy():
    p = _module()
    events = [
        _launch(0, 1),
        _kernel("gemv", 5, 10, 1),
        _launch(100, 2),
        _kernel("gemv", 105, 10, 2),
        _kernel("attn", 117, 20, 2),
        _kernel("gemv", 140, 10, 2),
        _kernel("other stream", 120, 50, 9),
    ]
    got = p.table(p.last_replay_kernels(events))
    assert got["kernels"] == 3 and got["busy_us"] == 40
    assert got["span_us"] == 150 - 105 and got["gaps_us"] == 5
    assert got["by_name"][0] == {"kernel": "gemv", "count": 2, "us": 20}


def test_without_correlation_the_kernels_after_the_last_launch_count():
    p = _module()
    events = [_launch(0, None), _kernel("a", 1, 2, None), _launch(10, None), _kernel("b", 11, 3, None)]
    assert [k["name"] for k in p.last_replay_kernels(events)] == ["b"]
    assert p.last_replay_kernels([_kernel("a", 1, 2, 1)]) == []


def test_the_prefill_table_holds_the_kernels_before_the_first_replay():
    p = _module()
    events = [
        _kernel("gemm", 1, 50, 7),
        _kernel("attn", 60, 30, 8),
        _launch(100, 2),
        _kernel("gemv", 105, 10, 2),
    ]
    got = p.table(p.kernels_before_first_replay(events))
    assert got["busy_us"] == 80 and {r["kernel"] for r in got["by_name"]} == {"gemm", "attn"}
    assert len(p.kernels_before_first_replay([_kernel("a", 1, 2, 1)])) == 1
