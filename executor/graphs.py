"""Decode steps captured once in a CUDA graph and replayed: the host issues one replay per step instead of every
kernel of the forward (gpt-fast's recipe: static inputs, KV preallocated to the cache's capacity, the position a
device tensor).

What changes from step to step lives in device tensors the graph reads: the token ids, the position (RoPE's
position_ids) and the key count of every attention (position + 1). A cache can be replayed when every layer's
decode GPU work has fixed shapes (`PlanLayer.graph_ready`): resident slots preallocated to the capacity, where
the new K/V is written at the device position (index_copy_) and attention reads the buffer up to the device key
count (`attention.decode_attend`); evict's kept KV, which decode only appends to, likewise, each index less the
tokens its prefill evicted; window layers' kept rows, moved into a ring of the window's length (executor/window.py).
Plans that copy over PCIe at decode (sizes that grow with the context, host waits) run eager.

Per step, outside the graph: three small writes into the static inputs, the replay, and the layers' host-side
token counts advanced by one. The recorder is off inside a replayed step; the runner records the step as a whole.
"""

from __future__ import annotations

import torch
from roofsim.executor.attention import decode_lengths, pick_decode_kernel

from roofsim.errors import UserError


def graph_unsupported(cache) -> str | None:
    """Why `cache` cannot replay its decode steps from a graph, or None if it can."""
    rt = cache.runtime
    if rt.shape.device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if rt.capacity is None:
        return "the cache has no capacity to preallocate (make_cache without max_tokens)"
    if rt.plan.weights != "resident":
        return "streamed weights copy every layer at every step"
    if rt.plan.tp > 1:
        return "tensor-parallel steps all-reduce across ranks (a capture failing on one rank would stall the rest)"
    bad = [i for i, layer in enumerate(rt.layers) if not layer.graph_ready()]
    if bad:
        return f"layers {bad[0]}.. copy over the link or grow at decode"
    return None


class GraphDecoder:
    """One captured decode step of `model` with `cache`; `step(ids)` replays it and returns the logits [B, V].

    capture=False runs the same static-input step eagerly, every kernel issued by the host (the CPU tests check
    the graph's code path this way: device position, index_copy_, decode_attend)."""

    def __init__(self, model, cache, warmup: int = 2, capture: bool = True):
        self.model, self.cache, self.rt = model, cache, cache.runtime
        sh = self.rt.shape
        dev = sh.device
        self.ids = torch.zeros(sh.batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.n_keys = torch.zeros(sh.batch, dtype=torch.int32, device=dev)
        self.warmup = warmup
        self.captures = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.kernel: str | None = None
        self.rt.close_callbacks.append(self.release)

    def _forward(self):
        return self.model(
            self.ids,
            past_key_values=self.cache,
            position_ids=self.pos,
            use_cache=True,
            logits_to_keep=1,
        )

    def _set_inputs(self, ids: torch.Tensor, n: int) -> None:
        self.ids.copy_(ids)
        self.pos.fill_(n)
        self.n_keys.fill_(n + 1)

    def _pick_kernel(self, n: int) -> None:
        sh = self.rt.shape
        for layer in self.rt.layers:
            layer.prepare_graph()
        buffers = [layer.graph_kv() for layer in self.rt.layers]
        # the varlen call's lengths for every buffer length the step attends (window rings, the capacity), on the
        # tensors' own device (cuda:0): a capture cannot make them
        for device, T in {(k.device, k.shape[2]) for k, _ in buffers}:
            decode_lengths(device, T)
        # picked on the longest buffer: a window layer's ring is only `window` rows long, the global layers' the
        # capacity
        K, V = max(buffers, key=lambda kv: kv[0].shape[2])
        heads = K.shape[1] * sh.group
        q = torch.randn(sh.batch, 1, heads, sh.head_dim, device=sh.device, dtype=sh.dtype).transpose(1, 2)
        # keys the buffer holds: an evict layer's buffer is shorter than the position n (a key count past it
        # would send the flash kernel reading beyond the buffer)
        keys = min(max(n, 1), K.shape[2])
        self.kernel = pick_decode_kernel(q, K, V, keys, sh.head_dim**-0.5)

    @torch.no_grad()
    def capture(self, ids: torch.Tensor) -> None:
        """Warm the step up on a side stream, then capture it. The forwards write the next token's K/V at its
        position (the replay writes the same there again); the layers' host-side counts are put back after each."""
        rt, layers = self.rt, self.rt.layers
        n = layers[0].seen
        self._pick_kernel(n)
        self._set_inputs(ids, n)
        seen = [layer.seen for layer in layers]
        steps = dict(rt.steps)
        recording, rt.rec.enabled = rt.rec.enabled, False
        rt.graph = self
        try:
            side = torch.cuda.Stream(rt.shape.device)
            side.wait_stream(torch.cuda.current_stream(rt.shape.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._forward()
                    self._restore(seen, steps)
            torch.cuda.current_stream(rt.shape.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._forward().logits
        except BaseException:
            self.graph = self.logits = None
            raise
        finally:
            self._restore(seen, steps)
            rt.graph = None
            rt.rec.enabled = recording

    def _restore(self, seen: list[int], steps: dict) -> None:
        for layer, n in zip(self.rt.layers, seen, strict=True):
            layer.seen = n
        self.rt.steps.update(steps)
        self.rt.in_step = False

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Replay one decode step for token ids [B, 1]; returns the last position's logits [B, V] (a view into the
        graph's output buffer: the next replay overwrites it)."""
        if not self.captures:
            return self._step_eager(ids)
        if self.graph is None:
            self.capture(ids)
        layers = self.rt.layers
        n = layers[0].seen
        if n + 1 > self.rt.capacity:
            raise UserError(
                f"the cache holds {self.rt.capacity} tokens and this step needs {n + 1}; "
                "pass a larger max_tokens to make_cache"
            )
        self._set_inputs(ids, n)
        self.graph.replay()
        for layer in layers:
            layer.replayed(n)
        self.rt.steps["decode"] += 1
        return self.logits[:, -1]

    @torch.no_grad()
    def _step_eager(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.rt.layers[0].seen
        if self.kernel is None:
            self._pick_kernel(n)
        self._set_inputs(ids, n)
        self.rt.graph = self
        try:
            return self._forward().logits[:, -1]
        finally:
            self.rt.graph = None

    def release(self) -> None:
        self.graph = None
        self.logits = None
