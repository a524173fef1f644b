"""Does sparse_fetch's CPU gather run slower from the run's KV store than from calibrate's blocks? (GPU machine)

On the three h200-s18 machines calibrate's gather (_cpu_gather: 1 GiB of ordinary blocks cycled through) gave
79-106 GB/s and l3-sparse-64k's runs gathered at 62-79, about 0.75 of it. This gathers the same rows (a fifth of
64K tokens, llama-3-8b's 8 KV heads) into a pinned stage from: calibrate's 1 GiB of blocks; 32 layers' blocks
of one HostPool (ordinary memory zero-filled and registered with cudaHostRegister, as the run's store); and the
same 32 blocks as ordinary memory not registered. Bytes read plus written per second, medians.
    . validation/device_setup.sh && python3 validation/gather_source_probe.py $OUT/gather-source.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from roofsim.executor.calibrate import cold_kv_blocks, gather_rows
from roofsim.executor.hostpool import HostPool


def gbps(blocks: list[torch.Tensor], picks: list[torch.Tensor], out: torch.Tensor, d: int) -> float:
    times = []
    for i in range(2 * len(blocks)):
        b, r = blocks[i % len(blocks)], picks[i % len(picks)]
        t0 = time.perf_counter()
        torch.index_select(b.view(-1, d), 0, r, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * out.numel() * out.element_size() / statistics.median(times[1:]) / 1e9


def main(path: str) -> None:
    hk, d, tokens, layers = 8, 128, 65536, 32
    n = tokens // 5
    picks = [gather_rows(tokens, n, hk) for _ in range(8)]
    out = torch.empty(hk * n * 2, d, dtype=torch.bfloat16, pin_memory=True)
    res: dict[str, float] = {"threads": torch.get_num_threads()}
    res["calibrate_blocks_1GiB"] = gbps(cold_kv_blocks(hk, tokens, d, 1 << 30), picks, out, d)
    shape = (tokens, 1, 2, hk, d)
    pool = HostPool(pinned=True)
    handles = [pool.reserve(shape, torch.bfloat16) for _ in range(layers)]
    pool.allocate()
    store = [pool.block(h, shape, torch.bfloat16) for h in handles]
    res["hostpool_32_layers"] = gbps(store, picks, out, d)
    pool.close()
    del store, pool
    plain = [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(layers)]
    res["plain_32_layers"] = gbps(plain, picks, out, d)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(res)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gather-source.json")
