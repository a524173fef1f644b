"""Host KV blocks for the timings that read host memory (cpu.py's scans and gather, link.py's gathered stage,
host.py's issue beside the CPU worker): laid out as the executor's host store holds a slot, [tokens, 1, 2, heads,
head_dim] bf16 token-major, filled, and enough of them that a call cycling through them reads RAM, not the
last-level cache (a decode step reads each layer's host KV once)."""

from __future__ import annotations

import torch


def kv_block_bytes(heads: int, L: int, head_dim: int) -> int:
    """Bytes of one host KV block [L, 1, 2, heads, head_dim] in bf16."""
    return L * 2 * heads * head_dim * 2


def cold_kv_blocks(heads: int, L: int, head_dim: int, cold_bytes: int = 1 << 30) -> list[torch.Tensor]:
    """Distinct host KV blocks [L, 1, 2, heads, head_dim] (bf16, filled) of at least `cold_bytes` together, so
    that a call cycling through them reads each from RAM (one block of a few tens of MB repeated would come from
    the last-level cache)."""
    size = kv_block_bytes(heads, L, head_dim)
    bufs = [
        torch.empty(L, 1, 2, heads, head_dim, dtype=torch.bfloat16)
        for _ in range(max(2, -(-cold_bytes // size)))
    ]
    for b in bufs:
        b.normal_()
    return bufs


def carve_kv_blocks(
    region: torch.Tensor, heads: int, L: int, head_dim: int, cold_bytes: int, least: int = 2
) -> list[torch.Tensor]:
    """Consecutive host blocks [L, 1, 2, heads, head_dim] over a filled bf16 region, enough to cover cold_bytes (at
    least `least`, at most what the region holds), so that calls cycling through them read RAM."""
    n = kv_block_bytes(heads, L, head_dim) // 2  # bf16 elements
    count = max(least, min(cold_bytes // (2 * n), region.numel() // n))
    return [region[i * n : (i + 1) * n].view(L, 1, 2, heads, head_dim) for i in range(count)]


def gather_rows(tokens: int, picked: int, heads: int) -> torch.Tensor:
    """The host-block rows sparse_fetch's gather reads for `picked` random tokens (sorted) per KV head out of
    `tokens`: each token's K and V row per head of a token-major block [tokens, 1, 2, heads, head_dim], in the
    stage's order [heads, picked, 2] (executor/sparse.py)."""
    idx = torch.stack([torch.randperm(tokens)[:picked].sort().values for _ in range(heads)])
    return (((idx[:, :, None] * 2) + torch.arange(2)) * heads + torch.arange(heads)[:, None, None]).reshape(
        -1
    )
