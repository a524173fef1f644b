"""How the KV is stored (a plan's `kv_dtype`), shared by the models and the executor.

bf16 keeps K and V in the model's own dtype. fp8_e4m3 stores each element in one byte (torch.float8_e4m3fn) with
one power-of-two scale (fp32) per (token block of KV_SCALE_BLOCK tokens, sequence, K or V, KV head): a head whose
keys carry a few large outlier channels, or one outlier token, moves the scale of its own block and head only.
Power-of-two scales make the conversion back exact (an e4m3 value times 2^k is a bf16 value) and let a partly
filled block be re-scaled without rounding its rows again when a new token raises its maximum.

The executor keeps every fp8 store (a GPU slot, a ring buffer, a pinned host block) block-major: block i's
KV_SCALE_BLOCK rows [rows, batch, 2, heads, d] in fp8, then its scales [batch, 2, heads] in fp32, so a slot's first
P tokens, or the blocks a write touches, are one contiguous range: one copy each, as in bf16.

Bytes per token per KV head, K and V, for one sequence:
    bf16:     2 * d * dtype_bytes
    fp8_e4m3: 2 * d * 1 + 2 * 4 / KV_SCALE_BLOCK            (the scales, spread over their block)
"""

from __future__ import annotations

KV_SCALE_BLOCK = 16
"""Tokens that share one scale per (sequence, K or V, KV head)."""

SCALE_BYTES = 4
"""One fp32 scale."""

FP8_MAX = 448.0
"""The largest finite float8_e4m3fn value: a block's maximum magnitude is scaled to at most this."""

# The dequantisation on the GPU before attention: an fp8 -> bf16 copy into a scratch slot (read 1, write 2 bytes
# per element), then the scales multiplied in place (read 2, write 2): 7 bytes of HBM traffic per element, besides
# the attention's own read of the bf16 scratch. The write of a call's new rows: the partly filled block they join
# read back, the rows' maximum per (K or V, head), the power-of-two scale, the rows divided, cast and stored with
# their scales, over the new rows and at most one block before them (~24 bytes per element in fp32 temporaries).
DEQUANT_BYTES_PER_ELEM = 7.0
QUANT_BYTES_PER_ELEM = 24.0
# Host dispatch units (ops.ATTN_CALL_KERNELS' unit) the two add to each attention call: ~8 aten ops for the
# dequantisation and ~18 for the write (the store's typed views are made once), at the ~2 aten ops per unit of a
# whole layer; tests/test_executor_dispatch.py counts them in the executor and holds these to it.
DEQUANT_KERNELS = 4.0
QUANT_KERNELS = 9.0


def fp8(kv_dtype: str) -> bool:
    return kv_dtype != "bf16"


def kv_elem_bytes(kv_dtype: str, model_dtype_bytes: int) -> float:
    """Bytes of one stored K or V element."""
    return 1.0 if fp8(kv_dtype) else float(model_dtype_bytes)


def token_head_bytes(kv_dtype: str, head_dim: int, model_dtype_bytes: int) -> float:
    """K and V of one token for one KV head of one sequence, with the scales' share where there are scales."""
    data = 2.0 * head_dim * kv_elem_bytes(kv_dtype, model_dtype_bytes)
    return data + (2.0 * SCALE_BYTES / KV_SCALE_BLOCK if fp8(kv_dtype) else 0.0)


def written_rows(P, C):
    """Rows a write of C new tokens after P stores in fp8: whole scale blocks, from the partly filled one the new
    rows join (re-scaled with them and written again) to the last they reach,
    KV_SCALE_BLOCK * (ceil((P + C) / KV_SCALE_BLOCK) - floor(P / KV_SCALE_BLOCK)); the executor's stores are block-
    major (each block's rows, then its scales), so these are one contiguous range, one copy."""
    import numpy as np

    P = np.asarray(P, dtype=float)
    end = np.ceil((P + np.asarray(C, dtype=float)) / KV_SCALE_BLOCK)
    return KV_SCALE_BLOCK * (end - np.floor(P / KV_SCALE_BLOCK))
