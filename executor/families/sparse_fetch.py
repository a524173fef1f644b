"""sparse_fetch (InfiniGen-style, approximate): every layer's KV lives in host memory. Prefill and the first
dense_layers at decode stream whole layers (layer_offload, incremental write-back). For the other layers at
decode, a GPU-resident partial key cache (the r*D key columns of largest mean magnitude in the first prefill
chunk, per KV head) scores the cached tokens against the same columns of the query; the top f*P tokens of each
KV head (max over its query group) are gathered by the CPU from the host KV into pinned memory and copied up in
one transfer; attention runs over the selected tokens and the new token's window, merged by LSE.

Simplification: InfiniGen speculates a layer's query from the previous layer's input to overlap the fetch; here
the layer's own query selects (its fetch is not hidden; one host sync per sparse layer).
"""

from __future__ import annotations

import math
import time

import torch
from roofsim.executor.attention import attend_parts, kv_views, pack_kv
from roofsim.executor.cache import Runtime
from roofsim.executor.families import register_builder
from roofsim.executor.hostpool import pinned_empty
from roofsim.executor.slots import Slot, SlotLayer, attach_host, make_ring


class SparseState:
    """Shared by the sparse layers: two pinned gather buffers and two GPU landing buffers, event-guarded."""

    def __init__(self, rt: Runtime, rows: int):
        sh = rt.shape
        pinned = rt.engine.kind == "cuda"
        shape = (sh.batch, sh.n_kv_heads, rows, 2, sh.head_dim)
        self.host = [pinned_empty(shape, sh.dtype, pinned) for _ in range(2)]
        self.gpu = [torch.empty(shape, dtype=sh.dtype, device=sh.device) for _ in range(2)]
        # the selected rows' indices come down into pinned memory, as the model prices them (a pinned D2H); a
        # pageable copy costs several times more (docs/evidence.md#ev-sparse-indices-pinned)
        self.rows_host = (
            pinned_empty((sh.batch * sh.n_kv_heads * rows * 2,), torch.int64, True) if pinned else None
        )
        self.sent: list = [None, None]
        self.consumed: list = [None, None]
        self.turn = 0
        self.fetched_bytes = 0
        self.full_bytes = 0
        if pinned:
            stages = [self.host[0], self.host[1], self.rows_host]
            rt.pinned_extra += sum(t.numel() * t.element_size() for t in stages)
        rt.extra_gpu_bytes["kv_buffers"] = 2 * self.gpu[0].numel() * self.gpu[0].element_size()


