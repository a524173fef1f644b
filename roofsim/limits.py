"""The memory a plan may use: the GPU's (capped below the card's, e.g. to emulate a 24 GB card on a bigger one)
and the host's."""

from __future__ import annotations

from dataclasses import dataclass

from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.units import GiB


@dataclass(frozen=True)
class Limits:
    """gpu_mem_bytes caps the card; the GPU spec's reserved memory (CUDA context, allocator slack) comes off either
    way. host_mem_bytes replaces the host spec's capacity."""

    gpu_mem_bytes: float | None = None
    host_mem_bytes: float | None = None

    def gpu_bytes(self, gpu: GpuSpec) -> float:
        card = (
            gpu.capacity_bytes if self.gpu_mem_bytes is None else min(self.gpu_mem_bytes, gpu.capacity_bytes)
        )
        return card - gpu.memory.reserved_gib.value * GiB

    def host_bytes(self, host: HostSpec) -> float:
        return host.capacity_bytes if self.host_mem_bytes is None else self.host_mem_bytes
