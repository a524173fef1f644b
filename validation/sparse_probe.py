"""What sparse_fetch's decode layer spends beyond its prediction, in parts (GPU machine, ~30 s).

In every H200 and H100 campaign l3-sparse-64k's layers ran ~1.3x their predicted time: the copy of the gathered
rows at 41-44 GB/s against 50-55 for isolated pinned copies, and the GPU's token selection at 0.6-0.9 ms against
0.35 predicted. This times, at llama-3-8b's shapes and a 64K context with a fifth of the tokens picked:
- the stage's H2D never written by the CPU, right after a memset, right after the executor's index_select
  gather, and again right after that copy;
- torch.topk with the index sort at the calibration's shapes and at the plan's k, with the host ahead of the GPU
  (queued behind a sleeping kernel) and without;
- the executor's whole selection (partial-key scores, the max over the query group, topk, sort, the host rows'
  index arithmetic), queued and not.
    . validation/device_setup.sh && python3 validation/sparse_probe.py $OUT/sparse-probe.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys

import torch
from roofsim.executor.calibrate import _cuda_time, cold_kv_blocks, copy_once_s, gather_rows

from roofsim.specs import load_model


def main(out: str) -> None:
    m = load_model("llama-3-8b")
    hk, d, g, P = m.n_kv_heads, m.head_dim, m.group, 65536
    n = math.ceil(0.2 * P)
    res: dict[str, object] = {"gpu": torch.cuda.get_device_name(), "tokens": P, "picked": n}

    blocks = cold_kv_blocks(hk, P, d, 1 << 30)
    rows = [gather_rows(P, n, hk) for _ in blocks]
    stage = torch.empty(hk * n * 2, d, dtype=torch.bfloat16, pin_memory=True)
    dev = torch.empty_like(stage, device="cuda")
    nbytes = stage.numel() * stage.element_size()

    def copy_gbps(src=stage) -> float:
        return nbytes / copy_once_s(dev, src) / 1e9

    rates: dict[str, list[float]] = {"never_written": [], "after_memset": [], "after_gather": [], "again": []}
    fresh = torch.empty_like(stage, pin_memory=True)
    for i in range(2 * len(blocks)):
        rates["never_written"].append(copy_gbps(fresh))
        stage.fill_(float(i))
        rates["after_memset"].append(copy_gbps())
        torch.index_select(blocks[i % len(blocks)].view(-1, d), 0, rows[i % len(blocks)], out=stage)
        rates["after_gather"].append(copy_gbps())
        rates["again"].append(copy_gbps())
    res["stage_h2d_gbps"] = {k: statistics.median(v[1:]) for k, v in rates.items()}
    res["stage_bytes"] = nbytes

    topk = {}
    for rows_, length, k in ((8, 65536, 6554), (8, 20480, 16384), (hk, P, n)):
        x = torch.randn(rows_, length, device="cuda", dtype=torch.bfloat16)
        for queued in (False, True):
            t = _cuda_time(lambda x=x, k=k: x.topk(k, dim=-1).indices.sort(dim=-1), repeat=9, queued=queued)
            topk[f"{rows_}x{length} k={k} {'queued' if queued else 'unqueued'}"] = {
                "s": t,
                "gelems": rows_ * length / t / 1e9,
            }
    res["topk"] = topk

    r = max(1, int(0.2 * d))  # partial-key columns
    q = torch.randn(1, m.n_heads, 1, d, device="cuda", dtype=torch.bfloat16)
    cols = torch.randint(0, d, (hk, r), device="cuda")
    pk = torch.randn(1, hk, P, r, device="cuda", dtype=torch.bfloat16)
    b_ = torch.arange(1, device="cuda")[:, None, None, None]
    h_ = torch.arange(hk, device="cuda")[None, :, None, None]
    kv_ = torch.arange(2, device="cuda")

    def select():
        qg = q.reshape(1, hk, g, d)
        qp = qg.gather(-1, cols[None, :, None, :].expand(1, -1, g, -1))
        scores = torch.matmul(qp, pk.transpose(-1, -2)).amax(dim=-2)
        idx = scores.topk(n, dim=-1).indices.sort(dim=-1).values
        return (((idx[..., None] * 1 + b_) * 2 + kv_) * hk + h_).reshape(-1)

    res["selection_s"] = {
        "unqueued": _cuda_time(select, repeat=9),
        "queued": _cuda_time(select, repeat=9, queued=True),
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sparse-probe.json")
