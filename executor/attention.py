"""Attention kernels with log-sum-exp, the fp32 merge of partial outputs, and bottom-right causality.

`attend(q, k, v, causal=..)` returns the output and its natural-log LSE. GQA is handled without repeating K/V
where no mask is needed: the G query heads of a KV head are folded into the query axis, `[B, Hkv, G*C, D]`
against `[B, Hkv, S, D]`. A causal part is always square (a chunk against its own keys), where top-left and
bottom-right alignment agree; a chunk of C queries after P cached keys is two parts, the P keys unmasked and the
chunk's own C keys causal, merged by their LSE:

    lse = logaddexp(lse_a, lse_b);  o = o_a * exp(lse_a - lse) + o_b * exp(lse_b - lse)      (in fp32)

Kernels: on CUDA `aten._scaled_dot_product_flash_attention` (FlashAttention-2 inside torch, LSE returned),
cuDNN's fused attention (`aten._scaled_dot_product_cudnn_attention`, LSE returned) and torch's memory-efficient
kernel; prefill-sized calls race them once and keep the fastest (see `_kernel`); on the CPU
`aten._scaled_dot_product_flash_attention_for_cpu` (multi-threaded, LSE returned); last, an fp32 reference in
query blocks. Each kernel is checked once against that reference on strided inputs laid out as the cache lays
them out, and skipped if it disagrees.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

_checked: dict[tuple[str, torch.dtype], list[str]] = {}


def _math(q, k, v, causal: bool, scale: float):
    """fp32 reference, in query blocks so that the score matrix stays under ~2^27 elements per block."""
    L, S = q.shape[-2], k.shape[-2]
    step = max(1, (1 << 27) // max(1, S * q.shape[0] * q.shape[1]))
    outs, lses = [], []
    kf, vf = k.float(), v.float()
    for a in range(0, L, step):
        s = torch.matmul(q[..., a : a + step, :].float(), kf.transpose(-1, -2)) * scale
        if causal:
            rows = torch.arange(a, min(L, a + step), device=s.device)[:, None] + (S - L)
            s = s.masked_fill(torch.arange(S, device=s.device)[None, :] > rows, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.matmul(torch.exp(s - lse[..., None]), vf))
        lses.append(lse)
    return torch.cat(outs, dim=-2).to(q.dtype), torch.cat(lses, dim=-1)


def _flash_cuda(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    return r[0], r[1][..., : q.shape[-2]]


def _cudnn_cuda(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, causal, False, scale=scale
    )
    return r[0], r[1].reshape(q.shape[:-1])


def _efficient_cuda(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)
    return r[0], r[1][..., : q.shape[-2]]


def _flash_cpu(q, k, v, causal, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=None, scale=scale
    )
    return out, lse


_KERNELS = {
    "flash_cuda": _flash_cuda,
    "cudnn_cuda": _cudnn_cuda,
    "efficient_cuda": _efficient_cuda,
    "flash_cpu": _flash_cpu,
    "math": _math,
}


def _candidates(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """The kernels that pass the self-check for this device, dtype and head size, in order of preference."""
    key = (f"{device.type}:{head_dim}", dtype)
    if key not in _checked:
        if device.type == "cuda":
            names = ["efficient_cuda"]
            if dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256:
                names[:0] = ["flash_cuda", "cudnn_cuda"]
        else:
            names = ["flash_cpu"]
        _checked[key] = [n for n in names if _self_check(n, device, dtype, head_dim)] or ["math"]
    return _checked[key]


_LONG = 256  # query rows from which a call counts as a prefill shape for the kernel race
_raced: dict[tuple, str] = {}


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _race(names: list[str], q, k, v, causal: bool, scale: float) -> str:
    """The fastest of the kernels on this very call (each run once to warm up, then timed once)."""
    best, best_s = names[0], float("inf")
    for name in names:
        fn = _KERNELS[name]
        try:
            fn(q, k, v, causal, scale)
            t = _seconds(lambda fn=fn: fn(q, k, v, causal, scale), q.device)
        except (RuntimeError, NotImplementedError):
            continue
        if t < best_s:
            best, best_s = name, t
    return best


def backend_name(device, dtype, head_dim: int) -> str:
    """The preferred kernel that passes the self-check (FlashAttention-2 on CUDA where it does)."""
    return _candidates(torch.device(device), dtype, head_dim)[0]


def kernels_used() -> str:
    """What the runs in this process attend with, for a trace's notes."""
    short = ", ".join(f"{k[0]} {str(k[1]).removeprefix('torch.')}: {v[0]}" for k, v in _checked.items())
    raced = ", ".join(
        f"d={k[2]}: {v}" + (" (one call per KV head over a past)" if _per_head.get(k) else "")
        for k, v in _raced.items()
    )
    return f"attention kernels: {short or '-'}; prefill shapes raced: {raced or '-'}"


