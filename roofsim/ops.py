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

from roofsim import kvformat
from roofsim.specs.model import ModelSpec

OpKind = Literal["gemm", "attention", "vector", "topk", "allreduce"]
Num = float | np.ndarray


@dataclass(frozen=True)
class Op:
    name: str
    kind: OpKind
    flops: Num
    hbm_bytes: Num
    kernels: Num = 1  # eager-mode kernel launches this op costs
    extra_bytes: Num = 0.0  # memory-bound passes of the same op that run as separate kernels (not overlapped)
    runtime_calls: Num = 0  # CUDA runtime calls other than kernels and copies (event records, stream waits)
    attn_calls: Num = 0  # attention calls of the executor (a calibrated profile may price them directly)
    streamed_calls: Num = 0  # of which over streamed units
    prefill_calls: Num = 0  # of which over a chunk after a past (two parts and their merge)
    # GQA-folded query rows of each such call (KV heads per call x group x chunk x batch): the kernel's tiles, so
    # its parallelism; a calibrated profile prices the call at that many rows' efficiency. 0: not such a call
    query_rows: Num = 0
    # attention: the head dim its kernel runs at (EfficiencySpec.attention_head_dim); 0: unsaid
    head_dim: int = 0
    ranks: int = 1  # allreduce: the GPUs it sums over (hbm_bytes: each rank's contribution)
    # KV in fp8: the store's write and the dequantisation into a scratch, separate kernels over strided block-major
    # stores, priced at the GPU's fp8 pass rate (GpuSpec.fp8_bytes_per_s); fp8_calls: the attention calls that
    # make them (a calibrated profile prices their host cost directly)
    fp8_bytes: Num = 0.0
    # of those passes, the write of the call's new rows: priced at its own rate where the profile timed one at a
    # prefill chunk (GpuSpec.fp8_write_bytes_per_s), a bulk pass of many rows unlike a decode call's one
    fp8_write_bytes: Num = 0.0
    fp8_calls: Num = 0
    expert_calls: Num = 0  # MoE experts hit, each an iteration of the host's expert loop
    moe_layers: Num = 0  # MoE layers' expert blocks: a calibrated profile adds runtime.moe_layer_us each


def topk_op(name: str, rows: Num, n: Num, k: Num, e: int) -> Op:
    """torch.topk of k out of n per row, then a sort of the k indices: `flops` counts the n elements ranked
    (a calibrated profile prices them at its measured rate), bytes the passes a radix select makes."""
    elems = np.asarray(rows, dtype=float) * np.asarray(n, dtype=float)
    return Op(name, "topk", elems, elems * e * 4 + np.asarray(rows, dtype=float) * np.asarray(k) * 16, 6)


def _gemm(name: str, rows: Num, k: int, n: int, e: int, kernels: int = 1) -> Op:
    """rows x k activations times a k x n weight: weights read once, activations read and written."""
    return Op(name, "gemm", 2.0 * rows * k * n, (k * n + rows * (k + n)) * e, kernels)


def allreduce_op(name: str, m: ModelSpec, rows: Num) -> Op:
    """The all-reduce that sums a tensor-parallel shard's partial hidden state over its m.tp ranks (NCCL on the
    compute stream: the next operator needs the sum): rows x hidden values in the model dtype, one call."""
    return Op(name, "allreduce", 0.0, rows * m.hidden * m.dtype_bytes, kernels=1, ranks=m.tp)


def _vector(name: str, elems: Num, flops_per: float, passes: float, e: int, kernels: int) -> Op:
    return Op(name, "vector", flops_per * elems, passes * elems * e, kernels)


