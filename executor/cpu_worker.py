"""The CPU worker: one thread beside the issuing thread that runs the CPU's share of attention (cpu_attention's
heads at decode), and the calibration's timings of it, with torch's kernels on all cores but one."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

_pool: ThreadPoolExecutor | None = None


def worker_threads(base: int | None = None) -> int:
    """Threads of the CPU worker's kernels: torch's count less one, so that the issuing thread, which launches
    the GPU heads' kernels while the CPU attends, keeps a core of its own (an OpenMP team as wide as the machine
    waits at every barrier for whichever thread shares a core with it). ROOFSIM_CPU_THREADS sets it."""
    env = os.environ.get("ROOFSIM_CPU_THREADS")
    if env:
        return max(1, int(env))
    return max(1, (base or torch.get_num_threads()) - 1)


SWITCH_INTERVAL_S = 1e-4


def worker() -> ThreadPoolExecutor:
    """One worker thread for the CPU's share of attention (layers run one after another, so one is enough).

    Its first use shortens Python's GIL switch interval for the process (5 ms by default, to 0.1 ms): the worker
    takes the GIL back after each TorchScript call (and after every torch call on the op-by-op fallback), and while
    the issuing thread runs Python each take waits up to the full interval
    (docs/evidence.md#ev-gil-switch-interval)."""
    global _pool
    if _pool is None:
        _pool = worker_pool(worker_threads())
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    return _pool


def worker_pool(threads: int) -> ThreadPoolExecutor:
    """A one-thread pool whose torch kernels run on `threads` threads (torch's thread count is per thread)."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="roofsim-cpu-attn",
        initializer=torch.set_num_threads,
        initargs=(threads,),
    )


def on_worker(fn):
    """fn() run on the CPU worker, as the executor's CPU attention runs (calibration measures it there)."""
    return worker().submit(fn).result()
