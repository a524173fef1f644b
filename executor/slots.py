"""Slot plans: resident, layer_offload, head_offload (and the GPU side of cpu_attention).

A layer's KV heads are cut into slots of g heads. A resident slot keeps `[T, B, 2, g, D]` in GPU memory; a
streamed slot lives in its pinned host block and comes up through the ring each forward:

    H2D   host[:P]       -> ring buffer[:P]           (h2d stream, prefetched `depth` units ahead)
    write new K/V        -> ring buffer[P:P+C]        (compute, after the unit's ready event)
    attention over ring buffer[:P+C]                  (compute; heads are independent, so no merge)
    D2H   buffer[P:P+C]  -> host[P:P+C]               (d2h stream after the attention; incremental)
          buffer[:P+C]   -> host[:P+C]                (write_back="full"; on the compute stream ahead of the
                                                       attention for transformers' layer_offload)
    release event of the buffer = the D2H's end (or the attention's end)

With token_block the slot streams in blocks of that many tokens, each attended on its own and merged with the
new tokens' part by LSE; the new tokens go down from a staging copy kept alive for the D2H by record_stream.

With write_back_tokens = N > 1 (incremental, whole slots) the layer keeps its unsent tokens in a GPU tail
`[N, B, 2, heads, D]` instead of sending each step's token down at once: a streamed slot loads host[:F] (F = the
rows already sent), the tail's rows F..P and the new ones go into the ring buffer after it, and once N tokens are
pending the slot sends buffer[F:P+C] down in one copy. Decode then issues one D2H (and its events) per slot every
N steps instead of every step; the tail is written and read on the compute stream only.

With kv_dtype fp8 (roofsim.kvformat, executor/kvquant.py) every store (a resident slot, a ring buffer, a pinned
host block) is an fp8 store, block-major with its scales. Each attention call writes its new rows into the slot's
store (the resident slot, or the unit's ring buffer after its H2D), dequantises rows [:P+C] into the runtime's
scratch in the model dtype and attends there; the write-back sends the scale blocks the new rows touched (one copy).
fp8 slots are streamed whole (no token blocks, no GPU tail: the plan's validator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch
from roofsim.executor import kvquant
from roofsim.executor.attention import (
    attend,
    attend_parts,
    chunk_parts,
    decode_attend,
    kv_views,
    merge,
    pack_kv,
)
from roofsim.executor.cache import PlanLayer, Ring, Runtime, Unit
from roofsim.executor.hostpool import HostPool


@dataclass
class Slot:
    index: int
    h0: int
    h1: int
    resident: bool
    cpu_decode: bool = False
    gpu: torch.Tensor | None = None
    host: torch.Tensor | None = None
    written: object = None  # event after the last D2H into `host`
    store: object = None  # fp8: the typed views of `gpu` (kvquant.Store)

    @property
    def g(self) -> int:
        return self.h1 - self.h0


class SlotLayer(PlanLayer):
    def __init__(
        self,
        rt: Runtime,
        idx: int,
        slots: list[Slot],
        *,
        write_back: str = "incremental",
        d2h_on_compute: bool = False,
        syncs: int = 0,
        token_block: int | None = None,
        write_back_tokens: int = 1,
    ):
        super().__init__(rt, idx)
        self.slots = slots
        self.write_back = write_back
        self.d2h_on_compute = d2h_on_compute
        self.syncs = syncs
        self.token_block = token_block
        self.grows = all(s.resident for s in slots)
        self.tail_tokens = write_back_tokens if write_back == "incremental" and not token_block else 1
        self.tail: torch.Tensor | None = (
            None  # [N, B, 2, n_kv_heads, D]: rows flushed.. of the streamed slots
        )
        self.flushed = 0  # tokens of the streamed slots already in their host blocks (with a tail)
        self.flush_now = True
        self.via_tail = False
        self.fp8 = rt.fp8
        # each slot's log-sum-exp of the attention being computed, [B, Hq, C], kept only for a model with sinks
        self.lse: dict[int, torch.Tensor] = {}
        self.keep_lse = False

    def host_rows(self, P: int) -> int:
        """Tokens of a streamed slot its host block holds at a forward after P: all P without a tail (subclasses
        that never write one, cpu_attention's, leave `flushed` alone)."""
        return self.flushed if self.tail_tokens > 1 else P

    def gpu_bytes(self) -> dict[str, int]:
        n = sum(s.gpu.numel() * s.gpu.element_size() for s in self.slots if s.gpu is not None)
        out = {"kv_resident": n}
        if self.tail is not None:
            out["kv_buffers"] = self.tail.numel() * self.tail.element_size()
        return out

    def graph_ready(self) -> bool:
        cap = self.rt.capacity
        if type(self)._attend is not SlotLayer._attend or cap is None:
            return False
        if self.fp8:  # an fp8 store holding the capacity's blocks
            return all(
                s.resident and s.store is not None and s.store.rows.shape[0] * kvquant.BLK >= cap
                for s in self.slots
            )
        return all(s.resident and s.gpu is not None and s.gpu.shape[0] == cap for s in self.slots)

    def graph_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._whole_kv(self.slots[0])

    def _whole_kv(self, s: Slot) -> tuple[torch.Tensor, torch.Tensor]:
        """A resident slot's K and V [B, g, capacity, D] in the model dtype, as a replayed decode attends them:
        views of its buffer, or of an fp8 store's rows dequantised whole."""
        buf = self._dequantized(s) if self.fp8 else s.gpu
        return kv_views(buf, 0, buf.shape[0])

    def _dequantized(self, s: Slot) -> torch.Tensor:
        """An fp8 resident slot's whole store (the capacity's rows) in the model dtype, in the scratch."""
        cap, lay = self.rt.capacity, s.store.lay
        return kvquant.dequantize(lay, s.store, cap, self.rt.kv_scratch(kvquant.scratch_numel(lay, cap)))

    # ---- streamed units ----------------------------------------------------------------------------------------

    def streams_now(self, s: Slot) -> bool:
        return not s.resident and not (s.cpu_decode and self.rt.phase == "decode")

    def units(self, P: int, C: int) -> list[Unit]:
        out = []
        for s in self.slots:
            if not self.streams_now(s):
                continue
            if self.token_block:
                for b, t0 in enumerate(range(0, P, self.token_block)):
                    t1 = min(P, t0 + self.token_block)
                    out.append(
                        Unit(
                            (self.idx, s.index, b),
                            self.idx,
                            s.index,
                            partial(self._load, s, t0, t1),
                            [s.written],
                        )
                    )
            else:
                F = self.host_rows(P)
                out.append(
                    Unit((self.idx, s.index), self.idx, s.index, partial(self._load, s, 0, F), [s.written])
                )
        return out

    def ring_view(self, flat: torch.Tensor, s: Slot) -> torch.Tensor:
        sh = self.rt.shape
        if self.fp8:  # the store's bytes
            return flat[: kvquant.layout_of(sh, s.g).nbytes(self.rt.capacity)]
        T = self.token_block or self.rt.capacity
        return flat[: T * sh.batch * 2 * s.g * sh.head_dim].view(T, sh.batch, 2, s.g, sh.head_dim)

    def _load(self, s: Slot, t0: int, t1: int, flat: torch.Tensor):
        if t1 <= t0:
            return []
        view = self.ring_view(flat, s)
        if self.fp8:  # whole slots: the blocks of tokens [0, t1)
            n = kvquant.layout_of(self.rt.shape, s.g).nbytes(t1)
            return [(view[:n], s.host[:n])]
        return [(view[: t1 - t0], s.host[t0:t1])]

    # ---- attention ---------------------------------------------------------------------------------------------

    def _attend(self, module, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Streamed slots first, resident ones after: the next layer's first prefetch (issued when this layer's
        last streamed slot is acquired) then copies while the resident slots are attended, instead of the copy
        engine idling through them. The outputs go back in head order."""
        new = pack_kv(self.k_new, self.v_new)
        P, C = self.P, self.C
        pending = P - self.flushed
        self.flush_now = pending + C >= self.tail_tokens
        # the new tokens go through the tail whenever they fit (every decode step), so a slot's ring buffer is
        # filled by one copy of tail[:pending + C]
        self.via_tail = self.tail_tokens > 1 and pending + C <= self.tail_tokens
        if self.via_tail and any(self.streams_now(s) for s in self.slots):
            if self.tail is None:
                sh = self.rt.shape
                shape = (self.tail_tokens, sh.batch, 2, sh.n_kv_heads, sh.head_dim)
                self.tail = torch.empty(shape, dtype=sh.dtype, device=sh.device)
            self.tail[pending : pending + C].copy_(new)
        order = sorted(self.slots, key=lambda s: s.resident)
        sinks = getattr(module, "sinks", None)
        self.keep_lse = sinks is not None
        outs = {s.index: self.attend_slot(s, q, new, scale) for s in order}
        if self.flush_now:
            self.flushed = P + C
        if sinks is not None:  # gpt-oss: each head's softmax has one more logit, its sink, and no value
            G = self.rt.shape.group
            for s in self.slots:
                outs[s.index] = with_sinks(outs[s.index], self.lse[s.index], sinks[s.h0 * G : s.h1 * G])
        self.lse = {}
        heads = [outs[s.index] for s in self.slots]
        return torch.cat(heads, dim=1) if len(heads) > 1 else heads[0]

    def keep(self, s: Slot, lse: torch.Tensor) -> None:
        if self.keep_lse:
            self.lse[s.index] = lse

    def slot_q(self, q: torch.Tensor, s: Slot) -> torch.Tensor:
        G = self.rt.shape.group
        return q[:, s.h0 * G : s.h1 * G]

    def attend_slot(self, s: Slot, q: torch.Tensor, new: torch.Tensor, scale: float) -> torch.Tensor:
        qs = self.slot_q(q, s)
        if self.fp8:
            return (
                self._attend_resident_fp8(s, qs, new, scale)
                if s.resident
                else self._attend_streamed_fp8(s, qs, new, scale)
            )
        if s.resident:
            return self._attend_resident(s, qs, new, scale)
        if self.token_block:
            return self._attend_blocks(s, qs, new, scale)
        return self._attend_streamed(s, qs, new, scale)

    def _grow(self, s: Slot, need: int) -> None:
        sh = self.rt.shape
        if self.rt.capacity is not None and need <= self.rt.capacity:
            cap = self.rt.capacity
        else:
            cap = max(need, int(1.5 * (0 if s.gpu is None else s.gpu.shape[0])) + 256)
        # zeros, not empty: the replayed decode's masked attention (attention._decode_masked) multiplies every row of
        # V past the key count by a probability of 0, and 0 x a NaN left in uninitialized memory is NaN
        buf = torch.zeros(cap, sh.batch, 2, s.g, sh.head_dim, dtype=sh.dtype, device=sh.device)
        if s.gpu is not None:
            buf[: self.P].copy_(s.gpu[: self.P])
        s.gpu = buf

    def _attend_resident(self, s: Slot, qs, new, scale):
        P, C = self.P, self.C
        graph = self.rt.graph
        if graph is not None:  # captured: the position and the key count are device tensors
            s.gpu.index_copy_(0, graph.pos.view(1), new[:, :, :, s.h0 : s.h1])
            return decode_attend(qs, *self._whole_kv(s), graph.n_keys, scale)
        if s.gpu is None or s.gpu.shape[0] < P + C:
            self._grow(s, P + C)
        s.gpu[P : P + C].copy_(new[:, :, :, s.h0 : s.h1])
        rec, eng = self.rt.rec, self.rt.engine
        a0 = rec.mark(eng.compute)
        K, V = kv_views(s.gpu, 0, P + C)
        out, lse = attend_parts(qs, chunk_parts(K, V, P, C), scale)
        self.keep(s, lse)
        self.attn_span(a0, rec.mark(eng.compute), s.index, P + C, s.g, C)
        return out

    def host_syncs(self) -> None:
        """HeadInfer's code synchronises the host with compute, then with the prefetch stream, per slot."""
        eng, rec = self.rt.engine, self.rt.rec
        for i in range(self.syncs):
            t0 = time.perf_counter()
            eng.stream_sync(eng.compute if i % 2 == 0 else eng.h2d)
            rec.host_span("host", "sync", t0, time.perf_counter(), layer=self.idx)

    def _attend_streamed(self, s: Slot, qs, new, scale):
        rt, eng, rec = self.rt, self.rt.engine, self.rt.rec
        P, C = self.P, self.C
        self.host_syncs()
        flat, unit = rt.acquire((self.idx, s.index))
        view = self.ring_view(flat, s)
        F = self.host_rows(P)
        if self.via_tail:  # the tail holds rows F..P and the new ones
            view[F : P + C].copy_(self.tail[: P + C - F, :, :, s.h0 : s.h1])
        else:
            if P > F:
                view[F:P].copy_(self.tail[: P - F, :, :, s.h0 : s.h1])
            view[P : P + C].copy_(new[:, :, :, s.h0 : s.h1])
        full = self.write_back == "full"
        if full and self.d2h_on_compute:  # transformers: offload on the default stream, before attention
            d0 = rec.mark(eng.compute)
            eng.copy(eng.compute, s.host[: P + C], view[: P + C], "d2h")
            rec.span(
                "d2h",
                "d2h",
                d0,
                rec.mark(eng.compute),
                layer=self.idx,
                slot=s.index,
                nbytes=(P + C) * rt.shape.kv_row_bytes(s.g),
                name="on compute stream",
            )
        a0 = rec.mark(eng.compute)
        K, V = kv_views(view, 0, P + C)
        out, lse = attend_parts(qs, chunk_parts(K, V, P, C), scale)
        self.keep(s, lse)
        done = eng.event(eng.compute)
        self.attn_span(a0, done, s.index, P + C, s.g, C)
        if full and self.d2h_on_compute:
            rt.release(unit, done)
            s.written = done
        elif self.flush_now:
            lo = 0 if full else F
            rel = s.written = self._write_back(s, lo, P + C, view[lo : P + C], done)
            rt.release(unit, rel)
        else:  # the new tokens wait in the tail
            rt.release(unit, done)
        return out

    def flush(self) -> None:
        """Send the tail's tokens to the host blocks now (before the host store is read directly)."""
        n = self.seen - self.flushed
        if self.tail is None or n <= 0:
            return
        eng = self.rt.engine
        staged = None
        for s in self.slots:
            if s.resident or s.host is None:
                continue
            stage = self.tail[:n, :, :, s.h0 : s.h1].contiguous()
            staged = staged or eng.event(eng.compute)
            s.written = self._write_back(s, self.flushed, self.seen, stage, staged, keep_alive=True)
        self.flushed = self.seen

    def _attend_blocks(self, s: Slot, qs, new, scale):
        rt, eng, rec = self.rt, self.rt.engine, self.rt.rec
        P, C, tb = self.P, self.C, self.token_block
        stage = new[:, :, :, s.h0 : s.h1].contiguous()
        staged = eng.event(eng.compute)
        outs, lses = [], []
        self.host_syncs()
        for b, t0 in enumerate(range(0, P, tb)):
            t1 = min(P, t0 + tb)
            flat, unit = rt.acquire((self.idx, s.index, b))
            view = self.ring_view(flat, s)
            K, V = kv_views(view, 0, t1 - t0)
            a0 = rec.mark(eng.compute)
            o, lse = attend(qs, K, V, causal=False, scale=scale)
            done = eng.event(eng.compute)
            self.attn_span(a0, done, s.index, t1 - t0, s.g, C)
            rel = done
            if self.write_back == "full":
                rel = self._write_back(s, t0, t1, view[: t1 - t0], done)
            rt.release(unit, rel)
            outs.append(o)
            lses.append(lse)
        K, V = kv_views(stage, 0, C)
        o, lse = attend(qs, K, V, causal=C > 1, scale=scale)
        out, lse = merge([*outs, o], [*lses, lse])
        self.keep(s, lse)
        # `stage` is freed below while the D2H may still read it: kept alive until the copy is done
        s.written = self._write_back(s, P, P + C, stage, staged, keep_alive=True)
        return out

    # ---- fp8 ----------------------------------------------------------------------------------------------------

    def _attend_store(self, s: Slot, store: kvquant.Store, qs, new, scale) -> torch.Tensor:
        """Write the call's new rows into the fp8 store, dequantise rows [:P+C] into the scratch and attend them."""
        rt, eng, rec = self.rt, self.rt.engine, self.rt.rec
        P, C = self.P, self.C
        lay = store.lay
        kvquant.write(lay, store, P, new[:, :, :, s.h0 : s.h1])
        a0 = rec.mark(eng.compute)
        kv = kvquant.dequantize(lay, store, P + C, rt.kv_scratch(kvquant.scratch_numel(lay, P + C)))
        K, V = kv_views(kv, 0, P + C)
        out, _ = attend_parts(qs, chunk_parts(K, V, P, C), scale)
        return out, a0

    def _attend_resident_fp8(self, s: Slot, qs, new, scale):
        graph = self.rt.graph
        # captured: the row goes in at the device position, and the whole store is dequantised
        if graph is not None:
            kvquant.write_row_at(s.store, graph.pos.view(1), new[:, :, :, s.h0 : s.h1])
            return decode_attend(qs, *self._whole_kv(s), graph.n_keys, scale)
        P, C = self.P, self.C
        lay = kvquant.layout_of(self.rt.shape, s.g)
        if s.gpu is None or s.gpu.numel() < lay.nbytes(P + C):
            self._grow_fp8(s, lay, P + C)
        out, a0 = self._attend_store(s, s.store, qs, new, scale)
        self.attn_span(a0, self.rt.rec.mark(self.rt.engine.compute), s.index, P + C, s.g, C)
        return out

    def _grow_fp8(self, s: Slot, lay, need: int) -> None:
        sh = self.rt.shape
        if self.rt.capacity is not None and need <= self.rt.capacity:
            cap = self.rt.capacity
        else:
            held = 0 if s.gpu is None else s.gpu.numel() // lay.block_bytes * kvquant.BLK
            cap = max(need, int(1.5 * held) + 256)
        buf = torch.zeros(lay.nbytes(cap), dtype=torch.uint8, device=sh.device)
        if s.gpu is not None:
            n = lay.nbytes(self.P)
            buf[:n].copy_(s.gpu[:n])
        s.gpu = buf
        s.store = kvquant.Store(lay, buf)

    def _attend_streamed_fp8(self, s: Slot, qs, new, scale):
        rt, eng = self.rt, self.rt.engine
        P, C = self.P, self.C
        self.host_syncs()
        flat, unit = rt.acquire((self.idx, s.index))
        view = self.ring_view(flat, s)
        lay = kvquant.layout_of(rt.shape, s.g)
        full = self.write_back == "full"
        key = (flat.data_ptr(), s.g)  # the ring buffer's store views, made once per buffer and slot size
        store = rt.fp8_stores.get(key)
        if store is None:
            store = rt.fp8_stores[key] = kvquant.Store(lay, view)
        out, a0 = self._attend_store(s, store, qs, new, scale)
        done = eng.event(eng.compute)
        self.attn_span(a0, done, s.index, P + C, s.g, C)
        lo, hi = kvquant.byte_range(lay, P, C)
        if full:
            lo = 0
        if full and self.d2h_on_compute:  # transformers' order: the whole layer back on the compute stream
            # after the call's write (the store holds its new rows only then), so the ring buffer is free, and the
            # host slot written, only once this copy is done: `copied`, not the attention's `done`
            d0 = self.rt.rec.mark(eng.compute)
            eng.copy(eng.compute, s.host[lo:hi], view[lo:hi], "d2h")
            copied = eng.event(eng.compute)
            self.rt.rec.span(
                "d2h", "d2h", d0, copied, layer=self.idx, slot=s.index, nbytes=hi - lo, name="on compute stream"
            )  # fmt: skip
            rt.release(unit, copied)
            s.written = copied
            return out
        rel = s.written = self._write_back_bytes(s, lo, hi, view[lo:hi], done)
        rt.release(unit, rel)
        return out

    def _write_back_bytes(self, s: Slot, lo: int, hi: int, src: torch.Tensor, after):
        """Copy the store bytes `src` into the slot's host bytes [lo, hi) on the D2H stream once `after` has
        happened; returns the event that marks the copy done."""
        eng, rec = self.rt.engine, self.rt.rec
        eng.wait(eng.d2h, after)
        d0 = rec.mark(eng.d2h)
        eng.copy(eng.d2h, s.host[lo:hi], src)
        done = eng.event(eng.d2h)
        rec.span("d2h", "d2h", d0, done, layer=self.idx, slot=s.index, nbytes=hi - lo)
        return done

    def _write_back(self, s: Slot, lo: int, hi: int, src: torch.Tensor, after, keep_alive: bool = False):
        """Copy `src` into the slot's host rows [lo, hi) on the D2H stream once `after` has happened, recorded as a
        d2h span; returns the event that marks the copy done."""
        eng, rec = self.rt.engine, self.rt.rec
        eng.wait(eng.d2h, after)
        d0 = rec.mark(eng.d2h)
        eng.copy(eng.d2h, s.host[lo:hi], src)
        if keep_alive:
            eng.keep_alive(src, eng.d2h)
        done = eng.event(eng.d2h)
        rec.span(
            "d2h",
            "d2h",
            d0,
            done,
            layer=self.idx,
            slot=s.index,
            nbytes=(hi - lo) * self.rt.shape.kv_row_bytes(s.g),
        )
        return done


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention with one more logit per head (a sink, which adds to the softmax's denominator and nothing to its
    output) from attention without: out * exp(lse) / (exp(lse) + exp(sink)) = out * sigmoid(lse - sink).
    out [B, Hq, C, D], lse [B, Hq, C], sinks [Hq]."""
    w = torch.sigmoid(lse.float() - sinks.float()[None, :, None])
    return (out.float() * w[..., None]).to(out.dtype)


def cut_slots(n_heads: int, group: int, resident: int, start: int = 0) -> list[Slot]:
    """Slots of `group` heads over heads [start, start + n_heads); the first `resident` stay on the GPU."""
    return [
        Slot(index=i, h0=start + i * group, h1=start + (i + 1) * group, resident=i < resident)
        for i in range(n_heads // group)
    ]


def host_pool(rt: Runtime) -> HostPool:
    pool = HostPool(pinned=rt.engine.kind == "cuda")
    rt.pool = pool
    return pool


def attach_host(rt: Runtime, slots_by_layer: list[list[Slot]]) -> None:
    """One pinned block per streamed slot, [capacity, B, 2, g, D], from one pool allocated once."""
    sh = rt.shape
    pool = rt.pool or host_pool(rt)
    handles = []
    dtype = torch.uint8 if rt.fp8 else sh.dtype
    for slots in slots_by_layer:
        for s in slots:
            if not s.resident:
                shape = (
                    (kvquant.layout_of(sh, s.g).nbytes(rt.capacity),)  # an fp8 store: its bytes
                    if rt.fp8
                    else (rt.capacity, sh.batch, 2, s.g, sh.head_dim)
                )
                handles.append((s, pool.reserve(shape, dtype), shape))
    pool.allocate()
    for s, h, shape in handles:
        s.host = pool.block(h, shape, dtype)


def make_ring(rt: Runtime, n: int, tokens: int, heads: int, depth: int, extra: int = 0) -> None:
    """n ring buffers of `tokens` tokens of `heads` KV heads (fp8 stores where the plan's KV is fp8)."""
    sh = rt.shape
    n = max(n, 1)
    if rt.fp8:
        rt.ring = Ring(n, kvquant.layout_of(sh, heads).nbytes(tokens) + extra, torch.uint8, sh.device)
    else:
        rt.ring = Ring(n, tokens * sh.batch * 2 * heads * sh.head_dim + extra, sh.dtype, sh.device)
    rt.depth = min(depth, n - 1)
    if depth > n - 1:
        rt.notes.append(f"prefetch_depth {depth} capped at slot_buffers - 1 = {n - 1}")


def reserve_scratch(rt: Runtime, heads: int) -> None:
    """An fp8 plan's dequantisation scratch for a whole slot of `heads` KV heads at the cache's capacity, made up
    front (nothing for bf16, or without a capacity: then the first calls grow it). The fused row write is checked
    (and built) here, before any timed phase (kvquant.fused_row_write)."""
    if rt.fp8:
        kvquant.fused_row_write(kvquant.layout_of(rt.shape, heads), rt.shape.dtype, rt.shape.device)
    if rt.fp8 and rt.capacity:
        rt.kv_scratch(kvquant.scratch_numel(kvquant.layout_of(rt.shape, heads), rt.capacity))