def _self_check(name: str, device, dtype, head_dim: int) -> bool:
    """Compare the kernel with the fp32 reference on token-major strided K/V, both causal and not."""
    g = torch.Generator(device="cpu").manual_seed(0)
    fn = _KERNELS[name]
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    try:
        for L, S, causal in ((3, 70, False), (9, 9, True), (130, 130, True)):
            q = torch.randn(2, 2, L, head_dim, generator=g).to(device, dtype)
            buf = torch.randn(S, 2, 2, 2, head_dim, generator=g).to(device, dtype)
            k, v = buf[:, :, 0].permute(1, 2, 0, 3), buf[:, :, 1].permute(1, 2, 0, 3)
            out, lse = fn(q, k, v, causal, head_dim**-0.5)
            ref, ref_lse = _math(q, k, v, causal, head_dim**-0.5)
            err = (out.float() - ref.float()).norm() / ref.float().norm()
            if not (err < tol and torch.allclose(lse.float(), ref_lse, atol=tol * 10, rtol=tol)):
                return False
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _kernel(q, k, v, causal: bool, scale: float):
    """Equal head counts. Returns (out [B, H, L, D], lse [B, H, L] fp32).

    Where several kernels pass the self-check (on CUDA: FlashAttention-2, cuDNN's fused attention, the
    memory-efficient kernel), the first call of a prefill shape (>= 256 query rows) races them and keeps the
    fastest for every prefill-shaped call after it; short calls (decode) use the preferred one. A run's warm-up
    forward makes the race, so the timed prefill does not pay it."""
    names = _candidates(q.device, q.dtype, q.shape[-1])
    if len(names) > 1 and q.shape[-2] >= _LONG:
        key = (q.device.type, q.dtype, q.shape[-1])  # one race (the warm-up's causal chunk) serves both kinds
        if key not in _raced:
            _raced[key] = _race(names, q, k, v, causal, scale)
        name = _raced[key]
        if name != names[0]:
            try:
                return _KERNELS[name](q, k, v, causal, scale)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, NotImplementedError):  # a shape the winner does not take: the preferred
                _raced[key] = names[0]  # kernel from now on
    return _KERNELS[names[0]](q, k, v, causal, scale)


# query rows (GQA folded) from which a call over a past may be split by head: with fewer, each call's fixed cost
# (its launch, its first wave) outweighs what a split could save
_PER_HEAD_ROWS = 16384
_per_head: dict[tuple, bool] = {}
"""Per (device type, dtype, head dim): whether race_heads found a prefill call over a past faster as one call per
KV head than as one call of all of them."""


