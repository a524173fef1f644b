"""Host-link copy cost by copy size, per direction.

- Isolated copy of n bytes: max(copy_min, copy_latency + n / rate); the floor governs small copies
  (docs/evidence.md#ev-h100-probe-copy-curve).
- k copies issued back to back: the copy engine spends copy_gap + n / rate on each, the issuing host thread
  copy_issue on each, and the two overlap, so the batch takes max(engine, host) plus one latency.
- Both directions at once: each keeps duplex_efficiency of its rate while the other runs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from roofsim.specs.hardware import GpuSpec

Direction = Literal["h2d", "d2h"]


def rate(gpu: GpuSpec, direction: Direction, pinned: bool = True) -> float:
    link = gpu.link
    if not pinned:
        return link.pageable_h2d_gbps.value * 1e9
    return (link.h2d_gbps if direction == "h2d" else link.d2h_gbps).value * 1e9


def gathered_share(gpu: GpuSpec) -> float:
    """The share of the pinned H2D rate a copy of a stage the CPU has just written reaches (sparse_fetch's
    gathered rows: link.h2d_gathered_gbps); 1 where the profile does not say."""
    gathered = gpu.link.h2d_gathered_gbps
    return 1.0 if gathered is None else gathered.value / gpu.link.h2d_gbps.value


def isolated_copy_s(nbytes, gpu: GpuSpec, direction: Direction = "h2d"):
    link = gpu.link
    t = link.copy_latency_us.value * 1e-6 + np.asarray(nbytes, dtype=float) / rate(gpu, direction)
    return np.maximum(link.copy_min_us.value * 1e-6, t)


def gap_s(gpu: GpuSpec, allocated: bool = False) -> float:
    """A copy engine's gap between back-to-back copies, s: from the registered KV store's memory, or (`allocated`)
    from torch's pinned allocator's (link.copy_gap_allocated_us where the profile has it)."""
    gap = gpu.link.copy_gap_allocated_us if allocated else None
    return (gap or gpu.link.copy_gap_us).value * 1e-6


def engine_s(total_bytes, copies, gpu: GpuSpec, direction: Direction = "h2d", allocated: bool = False):
    """Copy-engine busy time for `copies` back-to-back copies moving `total_bytes` in all (from memory as
    gap_s's `allocated` says)."""
    return np.asarray(copies, dtype=float) * gap_s(gpu, allocated) + np.asarray(
        total_bytes, dtype=float
    ) / rate(gpu, direction)


def issue_s(copies, gpu: GpuSpec):
    """Host-thread time to issue `copies` copies."""
    return np.asarray(copies, dtype=float) * gpu.runtime.copy_issue_us.value * 1e-6


def batch_s(total_bytes, copies, gpu: GpuSpec, direction: Direction = "h2d", allocated: bool = False):
    """Wall time of `copies` equal copies issued back to back from one host thread."""
    tail = max(0.0, gpu.link.copy_latency_us.value * 1e-6 - gap_s(gpu, allocated))
    return np.maximum(engine_s(total_bytes, copies, gpu, direction, allocated), issue_s(copies, gpu)) + tail


def duplex(h2d_s, d2h_s, efficiency: float):
    """Busy times of both copy directions when they run in the same window.

    While both run each keeps `efficiency` of its rate: the shorter one finishes at min/eff, the longer one then
    runs alone. Returns (h2d, d2h) wall times: each is its own time plus the overlap penalty min*(1/eff - 1).
    """
    a = np.asarray(h2d_s, dtype=float)
    b = np.asarray(d2h_s, dtype=float)
    penalty = np.minimum(a, b) * (1.0 / efficiency - 1.0)
    return a + penalty, b + penalty
