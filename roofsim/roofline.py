"""Roofline time of an operator: max(FLOPs / achievable FLOP/s, bytes / achievable HBM bandwidth) plus a fixed
per-kernel GPU cost, and which ceiling binds. Achievable = datasheet peak x the efficiency in the GPU spec. A GEMM
whose bytes bind (a decode token's matrix-vector product) is priced on the calibrated GEMV line where the profile
has one (efficiency.gemv, gemv_us): small weights fall short of the copy rate by more than a kernel's spacing.
The host's cost of dispatching the kernels (GpuWork.kernels x kernel_us) is separate: the host runs ahead of the
GPU, so a launch-bound step takes max(host dispatch, GPU work), which the families and the simulator apply."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roofsim import kvformat
from roofsim.ops import (
    ATTN_CALL_KERNELS,
    ATTN_CALL_RUNTIME,
    EXPERT_KERNELS,
    PREFILL_CALL_EXTRA,
    STREAMED_CALL_EXTRA,
    STREAMED_CALL_RUNTIME_EXTRA,
    Op,
)
from roofsim.specs.hardware import GpuSpec


def allreduce_s(op: Op, gpu: GpuSpec) -> np.ndarray:
    """An all-reduce's time on the GPU's interconnect (InterconnectSpec.allreduce_s)."""
    if gpu.interconnect is None:  # tensor_parallel.rank_specs refuses such a GPU before any op is priced
        raise ValueError(f"{op.name}: GPU {gpu.name} has no [interconnect] to all-reduce over")
    return gpu.interconnect.allreduce_s(op.hbm_bytes, op.ranks)


def peak_flops(op: Op, gpu: GpuSpec) -> float:
    if op.kind == "gemm":
        return gpu.tensor_flops
    if op.kind == "attention":
        return gpu.attention_flops_at(op.query_rows, op.head_dim)
    return gpu.vector_flops


@dataclass(frozen=True)
class OpTime:
    """Busy time of one operator split by what binds it: compute (tensor), HBM, launch overhead, or the
    all-reduce's interconnect (comm_s: NCCL's kernel holds the compute stream while the ranks exchange)."""

    tensor_s: np.ndarray
    hbm_s: np.ndarray
    launch_s: float
    comm_s: np.ndarray | float = 0.0

    @property
    def total_s(self) -> np.ndarray:
        return self.tensor_s + self.hbm_s + self.launch_s + self.comm_s


def op_time(op: Op, gpu: GpuSpec) -> OpTime:
    if op.kind == "allreduce":  # its fixed cost is in the interconnect's latency, not a kernel's
        comm = allreduce_s(op, gpu)
        return OpTime(tensor_s=np.zeros_like(comm), hbm_s=np.zeros_like(comm), launch_s=0.0, comm_s=comm)
    if op.kind == "topk" and gpu.efficiency.topk_gelems is not None:
        elems = np.asarray(op.flops, dtype=float)
        call = gpu.efficiency.topk_call_us.value * 1e-6 if gpu.efficiency.topk_call_us is not None else 0.0
        ranked = elems / (gpu.efficiency.topk_gelems.value * 1e9) + np.where(elems > 0, call, 0.0)
        return OpTime(
            tensor_s=np.zeros_like(ranked),
            hbm_s=ranked,
            launch_s=np.asarray(op.kernels, dtype=float) * gpu.gpu_kernel_s,
        )
    compute = np.asarray(op.flops, dtype=float) / peak_flops(op, gpu)
    if op.kind == "gemm":  # where memory binds, a GEMV-like call: the calibrated line's rate and fixed part
        memory = (
            np.asarray(op.hbm_bytes, dtype=float) / gpu.gemv_bytes_per_s
            + np.asarray(op.kernels, dtype=float) * gpu.gemv_extra_s
        )
    else:
        rate = gpu.vector_bytes_per_s if op.kind == "vector" else gpu.hbm_bytes_per_s
        memory = np.asarray(op.hbm_bytes, dtype=float) / rate
    compute_bound = compute >= memory
    extra = np.asarray(op.extra_bytes, dtype=float) / gpu.hbm_bytes_per_s
    if np.any(np.asarray(op.fp8_bytes) > 0) or np.any(np.asarray(op.fp8_write_bytes) > 0):
        extra = extra + np.asarray(op.fp8_bytes, dtype=float) / gpu.fp8_bytes_per_s
        extra = extra + np.asarray(op.fp8_write_bytes, dtype=float) / gpu.fp8_write_bytes_per_s
    return OpTime(
        tensor_s=np.where(compute_bound, compute, 0.0),
        hbm_s=np.where(compute_bound, 0.0, memory) + extra,
        launch_s=np.asarray(op.kernels, dtype=float) * gpu.gpu_kernel_s,
    )


@dataclass(frozen=True)
class GpuWork:
    """Summed GPU-stream work of a list of operators (arrays broadcast over steps)."""

    tensor_s: np.ndarray
    hbm_s: np.ndarray
    launch_s: np.ndarray
    flops: np.ndarray
    hbm_bytes: np.ndarray
    kernels: np.ndarray
    runtime_calls: np.ndarray
    attn_calls: np.ndarray
    streamed_calls: np.ndarray
    prefill_calls: np.ndarray
    comm_s: np.ndarray  # all-reduces (tensor-parallel plans)
    fp8_calls: np.ndarray  # attention calls over fp8 stores
    expert_calls: np.ndarray  # MoE experts hit (iterations of the host's expert loop)
    moe_layers: np.ndarray  # MoE layers' expert blocks

    def dispatch_s(self, gpu: GpuSpec) -> np.ndarray:
        """Host time to dispatch these kernels and their event records and stream waits. Where a calibrated
        profile measured the executor's attention calls, those replace the counted estimate of them."""
        issue = gpu.runtime.copy_issue_us.value * 1e-6
        t = self.kernels * gpu.kernel_s + self.runtime_calls * issue
        rt = gpu.runtime
        if rt.attention_call_us is not None and rt.streamed_call_us is not None:
            counted = ATTN_CALL_KERNELS * gpu.kernel_s + ATTN_CALL_RUNTIME * issue
            counted_extra = STREAMED_CALL_EXTRA * gpu.kernel_s + STREAMED_CALL_RUNTIME_EXTRA * issue
            t = (
                t
                + self.attn_calls * (rt.attention_call_us.value * 1e-6 - counted)
                + self.streamed_calls * (rt.streamed_call_us.value * 1e-6 - counted_extra)
            )
        if rt.prefill_call_us is not None:
            t = t + self.prefill_calls * (rt.prefill_call_us.value * 1e-6 - PREFILL_CALL_EXTRA * gpu.kernel_s)
        if rt.fp8_call_us is not None:  # measured: replaces the counted write and dequantisation dispatches
            counted_fp8 = (kvformat.DEQUANT_KERNELS + kvformat.QUANT_KERNELS) * gpu.kernel_s
            t = t + self.fp8_calls * (rt.fp8_call_us.value * 1e-6 - counted_fp8)
        if rt.expert_call_us is not None:  # measured: replaces the counted dispatches of each expert hit
            t = t + self.expert_calls * (rt.expert_call_us.value * 1e-6 - EXPERT_KERNELS * gpu.kernel_s)
        if rt.moe_layer_us is not None:  # measured: a real MoE layer's issue beyond its counted price
            t = t + self.moe_layers * rt.moe_layer_us.value * 1e-6
        return t

    @property
    def total_s(self) -> np.ndarray:
        return self.tensor_s + self.hbm_s + self.launch_s + self.comm_s

    def __add__(self, other: GpuWork) -> GpuWork:
        return GpuWork(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))

    def scale(self, k) -> GpuWork:
        return GpuWork(*(getattr(self, f) * k for f in _FIELDS))