def _past_kernel(qf, k, v, scale: float):
    """_kernel of an unmasked prefill-sized call (GQA folded: qf [B, Hkv, G*C, D]), as one call per KV head where
    race_heads chose that. A call of all heads spreads the SMs over every head's keys at once, a call per head
    keeps them on one head's; which is faster depends on the kernel and the GPU, hence the race. Same result
    either way (each head's rows attend only its own keys)."""
    H = qf.shape[1]
    if H > 1 and qf.shape[-2] >= _PER_HEAD_ROWS and _per_head.get((qf.device.type, qf.dtype, qf.shape[-1])):
        parts = [_kernel(qf[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], False, scale) for h in range(H)]
        return torch.cat([o for o, _ in parts], 1), torch.cat([x for _, x in parts], 1)
    return _kernel(qf, k, v, False, scale)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float):
    """q [B, Hq, C, D] against k, v [B, Hkv, S, D] (any strides, last dim contiguous).

    causal=True needs C == S (a chunk against its own keys). Returns (out [B, Hq, C, D], lse [B, Hq, C])."""
    B, Hq, C, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    if not causal:
        qf = q.reshape(B, Hkv, G * C, D)
        splits = _cpu_splits(qf, k)
        if splits > 1:
            out, lse = _split_keys(qf, k, v, splits, scale)
        else:
            out, lse = _past_kernel(qf, k, v, scale)
        return out.reshape(B, Hq, C, D), lse.reshape(B, Hq, C)
    if k.shape[-2] != C:
        raise ValueError(f"a causal part must be square, got {C} queries and {k.shape[-2]} keys")
    if G > 1:
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
    return _kernel(q, k, v, True, scale)


_MIN_SPLIT_KEYS = 2048


