"""CPU attention beside the host KV: at decode, cpu_kv_heads KV heads per layer are attended by the CPU where
their KV lives; only q (D2H) and the partial outputs with their log-sum-exp (H2D) cross the link. The other
heads stream in slots (or stay resident) as in head_offload, and the two partial outputs are merged.

This splits one decode step across the three bandwidth pools, HBM, PCIe and CPU RAM, which no published system
does. Per layer, CPU time = max(KV bytes / cpu_attention rate, FLOPs / CPU FLOP/s), on the critical path in
parallel with the GPU's own attention; the q/out round trip adds a small copy's latency (q down) and one host
sync. The output is not copied up: the merge reads it from pinned memory (zero-copy, a few hundred bytes), so it
never queues behind the H2D stream's prefetches.
Prefill attends every head on the GPU (CPU attention over a chunk of queries would be compute-bound).
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from roofsim import link
from roofsim.families.base import (
    Ctx,
    Evaluation,
    LayerLoad,
    activation_bytes,
    check_divides,
    combine,
    decode_steps,
    kv_bytes,
    logits_bytes,
    outside_layers,
    peak_memory,
    prefill_steps,
)
from roofsim.families.streaming import first_unit_fill, slot_loads
from roofsim.plan import CpuAttentionPlan
from roofsim.roofline import GpuWork


def check_heads(plan: CpuAttentionPlan, n_kv_heads: int) -> tuple[int, int]:
    """The KV heads left on the GPU and the slots they make, once the plan's head counts are checked against the
    model's (a user error, in one line, where they do not fit): shared by this model and the executor."""
    from roofsim.errors import UserError

    hc, g = plan.cpu_kv_heads, plan.kv_heads_per_slot
    if hc > n_kv_heads:
        raise UserError(f"cpu_kv_heads={hc} exceeds the model's {n_kv_heads} KV heads")
    gpu_heads = n_kv_heads - hc
    if gpu_heads:
        check_divides(gpu_heads, g, "kv_heads_per_slot (of the heads left on the GPU)")
    gpu_slots = gpu_heads // g if gpu_heads else 0
    if plan.resident_slots > gpu_slots:
        raise UserError(f"resident_slots={plan.resident_slots} exceeds the {gpu_slots} GPU slots per layer")
    return gpu_heads, gpu_slots


def cpu_slot_heads(cpu_kv_heads: int, kv_heads_per_slot: int) -> int:
    """Heads per slot of the CPU's heads (their host blocks, and how they stream at prefill): the plan's slot
    size where it divides them, else one."""
    g = kv_heads_per_slot
    return g if 0 < g <= cpu_kv_heads and cpu_kv_heads % g == 0 else 1


def cpu_slot_count(cpu_kv_heads: int, kv_heads_per_slot: int) -> int:
    """CPU slots per layer: the executor attends (and copies back) each one apart."""
    return cpu_kv_heads // cpu_slot_heads(cpu_kv_heads, kv_heads_per_slot) if cpu_kv_heads else 0


def ring_slot_heads(n_kv_heads: int, cpu_kv_heads: int, kv_heads_per_slot: int) -> int:
    """Heads one ring buffer holds: a GPU slot's, or a CPU slot's (those stream too, at prefill)."""
    gpu = kv_heads_per_slot if n_kv_heads > cpu_kv_heads else 0
    cpu = cpu_slot_heads(cpu_kv_heads, kv_heads_per_slot) if cpu_kv_heads else 0
    return max(gpu, cpu, 1)


def prefill_slot_heads(cpu_kv_heads: int, kv_heads_per_slot: int, n_kv_heads: int) -> int | None:
    """The one slot size every head streams in at prefill: the plan's where the CPU heads' slots have it (or there
    are no CPU heads), the CPU heads' where every head is theirs; None where the executor streams the GPU heads in
    the plan's slots and the CPU heads in slots of cpu_slot_heads (two sizes)."""
    g = kv_heads_per_slot
    gc = cpu_slot_heads(cpu_kv_heads, g) if cpu_kv_heads else g
    if gc == g:
        return g
    return gc if cpu_kv_heads == n_kv_heads else None


def _with_cpu_slots(gpu: LayerLoad, cpu: LayerLoad) -> LayerLoad:
    """A prefill layer's load of the GPU heads' slots plus the CPU heads' streamed slots (its attention calls,
    copies and units; the layer's other work once)."""
    attn = GpuWork(**{f.name: getattr(gpu.attn, f.name) + getattr(cpu.attn, f.name) for f in fields(GpuWork)})
    return replace(
        gpu,
        attn=attn,
        h2d_bytes=gpu.h2d_bytes + cpu.h2d_bytes,
        h2d_copies=gpu.h2d_copies + cpu.h2d_copies,
        d2h_bytes=gpu.d2h_bytes + cpu.d2h_bytes,
        d2h_copies=gpu.d2h_copies + cpu.d2h_copies,
        units=gpu.units + cpu.units,
        syncs=gpu.syncs + cpu.syncs,
    )