# Host dispatch units (kernel_us each) of one attention call in the executor: the call is ~16 eager aten ops over
# GPU-resident KV (the query's slice, the new token's write, views, the kernel, its LSE, the output) against ~87
# for a whole Llama layer that roofsim counts as 38 units; a streamed unit adds ~11 ops (ring buffer, staging,
# events, two copies). tests/test_executor_dispatch.py counts them in the executor and holds these to it.
ATTN_CALL_KERNELS = 8
STREAMED_CALL_EXTRA = 6
# A call over a prefill chunk after a past adds ~20 aten ops to it (the chunk's own causal part, the GQA repeat of
# its K/V, the LSE merge in fp32), resident or streamed alike: 11 units (the same test counts them). A calibrated
# profile prices them directly (prefill_call_us).
PREFILL_CALL_EXTRA = 11
# A decode step replayed from a CUDA graph (executor/graphs.py) is issued as the static inputs' three writes (token
# ids, position, key count) and one graph launch: 4 launches, whatever the model's kernel count. A calibrated
# profile prices it directly (graph_replay_us).
REPLAY_LAUNCHES = 4
# A replayed decode step attends with FlashAttention's varlen kernel one call per sequence (executor attention.
# _decode_flash_varlen: its seqused_k addresses one sequence's keys at a time), so a batch of B pays B - 1 calls'
# fixed GPU cost more than one call over the batch's bytes: each the query's contiguous copy, the split-KV kernel
# and its combine. A calibrated profile prices such a call directly (efficiency.decode_call_us).
DECODE_SEQUENCE_KERNELS = 3
# CUDA runtime calls besides kernels and copies (event records, stream waits), each costing the host about one
# copy issue (copy_issue_us: a Python -> CUDA runtime call on a stream): 2 per attention call over resident KV, 8
# more for a streamed unit (ring guard, its ready event, write-back ordering, the recorder's marks).
ATTN_CALL_RUNTIME = 2
STREAMED_CALL_RUNTIME_EXTRA = 8
# Of a streamed unit's extras, its write-back: three aten ops (the two slices and the D2H copy, besides the copy's
# issue), 1.7 host units at the ~1.8 aten ops of one, and three runtime calls (the D2H stream's wait for the
# attention, the recorder's mark, the done event). With write_back_tokens = N a decode step writes back one step in
# N, and the layer pays two aten ops more (the new tokens into its GPU tail): tests/test_executor_dispatch.py.
WRITE_BACK_KERNELS = 1.7
WRITE_BACK_RUNTIME = 3
TAIL_KERNELS = 1.1


def write_back_share(C: Num, tokens: int) -> Num:
    """Share of forwards whose new tokens go down to the host: all with write_back_tokens=1, else C/N of them
    (a forward of N or more new tokens always writes back)."""
    return np.minimum(1.0, np.asarray(C, dtype=float) / tokens)


def tail_pending(C: Num, tokens: int) -> Num:
    """Tokens of a slot waiting in the GPU tail at a forward, on average: they come from the tail, not up the link
    (0 .. N-1 in decode; none for a forward of N or more tokens)."""
    C = np.asarray(C, dtype=float)
    return np.where(C >= tokens, 0.0, (tokens - C) / 2.0)


def _norm(name: str, m: ModelSpec, elems: Num) -> Op:
    """HF eager RMSNorm upcasts to fp32: to(fp32), pow, mean, (+eps, rsqrt per row), mul, to(dtype), * weight:
    (e + 4) + 8 + 4 + 8 + (4 + e) + 2e = 28 + 4e bytes per element in 8 kernels. LayerNorm: one fused kernel."""
    e = m.dtype_bytes
    if m.norm == "rms":
        return Op(name, "vector", 4.0 * elems, (28 + 4 * e) * elems, 8)
    return _vector(name, elems, 4, 2, e, 1)


