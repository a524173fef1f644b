"""Streamed weights (plan.weights = "streamed", FlexGen's case): the decoder layers' parameters live in one
pinned host region and cross the link H2D on every forward, double-buffered, as `roofsim.families.pipeline`
prices them (`weight_stream`, `weights_gpu_bytes`). Embeddings, the final norm and the LM head stay where they
are (on the GPU).

    host:  one HostPool region; layer j's parameters packed back to back in block j (page-aligned per layer),
           so a layer comes up in one copy
    GPU:   two flat buffers of the largest layer's bytes; layer j computes from buffer (running count) mod 2

Mechanism: forward pre-hooks and forward hooks on the stock decoder layers swap parameter *storage*
(`param.data = view`); the modules and their forward code stay stock and the Parameter objects stay the same.
Outside a layer's forward its parameters point at their views in the host region; for the layer's forward they
point at views into its GPU buffer (all views are made once at set-up).

    pre-hook of layer j:  issue layer j's copy if not yet issued (layer 0 of a forward), then layer j+1's (the
                          prefetch), each on the engine's weights H2D stream after waiting on its buffer's release
                          event; the compute stream waits on layer j's ready event; parameters -> GPU views
    hook after layer j:   release event of its buffer = an event on the compute stream (layer j is done);
                          parameters -> host views

So layer j+2's copy (into layer j's buffer) waits until layer j is done and runs while layer j+1 computes. The
copies run on their own stream (`engine.h2d_weights`, the same copy engine as the KV's `h2d`): a weight copy
waiting for its buffer does not hold back the KV prefetches, as in the simulator. Spans: resource "h2d", kind
"h2d", name "weights", one per layer per forward, stamped with the forward's phase and step.

Set-up copies each parameter into the region and then frees its old storage, so layers loaded in host memory
(`load_model(..., layers_device="cpu")`, what `roofsim run` does for streamed plans) are held twice for a moment.

Hooks act on every forward of the model while the cache is open (with or without the cache). Closing the cache
puts the parameters back on the device they came from. Parameters only: decoder-layer buffers (none in the
supported families) are not moved.
"""

from __future__ import annotations

import weakref

import torch
from roofsim.executor.hostpool import HostPool

from roofsim.errors import UserError

ALIGN = 16  # bytes; every parameter in a layer's region starts on this (no padding for usual shapes)
_OWNER = "_roofsim_weight_streamer"