_FIELDS = (
    "tensor_s",
    "hbm_s",
    "launch_s",
    "flops",
    "hbm_bytes",
    "kernels",
    "runtime_calls",
    "attn_calls",
    "streamed_calls",
    "prefill_calls",
    "comm_s",
    "fp8_calls",
    "expert_calls",
    "moe_layers",
)
ZERO = GpuWork(*(np.zeros(()) for _ in _FIELDS))


def work(ops: list[Op], gpu: GpuSpec) -> GpuWork:
    total = ZERO
    for op in ops:
        t = op_time(op, gpu)
        total = total + GpuWork(
            t.tensor_s,
            t.hbm_s,
            np.asarray(t.launch_s, dtype=float),
            np.asarray(op.flops, dtype=float),
            np.asarray(op.hbm_bytes, dtype=float)
            + np.asarray(op.extra_bytes, dtype=float)
            + np.asarray(op.fp8_bytes, dtype=float)
            + np.asarray(op.fp8_write_bytes, dtype=float),
            np.asarray(op.kernels, dtype=float),
            np.asarray(op.runtime_calls, dtype=float),
            np.asarray(op.attn_calls, dtype=float),
            np.asarray(op.streamed_calls, dtype=float),
            np.asarray(op.prefill_calls, dtype=float),
            np.asarray(t.comm_s, dtype=float),
            np.asarray(op.fp8_calls, dtype=float),
            np.asarray(op.expert_calls, dtype=float),
            np.asarray(op.moe_layers, dtype=float),
        )
    return total


@dataclass(frozen=True)
class RooflineRow:
    name: str
    flops: float
    hbm_bytes: float
    intensity: float
    time_s: float
    bound: str


def rows(ops: list[Op], gpu: GpuSpec) -> list[RooflineRow]:
    """One row per operator, for printing: FLOPs, bytes, intensity, time and the ceiling that binds."""
    out = []
    for op in ops:
        t = op_time(op, gpu)
        flops, nbytes = float(np.sum(op.flops)), float(np.sum(op.hbm_bytes))
        tensor, hbm = float(np.sum(t.tensor_s)), float(np.sum(t.hbm_s))
        launch = t.launch_s * np.size(op.flops)
        comm = float(np.sum(t.comm_s))
        if op.kind == "allreduce":
            out.append(RooflineRow(op.name, 0.0, float(np.sum(op.hbm_bytes)), 0.0, comm, "allreduce"))
            continue
        if launch > max(tensor, hbm):
            bound = "launch"
        else:
            bound = (
                "tensor" if tensor >= hbm and op.kind != "vector" else ("compute" if tensor >= hbm else "hbm")
            )
        out.append(
            RooflineRow(
                op.name,
                flops,
                nbytes,
                flops / nbytes if nbytes else float("inf"),
                tensor + hbm + launch,
                bound,
            )
        )
    return out
