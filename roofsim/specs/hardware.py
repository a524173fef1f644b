"""GPU and host-platform specs, loaded from the TOML files in hw_specs/ (or a user's own file).

Every figure carries its provenance (see sourced.py). Effective rates used by the roofline are the
datasheet peaks times the achievable fractions in [efficiency]; the copy-cost model lives in link.py.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from roofsim.errors import UserError
from roofsim.hostpace import pace_ratio
from roofsim.specs.sourced import MAX_EFFICIENCY, SourcedNumber, fraction, positive, whole
from roofsim.specs.template import refuse_placeholders
from roofsim.specs.tomlfile import load_model_file

GiB = 1024**3
MAX_GPU_GIB = 16 * 1024  # 16 TiB: 50 times the largest card's memory, so a typo (GB for MB) is caught
MAX_HOST_GIB = 1024**2  # 1 PiB
# attention at one head dim against another: beyond 4x, the timing behind it was wrong
MAX_HEAD_DIM_RATIO = 4.0


def _keyed_table(field: str, v, top: float, values: str, keys: str):
    """A table of sourced numbers in (0, top] keyed by whole numbers >= 1 (None: no table); not empty."""
    if v is not None and (not v or any(k < 1 or not 0 < e.value <= top for k, e in v.items())):
        raise ValueError(f"{field} needs {values} in (0, {top}] keyed by {keys} >= 1")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeSpec(_Section):
    """Dense tensor peaks (no 2:4 sparsity), fp16/bf16 with fp32 accumulate: what cuBLAS uses for bf16 GEMMs."""

    bf16_tflops: SourcedNumber = Field(description="dense BF16 tensor peak with FP32 accumulate, TFLOP/s")
    fp16_tflops: SourcedNumber = Field(description="dense FP16 tensor peak with FP32 accumulate, TFLOP/s")
    fp32_tflops: SourcedNumber = Field(description="FP32 peak without tensor cores, TFLOP/s")
    sms: SourcedNumber = Field(description="streaming multiprocessors (compute units)")

    _pos = field_validator("bf16_tflops", "fp16_tflops", "fp32_tflops")(
        lambda v, info: positive(info.field_name, v)
    )
    _count = field_validator("sms")(lambda v, info: whole(info.field_name, v))


class MemorySpec(_Section):
    capacity_gib: SourcedNumber = Field(
        description="GPU memory, GiB (2^30 bytes): a card sold as 24 GB has 24 GiB (24.0)"
    )
    bandwidth_gbps: SourcedNumber = Field(description="peak memory bandwidth, GB/s (10^9 bytes/s)")
    l2_mib: SourcedNumber = Field(description="L2 cache, MiB")
    reserved_gib: SourcedNumber = Field(
        description="GiB the plan cannot use: the CUDA context and the allocator's slack (about 1)"
    )

    _pos = field_validator("capacity_gib", "bandwidth_gbps")(lambda v, info: positive(info.field_name, v))

    @model_validator(mode="after")
    def _room(self) -> MemorySpec:
        cap, reserved = self.capacity_gib.value, self.reserved_gib.value
        if cap > MAX_GPU_GIB:
            raise ValueError(f"capacity_gib {cap:g} is over {MAX_GPU_GIB} GiB: give the card's memory in GiB")
        if cap <= reserved:
            raise ValueError(
                f"capacity_gib {cap:g} leaves nothing above reserved_gib {reserved:g}: give the card's whole memory "
                "in GiB, and what the CUDA context and allocator take in reserved_gib"
            )
        return self


class LinkSpec(_Section):
    """Host link, per direction. Isolated copy of n bytes: max(copy_min_us, copy_latency_us + n / rate).
    Back-to-back copies on one engine: each costs copy_gap_us + n / rate on the engine (see link.py)."""

    name: str = Field(description="the link, e.g. PCIe 4.0 x16")
    h2d_gbps: SourcedNumber = Field(
        description="host-to-GPU copy rate from pinned memory, GB/s (10^9 bytes/s): nvbandwidth's host_to_device"
    )
    d2h_gbps: SourcedNumber = Field(description="GPU-to-host copy rate into pinned memory, GB/s")
    pageable_h2d_gbps: SourcedNumber = Field(
        description="host-to-GPU copy rate from pageable (not pinned) memory, GB/s"
    )
    copy_latency_us: SourcedNumber = Field(
        description="fixed cost of one isolated copy, us: n bytes take copy_latency_us + n / rate"
    )
    copy_min_us: SourcedNumber = Field(description="the shortest time an isolated copy takes, us")
    copy_gap_us: SourcedNumber = Field(description="a copy engine's gap between back-to-back copies, us")
    duplex_efficiency: SourcedNumber = Field(
        description="the share of each direction's rate kept while both directions copy at once, in (0, 1]"
    )
    copy_engines: SourcedNumber = Field(
        description="copy engines (deviceQuery: 'Concurrent copy and kernel execution: Yes with N copy engine(s)')"
    )
    copy_gap_allocated_us: SourcedNumber | None = Field(
        None,
        description="copy_gap_us for copies from torch's pinned allocator's memory (cudaHostAlloc: the streamed "
        "experts' home), which can copy back to back unlike the registered KV store; None: copy_gap_us",
    )
    h2d_gathered_gbps: SourcedNumber | None = Field(
        None,
        description="pinned H2D rate of a stage the CPU has just written (sparse_fetch's gathered rows), slower "
        "than a copy of an untouched pinned buffer (docs/evidence.md#ev-gathered-stage-copy); None: h2d_gbps",
    )

    _pos = field_validator("h2d_gbps", "d2h_gbps", "pageable_h2d_gbps", "duplex_efficiency")(
        lambda v, info: positive(info.field_name, v)
    )
    _count = field_validator("copy_engines")(lambda v, info: whole(info.field_name, v))

    _gathered = field_validator("h2d_gathered_gbps")(
        lambda v, info: v if v is None else positive(info.field_name, v)
    )
    _gap_allocated = field_validator("copy_gap_allocated_us")(
        lambda v, info: v if v is None or v.value >= 0 else positive(info.field_name, v)
    )

    @field_validator("duplex_efficiency")
    @classmethod
    def _fraction(cls, v):
        if v.value > 1:
            raise ValueError(f"duplex_efficiency is a fraction in (0, 1], got {v.value}")
        return v


class InterconnectSpec(_Section):
    """The GPU-to-GPU fabric of a multi-GPU board (NVLink through NVSwitch), as a tensor-parallel plan's all-reduces
    use it. A ring all-reduce of n bytes (each rank's contribution) over N GPUs takes

        t = allreduce_base_us + 2 (N - 1) allreduce_step_us + 2 (N - 1) / N * n / bus_gbps.

    The first two terms are NCCL's own latency model for a ring (a fixed cost per call and one per step of the ring's
    2 (N - 1) steps: reduce-scatter, then all-gather), the last the bus bandwidth nccl-tests reports
    (busbw = algbw * 2 (N - 1) / N, the rate each GPU's link carries)."""

    name: str = Field(description="the fabric, e.g. NVLink 4 through NVSwitch (HGX H100 8-GPU)")
    gpus: SourcedNumber = Field(description="GPUs the fabric joins: the largest tensor-parallel degree")
    bus_gbps: SourcedNumber = Field(
        description="all-reduce bus bandwidth per GPU, GB/s (10^9 bytes/s): nccl-tests' busbw of a large ring "
        "all-reduce"
    )
    allreduce_base_us: SourcedNumber = Field(description="the fixed cost of one all-reduce call, us")
    allreduce_step_us: SourcedNumber = Field(
        description="the latency each of a ring all-reduce's 2 (N - 1) steps adds, us"
    )

    _pos = field_validator("bus_gbps")(lambda v, info: positive(info.field_name, v))
    _count = field_validator("gpus")(lambda v, info: whole(info.field_name, v))

    def allreduce_s(self, nbytes, ranks: int):
        """Seconds of one ring all-reduce of `nbytes` (a number or an array) over `ranks` GPUs (the class's
        formula); 0 on one GPU."""
        if ranks <= 1:
            return np.zeros_like(np.asarray(nbytes, dtype=float))
        steps = 2 * (ranks - 1)
        latency = (self.allreduce_base_us.value + steps * self.allreduce_step_us.value) * 1e-6
        return latency + steps / ranks * np.asarray(nbytes, dtype=float) / (self.bus_gbps.value * 1e9)


DEFAULT_GPU_KERNEL_US = (
    3.0  # assumed: the spacing of back-to-back tiny kernels on recent NVIDIA GPUs (2-4 us)
)


class EfficiencySpec(_Section):
    """Achievable fractions of peak, and the fixed cost of one kernel from eager PyTorch."""

    gemm: SourcedNumber = Field(
        description="the share of the BF16 peak GEMMs reach at model shapes, in (0, 1]"
    )
    attention: SourcedNumber = Field(
        description="the share of the BF16 peak prefill attention (FlashAttention, cuDNN) reaches, in (0, 1]"
    )
    memory: SourcedNumber = Field(
        description="the share of the memory bandwidth a device-to-device copy reaches, in (0, 1]"
    )
    kernel_us: SourcedNumber = Field(
        description="host: what dispatching one kernel from eager PyTorch costs the issuing thread, us"
    )
    gpu_kernel_us: SourcedNumber | None = Field(
        None,
        description="GPU: the time one small kernel occupies the stream when kernels are queued back to back, "
        f"us; None: {DEFAULT_GPU_KERNEL_US:g} us. Separate from kernel_us: a launch-bound step runs "
        "max(host dispatch, GPU work), not their sum",
    )
    topk_gelems: SourcedNumber | None = Field(
        None,
        description="elements per second (G) torch.topk ranks when k is a large share of the row "
        "(sparse_fetch's and evict's selections): a sort-like pass that no bandwidth roofline gives; None: "
        "priced as a few memory passes",
    )
    topk_call_us: SourcedNumber | None = Field(
        None,
        description="GPU time of one torch.topk call (and its index sort) beyond its elements at topk_gelems, us: "
        "the fixed part that dominates short rows; None: 0",
    )
    vector: SourcedNumber | None = Field(
        None,
        description="the share of HBM bandwidth a decoder layer's elementwise kernels (RMSNorm in fp32, "
        "rotary, SiLU * up, residual adds) reach at prefill shapes, as roofsim's operator model counts their "
        "bytes; None: `memory` (a device-to-device copy's, which they need not reach)",
    )
    fp8_passes: SourcedNumber | None = Field(
        None,
        description="the share of HBM bandwidth the fp8 KV store's passes reach (a decode call's write of its new "
        "rows and the dequantisation of the store into a scratch, over strided block-major stores), as "
        "roofsim's operator model counts their bytes (roofsim.kvformat); None: `memory`",
    )
    fp8_write: SourcedNumber | None = Field(
        None,
        description="the share of HBM bandwidth the fp8 KV store's write of a prefill chunk's rows reaches, as "
        "roofsim's operator model counts its bytes (roofsim.kvformat); None: `fp8_passes`",
    )
    gemv: SourcedNumber | None = Field(
        None,
        description="the share of the memory bandwidth a memory-bound GEMM (one decode token's matrix-vector "
        "product) reaches as the slope of its time against its weight bytes, in (0, 1]; None: `memory`",
    )
    gemv_us: SourcedNumber | None = Field(
        None,
        description="GPU time of one memory-bound GEMM call beyond its bytes at `gemv`, us (the line's intercept: "
        "its ramp up and down, gpu_kernel_us's spacing included); None: gpu_kernel_us alone",
    )
    decode_call_us: SourcedNumber | None = Field(
        None,
        description="GPU time of one call of the decode kernel a replayed step runs beyond its KV bytes, us (the "
        "intercept of its time against the bytes it reads): what each sequence of a batch pays again "
        "(ops.DECODE_SEQUENCE_KERNELS); None: that many kernels at gpu_kernel_us",
    )
    attention_rows: dict[int, SourcedNumber] | None = Field(
        None,
        description="the executor's chunk-after-a-past attention efficiency by the call's GQA-folded query rows "
        "(KV heads per call x group x chunk): a call of few rows (a one-head slot, a short chunk) fills fewer "
        "of the GPU's SMs than the calls `attention` comes from. Interpolated in log(rows), held at the ends; "
        "None: `attention` for every call",
    )

    attention_head_dim: dict[int, SourcedNumber] | None = Field(
        None,
        description="the executor's prefill attention efficiency at each head dim as a ratio to its efficiency at "
        "the head dim `attention` and `attention_rows` were timed at (1 there): a kernel's tiles, and its softmax "
        "work per score against 4 x head dim FLOPs, differ by head dim. Interpolated linearly, held at the ends; "
        "None: 1 at every head dim",
    )

    _fraction = field_validator("gemm", "attention", "memory")(lambda v, info: fraction(info.field_name, v))
    _vector = field_validator("vector", "fp8_passes", "fp8_write", "gemv")(
        lambda v, info: v if v is None else fraction(info.field_name, v)
    )
    _topk = field_validator("topk_gelems")(lambda v, info: v if v is None else positive(info.field_name, v))
    _topk_call = field_validator("topk_call_us", "gemv_us", "decode_call_us")(
        lambda v, info: v if v is None or v.value >= 0 else positive(info.field_name, v)
    )

    _rows = field_validator("attention_rows")(
        lambda v, info: _keyed_table(info.field_name, v, MAX_EFFICIENCY, "efficiencies", "query rows")
    )
    _head_dims = field_validator("attention_head_dim")(
        lambda v, info: _keyed_table(info.field_name, v, MAX_HEAD_DIM_RATIO, "ratios", "head dims")
    )

    def head_dim_ratio(self, head_dim: int) -> float:
        """attention_head_dim at `head_dim` (1 without a table or for head_dim 0, an op that does not say)."""
        table = self.attention_head_dim
        if table is None or head_dim <= 0:
            return 1.0
        keys = sorted(table)
        return float(np.interp(head_dim, keys, [table[k].value for k in keys]))


class RuntimeSpec(_Section):
    """Host-side costs of driving the GPU from Python: they bound plans with many small copies."""

    copy_issue_us: SourcedNumber = Field(description="host time to issue one asynchronous copy, us")
    sync_us: SourcedNumber = Field(description="host time of one stream or event synchronisation, us")
    attention_call_us: SourcedNumber | None = Field(
        None,
        description="host time of one attention call of the executor over GPU-resident KV, us; None: "
        "estimated from counted kernels and runtime calls",
    )
    streamed_call_us: SourcedNumber | None = Field(
        None,
        description="what a streamed unit's attention call adds to attention_call_us (ring, staging, events, "
        "its two copies' issue), us; None: estimated from counted kernels and runtime calls",
    )
    prefill_call_us: SourcedNumber | None = Field(
        None,
        description="host time an attention call of a prefill chunk after a past adds to a decode call (the "
        "chunk's own causal part, the GQA repeat of its K/V, the LSE merge in fp32), us; None: "
        "ops.PREFILL_CALL_EXTRA counted kernels",
    )
    attention_shape_us: SourcedNumber | None = Field(
        None,
        description="host time the first prefill attention call of a new shape costs beyond a repeated one "
        "(cuDNN's fused attention builds an execution plan per shape, and each chunk's past is a new key "
        "length), us; None: 0",
    )
    step_us: SourcedNumber | None = Field(
        None,
        description="host time of a forward outside its decoder layers and before the first layer's KV reaches "
        "the cache: the framework's preamble (position ids, masks, rotary tables) and the step set-up; the "
        "executor issues a step's first prefetch only after it, at layer 0's cache update. us; None: 0 (only "
        "the counted embedding kernel)",
    )
    expert_call_us: SourcedNumber | None = Field(
        None,
        description="host time of the MoE expert loop per expert hit (its tokens' slice and index, gate/up, act, "
        "product, down, scale, index_add), us; None: ops.EXPERT_KERNELS counted dispatches at kernel_us",
    )
    expert_fetch_us: SourcedNumber | None = Field(
        None,
        description="host time a streamed MoE layer's fetch of one picked expert adds to the expert loop (its "
        "gate_up and down copies from pinned host memory, issued under one stream context), us; None: two "
        "copies at copy_issue_us",
    )
    moe_layer_us: SourcedNumber | None = Field(
        None,
        description="host time a MoE decoder layer's decode step takes beyond the price roofsim's counts give it "
        "(kernels, calls, expert_call_us per hit, its sync): one real MoE model's layer timed through the "
        "executor, less that price of the same layer, at least 0. us per MoE layer and step; None: 0",
    )
    fp8_call_us: SourcedNumber | None = Field(
        None,
        description="host time an attention call over an fp8 store adds to the same call in bf16 (the write of "
        "its new rows, the dequantisation), us; None: kvformat's counted dispatches at kernel_us",
    )
    graph_replay_us: SourcedNumber | None = Field(
        None,
        description="host time of a decode step replayed from a CUDA graph (its static inputs written, the graph "
        "launched), us; None: ops.REPLAY_LAUNCHES kernel launches",
    )
    issue_beside_cpu: SourcedNumber | None = Field(
        None,
        description="the issuing thread's dispatch costs while the CPU worker scans (cpu_attention's decode), "
        "over the idle host's: tiny decode layers timed beside a scan loop and alone; None: 1 (the idle host's)",
    )
    worker_round_trip_us: SourcedNumber | None = Field(
        None,
        description="cpu_attention's hand-off per layer: the CPU worker woken for the CPU part and the issuing "
        "thread woken by its result, on the CPU part's path beside the scan, us; None: not measured (0)",
    )
    host_pace_us: SourcedNumber | None = Field(
        None,
        description="roofsim.hostpace's loop timed beside the micro-benchmarks that give the host-side costs "
        "above (their mean): the host's pace those costs hold at, us; None: not measured (no run is priced at "
        "another pace)",
    )
    launch_pace_us: SourcedNumber | None = Field(
        None,
        description="roofsim.executor.launchpace's run of tiny kernel launches, timed right after each of "
        "host_pace_us's loops: a second gauge of the host's pace, through the launch path, us; None: not "
        "measured",
    )
    step_pace_us: SourcedNumber | None = Field(
        None,
        description="roofsim.executor.launchpace's tiny decode step (step_us), timed right after each "
        "launch_pace_us sample: the gauge through the code a launch-bound step runs, us; None: not measured",
    )

    def attention_shape_s(self) -> float:
        return 0.0 if self.attention_shape_us is None else self.attention_shape_us.value * 1e-6

    def step_s(self) -> float:
        return 0.0 if self.step_us is None else self.step_us.value * 1e-6


class SpreadSpec(_Section):
    """How far the profile's unsteady resources moved while calibrate measured them, as ratios to the values the
    profile prices at: a prediction's band prices the plan at the slow ends together (its upper end) and at the
    fast ends together (its lower end). A missing field is a zero-width band for that resource."""

    host_pace_low: SourcedNumber | None = Field(
        None,
        description="the host's pace at its fast end over the reference the host-side costs hold at (<= 1): "
        "those costs times it",
    )
    host_pace_high: SourcedNumber | None = Field(
        None,
        description="the host's pace at its slow end over that reference (>= 1): the host-side costs times it",
    )
    link_low: SourcedNumber | None = Field(
        None,
        description="the pinned copy rate at its slow end over the profile's rates (<= 1): h2d and d2h times it",
    )
    link_high: SourcedNumber | None = Field(
        None, description="the pinned copy rate at its fast end over the profile's rates (>= 1)"
    )

    @model_validator(mode="after")
    def _sides(self) -> SpreadSpec:
        for name, side in (("host_pace_low", -1), ("host_pace_high", 1), ("link_low", -1), ("link_high", 1)):
            v = getattr(self, name)
            if v is not None and (v.value <= 0 or (v.value - 1.0) * side < 0):
                raise ValueError(
                    f"{name} is a ratio {'<=' if side < 0 else '>='} 1 and above 0, got {v.value}"
                )
        return self


class GpuSpec(_Section):
    name: str = Field(description="a short name for the GPU, e.g. rtx4090 (the built-in specs' file names)")
    full_name: str = Field(description="the product's name, e.g. NVIDIA GeForce RTX 4090 24GB")
    default_host: str = Field(
        description="the host it sits in when --host is not given: a built-in host (`roofsim hosts`), or a host "
        "spec file's path relative to this file"
    )
    fingerprint: dict[str, str | int | float | None] | None = Field(
        None, description="where a calibrated profile was measured (roofsim calibrate writes it)"
    )
    compute: ComputeSpec
    memory: MemorySpec
    link: LinkSpec
    efficiency: EfficiencySpec
    runtime: RuntimeSpec
    spread: SpreadSpec | None = Field(
        None, description="how far the unsteady resources moved over the calibration; None: a zero-width band"
    )
    interconnect: InterconnectSpec | None = Field(
        None,
        description="the GPU-to-GPU fabric of a multi-GPU board (tensor-parallel plans' all-reduces); None: the "
        "GPU is priced alone (tp = 1 only)",
    )
    source: str | None = Field(
        None,
        exclude=True,
        description="the name or file it was loaded from (set by load_gpu, never in a file)",
    )

    # Effective rates, in SI units per second.
    @property
    def tensor_flops(self) -> float:
        return self.compute.bf16_tflops.value * 1e12 * self.efficiency.gemm.value

    @property
    def attention_flops(self) -> float:
        return self.compute.bf16_tflops.value * 1e12 * self.efficiency.attention.value

    def attention_flops_at(self, query_rows, head_dim: int = 0) -> float | np.ndarray:
        """Attention FLOP/s of calls of `query_rows` GQA-folded rows (0: a call the table does not cover, e.g. a
        decode step's): the calibrated table where there is one, else `attention_flops`; times the head dim's
        ratio (EfficiencySpec.attention_head_dim) for a call that says its head dim."""
        ratio = self.efficiency.head_dim_ratio(head_dim)
        table = self.efficiency.attention_rows
        if table is None or not np.any(np.asarray(query_rows) > 0):
            return self.attention_flops * ratio
        keys = sorted(table)
        rows = np.asarray(query_rows, dtype=float)
        eff = np.interp(np.log(np.maximum(rows, 1.0)), np.log(keys), [table[k].value for k in keys])
        return (
            self.compute.bf16_tflops.value
            * 1e12
            * np.where(rows > 0, eff, self.efficiency.attention.value)
            * ratio
        )

    @property
    def vector_flops(self) -> float:
        return self.compute.fp32_tflops.value * 1e12 * self.efficiency.memory.value

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.memory.bandwidth_gbps.value * 1e9 * self.efficiency.memory.value

    def _share_of_bandwidth(self, share: SourcedNumber | None, otherwise: float) -> float:
        """Bytes per second at `share` of the datasheet HBM bandwidth (an efficiency field), or `otherwise` where
        the profile has no such field."""
        return otherwise if share is None else self.memory.bandwidth_gbps.value * 1e9 * share.value

    @property
    def fp8_bytes_per_s(self) -> float:
        """HBM bytes per second of the fp8 KV store's dequantisation (and of its writes where fp8_write is unsaid)."""
        return self._share_of_bandwidth(self.efficiency.fp8_passes, self.hbm_bytes_per_s)

    @property
    def fp8_write_bytes_per_s(self) -> float:
        """HBM bytes per second of the fp8 KV store's write of new rows (efficiency.fp8_write; else the passes')."""
        return self._share_of_bandwidth(self.efficiency.fp8_write, self.fp8_bytes_per_s)

    @property
    def gemv_bytes_per_s(self) -> float:
        """HBM bytes per second of a memory-bound GEMM's weight read (efficiency.gemv; else `memory`'s)."""
        return self._share_of_bandwidth(self.efficiency.gemv, self.hbm_bytes_per_s)

    @property
    def gemv_extra_s(self) -> float:
        """GPU seconds a memory-bound GEMM call takes beyond its bytes and gpu_kernel_s (efficiency.gemv_us less
        the spacing every kernel pays, at least 0; 0 without gemv_us)."""
        g = self.efficiency.gemv_us
        return 0.0 if g is None else max(0.0, g.value * 1e-6 - self.gpu_kernel_s)

    @property
    def decode_sequence_call_s(self) -> float:
        """GPU seconds each further sequence of a replayed decode step adds to a layer's attention call
        (efficiency.decode_call_us; else ops.DECODE_SEQUENCE_KERNELS kernels at gpu_kernel_s)."""
        from roofsim.ops import DECODE_SEQUENCE_KERNELS

        c = self.efficiency.decode_call_us
        return DECODE_SEQUENCE_KERNELS * self.gpu_kernel_s if c is None else c.value * 1e-6

    @property
    def vector_bytes_per_s(self) -> float:
        """HBM bytes per second of elementwise ("vector") operators."""
        return self._share_of_bandwidth(self.efficiency.vector, self.hbm_bytes_per_s)

    @property
    def capacity_bytes(self) -> float:
        return self.memory.capacity_gib.value * GiB

    @property
    def usable_bytes(self) -> float:
        return (self.memory.capacity_gib.value - self.memory.reserved_gib.value) * GiB

    @property
    def worker_round_trip_s(self) -> float:
        v = self.runtime.worker_round_trip_us
        return 0.0 if v is None else v.value * 1e-6

    def beside_cpu_worker(self) -> GpuSpec:
        """This GPU as a host drives it while the CPU worker scans: every host dispatch cost (kernels, copy issue,
        attention calls, the step's preamble) times runtime.issue_beside_cpu; GPU-side costs unchanged. A
        measured ratio below 1 is held at 1: a scanning worker cannot speed the issuing thread up; a lower
        reading means the tiny layers beside the worker fell in a faster spell of the host than the sample
        after them (docs/evidence.md#ev-issue-beside-cpu-below-one)."""
        k = self.runtime.issue_beside_cpu
        if k is None or k.value <= 1.0:
            return self
        return self.host_costs_times(k.value)

    def host_pace_ratio(
        self, pace_us: float | None, launch_us: float | None = None, step_us: float | None = None
    ) -> float | None:
        """How much slower a host at `pace_us` (roofsim.hostpace's loop) and `launch_us`
        (roofsim.executor.launchpace) issues than the one the profile's host-side costs were measured at: the
        loop's ratio, or where both gauges were timed on both sides the mean of the loop's and the launches'
        (a layer's issue is part interpreter, part launch path, and the two gauges need not move together:
        docs/evidence.md#ev-gauge-mean-in-sample). None where the loop's pace is unknown on either side."""
        ref = self.runtime.host_pace_us
        if ref is None or not pace_us or ref.value <= 0:
            return None
        launch_ref, step_ref = self.runtime.launch_pace_us, self.runtime.step_pace_us
        return pace_ratio(
            pace_us,
            ref.value,
            launch_us,
            launch_ref.value if launch_ref is not None else None,
            step_us,
            step_ref.value if step_ref is not None else None,
        )

    def at_host_pace(
        self, pace_us: float | None, launch_us: float | None = None, step_us: float | None = None
    ) -> GpuSpec:
        """This GPU driven by a host at `pace_us` (and `launch_us`: host_pace_ratio) where the profile's host-side
        costs were measured at runtime.host_pace_us: those costs times the ratio (a launch-bound decode step
        follows the host's pace in proportion: docs/evidence.md#ev-launch-bound-follows-host-pace); GPU-side
        costs, copies and the CPU's scans unchanged. Unchanged where the pace is unknown."""
        k = self.host_pace_ratio(pace_us, launch_us, step_us)
        return self if k is None else self.host_costs_times(k)

    def host_costs_times(self, k: float) -> GpuSpec:
        """This GPU with every host dispatch cost (kernels, copy issue, attention calls, a prefill call's extra,
        a new shape's set-up, the step's preamble, an fp8 call's extra, the expert loop's and fetch's costs per
        expert, a MoE layer's residual) times k."""

        def scaled(section, names):
            return section.model_copy(
                update={
                    n: v.model_copy(update={"value": v.value * k})
                    for n in names
                    if (v := getattr(section, n)) is not None
                }
            )

        runtime = (
            "copy_issue_us", "attention_call_us", "streamed_call_us", "prefill_call_us", "step_us",
            "attention_shape_us", "fp8_call_us", "expert_call_us", "expert_fetch_us", "moe_layer_us",
        )  # fmt: skip
        return self.model_copy(
            update={
                "efficiency": scaled(self.efficiency, ("kernel_us",)),
                "runtime": scaled(self.runtime, runtime),
            }
        )

    def link_times(self, k: float) -> GpuSpec:
        """This GPU with its pinned copy rates (h2d, d2h, the gathered stage's) times k; latencies unchanged."""
        link = self.link
        return self.model_copy(
            update={
                "link": link.model_copy(
                    update={
                        n: v.model_copy(update={"value": v.value * k})
                        for n in ("h2d_gbps", "d2h_gbps", "h2d_gathered_gbps")
                        if (v := getattr(link, n)) is not None
                    }
                )
            }
        )

    def spread_end(self, name: str) -> float:
        """A SpreadSpec ratio, or 1 where the profile has none."""
        v = None if self.spread is None else getattr(self.spread, name)
        return 1.0 if v is None else v.value

    @property
    def kernel_s(self) -> float:
        """Host time to dispatch one kernel."""
        return self.efficiency.kernel_us.value * 1e-6

    def replay_s(self) -> float:
        """Host time of a decode step replayed from a CUDA graph: every kernel of the step is issued by one launch."""
        from roofsim.ops import REPLAY_LAUNCHES

        r = self.runtime.graph_replay_us
        return REPLAY_LAUNCHES * self.kernel_s if r is None else r.value * 1e-6

    @property
    def gpu_kernel_s(self) -> float:
        """GPU stream time of one kernel beyond its FLOPs and bytes."""
        g = self.efficiency.gpu_kernel_us
        return (DEFAULT_GPU_KERNEL_US if g is None else g.value) * 1e-6


def _between(key: float, values: dict[int, np.ndarray]) -> np.ndarray:
    """values at `key`: linear between the two nearest keys of the table, the nearest one's beyond it."""
    keys = sorted(values)
    if key <= keys[0] or len(keys) == 1:
        return values[keys[0]]
    if key >= keys[-1]:
        return values[keys[-1]]
    i = int(np.searchsorted(keys, key))
    w = (key - keys[i - 1]) / (keys[i] - keys[i - 1])
    return (1 - w) * values[keys[i - 1]] + w * values[keys[i]]


class HostSpec(_Section):
    name: str = Field(
        description="a short name for the host, e.g. epyc-rome-milan (the built-in specs' file names)"
    )
    full_name: str = Field(description="what it is: CPU, memory channels and speed, sockets")
    ram_capacity_gib: SourcedNumber = Field(description="host RAM, GiB (2^30 bytes)")
    ram_bandwidth_gbps: SourcedNumber = Field(
        description="peak RAM bandwidth, GB/s (10^9 bytes/s): channels x 8 B x MT/s"
    )
    ram_efficiency: SourcedNumber = Field(
        description="the share of the peak a many-threaded stream reaches (STREAM triad), in (0, 1]"
    )
    cpu_cores: SourcedNumber = Field(description="physical cores")
    cpu_tflops: SourcedNumber = Field(description="FP32 peak of all cores, TFLOP/s: cores x GHz x FLOP/cycle")
    cpu_attention_gbps: SourcedNumber = Field(
        description="KV GB/s (10^9 bytes/s) a many-threaded CPU attention kernel scans at decode"
    )
    cpu_gather_gbps: SourcedNumber | None = Field(
        None,
        description="bytes/s (read plus written) of a many-threaded gather of scattered KV rows into pinned "
        "memory, GB/s; None: the sustained RAM bandwidth",
    )
    cpu_attention_call_us: SourcedNumber | None = Field(
        None,
        description="the fixed time of one CPU attention call beside its scan (waking the threads, the split-K "
        "merge), us; None: 0",
    )
    cpu_attention_group_gbps: dict[int, SourcedNumber] | None = Field(
        None,
        description="KV GB/s of the same kernel by query heads per KV head (the GQA group), at one size: its "
        "rate depends on the group (one query row, as MHA has, is a matrix-vector product per key block). A "
        "model's scan runs at cpu_attention_gbps times the rate at its group over the rate at "
        "cpu_attention_group, the group that rate was measured at. None: cpu_attention_gbps for every group",
    )
    cpu_attention_group: SourcedNumber | None = Field(
        None, description="the GQA group cpu_attention_gbps was measured at (with cpu_attention_group_gbps)"
    )
    cpu_attention_slot_gbps: dict[int, dict[int, dict[int, SourcedNumber]]] | None = Field(
        None,
        description="KV GB/s of the same kernel over one CPU slot's host block, by the GQA group, then KV heads "
        "in the slot, then the KV bytes the slot's scan reads: the executor attends each CPU slot apart, cut "
        "into key ranges by its threads, and the rate depends on all three, not only on the bytes "
        "(docs/evidence.md#ev-cpu-scan-per-slot). A layer's scan runs at the rate interpolated there (linear "
        "in group and heads, in log bytes; flat beyond the table). None: cpu_attention_gbps (scaled by group "
        "as above) with cpu_attention_call_us per call",
    )

    gpu_links: SourcedNumber | None = Field(
        None,
        description="host links the GPUs reach the CPU's memory through (x16 root ports or PCIe-switch uplinks): "
        "the ranks of a tensor-parallel plan spread over them, and ranks on one link share its rate; None: one "
        "link per GPU",
    )

    cpu_attention_low: SourcedNumber | None = Field(
        None,
        description="the CPU attention kernel's scan rate at its slow end over the rates above (<= 1): the same scan "
        "timed at several moments of the calibration, its slowest over their median; None: a zero-width band",
    )
    cpu_attention_high: SourcedNumber | None = Field(
        None, description="the scan rate at its fast end over the rates above (>= 1); None: a zero-width band"
    )

    _pos = field_validator(
        "ram_capacity_gib",
        "ram_bandwidth_gbps",
        "cpu_tflops",
        "cpu_attention_gbps",
    )(lambda v, info: positive(info.field_name, v))
    _fraction = field_validator("ram_efficiency")(lambda v, info: fraction(info.field_name, v))
    _count = field_validator("cpu_cores")(lambda v, info: whole(info.field_name, v))
    _links = field_validator("gpu_links")(lambda v, info: v if v is None else whole(info.field_name, v))

    @field_validator("ram_capacity_gib")
    @classmethod
    def _bounded(cls, v):
        if v.value > MAX_HOST_GIB:
            raise ValueError(f"ram_capacity_gib {v.value:g} is over {MAX_HOST_GIB} GiB: give the RAM in GiB")
        return v

    @model_validator(mode="after")
    def _groups(self) -> HostSpec:
        for name, side in (("cpu_attention_low", -1), ("cpu_attention_high", 1)):
            v = getattr(self, name)
            if v is not None and (v.value <= 0 or (v.value - 1.0) * side < 0):
                raise ValueError(
                    f"{name} is a ratio {'<=' if side < 0 else '>='} 1 and above 0, got {v.value}"
                )
        table = self.cpu_attention_group_gbps
        if (table is None) != (self.cpu_attention_group is None):
            raise ValueError(
                "cpu_attention_group_gbps and cpu_attention_group go together: give both or neither"
            )
        slots = self.cpu_attention_slot_gbps
        if slots is not None:
            bad = [
                (g, h, n, r.value)
                for g, by_heads in slots.items()
                for h, row in by_heads.items()
                for n, r in row.items()
                if min(g, h, n) < 1 or r.value <= 0
            ]
            empty = (
                not slots or not all(slots.values()) or not all(r for t in slots.values() for r in t.values())
            )
            if empty or bad:
                raise ValueError(
                    "cpu_attention_slot_gbps needs positive rates keyed by group >= 1, then heads >= 1, then "
                    "bytes >= 1"
                    + (
                        f" (got group {bad[0][0]}, heads {bad[0][1]}, bytes {bad[0][2]}: {bad[0][3]})"
                        if bad
                        else " (got an empty table)"
                    )
                )
        if table is not None:
            bad = [g for g, r in table.items() if g < 1 or r.value <= 0]
            if not table or bad:
                raise ValueError(
                    "cpu_attention_group_gbps needs positive rates keyed by groups >= 1"
                    + (f" (got {bad[0]}: {table[bad[0]].value})" if bad else " (got an empty table)")
                )
        return self

    @property
    def ram_bytes_per_s(self) -> float:
        return self.ram_bandwidth_gbps.value * 1e9 * self.ram_efficiency.value

    @property
    def capacity_bytes(self) -> float:
        return self.ram_capacity_gib.value * GiB

    def cpu_attention_s(self, kv_bytes, calls: int = 1, group: int | None = None, heads: int | None = None):
        """Seconds of CPU decode attention scanning kv_bytes of KV (a number or an array) in `calls` calls (CPU
        slots) of `heads` KV heads each, for a model with `group` query heads per KV head (None: at the rate as
        measured). Priced per slot from cpu_attention_slot_gbps where the profile has it and `heads` and `group`
        are given."""
        if self.cpu_attention_slot_gbps is not None and heads is not None and group is not None:
            return kv_bytes / self.cpu_attention_slot_rate(group, heads, np.asarray(kv_bytes) / calls)
        call = 0.0 if self.cpu_attention_call_us is None else self.cpu_attention_call_us.value * 1e-6
        return calls * call + kv_bytes / (
            self.cpu_attention_gbps.value * 1e9 * self.cpu_attention_scale(group)
        )

    def cpu_attention_slot_rate(self, group: int, heads: int, slot_bytes):
        """Bytes/s of one CPU slot's scan of slot_bytes (a number or an array) over `heads` KV heads with `group`
        query heads each: from cpu_attention_slot_gbps, linear in log bytes between measured sizes, in heads and in
        group between measured ones, flat beyond all three."""
        x = np.log(np.maximum(np.asarray(slot_bytes, dtype=float), 1.0))

        def at_heads(row: dict) -> np.ndarray:
            sizes = sorted(row)
            return np.interp(x, np.log(sizes), [row[n].value for n in sizes])

        def at_group(by_heads: dict) -> np.ndarray:
            return _between(heads, {h: at_heads(row) for h, row in by_heads.items()})

        table = self.cpu_attention_slot_gbps
        return _between(group, {g: at_group(by_heads) for g, by_heads in table.items()}) * 1e9

    def cpu_attention_scale(self, group: int | None) -> float:
        """The CPU attention kernel's rate at `group` over its rate at the group cpu_attention_gbps was measured at,
        linear in the group between measured groups, flat beyond them."""
        table, ref = self.cpu_attention_group_gbps, self.cpu_attention_group
        if group is None or table is None or ref is None:
            return 1.0
        keys = sorted(table)
        rates = [table[k].value for k in keys]
        return float(np.interp(group, keys, rates) / np.interp(ref.value, keys, rates))

    def scans_times(self, k: float) -> HostSpec:
        """This host with the CPU attention kernel's scan rates (cpu_attention_gbps and the slot table) times k."""

        def times(v):
            return v.model_copy(update={"value": v.value * k})

        update = {"cpu_attention_gbps": times(self.cpu_attention_gbps)}
        if self.cpu_attention_slot_gbps is not None:
            update["cpu_attention_slot_gbps"] = {
                g: {h: {n: times(r) for n, r in row.items()} for h, row in by_heads.items()}
                for g, by_heads in self.cpu_attention_slot_gbps.items()
            }
        return self.model_copy(update=update)

    def spread_end(self, name: str) -> float:
        """cpu_attention_low or cpu_attention_high, or 1 where the profile has none."""
        v = getattr(self, name)
        return 1.0 if v is None else v.value

    @property
    def gather_bytes_per_s(self) -> float:
        if self.cpu_gather_gbps is None:
            return self.ram_bytes_per_s
        return self.cpu_gather_gbps.value * 1e9


def _data_dir(kind: str) -> Path:
    return Path(str(resources.files("roofsim.hw_specs") / kind))


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in _data_dir(kind).glob("*.toml"))


