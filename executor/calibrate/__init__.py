"""`roofsim calibrate`: micro-benchmarks on the GPU machine (a few minutes), never a whole model or plan.

measure() runs them in a fixed order and returns roofsim.calibration.Measurements, which that module fits and
writes. What each measures lives by what it measures:
- link.py: pinned and pageable copies by size, back-to-back copies, both directions at once, device-to-device,
  the copy of a just-gathered pinned stage;
- kernels.py: one decoder layer's GEMMs and elementwise kernels, GPU time per tiny kernel, top-k;
- attention.py: the executor's attention calls (GPU time by shape, host cost per call);
- host.py: host-side costs (sync, a decoder layer's issue in a decode step, the CPU worker's round trip) and the
  host-pace gauges beside them;
- cpu.py: CPU decode attention scans, the sparse gather, host memcpy, CPU matmul;
- hostkv.py: the host KV blocks that cpu.py, link.py and host.py read (no timing of its own).
The timers and the fingerprint are roofsim.executor.timing's, shared with the executor and the validation tools.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from roofsim.executor.calibrate import attention, cpu, host, kernels, link
from roofsim.executor.timing import fingerprint

from roofsim.calibration import CopyPoint, Measurements
from roofsim.specs import load_model
from roofsim.specs.model import ModelSpec

MOE_DIAGNOSTIC = "qwen3-30b-a3b"
"""The MoE model whose decoder layer measure() times through the executor (Measurements.moe_layer_s)."""

KiB, MiB = 1024, 1024**2


@dataclass(frozen=True)
class CpuSide:
    """The CPU block of measure(), in Measurements' units (each field is the Measurements field of that name)."""

    cpu_copy_gbps: float
    cpu_attention: list[CopyPoint]
    cpu_attention_beside_h2d: list[CopyPoint]
    h2d_beside_cpu_gbps: float | None
    cpu_attention_groups: dict[int, CopyPoint]
    cpu_attention_slots: dict[int, dict[int, list[CopyPoint]]]
    cpu_gather_gbps: float
    cpu_gather_by_region_gbps: dict[int, float] | None
    h2d_after_gather_gbps: float
    h2d_stage_again_gbps: float
    cpu_matmul_tflops: float


