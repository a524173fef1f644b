"""What a prediction says: per phase time, busy time per resource and the one that binds, bytes over each
link direction, and GPU/host memory by kind at the peak."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from roofsim.plan import Plan
from roofsim.workload import Workload

RESOURCES = ("tensor", "hbm", "pcie_h2d", "pcie_d2h", "cpu_ram", "cpu_compute", "host")
"""tensor/hbm: the GPU compute stream bound by FLOPs or by HBM bytes; pcie_*: copy engines; cpu_ram/cpu_compute:
CPU-side attention or gathers; host: the Python thread issuing kernels, copies and synchronisations."""


class PhaseCost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_s: float = Field(description="prefill: whole prompt; decode: one step at the workload's context")
    busy_s: dict[str, float] = Field(description="busy time per resource within the phase")
    bound: str = Field(description="the resource with the most busy time")
    flops: float = 0.0
    hbm_bytes: float = 0.0
    h2d_bytes: float = 0.0
    d2h_bytes: float = 0.0
    cpu_bytes: float = 0.0
    steps: int = 1
    step_times_s: list[float] = Field(default_factory=list, description="prefill: per chunk")

    @property
    def bound_share(self) -> float:
        return self.busy_s[self.bound] / self.time_s if self.time_s > 0 else 0.0


class MemoryUse(BaseModel):
    """Bytes by kind. GPU kinds: weights, kv_resident, kv_buffers, activations, logits, workspace.
    Host kinds: kv, activations, weights, pinned_rounding."""

    model_config = ConfigDict(extra="forbid")

    gpu: dict[str, float]
    host: dict[str, float]

    @property
    def gpu_bytes(self) -> float:
        return sum(self.gpu.values())

    @property
    def host_bytes(self) -> float:
        return sum(self.host.values())


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Plan
    model: str
    gpu: str
    host: str
    workload: Workload
    approximate: bool
    feasible: bool
    reason: str | None = None
    prefill: PhaseCost
    decode: PhaseCost
    decode_end_s_per_token: float = Field(description="decode step time at context + gen")
    memory: MemoryUse
    peak_gpu_bytes: float
    peak_host_bytes: float
    notes: list[str] = Field(default_factory=list)

    @property
    def decode_s_per_token(self) -> float:
        return self.decode.time_s

    @property
    def prefill_s(self) -> float:
        return self.prefill.time_s

    @property
    def e2e_s(self) -> float:
        """Prefill plus gen decode steps (trapezoid between the first and the last step)."""
        return self.prefill.time_s + self.workload.gen * 0.5 * (
            self.decode.time_s + self.decode_end_s_per_token
        )

    def summary(self) -> dict:
        """The flat document `roofsim predict --json` prints per plan."""
        return {
            "plan": self.plan.model_dump(),
            "family": self.plan.family,
            "approximate": self.approximate,
            "feasible": self.feasible,
            "reason": self.reason,
            "prefill_s": self.prefill.time_s,
            "decode_s_per_token": self.decode.time_s,
            "e2e_s": self.e2e_s,
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_host_bytes": self.peak_host_bytes,
            "bound": {"prefill": self.prefill.bound, "decode": self.decode.bound},
            "h2d_bytes": {"prefill": self.prefill.h2d_bytes, "decode": self.decode.h2d_bytes},
            "d2h_bytes": {"prefill": self.prefill.d2h_bytes, "decode": self.decode.d2h_bytes},
            "memory": {"gpu": self.memory.gpu, "host": self.memory.host},
            "notes": self.notes,
        }