def attention_op(
    m: ModelSpec,
    C: Num,
    P: Num,
    B: int,
    kv_heads: Num | None = None,
    keys: Num | None = None,
    calls: Num = 1,
    streamed_calls: Num = 0,
    write_back_tokens: int = 1,
    tail_kernels: Num = 0,
    kv_dtype: str = "bf16",
    window: int | None = None,
) -> Op:
    """Attention of C new queries per sequence over P cached + C new keys, for `kv_heads` KV heads (default:
    all) and their query groups, in `calls` kernel calls of which `streamed_calls` attend streamed units. `keys`
    overrides the number of cached keys read (sparse plans); `write_back_tokens` > 1 takes off the write-backs a
    GPU tail skips, and `tail_kernels` adds the layer's writes into the tail. A chunk after cached keys is two parts (the past,
    then the chunk's own causal square) whose outputs the executor merges by their LSE in fp32. `window`: a window
    layer, whose query at position t attends min(window, t + 1) keys and whose cache holds at most `window` of the
    past (the model's sink tokens included in it). MLA attends its latent as one KV head of kv_latent values
    (the absorbed form: 2 * (kv_latent + kv_lora_rank) FLOPs per query head and key).

    With kv_dtype fp8 every call first stores its new rows (re-scaling the partly filled block they join) and turns
    the fp8 KV it attends back into the model dtype in a scratch (roofsim.kvformat: 7 bytes per element, two
    kernels), which the attention then reads as in bf16."""
    hk = m.n_kv_heads if kv_heads is None else kv_heads
    hq = hk * m.group
    e = m.dtype_bytes
    cached = P if keys is None else keys
    if window is not None:
        W = window + m.sink_tokens
        cached = np.minimum(cached, W)
        keys_per_query = window_keys_per_query(C, P, W)
    else:
        keys_per_query = cached + (np.asarray(C) + 1) / 2.0
    if m.is_mla:
        flops = 2.0 * B * hq * (m.kv_latent + m.kv_lora_rank) * C * keys_per_query
        qo = B * C * hq * (m.kv_latent + m.kv_lora_rank) * e
        kv = B * (cached + C) * hk * m.kv_latent * e
    else:
        flops = 4.0 * B * hq * m.head_dim * C * keys_per_query
        qo = 2.0 * B * C * hq * m.head_dim * e
        kv = 2.0 * B * (cached + C) * hk * m.head_dim * e
    q_elems = B * np.asarray(C, dtype=float) * hq * m.head_dim
    # a window layer's chunk is one call of FlashAttention-2's own sliding window (executor/window.py: GQA native,
    # no second part to merge, no K/V repeat, no query fold); any other chunk after cached keys is two parts
    after_past = (np.asarray(C) > 1) & (np.asarray(cached) > 0)
    two_parts = after_past & (window is None)
    # the merge: both outputs to fp32, scaled, summed, cast back (~(3e + 40) bytes per query element); a GQA
    # causal part repeats the chunk's K/V per query head; a GQA query is folded into a contiguous copy
    merge = np.where(two_parts, q_elems * (3 * e + 40), 0.0)
    repeat = (
        np.where(np.asarray(C) > 1, 2.0 * B * C * hk * m.head_dim * e * (1 + m.group), 0.0)
        if m.group > 1 and window is None
        else 0.0
    )
    fold = (
        np.where((np.asarray(C) > 1) & (window is not None), 0.0, 2.0 * q_elems * e) if m.group > 1 else 0.0
    )
    fp8_bytes = fp8_write_bytes = 0.0
    if kvformat.fp8(kv_dtype):
        elems = 2.0 * B * hk * m.head_dim
        fp8_bytes = elems * (cached + np.asarray(C, dtype=float)) * kvformat.DEQUANT_BYTES_PER_ELEM
        fp8_write_bytes = elems * kvformat.written_rows(P, C) * kvformat.QUANT_BYTES_PER_ELEM
    prefill_calls = np.where(two_parts, calls, 0.0)
    query_rows = np.where(
        after_past, B * (hq / np.asarray(calls, dtype=float)) * np.asarray(C, dtype=float), 0.0
    )
    kernels = (
        calls * ATTN_CALL_KERNELS + streamed_calls * STREAMED_CALL_EXTRA + prefill_calls * PREFILL_CALL_EXTRA
    )
    runtime = calls * ATTN_CALL_RUNTIME + streamed_calls * STREAMED_CALL_RUNTIME_EXTRA
    if kvformat.fp8(kv_dtype):
        kernels = kernels + calls * (kvformat.DEQUANT_KERNELS + kvformat.QUANT_KERNELS)
    if write_back_tokens > 1:  # the write-backs a GPU tail saves (`tail_kernels`: the layer's writes into it)
        skipped = 1.0 - write_back_share(C, write_back_tokens)
        kernels = kernels - streamed_calls * WRITE_BACK_KERNELS * skipped + tail_kernels
        runtime = runtime - streamed_calls * WRITE_BACK_RUNTIME * skipped
    return Op(
        "attention",
        "attention",
        flops,
        qo + kv,
        kernels=kernels,
        extra_bytes=merge + repeat + fold,
        fp8_bytes=fp8_bytes,
        fp8_write_bytes=fp8_write_bytes,
        fp8_calls=calls if kvformat.fp8(kv_dtype) else 0,
        runtime_calls=runtime,
        attn_calls=calls,
        streamed_calls=streamed_calls,
        prefill_calls=prefill_calls,
        query_rows=query_rows,
        head_dim=0 if m.is_mla else m.head_dim,
    )


