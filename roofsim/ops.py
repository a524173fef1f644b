"""Operators of one decoder layer, with their FLOPs and HBM bytes.

Shapes: a step processes C new tokens per sequence after P cached ones, for a batch of B sequences. C and
P may be numpy arrays (one entry per prefill chunk) so a whole prefill is costed in one pass.
Conventions: a multiply-add is 2 FLOPs; bytes are HBM reads plus writes at the model dtype; attention reads
each cached K/V byte once (a fused flash-style kernel) and its FLOPs are 4*d per query head per (query, key)
pair, causal within the chunk: keys per query = P + (C + 1) / 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from roofsim.specs.model import ModelSpec

OpKind = Literal["gemm", "attention", "vector"]
Num = float | np.ndarray


@dataclass(frozen=True)
class Op:
    name: str
    kind: OpKind
    flops: Num
    hbm_bytes: Num
    kernels: int = 1  # eager-mode kernel launches this op costs


def _gemm(name: str, rows: Num, k: int, n: int, e: int, kernels: int = 1) -> Op:
    """rows x k activations times a k x n weight: weights read once, activations read and written."""
    return Op(name, "gemm", 2.0 * rows * k * n, (k * n + rows * (k + n)) * e, kernels)


def _vector(name: str, elems: Num, flops_per: float, passes: float, e: int, kernels: int) -> Op:
    return Op(name, "vector", flops_per * elems, passes * elems * e, kernels)


def attention_op(
    m: ModelSpec, C: Num, P: Num, B: int, kv_heads: Num | None = None, keys: Num | None = None
) -> Op:
    """Attention of C new queries per sequence over P cached + C new keys, for `kv_heads` KV heads (default:
    all) and their query groups. `keys` overrides the number of cached keys read (sparse plans)."""
    hk = m.n_kv_heads if kv_heads is None else kv_heads
    hq = hk * m.group
    e = m.dtype_bytes
    cached = P if keys is None else keys
    keys_per_query = cached + (np.asarray(C) + 1) / 2.0
    flops = 4.0 * B * hq * m.head_dim * C * keys_per_query
    qo = 2.0 * B * C * hq * m.head_dim * e
    kv = 2.0 * B * (cached + C) * hk * m.head_dim * e
    return Op("attention", "attention", flops, qo + kv, kernels=1)


def pre_attention_ops(m: ModelSpec, C: Num, B: int) -> list[Op]:
    """Norm, QKV projection, rotary, and writing the new K/V into the cache."""
    e = m.dtype_bytes
    rows = B * np.asarray(C, dtype=float)
    h = m.hidden
    norm_kernels = 7 if m.norm == "rms" else 1  # HF eager RMSNorm: pow, mean, add, rsqrt, mul, cast, mul
    ops = [
        _vector("input_norm", rows * h, 4, 2, e, norm_kernels),
        _gemm("qkv_proj", rows, h, m.q_dim + 2 * m.kv_dim, e, kernels=1 if m.fused_qkv else 3),
    ]
    if m.positions == "rope":
        ops.append(_vector("rope", rows * (m.n_heads + m.n_kv_heads) * m.head_dim, 3, 2, e, kernels=10))
    ops.append(_vector("kv_write", rows * 2 * m.kv_dim, 0, 2, e, kernels=2))
    return ops


def post_attention_ops(m: ModelSpec, C: Num, B: int) -> list[Op]:
    """Output projection, residual, norm, MLP, residual."""
    e = m.dtype_bytes
    rows = B * np.asarray(C, dtype=float)
    h, inter = m.hidden, m.intermediate
    norm_kernels = 7 if m.norm == "rms" else 1
    ops = [
        _gemm("o_proj", rows, m.q_dim, h, e),
        _vector("residual_1", rows * h, 1, 3, e, 1),
        _vector("post_norm", rows * h, 4, 2, e, norm_kernels),
    ]
    if m.mlp == "gated":
        ops += [
            _gemm("gate_up_proj", rows, h, 2 * inter, e, kernels=1 if m.family == "phi3" else 2),
            _vector("act_mul", rows * inter, 5, 3, e, 2),
            _gemm("down_proj", rows, inter, h, e),
        ]
    else:
        ops += [
            _gemm("fc1", rows, h, inter, e),
            _vector("act", rows * inter, 1, 2, e, 1),
            _gemm("fc2", rows, inter, h, e),
        ]
    ops.append(_vector("residual_2", rows * h, 1, 3, e, 1))
    return ops


def layer_ops(m: ModelSpec, C: Num, P: Num, B: int) -> list[Op]:
    """All operators of one decoder layer with every head attended on the GPU."""
    return [*pre_attention_ops(m, C, B), attention_op(m, C, P, B), *post_attention_ops(m, C, B)]


def head_ops(m: ModelSpec, B: int) -> list[Op]:
    """Final norm and LM head, for the last token of each sequence only (logits kept in fp32)."""
    e = m.dtype_bytes
    return [
        _vector("final_norm", B * m.hidden, 4, 2, e, 7 if m.norm == "rms" else 1),
        Op("lm_head", "gemm", 2.0 * B * m.hidden * m.vocab, m.hidden * m.vocab * e + B * m.vocab * 4, 1),
    ]


def embed_ops(m: ModelSpec, C: Num, B: int) -> list[Op]:
    rows = B * np.asarray(C, dtype=float)
    return [Op("embed", "vector", 0.0, 2.0 * rows * m.hidden * m.dtype_bytes, 1)]
