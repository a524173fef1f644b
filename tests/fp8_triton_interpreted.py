"""Run by tests/test_fp8_triton.py in a process of its own, TRITON_INTERPRET=1 set before Triton is imported (the
interpreter must be chosen before `import triton`): fp8_triton's kernels on CPU tensors against torch's cast and the
op-by-op write. Prints one JSON object."""

from __future__ import annotations

import json
import os

assert os.environ.get("TRITON_INTERPRET") == "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from roofsim.executor import fp8_triton, kvquant  # noqa: E402

BLK = kvquant.BLK


@triton.jit
def _round_trip(src, dst, back, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(dst + i, fp8_triton._f32_to_e4m3(tl.load(src + i)))
    tl.store(back + i, fp8_triton._e4m3_to_f32(tl.load(dst + i)))


def conversions() -> dict:
    """Every finite e4m3 value, the midpoint between each pair of neighbours (the ties), random values over the
    subnormal and normal binades: the kernel's bytes against torch's cast, and the bytes read back."""
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    finite = values[torch.isfinite(values)].unique()
    mids = (finite[1:] + finite[:-1]) / 2
    g = torch.Generator().manual_seed(0)
    spread = (torch.rand(4096, generator=g) * 2 - 1) * torch.exp2(
        torch.randint(-14, 9, (4096,), generator=g).float()
    )
    x = torch.cat([finite, -finite, mids, -mids, spread.clamp(-448, 448)])
    x = torch.cat([x, torch.zeros((1 << (x.numel() - 1).bit_length()) - x.numel())])
    dst, back = torch.zeros(x.numel(), dtype=torch.uint8), torch.zeros(x.numel())
    _round_trip[(1,)](x, dst, back, N=x.numel())
    ref = x.to(torch.float8_e4m3fn)
    return {
        "values": x.numel(),
        "bytes_differ": int((dst != ref.view(torch.uint8)).sum()),
        "read_back_differ": int((back != ref.float()).sum()),
    }


def writes(batch: int, heads: int, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """At a block's first, middle and last row, a new row that re-scales its block up or leaves it, from a strided
    input, at a host and at a device position: bytes of the store (rows and scales) that differ from the op-by-op
    write's."""
    lay = kvquant.Layout(batch, heads, head_dim)
    g = torch.Generator().manual_seed(1)
    out = []
    for P, size in ((0, 1.0), (BLK, 50.0), (BLK + 7, 0.02), (2 * BLK - 1, 1.0)):
        buf = torch.zeros(lay.nbytes(2 * BLK), dtype=torch.uint8)
        if P:
            past = torch.randn(P, batch, 2, heads, head_dim, generator=g)
            past[:, :, 0, :, 3] *= 30.0  # an outlier channel in the keys
            kvquant.write(lay, kvquant.Store(lay, buf), 0, past.to(dtype))
        new = (torch.randn(1, batch, 2, heads + 2, head_dim, generator=g) * size).to(dtype)[:, :, :, 2:]
        ref = kvquant.Store(lay, buf.clone())
        kvquant._write_op_by_op(ref, P, new)
        changed = int((ref.buf != buf).sum())
        for pos in (P, torch.tensor([P])):
            got = kvquant.Store(lay, buf.clone())
            fp8_triton.write_row(got, new, pos)
            out.append({"P": P, "device_pos": not isinstance(pos, int), "changed": changed,
                        "differ": int((got.buf != ref.buf).sum())})  # fmt: skip
    return out


def through_write() -> dict:
    """kvquant.write of one row picks the kernel once it passes its check, and the row reads back."""
    lay = kvquant.Layout(1, 2, 64)
    picked = kvquant.fused_row_write(lay, torch.bfloat16, torch.device("cpu"))
    buf = torch.zeros(lay.nbytes(BLK), dtype=torch.uint8)
    row = torch.randn(1, 1, 2, 2, 64).to(torch.bfloat16)
    kvquant.write(lay, buf, 3, row)
    back = kvquant.dequantize(lay, buf, 4, torch.empty(kvquant.scratch_numel(lay, 4)))
    err = float((back[3] - row[0].float()).norm() / row.float().norm())
    return {"picked": picked, "note": kvquant.row_writes_used(), "row_rel_err": err}


print(
    json.dumps(
        {
            "conversions": conversions(),
            "writes": writes(1, 1, 128, torch.bfloat16) + writes(2, 3, 96, torch.float32),
            "through_write": through_write(),
        }
    )
)
