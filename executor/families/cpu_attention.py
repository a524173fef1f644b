"""cpu_attention: at decode, the last cpu_kv_heads KV heads of each layer are attended by the CPU beside their
host KV; the other heads are slots as in head_offload (resident or streamed). Heads are independent, so the
outputs are concatenated. Per layer at decode:

    compute: q of the CPU heads and their new K/V -> GPU staging;  D2H q -> pinned q, new K/V -> host block[P]
    compute: the GPU heads' slots (their H2D prefetches keep running)
    worker:  (a thread, beside the issuing of the GPU slots) wait for the q copy (one sync), attend on the CPU
             (torch's flash kernel on all threads but one, split over key ranges, in one TorchScript call:
             cpu_decode) over host block[:P+1], write the output to pinned memory
    compute: once the issuing thread has joined the worker, the merge (a concatenation) reads that output straight
             from pinned memory (a device alias of it: zero-copy, a few hundred bytes over the link)

The output does not go up as a copy: on the H2D stream it would queue behind the next layer's prefetch, issued
while the CPU attended, and copies in one direction on another stream share the same copy engine
(docs/evidence.md#ev-cpu-output-zero-copy).

With kv_dtype fp8 the host blocks are fp8 stores (executor/kvquant.py): the new rows go down in the model dtype to
a pinned stage, and the worker stores them in fp8, then dequantises each CPU slot's rows [:P+1] into a CPU scratch
in the model dtype (one layer at a time) and attends there.

Prefill attends every head on the GPU: the CPU heads stream like the others, in slots of kv_heads_per_slot heads
(one head where that does not divide cpu_kv_heads), so the ring stays as small as head_offload's.
"""

from __future__ import annotations

import time

import torch
from roofsim.executor import kvquant
from roofsim.executor.attention import pack_kv
from roofsim.executor.cache import Runtime
from roofsim.executor.cpu_decode import attend_host
from roofsim.executor.cpu_worker import worker, worker_threads
from roofsim.executor.families import register_builder
from roofsim.executor.hostpool import device_alias, pinned_empty
from roofsim.executor.slots import Slot, SlotLayer, attach_host, cut_slots, make_ring, reserve_scratch

from roofsim.geometry import cpu_heads