def decoder_layers(model, needs: str = 'weights="streamed"') -> list:
    """The model's decoder layers (model.model.layers), or a one-line error naming what `needs` them."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise UserError(f"{needs} needs a model with decoder layers at model.model.layers")
    return list(layers)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class WeightStreamer:
    """The pinned host copy of the decoder layers' parameters, two GPU layer buffers, and the hooks that stream
    them (see the module doc). `guard=False` (tests) skips the compute stream's wait for a layer's copy."""

    def __init__(self, rt, model):
        self.rt = rt
        self.engine = eng = rt.engine
        self.stream = getattr(eng, "h2d_weights", eng.h2d)
        owner = getattr(model, _OWNER, None)
        if owner is not None and owner() is not None and not owner().closed:
            raise UserError(
                'the model\'s weights are already streamed by another open cache (weights="streamed"); '
                "close that cache first"
            )
        self.closed = False
        self.guard = True
        self.layers = decoder_layers(model)
        device = rt.shape.device
        # layout: per layer, its parameters back to back (ALIGN-aligned offsets)
        self.params: list[list[tuple[torch.nn.Parameter, int]]] = []
        self.sizes: list[int] = []
        self.param_bytes: list[int] = []
        for layer in self.layers:
            entries, off, total = [], 0, 0
            for p in layer.parameters():
                off = -(-off // ALIGN) * ALIGN
                entries.append((p, off))
                off += _nbytes(p)
                total += _nbytes(p)
            self.params.append(entries)
            self.sizes.append(off)
            self.param_bytes.append(total)
        streamed = {id(p) for entries in self.params for p, _ in entries}
        self.resident_bytes = sum(_nbytes(p) for p in model.parameters() if id(p) not in streamed)
        # host region: one pool, one page-aligned block per layer
        self.pool = HostPool(pinned=eng.kind == "cuda")
        handles = [self.pool.reserve((max(n, 1),), torch.uint8) for n in self.sizes]
        self.pool.allocate()
        self.host = [
            self.pool.block(h, (max(n, 1),), torch.uint8) for h, n in zip(handles, self.sizes, strict=True)
        ]
        # two GPU layer buffers and the views of every layer's parameters into each (allocated before any
        # parameter moves, so a failure here leaves the model as it was)
        width = max(self.sizes, default=0)
        self.buffers = [torch.empty(max(width, 1), dtype=torch.uint8, device=device) for _ in range(2)]
        self.gpu_views = [
            [[self._view(buf, off, p) for p, off in entries] for entries in self.params]
            for buf in self.buffers
        ]
        self.home: list[list[torch.Tensor]] = []
        self.origin: list[list[torch.device]] = []
        for j, entries in enumerate(self.params):
            views, devices = [], []
            for p, off in entries:
                view = self._view(self.host[j], off, p)
                view.copy_(p.data)
                devices.append(p.device)
                p.data = view  # the original storage is freed once nothing else holds it
                views.append(view)
            self.home.append(views)
            self.origin.append(devices)
        self.release: list[object] = [None, None]
        self.count = 0  # copies issued so far: layer copies alternate buffers across forwards too
        self.inflight: dict[int, tuple[int, object]] = {}  # layer -> (buffer, ready event)
        self.pending_spans: list[tuple] = []
        self.bytes_copied = 0
        self.copies = 0
        rt.pinned_extra += self.pool.pinned_bytes
        rt.extra_gpu_bytes["weights"] = self.gpu_bytes
        for j, layer in enumerate(self.layers):
            rt.hooks.append(layer.register_forward_pre_hook(self._pre_hook(j)))
            rt.hooks.append(layer.register_forward_hook(self._post_hook(j)))
        rt.close_callbacks.append(self.close)
        rt.notes.append(
            f"weights streamed: {len(self.layers)} decoder layers, {sum(self.sizes) / 2**20:.1f} MiB H2D per "
            "forward in one copy per layer (the analytic model prices one copy per weight tensor)"
        )
        setattr(model, _OWNER, weakref.ref(self))

    @staticmethod
    def _view(flat: torch.Tensor, off: int, p: torch.Tensor) -> torch.Tensor:
        return flat[off : off + _nbytes(p)].view(p.dtype).view(p.shape)

    @property
    def buffer_bytes(self) -> int:
        return sum(_nbytes(b) for b in self.buffers)

    @property
    def gpu_bytes(self) -> int:
        """GPU bytes of weights: the resident parameters (embeddings, final norm, LM head) and the two buffers."""
        return self.resident_bytes + self.buffer_bytes

    @property
    def host_bytes(self) -> int:
        return sum(self.param_bytes)

    # ---- streaming -----------------------------------------------------------------------------------------

    def _issue(self, j: int) -> None:
        if j >= len(self.layers) or j in self.inflight:
            return
        eng, rec = self.engine, self.rt.rec
        b = self.count % 2
        self.count += 1
        eng.wait(self.stream, self.release[b])  # the layer that used the buffer last is done
        start = rec.mark(self.stream)
        n = self.sizes[j]
        if n:
            eng.copy(self.stream, self.buffers[b][:n], self.host[j][:n], "h2d")
        ready = eng.event(self.stream)
        self.inflight[j] = (b, ready)
        self.bytes_copied += n
        self.copies += 1 if n else 0
        if n:
            self.pending_spans.append((start, ready, j, n))

    def _pre_hook(self, j: int):
        def hook(module, args):
            if j == 0:  # a forward starts: entries left by one that broke off are stale (their copies, on
                self.inflight.clear()  # the same in-order stream, finish before any new one)
                self.pending_spans.clear()
            self._issue(j)
            self._issue(j + 1)
            b, ready = self.inflight[j]
            if self.guard:
                self.engine.wait(self.engine.compute, ready)
            for (p, _), view in zip(self.params[j], self.gpu_views[b][j], strict=True):
                p.data = view

        return hook

    def _post_hook(self, j: int):
        def hook(module, args, output):
            b, _ = self.inflight.pop(j)
            self.release[b] = self.engine.event(self.engine.compute)
            for (p, _), view in zip(self.params[j], self.home[j], strict=True):
                p.data = view
            self._flush_spans(j)

        return hook

    def _flush_spans(self, j: int) -> None:
        """Record the copies issued so far, once the forward's step is known (layer 0's update sets it)."""
        if not self.rt.in_step:
            self.pending_spans.clear()  # a forward without the plan cache: no step to stamp it with
            return
        rec = self.rt.rec
        for start, end, layer, n in self.pending_spans:
            rec.span("h2d", "h2d", start, end, layer=layer, nbytes=n, name="weights")
        self.pending_spans.clear()

    # ---- teardown ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Put every streamed parameter back on the device it came from and unregister the host region."""
        if self.closed:
            return
        self.closed = True
        self.engine.synchronize()
        for entries, views, devices in zip(self.params, self.home, self.origin, strict=True):
            for (p, _), view, dev in zip(entries, views, devices, strict=True):
                p.data = view.to(dev, copy=True)
        self.params = self.home = self.gpu_views = []
        self.host = []
        self.buffers = []
        self.inflight.clear()
        self.rt.extra_gpu_bytes.pop("weights", None)
        self.pool.close()