def list_gpus() -> list[str]:
    return _names("gpus")


def list_hosts() -> list[str]:
    return _names("hosts")


def _resolve(kind: str, name_or_path: str, label: str) -> Path:
    candidate = Path(name_or_path)
    if name_or_path.endswith(".toml") or candidate.exists() and candidate.is_file():
        if not candidate.is_file():
            raise UserError(f"{label} spec file {name_or_path!r} does not exist")
        return candidate
    key = name_or_path.strip().lower()
    path = _data_dir(kind) / f"{key}.toml"
    if path.is_file():
        return path
    names = _names(kind)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    cmd = "roofsim gpus" if kind == "gpus" else "roofsim hosts"
    raise UserError(
        f"unknown {label} {name_or_path!r}: {hint}`{cmd}` lists them, or pass a path to a TOML spec file"
    )


@cache
def _load_gpu(path: str, mtime_ns: int) -> GpuSpec:
    refuse_placeholders(Path(path))
    return load_model_file(GpuSpec, Path(path), "hw_specs/gpus/h100-sxm.toml")


@cache
def _load_host(path: str, mtime_ns: int) -> HostSpec:
    refuse_placeholders(Path(path))
    return load_model_file(HostSpec, Path(path), "hw_specs/hosts/sapphire-rapids.toml")


def load_gpu(name_or_path: str) -> GpuSpec:
    path = _resolve("gpus", name_or_path, "GPU")
    return _load_gpu(str(path), path.stat().st_mtime_ns).model_copy(update={"source": name_or_path})


def default_host_of(gpu_name_or_path: str, gpu: GpuSpec) -> HostSpec:
    """The GPU spec's default host; a calibrated profile names its host file relative to itself."""
    if gpu.default_host.endswith(".toml"):
        base = Path(gpu_name_or_path).parent if Path(gpu_name_or_path).is_file() else Path(".")
        return load_host(str(base / gpu.default_host))
    return load_host(gpu.default_host)


def load_host(name_or_path: str) -> HostSpec:
    path = _resolve("hosts", name_or_path, "host")
    return _load_host(str(path), path.stat().st_mtime_ns)