def window_keys_per_query(C: Num, P: Num, W: Num) -> Num:
    """Mean keys per query of a chunk of C queries after P past tokens when each attends at most W:
    mean over i < C of min(W, P + i + 1)."""
    C = np.asarray(C, dtype=float)
    P = np.asarray(P, dtype=float)
    below = np.clip(W - P, 0.0, C)  # queries that still see fewer than W keys: P+1 .. P+below
    total = below * P + below * (below + 1) / 2.0 + (C - below) * W
    return total / np.maximum(C, 1.0)


def pre_attention_ops(m: ModelSpec, C: Num, B: int) -> list[Op]:
    """Norm, QKV projection, rotary, and writing the new K/V into the cache."""
    e = m.dtype_bytes
    rows = B * np.asarray(C, dtype=float)
    h = m.hidden
    if m.is_mla:
        return _mla_pre_attention_ops(m, rows)
    ops = [
        _norm("input_norm", m, rows * h),
        _gemm("qkv_proj", rows, h, m.q_dim + 2 * m.kv_dim, e, kernels=1 if m.fused_qkv else 3),
    ]
    if m.qk_norm:  # two modules (Qwen3's and Gemma 3's q_norm and k_norm), each a norm's kernels
        ops.append(_norm("q_norm", m, rows * m.n_heads * m.head_dim))
        ops.append(_norm("k_norm", m, rows * m.n_kv_heads * m.head_dim))
    if m.positions == "rope":
        # HF rotary: q*cos, rotate_half (neg of one half, cat), *sin, add, for q and k: ~10 bytes moved per byte
        ops.append(_vector("rope", rows * (m.n_heads + m.n_kv_heads) * m.head_dim, 3, 10, e, kernels=10))
    # the new K/V packed token-major (stack, then a contiguous permute) and written into the cache
    ops.append(_vector("kv_write", rows * 2 * m.kv_dim, 0, 6, e, kernels=3))
    return ops


def _mla_pre_attention_ops(m: ModelSpec, rows: Num) -> list[Op]:
    """MLA in the absorbed form: q and the latent (kv_latent values: kv_lora_rank + the RoPE key) from the hidden
    state, the latent's norm, each query head's no-RoPE part taken into the latent's space by the up projection's
    key half (its value half is taken in after attention), RoPE, and the latent written into the cache."""
    e, h = m.dtype_bytes, m.hidden
    rope = m.kv_latent - m.kv_lora_rank
    nope = m.head_dim - rope
    return [
        _norm("input_norm", m, rows * h),
        _gemm("q_latent_proj", rows, h, m.q_dim + m.kv_latent, e, kernels=2),
        _norm("latent_norm", m, rows * m.kv_lora_rank),
        _gemm("q_absorb", rows * m.n_heads, nope, m.kv_lora_rank, e),
        _vector("rope", rows * (m.n_heads + 1) * rope, 3, 10, e, kernels=10),
        _vector("kv_write", rows * m.kv_latent, 0, 6, e, kernels=3),
    ]


EXPERT_KERNELS = 8
"""Host dispatch units counted per expert hit by the expert loop (executor/experts.py: its tokens' and weights'
slices, gather, the expert's weights, gate/up, chunk, act, product, down, weight, index_add: 14 aten ops with the
views, in the proportion of aten ops to units a Llama layer has, tests/test_executor_dispatch.py); a calibrated
runtime.expert_call_us replaces them."""


