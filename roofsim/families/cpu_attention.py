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

from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Literal

import numpy as np
from pydantic import Field

from roofsim import link, ops
from roofsim.families.pipeline import (
    Ctx,
    Evaluation,
    LayerLoad,
    activation_bytes,
    combine,
    decode_steps,
    dequant_scratch_bytes,
    kv_bytes,
    logits_bytes,
    outside_layers,
    peak_memory,
    prefill_steps,
)
from roofsim.families.registry import Family, register
from roofsim.families.slot_stream import first_unit_fill, slot_loads
from roofsim.geometry import CpuHeads, cpu_heads, divisors
from roofsim.plan import KV_DTYPES, PlanBase
from roofsim.roofline import GpuWork
from roofsim.sim.builder import Builder, Ring, StepSpec, WeightStream, slot_units, streamed_step
from roofsim.space import SearchSpace, chunks, weights_options
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


class CpuAttentionPlan(PlanBase):
    """Decode attention for cpu_kv_heads KV heads per layer runs on the CPU beside the host KV (only q and the
    partial outputs cross the link); the other heads stream (or stay resident) as in head_offload and their
    outputs are merged. Prefill attends every head on the GPU (CPU attention would be compute-bound there)."""

    family: Literal["cpu_attention"] = "cpu_attention"
    cpu_kv_heads: int = Field(1, ge=0)
    kv_heads_per_slot: int = Field(1, gt=0)
    resident_slots: int = Field(0, ge=0)
    prefetch_depth: int = Field(1, ge=0)
    slot_buffers: int = Field(2, ge=1)


def heads_of(plan: CpuAttentionPlan, n_kv_heads: int) -> CpuHeads:
    """The plan's split of a layer's KV heads (checked against the model's)."""
    return cpu_heads(n_kv_heads, plan.cpu_kv_heads, plan.kv_heads_per_slot, plan.resident_slots)


def cpu_scan(ctx: Ctx, H: CpuHeads, tokens):
    """(CPU RAM seconds, bytes it moves) of one layer's CPU attention over `tokens` keys of the CPU heads. In fp8
    the worker first stores the new rows and turns the heads' fp8 KV back into a scratch in the model dtype, then
    attends the scratch at the measured rate. The dequantisation moves its bytes at the host's RAM rate, as
    executor/kvquant.py runs it: a 2-byte scratch takes the bits (a widening copy, which reads the stored bytes and
    writes the scratch's, then shift, mask and scale in place, each reading and writing the scratch); a 4-byte one
    takes torch's cast and the scale multiply (the write, then one read and write)."""
    m, host = ctx.model, ctx.host
    hc = H.cpu_kv_heads
    stored = kv_bytes(ctx, 1, hc) * tokens
    native = (
        stored if ctx.kv_dtype == "bf16" else ctx.work.batch * hc * m.head_dim * 2 * m.dtype_bytes * tokens
    )
    scan_s = host.cpu_attention_s(native, calls=H.cpu_slots, group=m.group, heads=H.cpu_slot_heads)
    if ctx.kv_dtype == "bf16":
        return scan_s, stored
    in_place = DEQUANT_BIT_PASSES if m.dtype_bytes == 2 else 1
    moved = stored + native * (1 + 2 * in_place)
    return scan_s + moved / host.ram_bytes_per_s, moved + native


DEQUANT_BIT_PASSES = 3  # kvquant._e4m3_bits_to_bf16's in-place passes over the scratch: shift, mask, scale


def new_rows_down(ctx: Ctx, hc: int, C):
    """Bytes of the CPU heads' new K/V that go down per layer: as stored in bf16; in the model dtype in fp8 (the
    worker stores them in fp8)."""
    m = ctx.model
    if ctx.kv_dtype == "bf16":
        return kv_bytes(ctx, 1, hc) * C
    return ctx.work.batch * hc * m.head_dim * 2 * m.dtype_bytes * C


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


