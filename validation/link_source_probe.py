"""Does the pinned H2D rate depend on the kind of host buffer? (GPU machine, ~15 s)

The s18a calibration's isolated copies (torch pin_memory buffers, never written) ran at 49.5 GB/s where the same
machine's runs streamed their KV store (executor/hostpool.py: ordinary memory, zero-filled, cudaHostRegister) at
55. This copies 64 MiB and 256 MiB from each kind in turn, rounds interleaved so that a change of the machine's
state weighs on all alike: a torch pinned buffer never written, one written by the CPU, and a HostPool block.
    . validation/device_setup.sh && python3 validation/link_source_probe.py $OUT/link-source.json
"""

from __future__ import annotations

import json
import statistics
import sys

import torch
from roofsim.executor.calibrate import copy_once_s
from roofsim.executor.hostpool import HostPool

MiB = 1 << 20


def copy_gbps(dev: torch.Tensor, host: torch.Tensor, direction: str) -> float:
    dst, src = (dev, host) if direction == "h2d" else (host, dev)
    return host.numel() / copy_once_s(dst, src) / 1e9


def main(out: str) -> None:
    res: dict[str, object] = {"gpu": torch.cuda.get_device_name()}
    for n in (64 * MiB, 256 * MiB):
        never = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        written = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        written.fill_(1)
        pool = HostPool(pinned=True)
        h = pool.reserve((n,), torch.uint8)
        pool.allocate()
        store = pool.block(h, (n,), torch.uint8)
        dev = torch.empty(n, dtype=torch.uint8, device="cuda")
        sources = {"torch_pinned_never_written": never, "torch_pinned_written": written, "hostpool": store}
        # the never-written buffer is only read (a D2H into it would write it)
        pairs = [
            (k, d) for k in sources for d in ("h2d", "d2h") if (k, d) != ("torch_pinned_never_written", "d2h")
        ]
        rates: dict[str, list[float]] = {f"{k} {d}": [] for k, d in pairs}
        for _ in range(10):
            for k, d in pairs:
                rates[f"{k} {d}"].append(copy_gbps(dev, sources[k], d))
        res[f"{n // MiB} MiB"] = {k: {"median": statistics.median(v[2:]), "all": v} for k, v in rates.items()}
        pool.close()
        del never, written, dev
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    for size, by in res.items():
        if isinstance(by, dict):
            print(size, {k: round(v["median"], 1) for k, v in by.items()})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "link-source.json")