class SparseLayer(SlotLayer):
    def __init__(
        self, rt: Runtime, idx: int, slot: Slot, *, sparse: bool, fraction: float, ratio: float, state
    ):
        super().__init__(rt, idx, [slot])
        self.sparse, self.fraction, self.state = sparse, fraction, state
        sh = rt.shape
        self.cols_n = max(1, round(ratio * sh.head_dim))
        self.cols = None
        self.pk = None
        self.new_stage = None
        if sparse:
            self.pk = torch.empty(
                sh.batch, sh.n_kv_heads, rt.capacity, self.cols_n, dtype=sh.dtype, device=sh.device
            )

    def gpu_bytes(self) -> dict[str, int]:
        return {"workspace": 0 if self.pk is None else self.pk.numel() * self.pk.element_size()}

    def units(self, P: int, C: int) -> list:
        if self.sparse and self.rt.phase == "decode":
            return []
        return super().units(P, C)

    def _partial_keys(self) -> None:
        P, C, k = self.P, self.C, self.k_new
        if self.cols is None:
            self.cols = k.float().abs().mean(dim=(0, 2)).topk(self.cols_n, dim=-1).indices.sort(-1).values
        idx = self.cols[None, :, None, :].expand(k.shape[0], -1, C, -1)
        self.pk[:, :, P : P + C] = k.gather(-1, idx)

    def _attend(self, module, q, scale):
        if not self.sparse:
            return super()._attend(module, q, scale)
        self._partial_keys()
        if self.rt.phase != "decode" or self.P == 0:
            return super()._attend(module, q, scale)
        return self._attend_selected(q, scale)

    def _attend_selected(self, q, scale):
        eng, rec, sh, st = self.rt.engine, self.rt.rec, self.rt.shape, self.state
        P, C, s = self.P, self.C, self.slots[0]
        B, Hq, _, D = q.shape
        n_sel = max(1, math.ceil(self.fraction * P))
        n_sel = min(n_sel, P, st.host[0].shape[2])
        # select on the GPU
        s0 = rec.mark(eng.compute)
        qg = q.reshape(B, sh.n_kv_heads, sh.group * C, D)
        qp = qg.gather(-1, self.cols[None, :, None, :].expand(B, -1, sh.group * C, -1))
        scores = torch.matmul(qp, self.pk[:, :, :P].transpose(-1, -2)).amax(dim=-2)
        idx = scores.topk(n_sel, dim=-1).indices.sort(dim=-1).values
        # rows of the host block [T, B, 2, Hkv, D] in the stage's order [B, Hkv, n_sel, 2]: one gather call,
        # which torch spreads over the CPU threads (a loop of per-head gathers runs on one)
        b_ = torch.arange(B, device=idx.device)[:, None, None, None]
        h_ = torch.arange(sh.n_kv_heads, device=idx.device)[None, :, None, None]
        kv_ = torch.arange(2, device=idx.device)
        rows = (((idx[..., None] * B + b_) * 2 + kv_) * sh.n_kv_heads + h_).reshape(-1)
        rec.span("compute", "vector", s0, rec.mark(eng.compute), layer=self.idx, name="select tokens")
        # new tokens go down as in any streamed plan
        new = pack_kv(self.k_new, self.v_new)
        if self.new_stage is None or self.new_stage.shape[0] != C:
            self.new_stage = torch.empty_like(new)
        eng.wait(eng.compute, s.written)  # the previous D2H from new_stage is done
        self.new_stage.copy_(new)
        t0 = time.perf_counter()
        rows_host = rows
        if st.rows_host is not None:  # one host sync: the gather needs the indices
            rows_host = st.rows_host[: rows.numel()]
            with eng.stream(eng.compute):
                rows_host.copy_(rows, non_blocking=True)
            eng.stream_sync(eng.compute)
        t1 = time.perf_counter()
        rec.host_span("host", "sync", t0, t1, layer=self.idx, name="selected indices")
        turn = st.turn
        st.turn ^= 1
        if st.sent[turn] is not None:
            eng.host_wait(st.sent[turn])  # the H2D from this pinned buffer is done
        numel = B * sh.n_kv_heads * n_sel * 2 * D
        stage = st.host[turn].view(-1)[:numel].view(B, sh.n_kv_heads, n_sel, 2, D)
        torch.index_select(s.host.view(-1, D), 0, rows_host, out=stage.view(-1, D))
        t2 = time.perf_counter()
        nbytes = n_sel * sh.kv_row_bytes(sh.n_kv_heads)
        st.fetched_bytes += nbytes
        st.full_bytes += P * sh.kv_row_bytes(sh.n_kv_heads)
        rec.host_span("cpu", "cpu_gather", t1, t2, layer=self.idx, nbytes=2 * nbytes)
        eng.wait(eng.h2d, st.consumed[turn])
        h0 = rec.mark(eng.h2d)
        sel = st.gpu[turn].view(-1)[:numel].view(B, sh.n_kv_heads, n_sel, 2, D)
        eng.copy(eng.h2d, sel, stage)
        st.sent[turn] = eng.event(eng.h2d)
        rec.span("h2d", "h2d", h0, st.sent[turn], layer=self.idx, nbytes=nbytes)
        eng.wait(eng.compute, st.sent[turn])
        a0 = rec.mark(eng.compute)
        K_new, V_new = kv_views(self.new_stage, 0, C)
        parts = [(sel[..., 0, :], sel[..., 1, :], False), (K_new, V_new, C > 1)]
        out, _ = attend_parts(q, parts, scale)
        done = st.consumed[turn] = eng.event(eng.compute)
        self.attn_span(a0, done, 0, n_sel + C, sh.n_kv_heads, C)
        eng.wait(eng.d2h, done)
        d0 = rec.mark(eng.d2h)
        eng.copy(eng.d2h, s.host[P : P + C], self.new_stage)
        s.written = eng.event(eng.d2h)
        rec.span("d2h", "d2h", d0, s.written, layer=self.idx, nbytes=C * sh.kv_row_bytes(sh.n_kv_heads))
        return out


@register_builder("sparse_fetch")
def build(rt: Runtime, plan, model, **_):
    sh = rt.shape
    slots = [Slot(0, 0, sh.n_kv_heads, resident=False) for _ in range(sh.n_layers)]
    attach_host(rt, [[s] for s in slots])
    make_ring(rt, 2, rt.capacity, sh.n_kv_heads, 1)
    dense = min(plan.dense_layers, sh.n_layers)
    state = SparseState(rt, max(1, math.ceil(plan.fetch_fraction * rt.capacity)))
    rt.sparse_state = state

    def moved() -> str | None:
        if not state.full_bytes:
            return None
        return (
            f"sparse_fetch moved {state.fetched_bytes / state.full_bytes:.1%} of the sparse layers' cached KV at "
            f"decode ({state.fetched_bytes / 2**20:.1f} of {state.full_bytes / 2**20:.1f} MiB)"
        )

    rt.end_notes.append(moved)
    rt.notes.append(
        f"sparse_fetch (approximate): layers {dense}.. attend the top {plan.fetch_fraction:.0%} of tokens per KV "
        f"head, selected with {plan.partial_key_ratio:.0%} of the key columns; the layer's own query selects"
    )
    return [
        SparseLayer(
            rt,
            i,
            slots[i],
            sparse=i >= dense,
            fraction=plan.fetch_fraction,
            ratio=plan.partial_key_ratio,
            state=state,
        )
        for i in range(sh.n_layers)
    ]