def evaluate_cpu_attention(plan: CpuAttentionPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu, host = ctx.model, ctx.work, ctx.gpu, ctx.host
    hc, g = plan.cpu_kv_heads, plan.kv_heads_per_slot
    gpu_heads, gpu_slots = check_heads(plan, m.n_kv_heads)
    common = dict(
        depth=plan.prefetch_depth,
        buffers=plan.slot_buffers,
        write_back="incremental",
        token_block=None,
        syncs_per_slot=0,
        streamed_weights=plan.weights == "streamed",
    )
    no_weights = {**common, "streamed_weights": False}  # the CPU heads' slots at prefill: the layer's once

    dec = decode_steps([w.context, w.context + w.gen])
    loads = (
        slot_loads(
            ctx, dec, group=g, resident=[plan.resident_slots] * m.n_layers, gpu_kv_heads=gpu_heads, **common
        )
        if gpu_heads
        else slot_loads(ctx, dec, group=m.n_kv_heads, resident=[0] * m.n_layers, gpu_kv_heads=0, **common)
    )
    B, e = w.batch, m.dtype_bytes
    cpu_kv = kv_bytes(ctx, 1, hc) * (dec.P + dec.C)
    cpu_flops = 4.0 * B * hc * m.group * m.head_dim * (dec.P + dec.C)
    # a call per CPU slot, each at its heads' and length's rate
    ram_s = host.cpu_attention_s(
        cpu_kv, calls=cpu_slot_count(hc, g), group=m.group, heads=cpu_slot_heads(hc, g)
    )
    compute_s = cpu_flops / (host.cpu_tflops.value * 1e12)
    q_bytes = float(B * hc * m.group * m.head_dim * e)
    round_trip = (
        link.isolated_copy_s(q_bytes, gpu, "d2h")
        + gpu.runtime.sync_us.value * 1e-6
        + gpu.worker_round_trip_s  # the worker's wake-up and the issuing thread's, on the CPU part's path
    )
    if hc:
        for ll in loads:
            ll.cpu_path_s = np.maximum(ram_s, compute_s) + round_trip
            ll.cpu_ram_s = ram_s
            ll.cpu_compute_s = compute_s
            ll.cpu_bytes = cpu_kv
            ll.d2h_bytes = ll.d2h_bytes + q_bytes + kv_bytes(ctx, 1, hc) * dec.C
            ll.d2h_copies = ll.d2h_copies + 1 + cpu_slot_count(hc, g)
            ll.syncs += 1
    fill = first_unit_fill(ctx, dec, g, None, gpu_slots > plan.resident_slots)
    # while the worker scans, the issuing thread dispatches at the host's rate beside it (a calibrated ratio)
    decode = combine(loads, outside_layers(ctx, dec), fill, gpu.beside_cpu_worker() if hc else gpu)

    # prefill: every head on the GPU. The resident heads (resident_slots groups of g) stay resident; every other
    # head streams, the CPU's in slots of gc (the executor's slots: g where it divides them, else one head)
    resident_heads = plan.resident_slots * g
    pg = prefill_slot_heads(hc, g, m.n_kv_heads)
    pre = prefill_steps(w.context, plan.prefill_chunk)
    gc = cpu_slot_heads(hc, g)
    fill_heads = 1
    if pg is None:
        # the executor's own slots: the GPU heads' of g (resident_slots of them resident), the CPU heads' of gc
        pre_loads = [
            _with_cpu_slots(
                ll, slot_loads(ctx, pre, group=gc, resident=[0], gpu_kv_heads=hc, **no_weights)[0]
            )
            for ll in slot_loads(
                ctx,
                pre,
                group=g,
                resident=[plan.resident_slots] * m.n_layers,
                gpu_kv_heads=gpu_heads,
                **common,
            )
        ]
        fill_heads = g if gpu_slots > plan.resident_slots else gc  # the first streamed slot, as the executor
    else:
        pre_loads = slot_loads(ctx, pre, group=pg, resident=[resident_heads // pg] * m.n_layers, **common)
    prefill = combine(
        pre_loads, outside_layers(ctx, pre), first_unit_fill(ctx, pre, fill_heads, None, True), gpu
    )

    T = w.max_tokens
    gpu_kv = {
        "kv_resident": m.n_layers * kv_bytes(ctx, T, resident_heads),
        # the ring's slots fit a GPU slot and a CPU one (streamed at prefill)
        "kv_buffers": plan.slot_buffers * kv_bytes(ctx, T, ring_slot_heads(m.n_kv_heads, hc, g)),
    }
    host_mem = {"kv": m.n_layers * kv_bytes(ctx, T, m.n_kv_heads - resident_heads)}
    c = int(pre.C.max())
    mem = peak_memory(
        ctx,
        [
            ({**gpu_kv, "activations": activation_bytes(ctx, c), "logits": logits_bytes(ctx)}, host_mem),
            ({**gpu_kv, "activations": activation_bytes(ctx, 1), "logits": logits_bytes(ctx)}, host_mem),
        ],
        plan.weights == "streamed",
    )
    notes = [f"{hc} of {m.n_kv_heads} KV heads per layer attended on the CPU at decode"]
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)