def evaluate(plan: CpuAttentionPlan, ctx: Ctx) -> Evaluation:
    m, w, gpu, host = ctx.model, ctx.work, ctx.gpu, ctx.host
    hc, g = plan.cpu_kv_heads, plan.kv_heads_per_slot
    H = heads_of(plan, m.n_kv_heads)
    gpu_heads, gpu_slots = H.gpu_heads, H.gpu_slots
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
    cpu_flops = 4.0 * B * hc * m.group * m.head_dim * (dec.P + dec.C)
    # a call per CPU slot, each at its heads' and length's rate
    ram_s, cpu_kv = cpu_scan(ctx, H, dec.P + dec.C)
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
            ll.d2h_bytes = ll.d2h_bytes + q_bytes + new_rows_down(ctx, hc, dec.C)
            ll.d2h_copies = ll.d2h_copies + 1 + H.cpu_slots
            ll.syncs += 1
    fill = first_unit_fill(ctx, dec, g, None, gpu_slots > plan.resident_slots)
    # while the worker scans, the issuing thread dispatches at the host's rate beside it (a calibrated ratio)
    decode = combine(loads, outside_layers(ctx, dec), fill, gpu.beside_cpu_worker() if hc else gpu)

    # prefill: every head on the GPU. The resident heads (resident_slots groups of g) stay resident; every other
    # head streams, the CPU's in slots of gc (the executor's slots: g where it divides them, else one head)
    resident_heads = plan.resident_slots * g
    pg = H.prefill_slot_heads
    pre = prefill_steps(w.context, plan.prefill_chunk)
    gc = H.cpu_slot_heads
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
    # the KV heads of the prefill's largest attention call (its activations: pipeline.activation_bytes)
    prefill_call_heads = max(g, gc) if pg is None else pg

    T = w.max_tokens
    gpu_kv = {
        "kv_resident": m.n_layers * kv_bytes(ctx, T, resident_heads),
        # the ring's slots fit a GPU slot and a CPU one (streamed at prefill), and fp8's dequantisation scratch one
        "kv_buffers": plan.slot_buffers * kv_bytes(ctx, T, H.ring_slot_heads)
        + dequant_scratch_bytes(ctx, T, H.ring_slot_heads),
    }
    host_mem = host_memory(plan, ctx)
    c = int(pre.C.max())
    mem = peak_memory(
        ctx,
        [
            (
                {
                    **gpu_kv,
                    "activations": activation_bytes(ctx, c, call_heads=prefill_call_heads),
                    "logits": logits_bytes(ctx),
                },
                host_mem,
            ),
            ({**gpu_kv, "activations": activation_bytes(ctx, 1), "logits": logits_bytes(ctx)}, host_mem),
        ],
        plan.weights == "streamed",
    )
    notes = [f"{hc} of {m.n_kv_heads} KV heads per layer attended on the CPU at decode"]
    return Evaluation(prefill=prefill, decode=decode, memory=mem, notes=notes)