class CpuAttnLayer(SlotLayer):
    """The GPU heads' slots as in head_offload, then the CPU heads: one or more slots of host KV over the last
    heads of the layer (a contiguous head range), attended by the CPU at decode and streamed like the others at
    prefill."""

    def __init__(self, rt: Runtime, idx: int, slots: list[Slot], cpu_slots: list[Slot]):
        super().__init__(rt, idx, slots + cpu_slots)
        self.cpu_slots = cpu_slots
        self.stage: dict[int, tuple] = {}
        self.out_consumed = None

    @property
    def cpu_heads(self) -> tuple[int, int]:
        return self.cpu_slots[0].h0, self.cpu_slots[-1].h1

    def _buffers(self, C: int):
        """Per-layer staging for C query tokens: q (all CPU heads) and each CPU slot's new K/V on the GPU, q and
        the output in pinned memory, and the output's device alias (the merge reads it there)."""
        if C not in self.stage:
            sh = self.rt.shape
            h0, h1 = self.cpu_heads
            pinned = self.rt.engine.kind == "cuda"
            qshape = (sh.batch, (h1 - h0) * sh.group, C, sh.head_dim)
            kv = [
                torch.empty((C, sh.batch, 2, cs.g, sh.head_dim), dtype=sh.dtype, device=sh.device)
                for cs in self.cpu_slots
            ]
            out_host = pinned_empty(qshape, sh.dtype, pinned)
            # fp8: the new rows go down in the model dtype to a pinned stage, and the worker stores them in fp8
            new_host = [pinned_empty(tuple(t.shape), sh.dtype, pinned) for t in kv] if self.fp8 else None
            self.stage[C] = (
                torch.empty(qshape, dtype=sh.dtype, device=sh.device),
                kv,
                pinned_empty(qshape, sh.dtype, pinned),
                out_host,
                device_alias(out_host, sh.device),
                new_host,
            )
            extra = 2 * out_host.numel() * out_host.element_size()
            extra += sum(t.numel() * t.element_size() for t in new_host or [])
            self.rt.pinned_extra += extra if pinned else 0
        return self.stage[C]

    def _attend(self, module, q, scale):
        if not self.cpu_slots or self.rt.phase != "decode":
            return super()._attend(module, q, scale)
        eng, rec, sh = self.rt.engine, self.rt.rec, self.rt.shape
        P, C, G = self.P, self.C, sh.group
        h0, h1 = self.cpu_heads
        first = self.cpu_slots[0]
        new = pack_kv(self.k_new, self.v_new)
        q_gpu, kv_gpu, q_host, out_host, out_dev, new_host = self._buffers(C)
        q_gpu.copy_(q[:, h0 * G : h1 * G])
        for cs, kv in zip(self.cpu_slots, kv_gpu, strict=True):
            kv.copy_(new[:, :, :, cs.h0 : cs.h1])  # contiguous per slot: each goes down as one copy
        staged = eng.event(eng.compute)
        eng.wait(eng.d2h, staged)
        d0 = rec.mark(eng.d2h)
        eng.copy(eng.d2h, q_host, q_gpu)
        for i, (cs, kv) in enumerate(zip(self.cpu_slots, kv_gpu, strict=True)):
            eng.copy(eng.d2h, new_host[i] if self.fp8 else cs.host[P : P + C], kv)
        q_ready = eng.event(eng.d2h)
        for cs in self.cpu_slots:
            cs.written = q_ready
        rec.span(
            "d2h",
            "d2h",
            d0,
            q_ready,
            layer=self.idx,
            slot=first.index,
            nbytes=q_gpu.numel() * q_gpu.element_size() + C * sh.kv_row_bytes(h1 - h0),
        )
        out_consumed = self.out_consumed

        def cpu_part():
            t0 = time.perf_counter()
            eng.host_wait(q_ready)
            t1 = time.perf_counter()
            rec.host_span("host", "sync", t0, t1, layer=self.idx, name="wait for q")
            if out_consumed is not None:
                eng.host_wait(out_consumed)  # the previous step's merge has read out_host
            blocks = [cs.host for cs in self.cpu_slots]
            if self.fp8:  # store the new rows in fp8, then turn the heads' KV back into the CPU scratch
                blocks = [
                    kvquant.store_rows_and_dequantize(cs.store, P, new_host[i], self.rt.cpu_scratch[i])
                    for i, cs in enumerate(self.cpu_slots)
                ]
            attend_host(q_host, blocks, P + C, scale, out_host)
            t2 = time.perf_counter()
            rec.host_span(
                "cpu",
                "cpu_attention",
                t1,
                t2,
                layer=self.idx,
                slot=first.index,
                nbytes=(P + C) * sh.kv_row_bytes(h1 - h0),
                flops=4.0 * sh.batch * (h1 - h0) * G * C * (P + C) * sh.head_dim,
            )

        # the CPU attends on a worker thread (torch's kernels release the GIL) while this thread issues the GPU
        # heads' slots: the two run side by side, as the plan's cost model has them
        job = worker().submit(cpu_part)
        outs = [self.attend_slot(g, q, new, scale) for g in self.slots if not g.cpu_decode]
        job.result()
        # the worker has written out_host: the merge, issued only now, reads it there
        out = torch.cat([*outs, out_dev], dim=1)
        self.out_consumed = eng.event(eng.compute)
        return out


@register_builder("cpu_attention")
def build(rt: Runtime, plan, model, **_):
    sh = rt.shape
    heads = cpu_heads(sh.n_kv_heads, plan.cpu_kv_heads, plan.kv_heads_per_slot, plan.resident_slots)
    gpu_heads, gc = heads.gpu_heads, heads.cpu_slot_heads
    layers_slots, cpu_slots = [], []
    for _ in range(sh.n_layers):
        slots = cut_slots(gpu_heads, plan.kv_heads_per_slot, plan.resident_slots) if gpu_heads else []
        cpu = [
            Slot(
                len(slots) + i, gpu_heads + i * gc, gpu_heads + (i + 1) * gc, resident=False, cpu_decode=True
            )
            for i in range(heads.cpu_slots)
        ]
        layers_slots.append(slots + cpu)
        cpu_slots.append(cpu)
    attach_host(rt, layers_slots)
    make_ring(rt, plan.slot_buffers, rt.capacity, heads.ring_slot_heads, plan.prefetch_depth)
    reserve_scratch(rt, heads.ring_slot_heads)
    if rt.fp8:  # the CPU heads' KV in the model dtype, one layer at a time: the worker attends it there
        lay = kvquant.layout_of(sh, gc)
        rt.cpu_scratch = [
            torch.empty(kvquant.scratch_numel(lay, rt.capacity), dtype=sh.dtype)
            for _ in range(heads.cpu_slots)
        ]
        for cpu in cpu_slots:
            for cs in cpu:
                cs.store = kvquant.Store(lay, cs.host)
    rt.notes.append(
        f"cpu_attention: {plan.cpu_kv_heads} of {sh.n_kv_heads} KV heads per layer attended on the CPU at decode "
        f"with {worker_threads()} threads, in slots of {gc}"
    )
    return [
        CpuAttnLayer(rt, i, [s for s in layers_slots[i] if not s.cpu_decode], cpu_slots[i])
        for i in range(sh.n_layers)
    ]