def cpu_side(model: ModelSpec) -> CpuSide:
    """The CPU-side timings, in this order: host memcpy; CPU decode attention at three sizes (one KV head, half
    the model's, all of them at 128K), then half the model's beside streamed H2D copies; by GQA group; by CPU slot;
    the sparse gather; the copy of a just-gathered stage (link.py: it shares the gather's shapes); the CPU matmul."""
    copy_gbps = cpu.memcpy_gbps()
    points = [
        cpu.cpu_attention_point(model, heads, L)[0]
        for heads, L in ((1, 65536), (model.n_kv_heads // 2 or 1, 65536), (model.n_kv_heads, 131072))
    ]
    beside, h2d_rate = cpu.cpu_attention_point(model, model.n_kv_heads // 2 or 1, 65536, beside_h2d=True)
    groups = cpu.cpu_attention_groups(model)
    slots = cpu.cpu_attention_slots(model)
    gather = cpu.cpu_gather_gbps(model)
    by_region = _recorded("gather by region size", lambda: cpu.cpu_gather_by_region_gbps(model))
    after, again = link.h2d_after_gather(model)
    return CpuSide(
        cpu_copy_gbps=copy_gbps,
        cpu_attention=points,
        cpu_attention_beside_h2d=[beside],
        h2d_beside_cpu_gbps=h2d_rate,
        cpu_attention_groups=groups,
        cpu_attention_slots=slots,
        cpu_gather_gbps=gather,
        cpu_gather_by_region_gbps=by_region,
        h2d_after_gather_gbps=after / 1e9,
        h2d_stage_again_gbps=again / 1e9,
        cpu_matmul_tflops=cpu.matmul_tflops(),
    )


def _recorded(what: str, fn: Callable[[], object]):
    """fn()'s result, or None (said on stderr) where it raises: a timing added to the calibration must not cost the
    rest of it; without it the profile is fitted as before that timing existed (its fields fall back)."""
    import sys

    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (any failure of a recorded-only timer)
        print(f"calibrate: {what} not recorded ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def measure(model: ModelSpec, progress: Callable[[str], None] = lambda step: None) -> Measurements:
    """Every micro-benchmark at `model`'s shapes, in a fixed order (the same machine gives the same Measurements),
    calling progress(step) as each group starts.

    The host-side costs are timed in three samples of the tiny decode layers (at the start, the middle and the
    end: the host's speed moves in spells) and one of the attention calls, each with the host-pace gauges sampled
    beside every step (host.time_gauges); Measurements.pace_beside labels each gauge sample with the timing it sat
    beside ('layer<i>', 'calls'), and roofsim.calibration.host_paces restates each cost at the layers' pace by
    those labels. Moving a timing between the gauge-sampled ones changes which spell of the host it meets."""
    if not torch.cuda.is_available():
        from roofsim.errors import UserError

        raise UserError("roofsim calibrate needs a CUDA GPU; run it on the GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    pace: list[float] = []  # the host's pace beside every tiny timing behind the host-side costs
    launch: list[float] = []  # and the launch pace right after each
    step_pace: list[float] = []  # and the tiny decode step after that
    beside: list[str] = []  # what each was timed beside (Measurements.pace_beside)

    def label(name: str) -> None:
        beside.extend([name] * (len(pace) - len(beside)))

    def tiny_layer() -> tuple[float, ModelSpec, float]:
        return host.decode_layer_cost("cuda", pace=pace, width=model, launch=launch, step_pace=step_pace)

    tiny = [tiny_layer()]
    label("layer0")
    sizes = [64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1024 * MiB]
    progress("pinned copies")
    h2d, d2h = link.copies("h2d", sizes), link.copies("d2h", sizes)
    progress("pageable and batched copies")
    pageable = link.copies("h2d", [64 * MiB, 256 * MiB], pinned=False)
    batches = [link.back_to_back(64 * MiB, c) for c in (16, 256, 1024)]
    allocated = [link.back_to_back(64 * MiB, c, allocated=True) for c in (16, 256)]
    bidir = link.bidirectional_gbps()
    progress("HBM copy")
    d2d = link.d2d_gbps()
    progress("GEMMs and attention")
    gemm = kernels.gemms(model)
    prefill, short, decode = attention.attention_points(model)
    head_dims = attention.head_dim_points(model) if not model.is_mla else None
    vector = kernels.vector_ops(model)
    fp8 = kernels.fp8_passes(model) if not model.kv_latent else None
    fp8_write = (
        _recorded("fp8 chunk writes", lambda: kernels.fp8_writes(model)) if not model.kv_latent else None
    )
    progress("fixed costs")
    tiny.append(tiny_layer())
    label("layer1")
    sync = host.sync_us()
    gpu_kernel = kernels.gpu_kernel_us()
    # the GEMVs give efficiency.gemv and gemv_us; the graph's kernels and the replayed decode kernel are recorded
    # beside the profile, not yet fitted into it
    decode_gemv = _recorded("decode GEMVs", lambda: kernels.decode_gemv_points(model))
    graph_kernel = _recorded("graph kernels", kernels.graph_kernel_us)
    decode_replay = _recorded("replayed decode attention", lambda: attention.decode_replay_points(model))
    topk = kernels.topk_points()
    call_s, streamed_s, fp8_call = attention.attention_call_costs(
        "cuda", pace=pace, launch=launch, step_pace=step_pace
    )
    # the same three costs at the model's layer shapes and KV heads, recorded beside the tiny ones (no gauges)
    calls_at_width = _recorded(
        "attention calls at the model's width", lambda: attention.attention_calls_at_width(model)
    )
    # any model: a tiny layer of its own; restated at the calls' pace
    expert_call, expert_fetch = kernels.expert_costs_s()
    label("calls")
    new_shape = attention.attention_new_shape_s(model)
    prefill_call = attention.prefill_call_extra_s(model)
    # a MoE decoder layer at a real MoE model's width, with the host's pace beside it (runtime.moe_layer_us)
    moe_pace: list[float] = []
    moe_layer, moe_model, _ = host.decode_layer_cost(
        "cuda", steps=10, pace=moe_pace, width=load_model(MOE_DIAGNOSTIC)
    )
    progress("CPU")
    tiny_beside_cpu = host.decode_layer_cost_beside_cpu(model, "cuda")
    tiny_beside_link = _recorded("layers beside the link", lambda: host.decode_layer_cost_beside_link(model))
    round_trip = host.worker_round_trip_s()
    # last of the GPU timings, so that its seconds of full load heat nothing the profile is fitted from
    gemm_held = _recorded("GEMMs held for seconds", lambda: kernels.gemms_held(model))
    tiny.append(tiny_layer())
    label("layer2")
    tiny_s, tiny_model, tiny_step = host.mean_tiny(tiny)
    side = cpu_side(model)
    return Measurements(
        fingerprint=fingerprint("cuda").model_dump(exclude_none=True),
        total_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
        h2d=h2d,
        d2h=d2h,
        pageable_h2d=pageable,
        back_to_back_h2d=batches,
        back_to_back_h2d_allocated=allocated,
        bidirectional_total_gbps=bidir,
        d2d_copy_gbps=d2d,
        gemm=gemm,
        gemm_held=gemm_held,
        attention_prefill=prefill,
        attention_prefill_short=short,
        attention_decode=decode,
        attention_head_dims=head_dims,
        attention_head_dim_at=None if model.is_mla else model.head_dim,
        sync_us=sync,
        tiny_layer_s=tiny_s,
        tiny_layer_model=tiny_model,
        tiny_layer_samples_s=[t[0] for t in tiny],
        tiny_step_s=tiny_step,
        tiny_layer_beside_cpu_s=tiny_beside_cpu,
        tiny_layer_beside_link_s=tiny_beside_link,
        attention_calls_at_width_s=calls_at_width,
        worker_round_trip_s=round_trip,
        vector_ops=vector,
        cpu_copy_gbps=side.cpu_copy_gbps,
        cpu_attention=side.cpu_attention,
        cpu_matmul_tflops=side.cpu_matmul_tflops,
        cpu_gather_gbps=side.cpu_gather_gbps,
        cpu_gather_by_region_gbps=side.cpu_gather_by_region_gbps,
        h2d_after_gather_gbps=side.h2d_after_gather_gbps,
        h2d_stage_again_gbps=side.h2d_stage_again_gbps,
        cpu_attention_beside_h2d=side.cpu_attention_beside_h2d,
        h2d_beside_cpu_gbps=side.h2d_beside_cpu_gbps,
        cpu_attention_groups=side.cpu_attention_groups,
        cpu_attention_group=model.group,
        cpu_attention_slots=side.cpu_attention_slots,
        gpu_kernel_us=gpu_kernel,
        decode_gemv=decode_gemv,
        graph_kernel_us=graph_kernel,
        attention_decode_replay=decode_replay,
        topk=topk,
        attention_call_s=call_s,
        streamed_call_s=streamed_s,
        fp8_call_s=fp8_call,
        expert_call_s=expert_call,
        expert_fetch_s=expert_fetch,
        moe_layer_s=moe_layer,
        moe_layer_model=moe_model,
        moe_layer_pace_us=moe_pace,
        fp8_passes=fp8,
        fp8_writes=fp8_write,
        host_pace_us=pace,
        launch_pace_us=launch,
        step_pace_us=step_pace,
        pace_beside=beside,
        attention_new_shape_s=new_shape,
        prefill_call_s=prefill_call,
        cpu_scan_gap_s=cpu.SCAN_GAP_S,
        cpu_threads=torch.get_num_threads(),
        host_ram_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
    )
