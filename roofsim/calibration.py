"""Calibration: turn micro-benchmark measurements into a hardware profile in the hw_specs schema.

The measurements come from `roofsim calibrate` (roofsim.executor.calibrate, torch, on the GPU machine); this
module only fits and writes, so it runs anywhere. Calibration never runs a model or a plan end to end: those are
for validation. Fitting rules (each value in the profile says which one produced it):
- h2d/d2h rate: the slope of time against bytes over isolated pinned copies of 64 MiB and more (_stream_rate);
- copy latency: median of t - n/rate over isolated copies from 256 KiB to 16 MiB; copy floor: the smallest copy;
- copy gap: 16 back-to-back copies, per-copy time minus its bytes at the rate; copy issue: 1024 back-to-back
  64 KiB copies, whose time is the issuing thread's;
- duplex efficiency: both directions at once over the sum of their rates alone;
- GEMM efficiency: total FLOPs over total time of one decoder layer's GEMMs (as the stock model runs them) at
  prefill chunk sizes, over the datasheet peak (the best single shape overstates it:
  docs/evidence.md#ev-gemm-total-not-best-shape); attention: the median over the executor's own kernels at the
  chunk shapes plans run (whole layers and one-head slots);
- memory efficiency: device-to-device copy over datasheet bandwidth;
- per-kernel cost: what one decoder layer adds to a decode step at tiny shapes through the executor (its cache and
  attention included), divided by the kernels roofsim's operator model counts for that layer;
- CPU attention: the line time = fixed + bytes / rate through three sizes at the calibration model's GQA group,
  the rate at one size for each group of CPU_ATTENTION_GROUPS (a model's scan is scaled to its group), and the rate
  of one CPU slot's scan by group, KV heads and length (the executor's calls: plans are priced per slot from these);
  CPU gather: one fifth of a layer's rows from cold blocks; the copy of those rows right after the gather at its
  own rate (link.h2d_gathered_gbps);
- host pace: the gauges' means beside the tiny decode layers are the profile's reference (runtime.host_pace_us,
  launch_pace_us, step_pace_us); each layer sample and the attention calls are restated from the pace beside
  their own timing to it (host_paces).
- spread (the prediction's band, fit_spread): the host's pace as the 5th and 95th percentiles of every sample's
  ratio to that reference over the whole calibration; the link as the slowest and fastest isolated pinned copy
  of 64 MiB and more against the fitted line (latency + bytes / rate), both directions; the CPU scan as the slowest and fastest of the
  same scan (the calibration model's group, the cpu_attention_groups size) timed at several moments, over their
  median.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from roofsim import ops, roofline
from roofsim.hostpace import LAUNCHES, LOOP, pace_ratio
from roofsim.specs.hardware import GpuSpec, HostSpec, InterconnectSpec, SpreadSpec
from roofsim.specs.model import ModelSpec
from roofsim.specs.tomlfile import tomllib


class CopyPoint(BaseModel):
    nbytes: int
    seconds: float


class BatchPoint(BaseModel):
    copies: int
    nbytes_each: int
    seconds: float


class KernelPoint(CopyPoint):
    """A CopyPoint that says which kernel it timed."""

    label: str


class FlopPoint(BaseModel):
    label: str
    flops: float
    seconds: float
    rows: float | None = (
        None  # attention over a chunk after a past: its GQA-folded query rows; a GEMM: its rows
    )


class Measurements(BaseModel):
    """Raw results of the micro-benchmarks, committed beside the profile they produced."""

    fingerprint: dict[str, str | int | float | None]
    total_memory_bytes: int
    h2d: list[CopyPoint]
    d2h: list[CopyPoint]
    pageable_h2d: list[CopyPoint]
    back_to_back_h2d: list[BatchPoint]
    back_to_back_h2d_allocated: list[BatchPoint] | None = Field(
        default=None,
        description="the same batches from torch's pinned allocator's memory (cudaHostAlloc, where the streamed "
        "experts live) instead of registered memory (the KV store's): link.copy_gap_allocated_us",
    )
    bidirectional_total_gbps: float
    d2d_copy_gbps: float = Field(description="device-to-device copy, bytes read plus written per second")
    gemm: list[FlopPoint]
    gemm_held: list[FlopPoint] | None = Field(
        default=None,
        description="the layer's GEMMs at 16384 rows round after round for seconds from an idle GPU, one point per "
        "window in order (executor.calibrate.kernels.gemms_held): the first windows at the boosted clock that `gemm` "
        "sees, the later ones at the clock the power limit holds (gemm_held_ratio); recorded, not yet read into the "
        "profile",
    )
    attention_prefill: list[FlopPoint]
    attention_decode: list[CopyPoint] = Field(description="KV bytes read per decode attention call")
    attention_prefill_short: list[FlopPoint] = Field(
        default=[],
        description="the executor's chunk-after-a-past attention at few query rows (short chunks, one-head "
        "slots): with attention_prefill's rows they give efficiency.attention_rows",
    )
    attention_head_dims: dict[int, FlopPoint] | None = Field(
        default=None,
        description="the executor's chunk-after-a-past attention call at the calibration model's KV heads, group, "
        "chunk and past, at each of these head dims (the model's own, attention_head_dim_at, among them): with it "
        "they give efficiency.attention_head_dim",
    )
    attention_head_dim_at: int | None = Field(
        default=None, description="the head dim attention_prefill and attention_prefill_short were timed at"
    )
    sync_us: float
    tiny_layer_s: float = Field(description="the mean of tiny_layer_samples_s where those were taken")
    tiny_layer_model: ModelSpec
    tiny_layer_samples_s: list[float] | None = Field(
        default=None,
        description="tiny_layer_s measured at the start, the middle and (right after "
        "tiny_layer_beside_cpu_s) the end of the calibration: the host's speed moves in spells, so one sample "
        "does not stand for the calibration",
    )
    tiny_step_s: float | None = Field(
        default=None,
        description="a tiny-model decode step outside its layers: the 2-layer step less 2 layers",
    )
    vector_ops: list[CopyPoint] | None = Field(
        default=None,
        description="a decoder layer's elementwise kernels at a prefill chunk as transformers runs them, each with "
        "the HBM bytes roofsim's operator model counts for it",
    )
    tiny_layer_beside_cpu_s: float | None = Field(
        default=None,
        description="tiny_layer_s while the CPU worker scans cold host KV back to back (cpu_attention's decode)",
    )
    attention_calls_at_width_s: dict[str, float] | None = Field(
        default=None,
        description="attention_call_s, streamed_call_s and fp8_call_s (call, streamed, fp8) timed again at the "
        "calibrated model's layer shapes and KV heads, with the fp8 extra apart for resident and streamed calls "
        "and a one-slot head_offload layer over the resident plan's (layer_over_resident); recorded for comparison "
        "with the tiny ones, not yet read into the profile",
    )
    tiny_layer_beside_link_s: float | None = Field(
        default=None,
        description="tiny_layer_s while pinned host-to-device copies stream back to back on a side stream (an "
        "offload family's decode issues while its KV streams); recorded for comparison with tiny_layer_samples_s, "
        "not yet read into the profile",
    )
    worker_round_trip_s: float | None = Field(
        default=None,
        description="handing cpu_attention's CPU part (less its scan) to the CPU worker and having it back, median",
    )
    cpu_copy_gbps: float = Field(description="host memcpy, bytes read plus written per second")
    cpu_attention: list[CopyPoint] = Field(description="KV bytes scanned by CPU decode attention")
    cpu_matmul_tflops: float
    fp8_writes: list[CopyPoint] | None = Field(
        default=None,
        description="the fp8 KV store's write of a prefill chunk's rows (executor kvquant.write) at the model's KV "
        "heads, the GPU asleep while the host queues it: the bytes roofsim's operator model counts for it and the "
        "GPU seconds; they give efficiency.fp8_write",
    )
    decode_gemv: list[KernelPoint] | None = Field(
        default=None,
        description="one token's GEMVs of a decoder layer and the LM head (rows = 1), each weight read from HBM "
        "(copies of it cycled past the L2), the GPU asleep while the host queues them: weight bytes and GPU seconds "
        "a call; their line gives efficiency.gemv and gemv_us",
    )
    graph_kernel_us: float | None = Field(
        default=None,
        description="GPU time per tiny kernel replayed from a CUDA graph (gpu_kernel_us's kernels, captured). "
        "Recorded; no profile value is fitted from it yet",
    )
    attention_decode_replay: list[CopyPoint] | None = Field(
        default=None,
        description="the decode kernel a replayed step runs (executor attention.decode_attend after "
        "pick_decode_kernel) over 4K, 32K and 128K keys of a token-major slot, the GPU asleep while the host "
        "queues it: KV bytes read and GPU seconds; their line's intercept gives efficiency.decode_call_us",
    )
    gpu_kernel_us: float | None = Field(
        default=None, description="GPU time per tiny kernel queued back to back behind a sleeping kernel"
    )
    topk_gelems: float | None = Field(
        default=None, description="elements per second (G) a large-k torch.topk (and its index sort) ranks"
    )
    topk: list[CopyPoint] | None = Field(
        default=None,
        description="torch.topk and its index sort at several row lengths, each as (elements ranked, seconds): "
        "their line gives efficiency.topk_call_us and topk_gelems (where present, in place of topk_gelems)",
    )
    attention_call_s: float | None = Field(
        default=None, description="host time of one executor attention call over resident KV (tiny shapes)"
    )
    host_pace_us: list[float] | None = Field(
        default=None,
        description="roofsim.hostpace's loop, timed once per step inside the tiny decode timings (tiny_layer_samples_s, "
        "attention_call_s, streamed_call_s): the host's pace the host-side costs were measured at",
    )
    launch_pace_us: list[float] | None = Field(
        default=None,
        description="roofsim.executor.launchpace's kernel launches, timed right after each host_pace_us sample",
    )
    step_pace_us: list[float] | None = Field(
        default=None,
        description="roofsim.executor.launchpace's tiny decode step, timed right after each launch_pace_us sample",
    )
    pace_beside: list[str] | None = Field(
        default=None,
        description="what each host_pace_us (launch_pace_us, step_pace_us) sample was timed beside: 'layer<i>' the i-th "
        "tiny_layer_samples_s, 'calls' attention_call_s and streamed_call_s. Files without it hold measure()'s "
        "fixed order (PACE_LAYOUT)",
    )
    streamed_call_s: float | None = Field(
        default=None, description="what a streamed unit's attention call adds to it (tiny shapes)"
    )
    fp8_call_s: float | None = Field(
        default=None,
        description="what an attention call over an fp8 store adds to the same call in bf16 (tiny shapes, timed "
        "beside attention_call_s)",
    )
    expert_call_s: float | None = Field(
        default=None,
        description="host time the executor's MoE expert loop spends per expert hit (128 experts at Qwen3-30B-A3B's "
        "width, executor.calibrate.kernels.MOE_WIDTH; timed after attention_call_s)",
    )
    expert_fetch_s: float | None = Field(
        default=None,
        description="host time a streamed MoE layer's fetch adds to the expert loop per expert hit (its two "
        "copies from pinned host memory; tiny shapes, timed with expert_call_s)",
    )
    moe_layer_s: float | None = Field(
        default=None,
        description="host seconds one decoder layer of executor.calibrate.MOE_DIAGNOSTIC (resident experts, one "
        "token: its experts_per_token hit) adds to a decode step through the executor, measured as tiny_layer_s "
        "is (6 layers against 2) at that model's width: what the profile's runtime.moe_layer_us rests on",
    )
    moe_layer_model: ModelSpec | None = Field(
        default=None,
        description="that layer's model (one layer, a 128-token vocabulary), as tiny_layer_model",
    )
    moe_layer_pace_us: list[float] | None = Field(
        default=None, description="the host's pace (roofsim.hostpace) timed beside moe_layer_s's steps"
    )
    fp8_passes: list[CopyPoint] | None = Field(
        default=None,
        description="a decode call's fp8 store passes (the write of its new row, the dequantisation of the store) "
        "at the model's KV heads and two context lengths, each with the bytes roofsim's operator model counts",
    )
    prefill_call_s: float | None = Field(
        default=None,
        description="what an executor attention call of a chunk after a past adds to a decode call's host time (its "
        "second part, the GQA repeat, the LSE merge): back-to-back calls at the model's head_dim, small shapes",
    )
    cpu_scan_gap_s: float = Field(
        default=0.0, description="idle before each timed call of cpu_attention_slots (0: back to back)"
    )
    attention_new_shape_s: float | None = Field(
        default=None,
        description="a prefill attention call of the executor with a past length not seen before, less the same "
        "call repeated (host and GPU time, synchronised)",
    )
    h2d_after_gather_gbps: float | None = Field(
        default=None,
        description="pinned H2D rate of rows the CPU has just gathered into a pinned stage (sparse_fetch's copy)",
    )
    h2d_stage_again_gbps: float | None = Field(
        default=None,
        description="the same stage copied again right after, not written in between (h2d_after_gather's control)",
    )
    cpu_gather_gbps: float | None = Field(
        default=None,
        description="gather of scattered KV rows into pinned memory, bytes read plus written per second",
    )
    cpu_gather_by_region_gbps: dict[int, float] | None = Field(
        default=None,
        description="the same gather from the blocks of one region of 1 GiB and of one of 8 GiB, timed in turn, "
        "by region bytes (a run's host store is one region of tens of GB). Recorded; no profile value is fitted "
        "from it yet",
    )
    cpu_attention_beside_h2d: list[CopyPoint] = Field(
        default=[],
        description="CPU decode attention, as cpu_attention, while pinned H2D copies stream from host RAM",
    )
    h2d_beside_cpu_gbps: float | None = Field(
        default=None, description="the pinned H2D rate over those copies, while the CPU attends beside them"
    )
    cpu_attention_groups: dict[int, CopyPoint] = Field(
        default={},
        description="CPU decode attention over the same KV with G query heads per KV head, by G",
    )
    cpu_attention_group: int | None = Field(
        default=None,
        description="query heads per KV head of the model the cpu_attention points were measured with",
    )
    cpu_attention_slots: dict[int, dict[int, list[CopyPoint]]] = Field(
        default={},
        description="CPU decode attention over one CPU slot's host block (one call's share), by GQA group, then "
        "KV heads in the slot, at several lengths",
    )
    cpu_threads: int
    host_ram_bytes: float


def _rate(points: list[CopyPoint], min_bytes: int) -> float:
    """Median bytes per second over the points of at least min_bytes."""
    big = [p.nbytes / p.seconds for p in points if p.nbytes >= min_bytes]
    return statistics.median(big)


def _stream_rate(points: list[CopyPoint], min_bytes: int) -> float:
    """The link's streaming rate: the slope of time against bytes between the smallest and the largest copy of at
    least min_bytes, so that a fixed cost per copy does not lower it (docs/evidence.md#ev-link-rate-slope);
    the median rate where fewer than two such sizes were timed, or where the slope is not positive."""
    big = sorted((p for p in points if p.nbytes >= min_bytes), key=lambda p: p.nbytes)
    if len(big) >= 2 and big[-1].nbytes > big[0].nbytes and big[-1].seconds > big[0].seconds:
        return (big[-1].nbytes - big[0].nbytes) / (big[-1].seconds - big[0].seconds)
    return _rate(points, min_bytes)


# measure()'s order of the gauges' samples before Measurements.pace_beside was written: 20 steps of each
PACE_LAYOUT = ("layer0",) * 20 + ("layer1",) * 20 + ("calls",) * 20 + ("layer2",) * 20


def pace_beside(m: Measurements) -> list[str] | None:
    """The label of each host-pace sample (Measurements.pace_beside), or None where the samples cannot be told
    apart."""
    if not m.host_pace_us:
        return None
    if m.pace_beside is not None:
        return m.pace_beside if len(m.pace_beside) == len(m.host_pace_us) else None
    n_layers = len(m.tiny_layer_samples_s or [])
    return list(PACE_LAYOUT) if len(m.host_pace_us) == len(PACE_LAYOUT) and n_layers == 3 else None


def host_paces(m: Measurements) -> tuple[dict[str, float], dict[str, float]]:
    """The gauges' reference readings the profile's host-side costs are stated at, by gauge ("loop":
    host_pace_us, "launch", "step": each where timed): their means beside the tiny decode layers (kernel_us and
    step_us rest on those); and each timed cost's ratio to them (pace_ratio of its own samples' means), by label.
    The host's speed can differ between the layers' timings and the calls' timings, so one mean over all
    samples would state the layers at the wrong pace (docs/evidence.md#ev-pace-beside-each-cost). Without
    labels: the means of all samples and no ratios."""
    gauges = {
        name: xs
        for name, xs in (("loop", m.host_pace_us), ("launch", m.launch_pace_us), ("step", m.step_pace_us))
        if xs
    }
    labels = pace_beside(m)
    if (
        labels is None
        or any(len(xs) != len(labels) for xs in gauges.values())
        or not any(x.startswith("layer") for x in labels)
    ):
        return {name: statistics.fmean(xs) for name, xs in gauges.items()}, {}

    def means(keep) -> dict[str, float]:
        idx = [i for i, lab in enumerate(labels) if keep(lab)]
        return {name: statistics.fmean(xs[i] for i in idx) for name, xs in gauges.items()}

    ref = means(lambda lab: lab.startswith("layer"))
    ratios = {}
    for lab in sorted(set(labels)):
        own = means(lambda x, lab=lab: x == lab)
        ratios[lab] = pace_ratio(
            own["loop"], ref["loop"], own.get("launch"), ref.get("launch"), own.get("step"), ref.get("step")
        )
    return ref, ratios


def _bandwidth_share(points: list[CopyPoint], base: GpuSpec) -> float:
    """Kernels timed with the bytes the operator model counts for them: their total bytes over their total time, as
    a share of the datasheet HBM bandwidth (what an efficiency field holds)."""
    return (
        sum(p.nbytes for p in points)
        / sum(p.seconds for p in points)
        / (base.memory.bandwidth_gbps.value * 1e9)
    )


def _copy_gap_s(batch: BatchPoint, h2d: float) -> float:
    """A back-to-back batch's time a copy less that copy's bytes at the isolated rate `h2d` (bytes/s), at least 0."""
    return max(0.0, batch.seconds / batch.copies - batch.nbytes_each / h2d)


def topk_fit(m: Measurements) -> dict[str, tuple[float, str]]:
    """efficiency.topk_gelems (and topk_call_us): the line through the topk points where they were timed, a fixed
    time per call and a rate per element; else the one rate of older measurements; else nothing."""
    line = _line(m.topk) if m.topk else None
    if line is not None:
        fixed, rate = line
        how = f"least-squares line through torch.topk and its index sort at {len(m.topk)} row lengths"
        return {
            "topk_gelems": (rate / 1e9, how + ": elements per second (G), its slope"),
            "topk_call_us": (fixed * 1e6, how + ": its intercept, per call"),
        }
    if m.topk_gelems is not None:
        return {"topk_gelems": (m.topk_gelems, "torch.topk of a large share of 8 rows, then the index sort")}
    return {}


def gemv_fit(m: Measurements, base: GpuSpec) -> dict[str, tuple[float, str]]:
    """efficiency.gemv and gemv_us: the least-squares line through one token's GEMVs (Measurements.decode_gemv),
    time = fixed + weight bytes / rate, where they were timed; else nothing (memory-bound GEMMs priced as any
    memory-bound kernel)."""
    points = m.decode_gemv or []
    line = _line(points) if points else None
    if line is None:
        return {}
    fixed, rate = line
    how = (
        f"least-squares line through {len(points)} timings of one token's GEMV (a layer's weight shapes and the LM "
        "head's), each weight read from HBM"
    )
    return {
        "gemv": (
            rate / (base.memory.bandwidth_gbps.value * 1e9),
            how + ": its rate over the datasheet bandwidth",
        ),
        "gemv_us": (fixed * 1e6, how + ": its intercept, GPU us a call"),
    }


def decode_call_fit(m: Measurements) -> dict[str, tuple[float, str]]:
    """efficiency.decode_call_us: the intercept of the least-squares line through the replayed decode kernel's
    timings (Measurements.attention_decode_replay), where they were timed; else nothing."""
    points = m.attention_decode_replay or []
    line = _line(points) if points else None
    if line is None:
        return {}
    how = (
        f"least-squares line through {len(points)} timings of the replayed decode kernel over a layer's KV "
        "(time against bytes): its intercept, GPU us a call"
    )
    return {"decode_call_us": (line[0] * 1e6, how)}


def head_dim_ratios(m: Measurements) -> dict[int, float] | None:
    """Each timed head dim's attention FLOP/s over the calibration model's head dim's (1 there), or None where
    the head dims were not timed (older measurements) or the model's own is missing among them."""
    points, ref = m.attention_head_dims, m.attention_head_dim_at
    if not points or ref not in points or len(points) < 2:
        return None
    rate = {d: p.flops / p.seconds for d, p in points.items()}
    return {d: rate[d] / rate[ref] for d in sorted(rate)}


def fit(base: GpuSpec, m: Measurements) -> dict[str, dict[str, tuple[float, str]]]:
    """Section -> field -> (value, how it was measured)."""
    h2d = _stream_rate(m.h2d, 64 * 2**20)
    d2h = _stream_rate(m.d2h, 64 * 2**20)
    mid = [p for p in m.h2d if 256 * 1024 <= p.nbytes <= 16 * 2**20]
    # not below zero: a latency is a wait, and the spec refuses a negative one
    latency = max(
        0.0,
        statistics.median(p.seconds - p.nbytes / h2d for p in mid)
        if mid
        else base.link.copy_latency_us.value * 1e-6,
    )
    smallest = min(m.h2d, key=lambda p: p.nbytes)
    few = min(m.back_to_back_h2d, key=lambda b: b.copies)
    many = max(m.back_to_back_h2d, key=lambda b: b.copies)
    gap = _copy_gap_s(few, h2d)
    issue = many.seconds / many.copies
    allocated = m.back_to_back_h2d_allocated
    few_allocated = min(allocated, key=lambda b: b.copies) if allocated else None
    duplex = min(1.0, m.bidirectional_total_gbps * 1e9 / (h2d + d2h))
    peak = base.compute.bf16_tflops.value * 1e12
    gemm = sum(p.flops for p in m.gemm) / sum(p.seconds for p in m.gemm) / peak
    attention = statistics.median(p.flops / p.seconds for p in m.attention_prefill) / peak
    by_rows: dict[int, list[float]] = {}
    for p in m.attention_prefill + m.attention_prefill_short:
        if p.rows:
            by_rows.setdefault(int(p.rows), []).append(p.flops / p.seconds / peak)
    memory = m.d2d_copy_gbps / base.memory.bandwidth_gbps.value
    tiny = m.tiny_layer_model
    kernels = sum(op.kernels for op in ops.layer_ops(tiny, 1, 16, 1))
    # a decode step pays the host's mean speed: the mean of the samples (older files hold a median in
    # tiny_layer_s; the samples are read instead); the beside-the-worker ratio against the sample taken right
    # after it, in the same spell of the host, not against samples taken minutes apart
    # (docs/evidence.md#ev-tiny-layer-mean-not-median)
    samples = m.tiny_layer_samples_s or [m.tiny_layer_s]
    # each cost timed beside the gauges restated at their readings beside the layers (host_paces)
    refs, ratios = host_paces(m) if m.host_pace_us else ({}, {})
    tiny_s = statistics.fmean(t / ratios.get(f"layer{i}", 1.0) for i, t in enumerate(samples))
    calls = ratios.get("calls", 1.0)
    restated = f", restated at the layers' host pace (x{1 / calls:.2f})" if "calls" in ratios else ""
    kernel_us = tiny_s / kernels * 1e6
    outside = sum(op.kernels for op in ops.embed_ops(tiny, 1, 1) + ops.head_ops(tiny, 1))
    fp = m.fingerprint.get("gpu_name", "this GPU")
    return {
        "memory": {"capacity_gib": (m.total_memory_bytes / 2**30, f"torch total_memory on {fp}")},
        "link": {
            "h2d_gbps": (h2d / 1e9, "pinned H2D: slope of time against bytes over isolated copies >= 64 MiB"),
            "d2h_gbps": (d2h / 1e9, "pinned D2H: slope of time against bytes over isolated copies >= 64 MiB"),
            "pageable_h2d_gbps": (_rate(m.pageable_h2d, 0) / 1e9, "median pageable H2D rate"),
            "copy_latency_us": (
                latency * 1e6,
                "median of t - n/rate over isolated copies 256 KiB-16 MiB, at least 0",
            ),
            "copy_min_us": (smallest.seconds * 1e6, f"isolated {smallest.nbytes // 1024} KiB copy"),
            "copy_gap_us": (gap * 1e6, f"{few.copies} back-to-back {few.nbytes_each // 2**20} MiB copies"),
            **(
                {
                    "copy_gap_allocated_us": (
                        _copy_gap_s(few_allocated, h2d) * 1e6,
                        f"{few_allocated.copies} back-to-back {few_allocated.nbytes_each // 2**20} MiB copies from "
                        "torch's pinned allocator's memory",
                    )
                }
                if few_allocated
                else {}
            ),
            "duplex_efficiency": (duplex, "both directions at once over the sum of their rates alone"),
            **(
                {
                    "h2d_gathered_gbps": (
                        m.h2d_after_gather_gbps,
                        "pinned H2D of a fifth of a layer's KV rows right after the CPU gathered them into the "
                        "pinned stage (sparse_fetch's copy), median"
                        + (
                            f"; the same stage copied again at once: {m.h2d_stage_again_gbps:.1f} GB/s"
                            if m.h2d_stage_again_gbps
                            else ""
                        ),
                    )
                }
                if m.h2d_after_gather_gbps
                else {}
            ),
        },
        "efficiency": {
            "gemm": (gemm, "a decoder layer's bf16 GEMMs at prefill shapes: total FLOPs / total time / peak"),
            "attention": (
                attention,
                "median of the executor's chunked-prefill attention over the datasheet peak",
            ),
            "memory": (memory, "device-to-device copy over the datasheet bandwidth"),
            "kernel_us": (
                kernel_us,
                f"one decoder layer at tiny shapes / {kernels:g} kernels in roofsim's model"
                + (", each sample at its own host pace restated at their mean" if ratios else ""),
            ),
            **(
                {
                    "attention_rows": (
                        {r: statistics.median(e) for r, e in sorted(by_rows.items())},
                        "the executor's chunk-after-a-past attention at that many GQA-folded query rows over the "
                        "datasheet peak (median where shapes share the rows)",
                    )
                }
                if m.attention_prefill_short and len(by_rows) > 1
                else {}
            ),
            **(
                {
                    "attention_head_dim": (
                        head_dims,
                        f"the executor's chunk-after-a-past attention call at that head dim, FLOP/s over the same "
                        f"call's at head dim {m.attention_head_dim_at} (the one `attention` was timed at)",
                    )
                }
                if (head_dims := head_dim_ratios(m))
                else {}
            ),
            **(
                {"gpu_kernel_us": (m.gpu_kernel_us, "tiny kernels queued back to back: GPU time per kernel")}
                if m.gpu_kernel_us is not None
                else {}
            ),
            **(
                {
                    "vector": (
                        _bandwidth_share(m.vector_ops, base),
                        "a layer's elementwise kernels at a prefill chunk (RMSNorm, rotary, SiLU * up, residual): "
                        "operator-model bytes / time / datasheet bandwidth",
                    )
                }
                if m.vector_ops
                else {}
            ),
            **(
                {
                    "fp8_passes": (
                        _bandwidth_share(m.fp8_passes, base),
                        "a decode call's fp8 store write and dequantisation at the model's KV heads: operator-model "
                        "bytes / time / datasheet bandwidth",
                    )
                }
                if m.fp8_passes
                else {}
            ),
            **(
                {
                    "fp8_write": (
                        _bandwidth_share(m.fp8_writes, base),
                        "the fp8 store's write of a prefill chunk's rows at the model's KV heads: operator-model "
                        "bytes / time / datasheet bandwidth",
                    )
                }
                if m.fp8_writes
                else {}
            ),
            **topk_fit(m),
            **gemv_fit(m, base),
            **decode_call_fit(m),
        },
        "runtime": {
            "copy_issue_us": (
                issue * 1e6,
                f"{many.copies} back-to-back {many.nbytes_each // 1024} KiB copies",
            ),
            "sync_us": (m.sync_us, "torch.cuda.synchronize() on an idle device"),
            **(
                {
                    "attention_call_us": (
                        m.attention_call_s / calls * 1e6,
                        "tiny decode steps: 4 resident one-head slots against 1 four-head slot, per call"
                        + restated,
                    ),
                    "streamed_call_us": (
                        m.streamed_call_s / calls * 1e6,
                        "tiny decode steps: 4 streamed one-head slots against 4 resident, per call"
                        + restated,
                    ),
                }
                if m.attention_call_s is not None and m.streamed_call_s is not None
                else {}
            ),
            **(
                {
                    "expert_call_us": (
                        m.expert_call_s / calls * 1e6,
                        "a MoE layer's expert loop (128 experts at hidden 2048, intermediate 768) for 256 tokens "
                        "against 1, per expert hit" + restated,
                    )
                }
                if m.expert_call_s is not None
                else {}
            ),
            **(
                {
                    "expert_fetch_us": (
                        m.expert_fetch_s / calls * 1e6,
                        "a tiny MoE layer's expert loop with its experts fetched from pinned host memory, against "
                        "the same loop over GPU weights, for 256 tokens against 1, per expert hit" + restated,
                    )
                }
                if m.expert_fetch_s is not None
                else {}
            ),
            **(
                {
                    "fp8_call_us": (
                        m.fp8_call_s / calls * 1e6,
                        "tiny decode steps: resident and streamed one-head slots with fp8 KV against the same in "
                        "bf16, per call" + restated,
                    )
                }
                if m.fp8_call_s is not None
                else {}
            ),
            **(
                {
                    "prefill_call_us": (
                        m.prefill_call_s * 1e6,
                        "back-to-back attention calls of a chunk after a past against decode calls, per call",
                    )
                }
                if m.prefill_call_s is not None
                else {}
            ),
            **(
                {
                    "issue_beside_cpu": (
                        m.tiny_layer_beside_cpu_s / samples[-1],
                        "tiny decode layers while the CPU worker scans, over the same layers alone right after",
                    )
                }
                if m.tiny_layer_beside_cpu_s is not None and samples[-1] > 0
                else {}
            ),
            **(
                {
                    "worker_round_trip_us": (
                        m.worker_round_trip_s * 1e6,
                        "a job shaped like cpu_attention's CPU part less its scan, submitted to the CPU worker and "
                        "its result back, median",
                    )
                }
                if m.worker_round_trip_s is not None
                else {}
            ),
            **(
                {
                    "host_pace_us": (
                        refs.get("loop"),
                        f"a {LOOP}-iteration Python loop (roofsim.hostpace), mean of the samples timed between "
                        + (
                            "the tiny decode layers' steps behind kernel_us and step_us (attention_call_us and "
                            "streamed_call_us restated from their own samples' pace)"
                            if ratios
                            else "the tiny decode steps behind kernel_us, attention_call_us and streamed_call_us"
                        ),
                    )
                }
                if "loop" in refs
                else {}
            ),
            **(
                {
                    "launch_pace_us": (
                        refs.get("launch"),
                        f"{LAUNCHES} one-element in-place adds issued back to back (roofsim.executor.launchpace), "
                        "timed right after each of host_pace_us's loops, their mean",
                    )
                }
                if "launch" in refs
                else {}
            ),
            **(
                {
                    "step_pace_us": (
                        refs.get("step"),
                        "one decode step's issue of a tiny two-layer Llama through the executor "
                        "(roofsim.executor.launchpace.step_us), timed right after each launch_pace_us, their mean",
                    )
                }
                if "step" in refs
                else {}
            ),
            **(
                {
                    "step_us": (
                        max(0.0, m.tiny_step_s - outside * kernel_us * 1e-6) * 1e6,
                        f"a tiny model's decode step less its layers, less the {outside:g} kernels outside them",
                    )
                }
                if m.tiny_step_s is not None
                else {}
            ),
            **(
                {
                    "attention_shape_us": (
                        max(0.0, m.attention_new_shape_s) * 1e6,
                        "a chunk-after-a-past attention call at a new past length, less the call repeated",
                    )
                }
                if m.attention_new_shape_s is not None
                else {}
            ),
        },
    }


SPREAD_QUANTILES = (0.05, 0.95)  # the host pace's ends: a 90% interval of its samples


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def gemm_held_ratio(m: Measurements) -> float | None:
    """The rate of gemm_held's second half (total FLOPs over total time) over the rate `gemm` timed at the same rows
    (its points of that many rows): below 1 where the clock a long prefill holds is lower than a short timing's.
    None without gemm_held."""
    if not m.gemm_held:
        return None
    held = m.gemm_held[len(m.gemm_held) // 2 :]
    burst = [p for p in m.gemm if p.rows is not None and p.rows == held[0].rows]
    if held[0].rows is None or not burst:
        return None
    rate = sum(p.flops for p in held) / sum(p.seconds for p in held)
    return rate / (sum(p.flops for p in burst) / sum(p.seconds for p in burst))


def host_pace_ratios(m: Measurements) -> list[float]:
    """Each gauge sample's pace ratio (roofsim.hostpace.pace_ratio) to the profile's reference (host_paces): how
    much slower than the reference the host issued at that moment of the calibration."""
    if not m.host_pace_us:
        return []
    refs, _ = host_paces(m)
    launches, steps = m.launch_pace_us or [], m.step_pace_us or []
    out = []
    for i, loop in enumerate(m.host_pace_us):
        launch = launches[i] if i < len(launches) else None
        step = steps[i] if i < len(steps) else None
        out.append(pace_ratio(loop, refs["loop"], launch, refs.get("launch"), step, refs.get("step")))
    return out


def _scan_repeats(m: Measurements) -> list[float]:
    """Rates (bytes/s) of one CPU scan, the calibration model's group over cpu_attention_groups' bytes, wherever the
    calibration timed it: cpu_attention, cpu_attention_groups, beside the H2D copies and the slots' table (within
    10% of those bytes)."""
    group = m.cpu_attention_group
    if group is None or group not in m.cpu_attention_groups:
        return []
    ref = m.cpu_attention_groups[group]
    near = [ref]
    for p in m.cpu_attention + m.cpu_attention_beside_h2d:
        near.append(p)
    for points in m.cpu_attention_slots.get(group, {}).values():
        near += points
    return [p.nbytes / p.seconds for p in near if abs(p.nbytes - ref.nbytes) <= 0.1 * ref.nbytes]


def fit_spread(m: Measurements) -> tuple[dict[str, tuple[float, str]], dict[str, tuple[float, str]]]:
    """The band's ends (GpuSpec.spread, HostSpec.cpu_attention_low/high) as ratios to the values the profile
    prices at, each end held on its side of 1 (the point lies in the band)."""
    gpu: dict[str, tuple[float, str]] = {}
    host: dict[str, tuple[float, str]] = {}
    ratios = host_pace_ratios(m)
    if len(ratios) >= 2:
        lo, hi = (_quantile(ratios, q) for q in SPREAD_QUANTILES)
        how = (
            f"the {SPREAD_QUANTILES[0] * 100:g}th and {SPREAD_QUANTILES[1] * 100:g}th percentiles of {len(ratios)} "
            "host-pace samples over the calibration, each as its ratio to runtime.host_pace_us's reference"
        )
        gpu["host_pace_low"] = (min(1.0, lo), how + ": the fast end")
        gpu["host_pace_high"] = (max(1.0, hi), how + ": the slow end")
    copies = []
    for points in (m.h2d, m.d2h):
        rate = _stream_rate(points, 64 * 2**20)
        mid = [p for p in points if 256 * 1024 <= p.nbytes <= 16 * 2**20]
        latency = max(0.0, statistics.median(p.seconds - p.nbytes / rate for p in mid)) if mid else 0.0
        copies += [(latency + p.nbytes / rate) / p.seconds for p in points if p.nbytes >= 64 * 2**20]
    if copies:
        how = (
            f"{len(copies)} isolated pinned copies >= 64 MiB, both directions, each its fitted time (latency + "
            "bytes / rate) over its measured time"
        )
        gpu["link_low"] = (min(1.0, min(copies)), how + ": the slowest")
        gpu["link_high"] = (max(1.0, max(copies)), how + ": the fastest")
    scans = _scan_repeats(m)
    if len(scans) >= 2:
        mid = statistics.median(scans)
        how = (
            f"the same CPU attention scan timed {len(scans)} times over the calibration (group "
            f"{m.cpu_attention_group}, {m.cpu_attention_groups[m.cpu_attention_group].nbytes} bytes)"
        )
        host["cpu_attention_low"] = (min(1.0, min(scans) / mid), how + ": the slowest over their median")
        host["cpu_attention_high"] = (max(1.0, max(scans) / mid), how + ": the fastest over their median")
    return gpu, host


def _line(points: list[CopyPoint]) -> tuple[float, float] | None:
    """Least-squares time = fixed + nbytes / rate over the points: (fixed seconds >= 0, bytes/s), or None where
    the points do not give a positive rate (fewer than two sizes, or time falling with size)."""
    if len({p.nbytes for p in points}) < 2:
        return None
    slope, fixed = statistics.linear_regression([p.nbytes for p in points], [p.seconds for p in points])
    if slope <= 0:
        return None
    if fixed < 0:  # through the origin instead
        return 0.0, sum(p.nbytes for p in points) / sum(p.seconds for p in points)
    return fixed, 1.0 / slope


def fit_host(m: Measurements) -> dict[str, tuple[float | dict, str]]:
    line = _line(m.cpu_attention)
    cpu_attn = _rate(m.cpu_attention, 0) if line is None else line[1]
    how = (
        "KV bytes/s of the executor's CPU decode attention kernel"
        if line is None
        else "KV bytes/s of the executor's CPU decode attention kernel: the slope of time against bytes"
    )
    out = {
        "ram_capacity_gib": (m.host_ram_bytes / 2**30, "MemTotal"),
        "ram_bandwidth_gbps": (m.cpu_copy_gbps, "host memcpy of a 1 GiB tensor, bytes read plus written"),
        "ram_efficiency": (1.0, "the bandwidth above is already the sustained rate"),
        "cpu_cores": (float(m.cpu_threads), "torch.get_num_threads()"),
        "cpu_tflops": (m.cpu_matmul_tflops, "fp32 CPU matmul 4096^3"),
        "cpu_attention_gbps": (cpu_attn / 1e9, how),
    }
    if line is not None:
        out["cpu_attention_call_us"] = (
            line[0] * 1e6,
            "the executor's CPU decode attention: time at zero bytes of the line through its sizes",
        )
    if m.cpu_attention_groups and m.cpu_attention_group is not None:
        out["cpu_attention_group_gbps"] = (
            {g: p.nbytes / p.seconds / 1e9 for g, p in sorted(m.cpu_attention_groups.items())},
            f"KV bytes/s of that kernel over {next(iter(m.cpu_attention_groups.values())).nbytes} bytes of KV "
            "with G query heads per KV head",
        )
        out["cpu_attention_group"] = (
            float(m.cpu_attention_group),
            "query heads per KV head of the model cpu_attention_gbps was measured with",
        )
    if m.cpu_attention_slots:
        out["cpu_attention_slot_gbps"] = (
            {
                g: {
                    h: {p.nbytes: p.nbytes / p.seconds / 1e9 for p in sorted(points, key=lambda p: p.nbytes)}
                    for h, points in sorted(by_heads.items())
                }
                for g, by_heads in sorted(m.cpu_attention_slots.items())
            },
            "KV bytes/s of that kernel over one CPU slot's cold host block (group, KV heads, bytes)"
            + (
                f", each call after {m.cpu_scan_gap_s * 1e3:g} ms idle, the mean of the fastest 95%"
                if m.cpu_scan_gap_s
                else ", median of calls back to back"
            ),
        )
    out.update(fit_spread(m)[1])
    if m.cpu_gather_gbps is not None:
        out["cpu_gather_gbps"] = (
            m.cpu_gather_gbps,
            "index_select of scattered KV rows, bytes read plus written",
        )
    return out


MOE_LAYER_PAST = 22
"""Past tokens of moe_layer_s's timed decode steps, in their middle (16 prompted, a warm-up, 10 timed)."""


def fit_moe_layer(gpu: GpuSpec, m: Measurements) -> tuple[float, str] | None:
    """runtime.moe_layer_us: the measured MoE decoder layer (moe_layer_s, restated at the layers' host pace from
    the loop gauge timed beside it) less what `gpu` (the profile fitted without it) prices that layer's decode
    step at: its counted dispatch (kernels, calls, expert_call_us per expert hit) and its sync. At least 0: a
    layer cheaper than its price leaves the price as it is. None where calibrate did not time such a layer."""
    spec = m.moe_layer_model
    if m.moe_layer_s is None or spec is None or not spec.moe_layers:
        return None
    refs, _ = host_paces(m) if m.host_pace_us else ({}, {})
    k = 1.0
    if m.moe_layer_pace_us and refs.get("loop"):
        k = pace_ratio(statistics.fmean(m.moe_layer_pace_us), refs["loop"])
    measured = m.moe_layer_s / k
    w = roofline.work(ops.layer_ops(spec, 1, MOE_LAYER_PAST, 1), gpu)
    priced = float(w.dispatch_s(gpu)) + spec.moe_layers / spec.n_layers * gpu.runtime.sync_us.value * 1e-6
    return (
        max(0.0, measured - priced) * 1e6,
        f"one {spec.name.removesuffix('-layer')} decoder layer's decode step through the executor "
        f"({measured * 1e6:.0f} us, restated at the layers' host pace x{1 / k:.2f}) less its price from the "
        f"counted dispatches, expert_call_us and its sync ({priced * 1e6:.0f} us), at least 0",
    )


def _v(value: float | dict, how: str) -> str:
    if isinstance(value, dict):  # a table keyed by a whole number, each entry measured the same way
        return "{ " + ", ".join(f"{k} = {_v(v, how)}" for k, v in value.items()) + " }"
    return f"{{ value = {round(float(value), 6)!r}, measured = {json.dumps(how)} }}"


def _carried(s) -> str | None:
    if isinstance(s, dict):  # a table measured on another machine: not carried into this profile
        return None
    kind, text = s.provenance.split(": ", 1)
    return f"{{ value = {s.value!r}, {kind} = {json.dumps(text)} }}"


def _profile_text(base: GpuSpec, m: Measurements, name: str, host_file: str, fitted: dict) -> str:
    """The GPU profile's TOML: the fitted fields with how each was measured, the base's others carried."""
    lines = [
        f"# Calibrated profile of {json.dumps(str(m.fingerprint.get('gpu_name')))} written by `roofsim calibrate`.",
        "# Measured values say how; datasheet peaks are carried from the base spec with their sources.",
        f"name = {json.dumps(name)}",
        f"full_name = {json.dumps(base.full_name + ' (calibrated)')}",
        f"default_host = {json.dumps(host_file)}",
        "fingerprint = { "
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in m.fingerprint.items() if v is not None)
        + " }",
    ]
    spread = fit_spread(m)[0]
    for section in ("compute", "memory", "link", "efficiency", "runtime"):
        lines.append(f"\n[{section}]")
        if section == "link":
            lines.append(f"name = {json.dumps(base.link.name)}")
        model = getattr(base, section)
        for field in type(model).model_fields:
            if field == "name":
                continue
            if field in fitted.get(section, {}):
                lines.append(f"{field} = {_v(*fitted[section][field])}")
            elif getattr(model, field) is not None and (carried := _carried(getattr(model, field))):
                lines.append(f"{field} = {carried}")
    if base.interconnect is not None:  # a one-GPU machine measures no fabric: the base's, with its sources
        lines.append("\n[interconnect]")
        lines.append(f"name = {json.dumps(base.interconnect.name)}")
        for field in InterconnectSpec.model_fields:
            if field != "name":
                lines.append(f"{field} = {_carried(getattr(base.interconnect, field))}")
    if spread:
        lines.append("\n[spread]")
        lines += [f"{field} = {_v(*spread[field])}" for field in SpreadSpec.model_fields if field in spread]
    return "\n".join(lines) + "\n"


def write_profile(base: GpuSpec, base_host: HostSpec, m: Measurements, out_dir: Path) -> tuple[Path, Path]:
    """Write <gpu>-calibrated.toml and <gpu>-calibrated-host.toml (the GPU file names the host file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{base.name}-calibrated"
    host_file = f"{name}-host.toml"
    fitted = fit(base, m)
    # the MoE layer's residual is what the profile fitted so far prices that layer short of: priced with it
    text = _profile_text(base, m, name, host_file, fitted)
    moe = fit_moe_layer(GpuSpec.model_validate(tomllib.loads(text)), m)
    if moe is not None:
        fitted["runtime"]["moe_layer_us"] = moe
        text = _profile_text(base, m, name, host_file, fitted)
    gpu_path = out_dir / f"{name}.toml"
    gpu_path.write_text(text)
    host_fit = fit_host(m)
    hl = [
        f"# Host of the calibrated profile {name}, measured by `roofsim calibrate`.",
        f"name = {json.dumps(name + '-host')}",
        f"full_name = {json.dumps(str(m.fingerprint.get('cpu') or base_host.full_name))}",
    ]
    hl += [f"{k} = {_v(*v)}" for k, v in host_fit.items()]
    host_path = out_dir / host_file
    host_path.write_text("\n".join(hl) + "\n")
    (out_dir / f"{name}-measurements.json").write_text(m.model_dump_json(indent=1))
    return gpu_path, host_path
