"""The fp8 store's write of one decode row as a single Triton kernel on CUDA (executor/kvquant.py's `_write` and
`write_row_at` run it op by op: about 14 kernels, each dispatched from Python, which makes a streamed fp8 slot's call
host-bound where the link is not).

One program per (sequence, K or V, KV head) column of the block the row joins: it reads the block's rows before the
row (fp8 times the block's old scale), puts the new row at its place and zeros after it, takes the column's maximum
magnitude, picks the power-of-two scale 2^e just above amax / 448 (frexp's exponent, read from the bits of the
correctly rounded quotient), and stores the block's rows divided by it with the scale. fp8 is read and written by
its bits (round to nearest even), so the kernel needs no fp8 type of the GPU's or of Triton's interpreter: the same
arithmetic as the op-by-op path, bit for bit. kvquant.fused_row_write checks that once per head size and input
dtype against the op-by-op path on a scratch store and answers False (op by op) where it differs or Triton is
missing.

The row's position is a host int (eager decode) or a device int64 tensor (a replayed CUDA graph, as write_row_at).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roofsim.kvformat import FP8_MAX, KV_SCALE_BLOCK

TWO_POW_64 = tl.constexpr(18446744073709551616.0)
TWO_POW_MINUS_64 = tl.constexpr(5.421010862427522e-20)


@triton.jit
def _e4m3_to_f32(v):
    """float8_e4m3fn bytes (uint8) to their fp32 values, by the bits: s eeee mmm is (1 + m/8) 2^(e - 7), or m 2^-9
    where e == 0 (the byte 0x7f, NaN, is never stored)."""
    v = v.to(tl.int32)
    e = (v >> 3) & 0xF
    m = v & 0x7
    normal = (((v & 0x80) << 24) | ((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    sub = m.to(tl.float32) * 0.001953125  # 2^-9
    sub = tl.where((v & 0x80) != 0, -sub, sub)
    return tl.where(e == 0, sub, normal)


@triton.jit
def _f32_to_e4m3(y):
    """fp32 values of magnitude below 464 to float8_e4m3fn bytes (uint8), rounded to nearest even, by the bits: a
    normal result keeps the top 3 of the 23 mantissa bits (the carry of the rounding may raise the exponent); below
    2^-6 the result is k 2^-9, k the 24-bit significand shifted right with the same rounding."""
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    rounded = a + 0x7FFFF + ((a >> 20) & 1)
    normal = ((((rounded >> 23) - 120) << 3) | ((rounded >> 20) & 0x7)) & 0x7F
    # for results below 2^-6: k = sig >> (23 - 9 - (exponent - 127)), the shift kept in [1, 30]
    shift = tl.maximum(tl.minimum(141 - (a >> 23), 30), 1)
    sig = (a & 0x7FFFFF) | 0x800000
    k = (sig + (1 << (shift - 1)) - 1 + ((sig >> shift) & 1)) >> shift
    mag = tl.where(a < 0x3C800000, k, normal)  # 0x3c800000: 2^-6, e4m3's smallest normal
    return (sign | mag).to(tl.uint8)


@triton.jit(
    do_not_specialize=[
        "pos",
        "n_heads",
        "block_bytes",
        "data_bytes",
        "row_bytes",
        "new_sb",
        "new_skv",
        "new_sh",
    ]
)
def _write_row(
    buf_ptr,  # the store's flat bytes (uint8): block i at i * block_bytes, its rows then its fp32 scales
    new_ptr,  # the new row [1, B, 2, heads, D], any float dtype, strided
    pos_ptr,  # a device int64 holding the row's position (FROM_PTR), else unused
    pos,  # the row's position (not FROM_PTR)
    n_heads,
    block_bytes,
    data_bytes,  # a block's fp8 rows: BLK * row_bytes
    row_bytes,  # one row of the block: B * 2 * heads * D
    new_sb,
    new_skv,
    new_sh,
    new_sd,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLK: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FROM_PTR: tl.constexpr,
):
    col = tl.program_id(0)  # b * 2 * heads + kv * heads + h, the order of the rows' columns and of the scales
    b = col // (2 * n_heads)
    kv = (col // n_heads) % 2
    h = col % n_heads
    if FROM_PTR:
        p = tl.load(pos_ptr)
    else:
        p = pos.to(tl.int64)
    blk = p // BLK
    r = p - blk * BLK
    base = buf_ptr + blk * block_bytes
    rows = tl.arange(0, BLK)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    dmask = d < D
    off = rows * row_bytes + col * D + d
    scale_ptr = (base + data_bytes + col * 4).to(tl.pointer_type(tl.float32))
    old_scale = tl.load(scale_ptr)
    old = _e4m3_to_f32(tl.load(base + off, mask=dmask & (rows < r), other=0))
    new = tl.load(new_ptr + b * new_sb + kv * new_skv + h * new_sh + d * new_sd, mask=dmask, other=0.0)
    # rows before r: as stored (a row not yet written is never read: `where`, not a product with its scale);
    # row r: the new one; rows after it: zeros
    x = tl.where(rows < r, old * old_scale, tl.where(rows == r, new.to(tl.float32), 0.0))
    x = tl.where(dmask, x, 0.0)
    t = tl.math.div_rn(tl.max(tl.max(tl.abs(x), axis=1), axis=0), FP8_MAX)
    # frexp(t) = (m, e), m in [0.5, 1): 2^e has the exponent field of t plus one; a subnormal t is read at 2^64 times
    # its value (exact) and the scale brought back down; t == 0 gets 2^0
    ex = (t.to(tl.int32, bitcast=True) >> 23) & 0xFF
    ex_sub = ((t * TWO_POW_64).to(tl.int32, bitcast=True) >> 23) & 0xFF
    s_norm = ((ex + 1) << 23).to(tl.float32, bitcast=True)
    s_sub = ((ex_sub + 1) << 23).to(tl.float32, bitcast=True) * TWO_POW_MINUS_64
    scale = tl.where(t == 0.0, 1.0, tl.where(ex == 0, s_sub, s_norm))
    tl.store(base + off, _f32_to_e4m3(tl.math.div_rn(x, scale)), mask=dmask)
    tl.store(scale_ptr, scale)


def write_row(st, new, pos) -> None:
    """Store the one row `new` [1, B, 2, heads, D] at token `pos` (an int, or a device int64 tensor of one element)
    of Store `st`, as kvquant._write / write_row_at store it, in one kernel."""
    lay = st.lay
    from_ptr = not isinstance(pos, int)
    _write_row[(lay.batch * 2 * lay.heads,)](
        st.buf,
        new,
        pos if from_ptr else st.buf,
        0 if from_ptr else pos,
        lay.heads,
        lay.block_bytes,
        lay.data_bytes,
        lay.batch * 2 * lay.heads * lay.head_dim,
        new.stride(1),
        new.stride(2),
        new.stride(3),
        new.stride(4),
        D=lay.head_dim,
        BLOCK_D=triton.next_power_of_2(lay.head_dim),
        BLK=KV_SCALE_BLOCK,
        FP8_MAX=FP8_MAX,
        FROM_PTR=from_ptr,
    )
