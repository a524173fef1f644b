"""One layer's CPU decode attention in one TorchScript call: cpu_attention's worker attends its heads while the
issuing thread runs Python, and a worker that calls torch op by op takes the GIL back after every op, waiting up to
Python's switch interval each time. TorchScript runs the whole layer without the GIL: one take per layer.

Same arithmetic as `attention.attend` on the CPU (split-K over key ranges laid along the batch axis, merged by
LSE in fp32), for batch 1 and one query token, over host blocks laid out token-major [T, 1, 2, g, D]; the
output goes straight into the caller's buffer. Beside a busy Python thread the op-by-op path waits for the GIL
after every op, this path once a layer (docs/evidence.md#ev-gil-switch-interval,
docs/evidence.md#ev-torchscript-cpu-worker). The tests check the arithmetic.
"""

from __future__ import annotations

import warnings
from typing import List  # noqa: UP035 - TorchScript reads the annotation

import torch
from roofsim.executor.attention import _candidates, attend_parts, chunk_parts, cpu_splits, kv_views


def _layer(
    q: torch.Tensor,
    blocks: List[torch.Tensor],  # noqa: UP006
    length: int,
    splits: List[int],  # noqa: UP006
    scale: float,
    out: torch.Tensor,
) -> None:
    a = 0
    for i in range(len(blocks)):
        rows = blocks[i].narrow(0, 0, length)
        k = rows.select(2, 0).permute(1, 2, 0, 3)  # [1, g, S, D], strided
        v = rows.select(2, 1).permute(1, 2, 0, 3)
        g, S, D = k.shape[1], k.shape[2], k.shape[3]
        qs = q.narrow(1, a, q.shape[1] // len(blocks))
        hq = qs.shape[1]
        qf = qs.reshape(1, g, hq // g, D)  # the G query heads of each KV head along the query axis
        m = splits[i]
        n = S // m
        ks, vs = k.stride(), v.stride()
        kr = k.as_strided([m, g, n, D], [n * ks[2], ks[1], ks[2], ks[3]], k.storage_offset())
        vr = v.as_strided([m, g, n, D], [n * vs[2], vs[1], vs[2], vs[3]], v.storage_offset())
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qf.expand(m, g, hq // g, D).contiguous(), kr, vr, 0.0, False, attn_mask=None, scale=scale
        )
        if S > m * n:  # the keys past the last whole range
            o2, lse2 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qf,
                k.narrow(2, m * n, S - m * n),
                v.narrow(2, m * n, S - m * n),
                0.0,
                False,
                attn_mask=None,
                scale=scale,
            )
            o, lse = torch.cat([o, o2]), torch.cat([lse, lse2])
        lf = lse.float()
        total = torch.logsumexp(lf, 0)
        acc = (o.float() * torch.exp(lf - total).unsqueeze(-1)).sum(0)
        out.narrow(1, a, hq).copy_(acc.reshape(qs.shape))
        a += hq


_scripted: list = []


def _compiled():
    """_layer through TorchScript, compiled on first use; None where this torch has no TorchScript (torch 2.13
    marks it deprecated, hence the silenced warning): the caller then attends op by op."""
    if not _scripted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _scripted.append(torch.jit.script(_layer))
        except Exception:  # noqa: BLE001 - any failure to compile means: use the op-by-op path
            _scripted.append(None)
    return _scripted[0]


def cpu_decode(
    q: torch.Tensor, blocks: list[torch.Tensor], length: int, scale: float, out: torch.Tensor
) -> bool:
    """Attention of q [1, H, 1, D] (the heads of the blocks in order, equally many per block) over the first
    `length` tokens of each host block, into out (q's shape). False, with nothing done, where this path does not
    apply (batch or queries other than 1, not on the CPU, torch's CPU flash kernel not usable): then attend
    op by op."""
    if q.device.type != "cpu" or q.shape[0] != 1 or q.shape[2] != 1 or q.shape[1] % len(blocks):
        return False
    layer = _compiled() if _candidates(q.device, q.dtype, q.shape[-1])[0] == "flash_cpu" else None
    if layer is None:
        return False
    g = blocks[0].shape[3]
    per = q.shape[1] // len(blocks)
    layer(q, blocks, length, [cpu_splits(g, per // g, length)] * len(blocks), scale, out)
    return True


def attend_host(
    q: torch.Tensor,
    blocks: list[torch.Tensor],
    length: int,
    scale: float,
    out: torch.Tensor,
    scripted: bool = True,
) -> None:
    """q [B, H, C, D] (the heads of the blocks in order, equally many per block) over the first `length` tokens of
    each host block [T, B, 2, g, D], the last C of them the queries' own (bottom-right causal), into out (q's
    shape): in one TorchScript call where cpu_decode applies (and `scripted`), else op by op."""
    if scripted and cpu_decode(q, blocks, length, scale, out):
        return
    C, per = q.shape[2], q.shape[1] // len(blocks)
    outs = [
        attend_parts(
            q[:, i * per : (i + 1) * per], chunk_parts(*kv_views(b, 0, length), length - C, C), scale
        )[0]
        for i, b in enumerate(blocks)
    ]
    torch.cat(outs, dim=1, out=out)
