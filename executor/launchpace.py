"""The host's launch pace: microseconds to issue a fixed run of tiny in-place kernels on an idle device.

roofsim.hostpace's pure-Python loop is the pace the validation prices host-side costs at; this is a second gauge
beside it, through the path a launch-bound decode step spends its time in (Python binding, dispatcher, caching
allocator, the CUDA driver's launch). The H200 guests' host flips between two levels ~1.7x apart within a second
(validation/results/h200-s16/a/host), and the loop and a torch CPU call, timed side by side there, agreed only in
part (correlation 0.55): the executor times both before every decode step, and calibrate both beside its host-side
timings, so that the committed runs say which gauge follows a step.
"""

from __future__ import annotations

import time

import torch

from roofsim.hostpace import LAUNCHES  # each kernel's GPU time (~2 us) is under its launch, so none queues

_probes: dict[str, torch.Tensor] = {}


def launch_us(device: str | torch.device = "cuda") -> float:
    """Microseconds the host takes to issue LAUNCHES one-element in-place adds on `device`, from an idle device (the
    synchronisations are outside the timing)."""
    key = str(device)
    x = _probes.get(key)
    if x is None:
        x = _probes[key] = torch.zeros(1, device=device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(LAUNCHES):
        x.add_(1.0)
    took = time.perf_counter() - t0
    sync()
    return took * 1e6
