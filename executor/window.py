"""Window layers (Gemma 3's sliding layers): every plan keeps their KV on the GPU, at most the last window - 1
tokens, which is all a later query can see. The plan's family places the global layers' KV only.

A query at position t attends keys t - window + 1 .. t (transformers' sliding mask: kv > q - window, kv <= q):
the cached rows, then the chunk's own keys, under a banded causal mask.
"""

from __future__ import annotations

import torch
from roofsim.executor.cache import PlanLayer, Runtime


class WindowLayer(PlanLayer):
    """A window layer's KV `[B, Hkv, <= window - 1, D]` for K and V, on the GPU, trimmed after every forward."""

    def __init__(self, rt: Runtime, idx: int, window: int):
        super().__init__(rt, idx)
        self.window = window
        self.k = self.v = None

    def gpu_bytes(self) -> dict[str, int]:
        if self.k is None:
            return {"kv_window": 0}
        return {"kv_window": 2 * self.k.numel() * self.k.element_size()}

    def _attend(self, module, q: torch.Tensor, scale: float) -> torch.Tensor:
        """q [B, Hq, C, D] -> out [B, Hq, C, D]."""
        rec, eng = self.rt.rec, self.rt.engine
        a0 = rec.mark(eng.compute)
        P, C, W = self.P, self.C, self.window
        k_new, v_new = self.k_new, self.v_new
        if self.k is None:
            K, V = k_new, v_new
        else:
            K, V = torch.cat([self.k, k_new], dim=2), torch.cat([self.v, v_new], dim=2)
        kept = K.shape[2] - C
        q_pos = torch.arange(P, P + C, device=q.device)
        k_pos = torch.arange(P - kept, P + C, device=q.device)
        mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - W)
        group = q.shape[1] // K.shape[1]
        Kq = K.repeat_interleave(group, dim=1) if group > 1 else K
        Vq = V.repeat_interleave(group, dim=1) if group > 1 else V
        sinks = getattr(module, "sinks", None)
        if sinks is None:
            out = torch.nn.functional.scaled_dot_product_attention(q, Kq, Vq, attn_mask=mask, scale=scale)
        else:  # gpt-oss: one more logit per head, its sink, with no value
            logits = (q @ Kq.transpose(-1, -2)) * scale
            logits = logits.masked_fill(~mask, float("-inf"))
            sink = sinks.to(logits.dtype).reshape(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
            probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
            out = probs.to(Vq.dtype) @ Vq
        keep = min(W - 1, K.shape[2])
        self.k = K[:, :, K.shape[2] - keep :].contiguous()
        self.v = V[:, :, V.shape[2] - keep :].contiguous()
        self.attn_span(a0, rec.mark(eng.compute), None, K.shape[2], K.shape[1], C)
        return out


def window_of_layers(config) -> list[int | None]:
    """Each decoder layer's attention window from a transformers config (layer_types and sliding_window), None
    for a layer that attends the whole context; all None for a model without window layers."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if not types or window is None:
        return [None] * n
    return [window if t == "sliding_attention" else None for t in types]


def with_window_layers(
    rt: Runtime, global_layers: list[PlanLayer], windows: list[int | None]
) -> list[PlanLayer]:
    """The cache's layers in model order: a WindowLayer for each window layer, the family's layers (built for the
    global layers alone, indexed 0..G-1) renumbered to their model index."""
    it = iter(global_layers)
    out: list[PlanLayer] = []
    for i, w in enumerate(windows):
        if w is None:
            layer = next(it)
            layer.idx = i
        else:
            layer = WindowLayer(rt, i, w)
        out.append(layer)
    return out
