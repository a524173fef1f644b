"""fp8 KV stores (roofsim.kvformat): quantise on write, dequantise into a scratch in the model dtype before attention.

A store of `heads` KV heads is a flat uint8 buffer, block-major: block i holds KV_SCALE_BLOCK rows
[rows, B, 2, heads, D] as float8_e4m3fn, then its scales [B, 2, heads] as fp32. The first P tokens of a store, or
the blocks one write touches, are one contiguous byte range: one copy each way, as a bf16 slot's rows are.

Write of C new rows after P (`write`): the partly filled block they join is read back, the new rows appended, and
every block touched gets the power-of-two scale 2^e just above amax / 448 of its own (K or V, head) maximum, then
the rows divided by it, cast and stored. A power-of-two scale keeps earlier rows exact when a block is re-scaled
(an e4m3 value times 2^-k is again one, unless it falls below fp8's normal range), so a row is rounded once and
the stored bytes do not depend on how the tokens were chunked, except where a later outlier re-scales its block so
far that the earlier rows become fp8 subnormals.

On CUDA the write of one row (a decode call's, eager or replayed) is one Triton kernel of the same arithmetic
(executor/fp8_triton.py), used once `fused_row_write` has found it equal bit for bit to the op-by-op path here.

Dequantisation (`dequantize`): whole blocks copied into the scratch (fp8 -> model dtype), then multiplied by their
scales in place; both exact for bf16 and fp32 scratches. A bf16 scratch on the CPU (cpu_attention's worker) takes
the bits instead of torch's fp8 cast, which converts element by element on the CPU (`_e4m3_bits_to_bf16`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from roofsim.kvformat import FP8_MAX, KV_SCALE_BLOCK, SCALE_BYTES

FP8 = torch.float8_e4m3fn
BLK = KV_SCALE_BLOCK


def blocks(tokens: int) -> int:
    return -(-tokens // BLK)


@dataclass(frozen=True)
class Layout:
    """The byte layout of an fp8 store of `heads` KV heads for `batch` sequences of head size `head_dim`."""

    batch: int
    heads: int
    head_dim: int

    @property
    def data_bytes(self) -> int:
        """fp8 rows of one block."""
        return BLK * self.batch * 2 * self.heads * self.head_dim

    @property
    def block_bytes(self) -> int:
        return self.data_bytes + SCALE_BYTES * self.batch * 2 * self.heads

    def nbytes(self, tokens: int) -> int:
        """Bytes of a store holding `tokens` tokens (whole blocks)."""
        return blocks(tokens) * self.block_bytes

    def views(self, buf: torch.Tensor, n_blocks: int):
        """(rows fp8 [n, BLK, B, 2, heads, D], scales fp32 [n, B, 2, heads]) of the first n blocks of `buf`."""
        b = buf[: n_blocks * self.block_bytes].view(n_blocks, self.block_bytes)
        rows = b[:, : self.data_bytes].view(FP8).view(n_blocks, BLK, self.batch, 2, self.heads, self.head_dim)
        scales = b[:, self.data_bytes :].view(torch.float32).view(n_blocks, self.batch, 2, self.heads)
        return rows, scales


def layout_of(shape, heads: int) -> Layout:
    """The layout of a store of `heads` KV heads for a cache's Shape."""
    return Layout(shape.batch, heads, shape.head_dim)


