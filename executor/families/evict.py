"""evict (Locret-style, approximate): every layer keeps at most budget_tokens KV per KV head on the GPU, plus the
last local_tokens of the prompt, which are never evicted. After each prefill chunk's attention the lowest-scored
cached tokens are dropped, per head. Nothing crosses the link.

Score (a documented proxy): Locret's trained retaining heads are not available, so each cached token is scored
by the attention it receives from the chunk's last 32 queries (SnapKV's observation window), softmax
probabilities summed over those queries and the KV head's query group. Keys stay RoPE-rotated at their original
positions, so attention over the kept set needs no re-rotation; positions continue from the tokens seen.
"""

from __future__ import annotations

import torch
from roofsim.executor.attention import attend_parts, decode_attend
from roofsim.executor.cache import PlanLayer, Runtime
from roofsim.executor.families import register_builder

WINDOW = 32
SCORER = (
    "evict: tokens scored by a proxy, the attention they receive from the last 32 queries of each prefill chunk "
    "(SnapKV's observation window); Locret's trained retaining heads are not available"
)


class EvictLayer(PlanLayer):
    grows = True

    def __init__(self, rt: Runtime, idx: int, budget: int, local: int):
        super().__init__(rt, idx)
        self.budget, self.local = budget, local
        self.k = self.v = self.pos = None
        self.evicted = 0  # tokens dropped so far: a token's row is its position less the evictions before it

    @property
    def kept(self) -> int:
        """Rows holding KV once the current forward's are written: every token seen less those evicted."""
        return self.seen - self.evicted

    def gpu_bytes(self) -> dict[str, int]:
        if self.k is None:
            return {"kv_resident": 0}
        return {"kv_resident": 2 * self.k.numel() * self.k.element_size() + self.pos.numel() * 8}

    def _ensure(self, need: int, rows: int, exact: bool = False) -> None:
        """Buffers of at least `need` rows (exactly `need` where they grow and `exact`, else with room to grow),
        the first `rows` carried over where they grow."""
        if self.k is not None and self.k.shape[2] >= need:
            return
        sh = self.rt.shape
        if exact:
            cap = need
        else:
            cap = need + 64 if self.k is None else max(need, int(1.25 * self.k.shape[2]))
        k = torch.empty(sh.batch, sh.n_kv_heads, cap, sh.head_dim, dtype=sh.dtype, device=sh.device)
        v = torch.empty_like(k)
        pos = torch.empty(sh.batch, sh.n_kv_heads, cap, dtype=torch.long, device=sh.device)
        if self.k is not None:
            k[:, :, :rows] = self.k[:, :, :rows]
            v[:, :, :rows] = self.v[:, :, :rows]
            pos[:, :, :rows] = self.pos[:, :, :rows]
        self.k, self.v, self.pos = k, v, pos

    def graph_ready(self) -> bool:
        """Decode never evicts, so a step appends one row at index seen - evicted: with the buffers grown to hold
        every step up to the cache's capacity (prepare_graph), a replayed step's shapes are fixed."""
        return self.rt.capacity is not None and self.k is not None

    def prepare_graph(self) -> None:
        """Grow the buffers to hold every decode step up to the cache's capacity, and zero the rows past the kept
        ones: the masked decode kernel multiplies each of them by a probability of 0, and 0 x a NaN left in fresh
        memory is NaN."""
        n = self.kept
        self._ensure(n + max(0, self.rt.capacity - self.seen), n, exact=True)
        self.k[:, :, n:].zero_()
        self.v[:, :, n:].zero_()

    def graph_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k, self.v

    def _attend_replayed(self, q, scale, graph):
        """The decode step at the graph's device position: the new row at index position - evicted (index_copy_),
        attention over the buffer up to the device key count less the evicted."""
        at = graph.pos.view(1) - self.evicted
        self.k.index_copy_(2, at, self.k_new)
        self.v.index_copy_(2, at, self.v_new)
        self.pos.index_copy_(2, at, graph.pos.view(1, 1, 1).expand(self.pos.shape[0], self.pos.shape[1], 1))
        return decode_attend(q, self.k, self.v, graph.n_keys - self.evicted, scale)

    def _attend(self, module, q, scale):
        eng, rec, sh = self.rt.engine, self.rt.rec, self.rt.shape
        if self.rt.graph is not None:
            return self._attend_replayed(q, scale, self.rt.graph)
        P, C = self.P, self.C
        n = P - self.evicted  # rows before this forward's
        self._ensure(n + C, n)
        self.k[:, :, n : n + C] = self.k_new
        self.v[:, :, n : n + C] = self.v_new
        self.pos[:, :, n : n + C] = torch.arange(P, P + C, device=sh.device)
        a0 = rec.mark(eng.compute)
        if C == 1:
            parts = [(self.k[:, :, : n + 1], self.v[:, :, : n + 1], False)]
        else:
            parts = [
                (self.k[:, :, :n], self.v[:, :, :n], False),
                (self.k[:, :, n : n + C], self.v[:, :, n : n + C], True),
            ]
        out, _ = attend_parts(q, parts, scale)
        self.attn_span(a0, rec.mark(eng.compute), None, n + C, sh.n_kv_heads, C)
        if C > 1:
            e0 = rec.mark(eng.compute)
            self._evict(q, scale, n + C)
            rec.span("compute", "vector", e0, rec.mark(eng.compute), layer=self.idx, name="evict")
        return out

    def protected_count(self, prompt_end: int) -> int:
        """Cached tokens never evicted (positions at or after prompt_end - local), counted on the host rather
        than read back from the GPU (a sync per layer and chunk): the cache holds positions in order and keeps
        every such token, so they are all there, as its last rows."""
        return max(0, self.seen - max(0, prompt_end - self.local))

    def _evict(self, q, scale, n: int) -> None:
        """Keep the budget's best-scored of the n rows (the protected last ones always), in position order."""
        sh = self.rt.shape
        prompt_end = self.rt.prompt_end if self.rt.prompt_end is not None else self.seen
        positions = self.pos[:, :, :n]
        candidate = positions < prompt_end - self.local
        n_cand = n - self.protected_count(prompt_end)
        if n_cand <= self.budget:
            return
        B, Hq, C, D = q.shape
        w = min(WINDOW, C)
        qw = q[:, :, C - w :].reshape(B, sh.n_kv_heads, sh.group * w, D).float()
        s = torch.matmul(qw, self.k[:, :, :n].float().transpose(-1, -2)) * scale
        q_pos = torch.arange(self.seen - w, self.seen, device=q.device).repeat(sh.group)
        s = s.masked_fill(positions[:, :, None, :] > q_pos[None, None, :, None], float("-inf"))
        score = torch.softmax(s, dim=-1).sum(dim=-2)
        score = score.masked_fill(~candidate, float("-inf"))
        top = score.topk(self.budget, dim=-1).indices
        protected = torch.arange(n_cand, n, device=q.device)
        keep = torch.cat([top, protected.expand(B, sh.n_kv_heads, -1)], dim=-1).sort(dim=-1).values
        m = keep.shape[-1]
        idx = keep[..., None].expand(B, sh.n_kv_heads, m, D)
        self.k[:, :, :m] = self.k[:, :, :n].gather(2, idx)
        self.v[:, :, :m] = self.v[:, :, :n].gather(2, idx)
        self.pos[:, :, :m] = positions.gather(2, keep)
        self.evicted += n - m


@register_builder("evict")
def build(rt: Runtime, plan, model, **_):
    rt.notes.append(SCORER)
    layers = [EvictLayer(rt, i, plan.budget_tokens, plan.local_tokens) for i in range(rt.shape.n_layers)]

    def kept() -> str:
        n, seen = layers[0].kept, layers[0].seen
        return f"evict: {n} of {seen} tokens kept per KV head at the end ({n / max(seen, 1):.1%})"

    rt.end_notes.append(kept)
    return layers