def moe_ops(m: ModelSpec, rows: Num) -> list[Op]:
    """A MoE layer's MLP over `rows` tokens: the router, the `experts_per_token` experts each token picked (their
    weights read once per step for every expert some token picked: ModelSpec.experts_touched) and the shared
    experts. Eager transformers loops over the experts hit: ~8 kernels each (index, gate/up, act, down, scale,
    index_add)."""
    e, h, k = m.dtype_bytes, m.hidden, m.experts_per_token
    touched = m.experts_touched(rows)
    ops = [
        _gemm("router", rows, h, m.n_experts, e),
        _vector("route_topk", rows * m.n_experts, 5, 3, e, 4),
    ]
    inter = m.expert_intermediate
    flops = 2.0 * rows * k * 3 * h * inter + 5.0 * rows * k * inter
    act = rows * k * (2 * h + 3 * inter) * e  # each picked token's input and output, gate/up/act in between
    ops.append(
        Op(
            "experts",
            "gemm",
            flops,
            touched * m.expert_params * e + act,
            kernels=EXPERT_KERNELS * touched,
            expert_calls=touched,
            moe_layers=1,
        )
    )
    if m.shared_intermediate:
        ops += [
            _gemm("shared_gate_up", rows, h, 2 * m.shared_intermediate, e, kernels=2),
            _vector("shared_act_mul", rows * m.shared_intermediate, 5, 5, e, 2),
            _gemm("shared_down", rows, m.shared_intermediate, h, e),
        ]
    return ops


def post_attention_ops(m: ModelSpec, C: Num, B: int, moe: bool = False) -> list[Op]:
    """Output projection, residual, norm, MLP (a mixture of experts where `moe`), residual."""
    e = m.dtype_bytes
    rows = B * np.asarray(C, dtype=float)
    h, inter = m.hidden, m.intermediate
    if m.is_mla:
        ops = [_gemm("v_absorb", rows * m.n_heads, m.kv_lora_rank, m.v_head_dim, e)]
    else:
        ops = []
    ops += [
        _vector("attn_out", rows * m.o_dim, 0, 2, e, 1),  # [B, H, C, D] -> [B, C, H*D] contiguous for o_proj
        _gemm("o_proj", rows, m.o_dim, h, e),
    ]
    if m.tp > 1:  # each rank's o_proj output is a partial sum over its heads
        ops.append(allreduce_op("attn_allreduce", m, rows))
    if m.sandwich_norm:
        ops.append(_norm("post_attention_norm", m, rows * h))
    ops += [
        _vector("residual_1", rows * h, 1, 3, e, 1),
        _norm("post_norm", m, rows * h),
    ]
    if moe:
        ops += moe_ops(m, rows)
    elif m.mlp == "gated":
        ops += [
            _gemm("gate_up_proj", rows, h, 2 * inter, e, kernels=1 if m.family == "phi3" else 2),
            _vector("act_mul", rows * inter, 5, 5, e, 2),  # silu(gate) (read, write), * up (read 2, write)
            _gemm("down_proj", rows, inter, h, e),
        ]
    else:
        ops += [
            _gemm("fc1", rows, h, inter, e),
            _vector("act", rows * inter, 1, 2, e, 1),
            _gemm("fc2", rows, inter, h, e),
        ]
    if m.tp > 1:  # and its down projection's a partial sum over its share of the MLP's width
        ops.append(allreduce_op("mlp_allreduce", m, rows))
    if m.sandwich_norm:
        ops.append(_norm("post_mlp_norm", m, rows * h))
    ops.append(_vector("residual_2", rows * h, 1, 3, e, 1))
    return ops


def layer_ops(m: ModelSpec, C: Num, P: Num, B: int, layer: int | None = None) -> list[Op]:
    """All operators of one decoder layer (default: the first global one) with every head attended on the GPU."""
    i = m.global_layers[0] if layer is None else layer
    return [
        *pre_attention_ops(m, C, B),
        attention_op(m, C, P, B, window=m.window(i)),
        *post_attention_ops(m, C, B, moe=m.is_moe(i)),
    ]


def head_ops(m: ModelSpec, B: int) -> list[Op]:
    """Final norm and LM head, for the last token of each sequence only (logits kept in fp32)."""
    e = m.dtype_bytes
    return [
        _norm("final_norm", m, B * m.hidden),
        Op("lm_head", "gemm", 2.0 * B * m.hidden * m.vocab, m.hidden * m.vocab * e + B * m.vocab * 4, 1),
    ]


def embed_ops(m: ModelSpec, C: Num, B: int) -> list[Op]:
    rows = B * np.asarray(C, dtype=float)
    return [Op("embed", "vector", 0.0, 2.0 * rows * m.hidden * m.dtype_bytes, 1)]
