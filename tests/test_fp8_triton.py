"""The fused fp8 row write (executor/fp8_triton.py) stores the same bytes and scales as the op-by-op path
(executor/kvquant.py): under Triton's interpreter on the CPU here (tests/fp8_triton_interpreted.py, in a process of
its own), compiled on the GPU by the gpu-marked test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from roofsim.executor import kvquant  # noqa: E402


@pytest.fixture(scope="module")
def interpreted() -> dict:
    script = Path(__file__).with_name("fp8_triton_interpreted.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_kernels_fp8_conversions_are_torchs_for_every_value_and_every_tie(interpreted):
    """fp32 -> e4m3 by the bits rounds to nearest even as torch's cast does, and e4m3 -> fp32 gives each byte's
    value."""
    c = interpreted["conversions"]
    assert c["values"] > 4096
    assert c["bytes_differ"] == 0 and c["read_back_differ"] == 0


def test_the_fused_row_write_stores_the_op_by_op_bytes(interpreted):
    """At a block's first, middle and last row, re-scaled up or not, strided input, host or device position, for
    two layouts (head size 96 not a power of two): the same bytes, and the write did change the store."""
    rows = interpreted["writes"]
    assert len(rows) == 16 and {r["device_pos"] for r in rows} == {True, False}
    assert all(r["changed"] > 0 for r in rows)
    assert all(r["differ"] == 0 for r in rows), [r for r in rows if r["differ"]]


def test_the_check_picks_the_kernel_and_notes_it(interpreted):
    w = interpreted["through_write"]
    assert w["picked"] and "triton" in w["note"]
    assert w["row_rel_err"] < 0.07  # e4m3 keeps 3 mantissa bits: at most 2^-4 relative per element


def test_without_the_interpreter_the_cpu_writes_op_by_op(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kvquant, "_row_write", {})
    assert not kvquant.fused_row_write(kvquant.Layout(1, 1, 64), torch.bfloat16, torch.device("cpu"))
    assert kvquant.row_writes_used() == ""


@pytest.mark.gpu
def test_on_the_gpu_the_compiled_kernel_is_checked_and_used(monkeypatch):
    """Compiled for the GPU, the kernel passes the same bit-for-bit check (else the op-by-op path serves and this
    fails, naming why)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(kvquant, "_row_write", {})
    for d, dtype in ((128, torch.bfloat16), (96, torch.bfloat16), (64, torch.float16)):
        ok = kvquant.fused_row_write(kvquant.Layout(1, 8, d), dtype, torch.device("cuda"))
        assert ok, kvquant.row_writes_used()