def byte_range(lay: Layout, P: int, C: int) -> tuple[int, int]:
    """The bytes `write(.., P, C rows)` stores: whole blocks from P's to the last the rows reach."""
    return (P // BLK) * lay.block_bytes, blocks(P + C) * lay.block_bytes


class Store:
    """An fp8 store's typed views over its flat bytes, made once (a decode step writes and reads every slot of every
    layer: views made per call would be most of its host dispatches)."""

    def __init__(self, lay: Layout, buf: torch.Tensor):
        n = buf.numel() // lay.block_bytes
        self.lay, self.buf = lay, buf
        self.rows, self.scales = lay.views(buf, n)  # [n, BLK, B, 2, h, D] fp8, [n, B, 2, h] fp32
        self.row_scales = self.scales.view(n, 1, lay.batch, 2, lay.heads, 1)  # broadcast over rows and d
        # a block's row numbers, broadcast as its rows are (write_row_at)
        self.row_ids = torch.arange(BLK, device=buf.device).view(1, BLK, 1, 1, 1, 1)


def store_of(lay: Layout, buf) -> Store:
    return buf if isinstance(buf, Store) else Store(lay, buf)


WRITE_ROWS = 4096
"""Rows quantised at a time: a prefill chunk's fp32 temporaries stay a few of these rows' size."""


def write(lay: Layout, buf, P: int, new: torch.Tensor) -> tuple[int, int]:
    """Store rows `new` [C, B, 2, heads, D] (any float dtype) at tokens P..P+C of store `buf` (a Store, or its flat
    bytes), re-scaling the partly filled block they join. Returns the byte range written (byte_range)."""
    st = store_of(lay, buf)
    C, done = new.shape[0], 0
    while done < C:  # pieces that end on block boundaries, WRITE_ROWS rows of blocks at most
        piece = min(C - done, WRITE_ROWS - (P + done) % BLK)
        _write(st, P + done, new[done : done + piece])
        done += piece
    return byte_range(lay, P, C)


def _write(st: Store, P: int, new: torch.Tensor) -> None:
    lay, C = st.lay, new.shape[0]
    if C == 1 and fused_row_write(lay, new.dtype, new.device):
        from roofsim.executor import fp8_triton

        fp8_triton.write_row(st, new, P)
        return
    _write_op_by_op(st, P, new)


def _write_op_by_op(st: Store, P: int, new: torch.Tensor) -> None:
    lay, C = st.lay, new.shape[0]
    b0, b1 = P // BLK, blocks(P + C)
    n = b1 - b0
    head = P - b0 * BLK  # rows of block b0 already stored
    parts = [new.float()]
    if head:
        parts.insert(0, st.rows[b0, :head].float().mul_(st.row_scales[b0]))
    if head + C < n * BLK:
        parts.append(new.new_zeros((n * BLK - head - C, *new.shape[1:]), dtype=torch.float32))
    x = torch.cat(parts).view(n, BLK, lay.batch, 2, lay.heads, lay.head_dim)
    # the power of two 2^e just above amax / 448 (frexp: amax / 448 = m 2^e with m < 1), so |x| / 2^e < 448;
    # an all-zero block gets 2^0
    _, e = torch.frexp(x.abs().amax(dim=(1, 5), keepdim=True).div_(FP8_MAX))
    scale = torch.exp2(e.float())  # [n, 1, B, 2, h, 1]
    st.rows[b0:b1].copy_(x.div_(scale))
    st.row_scales[b0:b1].copy_(scale)


def write_row_at(st: Store, pos: torch.Tensor, new: torch.Tensor) -> None:
    """Store one row `new` [1, B, 2, heads, D] at token `pos`, a device int64 tensor [1], as `write` stores it (the
    block's earlier rows, the new row, zeros after it, re-scaled to the block's new maximum), with no host-side
    index: a CUDA graph replays it at each step's position. The fp8 rows are written as their bytes (index_copy_
    has no fp8 kernel)."""
    b = torch.div(pos, BLK, rounding_mode="floor")
    r = pos - b * BLK
    x = st.rows.index_select(0, b).float().mul_(st.row_scales.index_select(0, b))  # [1, BLK, B, 2, h, D]
    x.masked_fill_(st.row_ids >= r.view(1, 1, 1, 1, 1, 1), 0.0)
    x.index_copy_(1, r, new.float().unsqueeze(0))
    # as _write: the power of two 2^e just above amax / 448
    _, e = torch.frexp(x.abs().amax(dim=(1, 5), keepdim=True).div_(FP8_MAX))
    scale = torch.exp2(e.float())
    st.rows.view(torch.uint8).index_copy_(0, b, x.div_(scale).to(FP8).view(torch.uint8))
    st.row_scales.index_copy_(0, b, scale)


_row_write: dict = {}  # (head_dim, input dtype, device type) -> "triton" or why the op-by-op path serves


def fused_row_write(lay: Layout, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether one row is written by fp8_triton's kernel: on CUDA (or Triton's interpreter, TRITON_INTERPRET=1),
    with Triton importable, once the kernel has stored the same bytes and scales as the op-by-op path on a scratch
    store of this layout (checked at the first call per head size and input dtype; never inside a CUDA graph's
    capture, where the op-by-op path serves until a call outside it has checked)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    key = (lay.head_dim, dtype, device.type)
    if key not in _row_write:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False
        _row_write[key] = _check_row_write(lay, dtype, device)
    return _row_write[key] == "triton"


def _check_row_write(lay: Layout, dtype: torch.dtype, device: torch.device) -> str:
    """'triton' where the kernel writes rows at a block's first, middle and last place (a new maximum re-scaling
    the block, and a small row) into the same bytes as the op-by-op path, from a strided input; else why not."""
    try:
        from roofsim.executor import fp8_triton
    except Exception as e:  # noqa: BLE001 - no Triton, or none that loads: op by op
        return f"op by op (no Triton: {type(e).__name__})"
    g = torch.Generator(device="cpu").manual_seed(0)
    try:
        for P, size in ((BLK, 100.0), (BLK + 5, 0.01), (2 * BLK - 1, 3.0), (5, 1e-3)):
            buf = torch.zeros(lay.nbytes(2 * BLK), dtype=torch.uint8, device=device)
            past = torch.randn(P, lay.batch, 2, lay.heads, lay.head_dim, generator=g)
            past[:, :, 0, :, 1] *= 20.0  # an outlier channel in the keys
            write(lay, Store(lay, buf), 0, past.to(device, dtype))
            wide = torch.randn(1, lay.batch, 2, lay.heads + 1, lay.head_dim, generator=g) * size
            new = wide.to(device, dtype)[:, :, :, 1:]  # strided, as a slot's heads of a layer's rows
            ref, got = Store(lay, buf.clone()), Store(lay, buf.clone())
            _write_op_by_op(ref, P, new)
            fp8_triton.write_row(got, new, P)
            if not torch.equal(ref.buf, got.buf):
                return "op by op (the Triton kernel's bytes differ)"
            pos = torch.tensor([P], device=device)
            got = Store(lay, buf.clone())
            fp8_triton.write_row(got, new, pos)
            if not torch.equal(ref.buf, got.buf):
                return "op by op (the Triton kernel's bytes differ at a device position)"
    except Exception as e:  # noqa: BLE001 - a kernel that fails to build or run: op by op
        return f"op by op (the Triton kernel failed: {type(e).__name__}: {str(e)[:80]})"
    return "triton"


def row_writes_used() -> str:
    """How this process wrote fp8 decode rows, for a trace's notes ('' where it wrote none)."""
    if not _row_write:
        return ""
    return "fp8 row writes: " + ", ".join(
        f"{dev} d={d} {str(dt).removeprefix('torch.')}: {how}" for (d, dt, dev), how in _row_write.items()
    )


def dequantize(lay: Layout, buf, tokens: int, scratch: torch.Tensor) -> torch.Tensor:
    """The first `tokens` rows of store `buf` (a Store, or its flat bytes) in the scratch's dtype,
    [tokens, B, 2, heads, D] (a view of the scratch, which holds at least blocks(tokens) * BLK rows of this
    layout)."""
    st = store_of(lay, buf)
    n = blocks(tokens)
    out = scratch[: scratch_numel(lay, tokens)].view(n, BLK, lay.batch, 2, lay.heads, lay.head_dim)
    if _bits_apply(out, st.row_scales[:n]):
        _e4m3_bits_to_bf16(st.rows[:n], st.row_scales[:n], out)
    else:
        out.copy_(st.rows[:n])
        out.mul_(st.row_scales[:n])
    return out.view(n * BLK, lay.batch, 2, lay.heads, lay.head_dim)[:tokens]


E4M3_TO_BF16_MASK = 0x87F0 - 0x10000  # int16: the sign bit and the e4m3 exponent and mantissa, once shifted
E4M3_TO_BF16_SCALE = 2.0**120  # e4m3's exponent bias is 7, bf16's 127
MAX_BITS_SCALE = 2.0**7  # scale * 2^120 stays finite in fp32 (below 2^128)


def _bits_apply(out: torch.Tensor, row_scales: torch.Tensor) -> bool:
    """Whether _e4m3_bits_to_bf16 serves: a bf16 scratch on the CPU (on the GPU the cast is one fast kernel), and
    no block scale above MAX_BITS_SCALE (a block whose largest value is above 448 * 2^7)."""
    return (
        out.device.type == "cpu"
        and out.dtype == torch.bfloat16
        and bool(row_scales.numel() == 0 or row_scales.max() <= MAX_BITS_SCALE)
    )


def _e4m3_bits_to_bf16(rows: torch.Tensor, row_scales: torch.Tensor, out: torch.Tensor) -> None:
    """out = rows (float8_e4m3fn) * row_scales into the bf16 `out`, by the bits: an e4m3 byte s eeee mmm, sign-
    extended to 16 bits and shifted left by 4, masked to its sign bit and its low 11 bits, is the bf16 s 0000eeee
    mmm0000, whose value is the e4m3 value times 2^-120 (normal numbers: the exponent field e read with bf16's bias
    127 instead of e4m3's 7; subnormals and zero: the same mantissa at the same minimum exponent). Multiplying by
    row_scales * 2^120, a power of two and so exact in bf16, gives the value exactly (a power of two times at most
    4 significant bits). Four vectorised passes (widen, shift, mask, a bf16 multiply) instead of torch's fp8 cast
    and a bf16-by-fp32 multiply, which the CPU runs an order of magnitude slower.
    e4m3fn's NaN byte comes out as 480 times the scale: a store written by write() holds none."""
    bits = out.view(torch.int16)
    bits.copy_(rows.view(torch.int8))
    bits.bitwise_left_shift_(4)
    bits.bitwise_and_(E4M3_TO_BF16_MASK)
    out.mul_((row_scales * E4M3_TO_BF16_SCALE).to(torch.bfloat16))


def scratch_numel(lay: Layout, tokens: int) -> int:
    return blocks(tokens) * BLK * lay.batch * 2 * lay.heads * lay.head_dim


def _store_rows_and_dequantize(
    rows: torch.Tensor,
    row_bytes: torch.Tensor,
    row_scales: torch.Tensor,
    new: torch.Tensor,
    P: int,
    blk: int,
    fp8_max: float,
    scratch: torch.Tensor,
    scratch_bits: torch.Tensor,
) -> torch.Tensor:
    """write() then dequantize() of rows [:P + C] in one call, over a Store's typed views (rows
    [n, blk, B, 2, h, D] fp8 and the same bytes as int8, row_bytes; row_scales [n, 1, B, 2, h, 1] fp32) and the
    scratch's (its bits as int16, scratch_bits, for _e4m3_bits_to_bf16's path: TorchScript has no dtype view):
    TorchScript runs it without the GIL."""
    C = new.size(0)
    b0 = P // blk
    b1 = (P + C + blk - 1) // blk
    n = b1 - b0
    head = P - b0 * blk
    x = torch.zeros([n * blk] + new.shape[1:], dtype=torch.float32)
    if head > 0:
        x.narrow(0, 0, head).copy_(
            rows.select(0, b0).narrow(0, 0, head).float().mul(row_scales.select(0, b0))
        )
    x.narrow(0, head, C).copy_(new)
    x6 = x.view([n, blk] + new.shape[1:])
    m, e = torch.frexp(x6.abs().amax(dim=[1, 5], keepdim=True).div(fp8_max))
    scale = torch.exp2(e.float())
    rows.narrow(0, b0, n).copy_(x6.div(scale))
    row_scales.narrow(0, b0, n).copy_(scale)
    out = scratch.narrow(0, 0, b1 * blk * x.numel() // (n * blk)).view([b1, blk] + new.shape[1:])
    scales = row_scales.narrow(0, 0, b1)
    if out.dtype == torch.bfloat16 and not out.is_cuda and bool(scales.max() <= 128.0):
        # _e4m3_bits_to_bf16 (MAX_BITS_SCALE, E4M3_TO_BF16_MASK, E4M3_TO_BF16_SCALE), inline for TorchScript
        bits = scratch_bits.narrow(0, 0, out.numel()).view(out.shape)
        bits.copy_(row_bytes.narrow(0, 0, b1))
        bits.bitwise_left_shift_(4)
        bits.bitwise_and_(-30736)
        out.mul_((scales * 1.329227995784916e36).to(torch.bfloat16))
    else:
        out.copy_(rows.narrow(0, 0, b1))
        out.mul_(scales)
    return out.view([b1 * blk] + new.shape[1:]).narrow(0, 0, P + C)


_scripted: list = []


def store_rows_and_dequantize(st: Store, P: int, new: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """write(st, P, new) and then dequantize(st, P + C, scratch), in one TorchScript call where this torch has
    TorchScript (a CPU worker beside a busy Python thread waits for the GIL after every op it calls), else op by
    op. Same arithmetic as write() (one piece) and dequantize()."""
    if not _scripted:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _scripted.append(torch.jit.script(_store_rows_and_dequantize))
        except Exception:  # noqa: BLE001 - any failure to compile means: op by op
            _scripted.append(None)
    fn = _scripted[0] if new.shape[0] <= WRITE_ROWS else None
    if fn is None:
        write(st.lay, st, P, new)
        return dequantize(st.lay, st, P + new.shape[0], scratch)
    bits = scratch.view(torch.int16) if scratch.dtype == torch.bfloat16 else scratch
    return fn(st.rows, st.rows.view(torch.int8), st.row_scales, new, P, BLK, FP8_MAX, scratch, bits)