def _cpu_splits(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many key ranges a CPU decode call is cut into. torch's CPU flash kernel parallelises over (batch, head,
    query block) only, so a decode call over a few KV heads would run on a few threads
    (docs/evidence.md#ev-cpu-split-k); cutting the keys into ranges laid along the batch axis gives every
    thread work, and the partial outputs merge by their LSE (flash-decoding's split-K)."""
    if q.device.type != "cpu" or q.shape[0] != 1 or q.shape[-2] > 64:
        return 1
    return cpu_splits(q.shape[1], q.shape[-2], k.shape[-2])


def cpu_splits(heads: int, rows: int, keys: int) -> int:
    """_cpu_splits for a batch-1 call of `heads` KV heads with `rows` query rows each (at most 64) over `keys`
    keys: one range per thread left after the (head, query block) work items, each at least _MIN_SPLIT_KEYS."""
    work = heads * max(1, rows // 64)
    return max(1, min(torch.get_num_threads() // work, keys // _MIN_SPLIT_KEYS))


def _split_keys(q, k, v, splits: int, scale: float):
    """Attention of q [1, H, L, D] over k, v [1, H, S, D] cut into `splits` equal key ranges as one batched call
    (strided views, no copy of K/V), plus the remainder, merged by LSE in fp32."""
    H, L, D = q.shape[1:]
    S = k.shape[-2]
    n = S // splits

    def ranges(x):
        st = x.stride()
        return x.as_strided((splits, H, n, D), (n * st[2], st[1], st[2], st[3]), x.storage_offset())

    qs = q.expand(splits, H, L, D).contiguous()
    out, lse = _kernel(qs, ranges(k), ranges(v), False, scale)
    if S > splits * n:
        o, x = _kernel(q, k[..., splits * n :, :], v[..., splits * n :, :], False, scale)
        out, lse = torch.cat([out, o]), torch.cat([lse, x])
    o, x = merge_stacked(out, lse)
    return o[None], x[None]


def merge(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial attention outputs over disjoint key sets, in fp32."""
    if len(outs) == 1:
        return outs[0], lses[0]
    if len(outs) == 2 and _merge_two_fn is not None and outs[0].shape[-2] >= _LONG:
        return _merge_two_fn(outs[0], lses[0], outs[1], lses[1])
    return merge_stacked(torch.stack(outs), torch.stack(lses))


def merge_two(oa: torch.Tensor, la: torch.Tensor, ob: torch.Tensor, lb: torch.Tensor):
    """merge() of two parts (a chunk's past and its own keys), the same fp32 arithmetic without stacking them:
    compiled (fuse.compile_merge) it is one pass over the two outputs, where the eager merge makes a stacked copy,
    an fp32 copy, a product, a sum and a cast, each a pass over a chunk-sized tensor."""
    la, lb = la.float(), lb.float()
    total = torch.logaddexp(la, lb)
    acc = oa.float() * torch.exp(la - total)[..., None] + ob.float() * torch.exp(lb - total)[..., None]
    return acc.to(oa.dtype), total


_merge_two_fn = None
"""merge_two compiled (fuse.compile_merge), for prefill-sized merges of two parts; None: the eager stacked merge."""


def merge_stacked(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """merge() of partial outputs stacked on a new first axis ([n, ..., L, D] and [n, ..., L]) in a few whole-tensor
    ops: CPU attention runs on a worker thread that needs the GIL once per torch call while the issuing thread holds
    it (up to the 5 ms switch interval each), so a merge of one op per part per step cost more than the kernel."""
    lse = lse.float()
    total = torch.logsumexp(lse, dim=0)
    acc = (out.float() * torch.exp(lse - total)[..., None]).sum(0)
    return acc.to(out.dtype), total


Part = tuple[torch.Tensor, torch.Tensor, bool]


def attend_parts(q: torch.Tensor, parts: list[Part], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over the union of the parts' keys; parts with no keys are skipped."""
    outs, lses = [], []
    for k, v, causal in parts:
        if k.shape[-2] == 0:
            continue
        o, lse = attend(q, k, v, causal=causal, scale=scale)
        outs.append(o)
        lses.append(lse)
    return merge(outs, lses)


def chunk_parts(k: torch.Tensor, v: torch.Tensor, P: int, C: int) -> list[Part]:
    """Keys [0, P+C) of a chunk of C queries at positions P..P+C-1: bottom-right causal as parts."""
    if C == 1:
        return [(k[..., : P + 1, :], v[..., : P + 1, :], False)]
    return [
        (k[..., :P, :], v[..., :P, :], False),
        (k[..., P : P + C, :], v[..., P : P + C, :], True),
    ]


def kv_views(buf: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [B, g, end-start, D] of a token-major block [T, B, 2, g, D] (strided views, no copy)."""
    rows = buf[start:end]
    return rows[:, :, 0].permute(1, 2, 0, 3), rows[:, :, 1].permute(1, 2, 0, 3)


def pack_kv(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """New K, V [B, H, C, D] -> token-major [C, B, 2, H, D] (one copy)."""
    return torch.stack((k, v), dim=0).permute(3, 1, 0, 2, 4).contiguous()


RACE_PAST_MAX = 65536  # keys of the past the race attends at most (bounded memory and time)


@torch.no_grad()
def race_prefill(shape, chunk: int, heads: int, prompt_len: int) -> str | None:
    """Race the kernels on the call that dominates a long prefill: a chunk's queries (GQA folded) against a past
    of half the prompt (at most RACE_PAST_MAX keys), unmasked, at `heads` KV heads (the fewest one call of the
    plan attends), and keep the winner for every prefill-sized call. Left to the warm-up forward's causal chunk,
    the race would choose by a square the prefill barely runs, and can pick a kernel slower on the past
    (docs/evidence.md#ev-prefill-race-on-past). Returns the winner (None without a choice, or where the race's
    tensors do not fit beside the plan's cache: then the first prefill-sized call races on its own tensors)."""
    D, G = shape.head_dim, shape.group
    names = _candidates(torch.device(shape.device), shape.dtype, D)
    if len(names) < 2 or G * chunk < _LONG:
        return None
    call = _race_call(shape, chunk, heads, prompt_len)
    if call is None:
        return None
    key = (torch.device(shape.device).type, shape.dtype, D)
    _raced[key] = _race(names, *call, False, D**-0.5)
    return _raced[key]


def _race_call(shape, chunk: int, heads: int, prompt_len: int):
    """(q, k, v) of the call the races time: a chunk's queries (GQA folded) at `heads` KV heads against a past of
    half the prompt (at most RACE_PAST_MAX keys), K/V token-major as the cache lays them out; None where they do
    not fit beside the plan's cache."""
    D, G, B = shape.head_dim, shape.group, shape.batch
    past = min(max(chunk, prompt_len // 2), RACE_PAST_MAX)
    try:
        q = torch.randn(B, heads, G * chunk, D, device=shape.device, dtype=shape.dtype)
        k, v = kv_views(torch.randn(past, B, 2, heads, D, device=shape.device, dtype=shape.dtype), 0, past)
    except torch.OutOfMemoryError:
        return None
    return q, k, v


@torch.no_grad()
def race_heads(shape, chunk: int, heads: int, prompt_len: int) -> bool | None:
    """After race_prefill: time the raced kernel on the same past call of `heads` KV heads (the most one call of
    the plan attends) as one call and as one call per head, and keep the faster for every such call (`_per_head`).
    Returns the choice (None where no kernel was raced, a call has one head, or the race's tensors did not fit
    beside the plan's cache: then one call of all heads, as without the race)."""
    D, G = shape.head_dim, shape.group
    key = (torch.device(shape.device).type, shape.dtype, D)
    _per_head.pop(key, None)
    if heads < 2 or key not in _raced or G * chunk < _PER_HEAD_ROWS:
        return None
    call = _race_call(shape, chunk, heads, prompt_len)
    if call is None:
        return None
    q, k, v = call
    times = {}
    try:
        for split in (False, True):
            _per_head[key] = split
            _past_kernel(q, k, v, D**-0.5)  # warm: each variant's first call builds its plan
            times[split] = _seconds(lambda: _past_kernel(q, k, v, D**-0.5), q.device)
    except torch.OutOfMemoryError:
        _per_head.pop(key, None)
        return None
    _per_head[key] = times[True] < times[False]
    return _per_head[key]


@torch.no_grad()
def warm_up(shape, chunk: int, kv_heads: set[int]) -> None:
    """Run each attention call shape a plan's prefill and decode make, once, untimed: a chunk after a cached past
    (its unmasked part is a kernel the cache-less warm-up forward never runs:
    docs/evidence.md#ev-warm-up-chunk-after-past) and a decode step, for each KV-head count that one call
    attends (a whole layer, a slot). `shape`: the cache's Shape."""
    D, G, B = shape.head_dim, shape.group, shape.batch
    for h in sorted(kv_heads):
        for C in {chunk, 1}:
            P = max(chunk, 1)
            # a slot's queries are a head slice of the layer's [B, C, Hq, D]-major q: the same strides, since
            # cuDNN builds a plan per stride pattern too (docs/evidence.md#ev-warm-up-query-strides)
            full = torch.randn(B, C, shape.n_kv_heads * G, D, device=shape.device, dtype=shape.dtype)
            q = full.transpose(1, 2)[:, : h * G]
            k, v = kv_views(torch.randn(P + C, B, 2, h, D, device=shape.device, dtype=shape.dtype), 0, P + C)
            attend_parts(q, chunk_parts(k, v, P, C), D**-0.5)
    if shape.device.type == "cuda":
        torch.cuda.synchronize(shape.device)


def causal_attention(q, k, v, scale: float) -> torch.Tensor:
    """Plain bottom-right causal attention over k, v (used when no plan cache is attached)."""
    C, S = q.shape[-2], k.shape[-2]
    out, _ = attend_parts(q, chunk_parts(k, v, S - C, C), scale)
    return out


# ---- decode over a preallocated buffer, the key count a device tensor (CUDA graphs) ----------------------------


def _decode_masked(q, K, V, n_keys, scale):
    """Any batch and layout: scores over every key of K [B, g, T, D], keys at or past `n_keys` masked, softmax in
    fp32."""
    B, Hq, _, D = q.shape
    T, g = K.shape[2], K.shape[1]
    qg = q.reshape(B, g, Hq // g, D)
    s = torch.matmul(qg, K.transpose(-1, -2)).float() * scale
    pad = torch.arange(T, device=q.device)[None, :] >= n_keys[:, None]
    s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return torch.matmul(p, V).reshape(B, Hq, 1, D)


def _decode_flash_varlen(q, K, V, n_keys, scale):
    """CUDA: FlashAttention-2's varlen kernel, whose `seqused_k` reads the key count from the device (it splits the
    keys across blocks for a one-query GQA call, flash-decoding). One call per sequence: sequence b's keys,
    K[b] as [T, g, D], are rows a constant stride apart whatever the cache's layout (token-major slots, head-major
    evict buffers), which varlen's packed [total_keys, g, D] can address only one sequence at a time. The calls
    read disjoint keys, so a batch costs its bytes plus a launch per sequence."""
    B, Hq, _, D = q.shape
    T = K.shape[2]
    cu_q, cu_k = decode_lengths(q.device, T)
    outs = [
        torch.ops.aten._flash_attention_forward(
            q[b : b + 1, :, 0].contiguous(),
            K[b].transpose(0, 1),
            V[b].transpose(0, 1),
            cu_q,
            cu_k,
            1,
            T,
            0.0,
            False,
            False,
            scale=scale,
            seqused_k=n_keys[b : b + 1],
        )[0]
        for b in range(B)
    ]
    out = outs[0] if B == 1 else torch.cat(outs, 0)
    return out.reshape(B, Hq, 1, D)


_cu_seqlens: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def decode_lengths(device, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The varlen decode call's cumulative query and key lengths for a buffer of T keys, made once per device and
    T (and the split call's, `split_lengths`). Making them copies from the host, which a CUDA graph capture cannot
    hold: a capture first calls this for every buffer length its layers attend (GraphDecoder)."""
    key = (device, T)
    if key not in _cu_seqlens:
        _cu_seqlens[key] = (
            torch.tensor([0, 1], dtype=torch.int32, device=device),
            torch.tensor([0, T], dtype=torch.int32, device=device),
        )
        split_lengths(device, T)
    return _cu_seqlens[key]


# keys per segment of the split decode call, and the most segments one call makes
SPLIT_KEYS = 512
MAX_SPLITS = 16


class Splits(NamedTuple):
    """The split decode call's key ranges of one buffer length, on its device: the cumulative query lengths [S+1]
    (0..S), the cumulative key lengths [S+1] (the ranges' bounds), each range's first key [S] and its length [S], and
    the longest range's length."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    longest: int


_splits: dict[tuple, Splits] = {}


def split_lengths(device, T: int) -> Splits:
    """The split decode call's ranges of a buffer of T keys: S = ceil(T / SPLIT_KEYS) (at most MAX_SPLITS)
    consecutive ranges of equal length (the last shorter), each a sequence of its own with one query; made once per
    device and T (before any capture)."""
    key = (device, T)
    if key not in _splits:
        S = max(1, min(MAX_SPLITS, -(-T // SPLIT_KEYS)))
        L = -(-T // S)
        bounds = [min(i * L, T) for i in range(S + 1)]
        starts = torch.tensor(bounds[:-1], dtype=torch.int32, device=device)
        _splits[key] = Splits(
            torch.arange(S + 1, dtype=torch.int32, device=device),
            torch.tensor(bounds, dtype=torch.int32, device=device),
            starts,
            torch.tensor(bounds[1:], dtype=torch.int32, device=device) - starts,
            L,
        )
    return _splits[key]


def merge_segments(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """One query's attention over S key ranges, from each range's output out [S, H, D] and log-sum-exp lse [S, H]
    (fp32): the outputs weighted by exp(lse - max lse). A range without keys carries no weight whatever its lse says
    (FlashAttention writes +inf there, a masked softmax -inf or NaN); at least one range has keys. Returns [H, D]."""
    lse = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("-inf")))
    w = torch.exp(lse - lse.amax(dim=0, keepdim=True))
    return ((w[..., None] * out.float()).sum(0) / w.sum(0)[..., None]).to(out.dtype)


def split_decode(q, K, V, n_keys, scale, segments) -> torch.Tensor:
    """Decode attention of q [B, Hq, 1, D] over keys [0, n_keys[b]) of K, V [B, g, T, D], with the keys cut into
    the `split_lengths` ranges: `segments(qs, k, v, cu_q, cu_k, used, L, scale)` attends S copies of one sequence's
    query qs [S, Hq, D], copy s over keys cu_k[s]..cu_k[s] + used[s] of k, v [T, g, D] (L: the longest range), and
    returns each copy's output [S, Hq, D] and log-sum-exp [S, Hq]; merge_segments combines them. `used`, each
    range's keys below n_keys, is computed on the device, so a replayed graph reads the step's key count."""
    B, Hq, _, D = q.shape
    sp = split_lengths(q.device, K.shape[2])
    S = sp.starts.numel()
    outs = []
    for b in range(B):
        used = torch.minimum((n_keys[b] - sp.starts).clamp_min(0), sp.lengths).to(torch.int32)
        qs = q[b, :, 0].unsqueeze(0).expand(S, Hq, D).contiguous()
        out, lse = segments(
            qs, K[b].transpose(0, 1), V[b].transpose(0, 1), sp.cu_q, sp.cu_k, used, sp.longest, scale
        )
        outs.append(merge_segments(out, lse))
    return torch.stack(outs).reshape(B, Hq, 1, D)


def _flash_segments(qs, k, v, cu_q, cu_k, used, L, scale):
    """FlashAttention-2's varlen call over the split ranges as S sequences of one query each (its log-sum-exp is
    [Hq, total queries] for a varlen call)."""
    out, lse = torch.ops.aten._flash_attention_forward(
        qs, k, v, cu_q, cu_k, 1, L, 0.0, False, False, scale=scale, seqused_k=used
    )[:2]
    if tuple(lse.shape) != (qs.shape[1], qs.shape[0]):
        raise RuntimeError(f"varlen log-sum-exp of shape {tuple(lse.shape)}, expected [heads, queries]")
    return out, lse.transpose(0, 1)


def _decode_flash_split(q, K, V, n_keys, scale):
    """CUDA: flash-decoding by hand for the shapes FlashAttention-2's varlen call does not split over the keys
    itself (one query per KV head: with MHA that call makes only heads x batch blocks, too few to stream the keys at
    HBM rate). The keys are cut into up to MAX_SPLITS ranges that run as the sequences of one varlen call, each with
    its own device key count, and merged by their log-sum-exp (split_decode). pick_decode_kernel keeps it only where
    it agrees with the reference and is the fastest. With GQA (several queries per KV head) the varlen call already
    splits the keys (its one-query GQA path), so this kernel is offered for MHA only."""
    if q.shape[1] != K.shape[1]:
        raise NotImplementedError("the split decode serves one query head per KV head")
    return split_decode(q, K, V, n_keys, scale, _flash_segments)


_DECODE_KERNELS = {
    "flash_varlen": _decode_flash_varlen,
    "flash_split": _decode_flash_split,
    "masked": _decode_masked,
}
_decode_choice: dict[tuple, str] = {}


def decode_attend(
    q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, n_keys: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query per sequence, q [B, Hq, 1, D], over keys [0, n_keys[b]) of K and V [B, g, T, D] (views of a
    preallocated buffer: every step reads the same shapes); n_keys is an int32 device tensor [B], so the same
    kernels serve every step of a replayed graph. The kernel is the one `pick_decode_kernel` chose for this device,
    dtype and head size (the masked one before any choice)."""
    name = _decode_choice.get((q.device.type, q.dtype, q.shape[-1]), "masked")
    return _DECODE_KERNELS[name](q, K, V, n_keys, scale)


@torch.no_grad()
def pick_decode_kernel(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, n: int, scale: float) -> str:
    """Check each decode kernel against `attend` over the first n keys of K, V [B, g, T, D] and keep the fastest
    that agrees (each run once to warm up, then timed once); the masked one is always a candidate."""
    B = q.shape[0]
    ref, _ = attend(q, K[:, :, :n], V[:, :, :n], causal=False, scale=scale)
    n_keys = torch.full((B,), n, dtype=torch.int32, device=q.device)
    tol = 2e-2 if q.dtype in (torch.float16, torch.bfloat16) else 1e-4
    best, best_s = "masked", float("inf")
    for name, fn in _DECODE_KERNELS.items():
        try:
            out = fn(q, K, V, n_keys, scale)
            err = (out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)
            if not err < tol:
                continue
            t = _seconds(lambda fn=fn: fn(q, K, V, n_keys, scale), q.device)
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        if t < best_s:
            best, best_s = name, t
    _decode_choice[(q.device.type, q.dtype, q.shape[-1])] = best
    return best


def decode_kernel_name(device, dtype, head_dim: int) -> str:
    return _decode_choice.get((torch.device(device).type, dtype, head_dim), "masked")