def program(b: Builder, plan: CpuAttentionPlan, steps: list[StepSpec], base: dict[str, float]) -> None:
    ctx = b.ctx
    m, host, B, e = ctx.model, ctx.host, ctx.work.batch, ctx.model.dtype_bytes
    hc, g = plan.cpu_kv_heads, plan.kv_heads_per_slot
    T = ctx.work.max_tokens
    resident_heads = plan.resident_slots * g
    base["kv_resident"] = m.n_layers * kv_bytes(ctx, T, resident_heads)
    gpu_heads = m.n_kv_heads - hc
    H = heads_of(plan, m.n_kv_heads)
    pg, gc = H.prefill_slot_heads, H.cpu_slot_heads
    # the ring's slots fit a GPU slot and a CPU one (streamed at prefill), and fp8's dequantisation scratch one
    base["kv_buffers"] = plan.slot_buffers * kv_bytes(ctx, T, H.ring_slot_heads) + dequant_scratch_bytes(
        ctx, T, H.ring_slot_heads
    )
    q_bytes = float(B * hc * m.group * m.head_dim * e)
    out_bytes = q_bytes + B * hc * m.group * 4
    for s in steps:
        if s.phase == "prefill":
            if pg is None:  # the executor's own slots: the GPU heads' of g, the CPU heads' of gc
                gpu_units = slot_units(
                    ctx, s.C, s.P, g, [plan.resident_slots] * m.n_layers, "incremental", None, heads=gpu_heads
                )
                cpu_units = slot_units(ctx, s.C, s.P, gc, [0] * m.n_layers, "incremental", None, heads=hc)
                layers = [
                    sorted(a + c, key=lambda u: not u.streamed)
                    for a, c in zip(gpu_units, cpu_units, strict=True)
                ]
            else:
                layers = slot_units(
                    ctx, s.C, s.P, pg, [resident_heads // pg] * m.n_layers, "incremental", None
                )
            last = streamed_step(
                b,
                s.phase,
                s.step,
                s.C,
                s.P,
                layers,
                depth=plan.prefetch_depth,
                buffers=plan.slot_buffers,
                streamed_weights=plan.weights == "streamed",
            )
            b.sync(last, s.phase, s.step)
            continue
        layers = (
            slot_units(
                ctx, s.C, s.P, g, [plan.resident_slots] * m.n_layers, "incremental", None, heads=gpu_heads
            )
            if gpu_heads
            else [[] for _ in range(m.n_layers)]
        )
        ram_s, cpu_kv = cpu_scan(ctx, H, s.P + 1)
        cpu_s = max(ram_s, 4.0 * B * hc * m.group * m.head_dim * (s.P + 1) / (host.cpu_tflops.value * 1e12))

        merge = [ops.Op("merge", "vector", 4.0 * out_bytes / e, 3.0 * out_bytes, 2)] if hc else []
        # while the worker scans, the issuing thread dispatches at the host's rate beside it (a calibrated ratio)
        with b.driven_by(ctx.gpu.beside_cpu_worker() if hc else ctx.gpu):
            _cpu_decode_step(
                b,
                plan,
                s,
                layers,
                hc,
                q_bytes + new_rows_down(ctx, hc, 1),
                cpu_s + ctx.gpu.worker_round_trip_s,  # the worker's wake-up and the issuing thread's
                cpu_kv,
                merge,
            )


def _cpu_decode_step(
    b: Builder, plan, s: StepSpec, layers, hc: int, q_and_new_kv, cpu_s, cpu_kv, merge
) -> None:
    """Per layer, the CPU heads' round trip (q and the new K/V down, CPU attention into pinned memory) runs
    beside the GPU heads' attention; the merge after attention waits for both, and is issued once the issuing
    thread has joined the worker. It reads the output where the CPU wrote it (zero-copy), so it never waits
    behind the prefetch issued meanwhile on the H2D stream (docs/evidence.md#ev-cpu-output-zero-copy)."""
    B = b.ctx.work.batch
    alloc = {"activations": activation_bytes(b.ctx, 1)}
    prev = b.embed(s.phase, s.step, s.C, alloc)
    ring = Ring(max(1, plan.slot_buffers))
    order = [(li, ui) for li, units in enumerate(layers) for ui, u in enumerate(units) if u.streamed]
    ids: dict[tuple[int, int], int] = {}
    issued = 0
    depth = min(plan.prefetch_depth, plan.slot_buffers - 1)

    def issue(upto):
        nonlocal issued
        while issued < min(upto, len(order)):
            li, ui = order[issued]
            ids[(li, ui)] = b.copy("h2d", layers[li][ui].h2d_bytes, s.phase, s.step, li, ui, deps=ring.dep())
            issued += 1

    weights = WeightStream(b, s.phase, s.step, plan.weights == "streamed")
    consumed = 0
    for li, units in enumerate(layers):
        pre = b.pre(s, li, (prev, *weights.dep(li)))
        if li == 0:  # the step's first prefetches go out at layer 0's cache update
            issue(depth)
        deps_post = []
        cpu_op = None
        if hc:
            q = b.copy(
                "d2h",
                q_and_new_kv,
                s.phase,
                s.step,
                li,
                deps=(pre,),
                copies=1 + heads_of(plan, b.ctx.model.n_kv_heads).cpu_slots,
                name="q_and_new_kv",
            )
            cpu_op = b.cpu(cpu_s, s.phase, s.step, li, deps=(q,), nbytes=cpu_kv)
            deps_post.append(cpu_op)
        for ui, u in enumerate(units):
            deps = [pre]
            if u.streamed:
                issue(consumed + 1 + depth if depth else consumed + 1)
                deps.append(ids[(li, ui)])
                b.copy("d2h", u.d2h_bytes, s.phase, s.step, li, ui, copies=B, deps=(pre,))
            a = b.attention(s, li, deps, slot=ui, kv_heads=u.heads, streamed=u.streamed)
            deps_post.append(a)
            if u.streamed:
                ring.releases.append(a)
                consumed += 1
        if cpu_op is not None:  # the issuing thread joins the CPU worker before it goes on (job.result())
            b.sync(b.cpu(0.0, s.phase, s.step, li, kind="sync", deps=(cpu_op,)), s.phase, s.step)
            deps_post.append(cpu_op)  # the merge reads the output from pinned memory
        prev = b.post(s, li, deps_post, extra=merge)
        weights.done(li, prev)
    b.finish(s, prev, alloc)


def host_memory(plan: CpuAttentionPlan, ctx: Ctx) -> dict[str, float]:
    """Every head's KV but the resident slots', the CPU's heads included (they are attended where they live); in
    fp8 also the CPU heads' scratch in the model dtype (one layer's) the worker attends."""
    m = ctx.model
    out = {
        "kv": m.n_layers
        * kv_bytes(ctx, ctx.work.max_tokens, m.n_kv_heads - plan.resident_slots * plan.kv_heads_per_slot)
    }
    if ctx.kv_dtype != "bf16":
        out["kv_cpu_scratch"] = dequant_scratch_bytes(ctx, ctx.work.max_tokens, plan.cpu_kv_heads)
    return out


def candidates(model: ModelSpec, work: Workload, space: SearchSpace) -> Iterator[CpuAttentionPlan]:
    """Every count of CPU heads, every slot size of the heads left on the GPU, none or one resident slot."""
    hkv = model.n_kv_heads
    for weights in weights_options(space):
        for hc in range(1, hkv + 1):
            rest = hkv - hc
            for g in divisors(rest) if rest else [1]:
                for r in sorted({0, 1} & set(range(rest // g + 1))):
                    for c in chunks(work):
                        yield CpuAttentionPlan(
                            cpu_kv_heads=hc,
                            kv_heads_per_slot=g,
                            resident_slots=r,
                            prefill_chunk=c,
                            weights=weights,
                        )


def what_if(plan: CpuAttentionPlan, model: ModelSpec) -> tuple[CpuAttentionPlan, str] | None:
    if plan.cpu_kv_heads >= model.n_kv_heads:
        return None
    return plan.model_copy(
        update={"cpu_kv_heads": plan.cpu_kv_heads + 1}
    ), "Attending one more KV head per layer on the CPU"


FAMILY = register(
    Family(
        plan_type=CpuAttentionPlan,
        candidates=candidates,
        evaluate=evaluate,
        program=program,
        host_memory=host_memory,
        what_if=what_if,
        kv_dtypes=KV_DTYPES,
    )
)
