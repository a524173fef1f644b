"""The plan's transformers `Cache`, its per-layer objects, the ring of GPU slot buffers, and the attention function
registered with `AttentionInterface` as "roofsim".

transformers calls `cache.update(k, v, layer)` and then the attention function with what `update` returned. The
cache returns the new K/V unchanged and remembers which layer they belong to; the attention function finds that
layer (by identity of the key tensor) and lets it attend under the plan: resident slots from GPU memory,
streamed slots through the ring, CPU heads on the CPU, recomputed prefixes, selected tokens. Projections, MLP,
norms and RoPE stay stock. Called without a plan cache, the function is plain bottom-right causal attention.

Streamed units (a slot, or a block of one) of a forward are known when it starts (layer 0's update); unit u
computes from ring buffer u mod n. Before unit u computes, units up to u + depth have their H2D issued on the
h2d stream, each after waiting on its buffer's release event: the event recorded after the last copy or
kernel that read the buffer's previous unit (the event-guarded pool), and on the last D2H into the host rows it
reads (with fewer units than buffers, a slot's next load would otherwise overtake its own write-back). The
compute stream waits on a unit's ready event. depth <= n - 1 guarantees the release event awaited was already recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from roofsim.executor.attention import causal_attention
from transformers.cache_utils import Cache, CacheLayerMixin

ATTN_NAME = "roofsim"
_TLS = threading.local()


@dataclass
class Shape:
    """What the executor needs of a model config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    batch: int
    dtype: torch.dtype
    device: torch.device

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_row_bytes(self, heads: int) -> int:
        """K and V of one token for `heads` KV heads, whole batch."""
        return self.batch * 2 * heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Unit:
    """One streamed unit of a step: `copies(flat)` gives the (gpu_dst, host_src) copies that fill ring buffer
    `flat`; `ready` is recorded on the h2d stream once they are issued."""

    key: tuple
    layer: int
    slot: int | None
    copies: Callable[[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]
    after: list = field(default_factory=list)  # events the H2D must follow (the last D2H into its host rows)
    buf: int = -1
    ready: object = None
    stages: list = field(default_factory=list)


class Ring:
    """n GPU buffers of `numel` elements, each with the event after which it may be overwritten."""

    def __init__(self, n: int, numel: int, dtype, device):
        self.n = n
        self.numel = numel
        self.flat = [torch.empty(numel, dtype=dtype, device=device) for _ in range(n)]
        self.release: list[object] = [None] * n
        self.guard = True  # tests turn this off to show the race it prevents

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.flat)


class Runtime:
    """State shared by the layers of one cache: engine, recorder, the current step and its streamed units."""

    def __init__(self, shape: Shape, plan, engine, recorder, capacity: int | None):
        self.shape = shape
        self.plan = plan
        self.engine = engine
        self.rec = recorder
        self.capacity = capacity
        self.layers: list[PlanLayer] = []
        self.ring: Ring | None = None
        self.depth = 1
        self.units: list[Unit] = []
        self.unit_index: dict[tuple, int] = {}
        self.issued = 0
        self.counter = 0
        self.phase_override: str | None = None
        self.steps = {"prefill": 0, "decode": 0}
        self.in_step = False
        self.in_forward = False  # inside a forward of the model with this cache (build's model hooks)
        self.P = self.C = 0
        self.last_mark = None
        self.forward_mark = None
        self.prompt_end: int | None = None
        self.pool = None
        self.notes: list[str] = []
        self.end_notes: list[Callable[[], str | None]] = []  # what the plan did, said once the run ends
        self.x_pending: dict[int, torch.Tensor] = {}
        self.hooks: list = []
        self.close_callbacks: list[Callable[[], None]] = []
        self.extra_gpu_bytes: dict[str, int] = {}
        self.pinned_extra = 0
        self.weights = None  # the WeightStreamer when plan.weights == "streamed"
        self.graph = None  # the GraphDecoder while it warms up or captures a decode step (graphs.py)
        self.fp8 = getattr(plan, "kv_dtype", "bf16") != "bf16"
        self._scratch: torch.Tensor | None = None
        self.fp8_stores: dict = {}  # (ring buffer address, slot heads) -> its kvquant.Store
        self.cpu_scratch: list = []  # fp8 cpu_attention: each CPU slot's KV in the model dtype, for the worker

    def kv_scratch(self, numel: int) -> torch.Tensor:
        """The scratch (model dtype, flat) an fp8 plan dequantises one attention call's KV into, at least `numel`
        elements: one for the whole cache, since the calls that use it follow each other on the compute stream.
        Grown where a call needs more (a resident slot past the capacity planned)."""
        if self._scratch is None or self._scratch.numel() < numel:
            self._scratch = None
            self._scratch = torch.empty(numel, dtype=self.shape.dtype, device=self.shape.device)
            self.extra_gpu_bytes["kv_buffers"] = numel * self._scratch.element_size()
        return self._scratch

    # ---- steps -----------------------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        if self.phase_override:
            return self.phase_override
        return "prefill" if self.C > 1 else "decode"

    def forward_start(self) -> None:
        self.in_forward = True
        self.forward_mark = self.rec.mark(self.engine.compute)

    def begin_step(self, P: int, C: int) -> None:
        if self.in_step:  # the previous forward broke off
            self.end_step()
        self.in_step = True
        self.P, self.C = P, C
        self.rec.phase, self.rec.step = self.phase, self.steps[self.phase]
        self.units = [u for layer in self.layers for u in layer.units(P, C)]
        self.unit_index = {u.key: i for i, u in enumerate(self.units)}
        self.issued = 0
        self.base = self.counter
        self.counter += len(self.units)
        mark = self.forward_mark or self.rec.mark(self.engine.compute)
        self.forward_mark = None
        self.last_mark = mark
        if self.depth > 0 and self.units:
            self._issue_through(min(self.depth, len(self.units)) - 1)

    def end_step(self) -> None:
        if not self.in_step:
            return
        end = self.rec.mark(self.engine.compute)
        self.rec.span("compute", "gemm", self.last_mark, end, name="final norm and LM head")
        self.in_step = False
        self.steps[self.phase] += 1

    # ---- the ring ------------------------------------------------------------------------------------------

    def _issue_through(self, last: int) -> None:
        eng, rec, ring = self.engine, self.rec, self.ring
        while self.issued <= last:
            u = self.units[self.issued]
            u.buf = (self.base + self.issued) % ring.n
            if ring.guard:
                eng.wait(eng.h2d, ring.release[u.buf])
            for ev in u.after:
                eng.wait(eng.h2d, ev)
            start = rec.mark(eng.h2d)
            nbytes = 0
            for item in u.copies(ring.flat[u.buf]):
                if item is None:  # a stage boundary: compute may wait for the copies so far
                    u.stages.append(eng.event(eng.h2d))
                    continue
                dst, src = item
                eng.copy(eng.h2d, dst, src)
                nbytes += src.numel() * src.element_size()
            u.ready = eng.event(eng.h2d)
            if nbytes:
                rec.span("h2d", "h2d", start, u.ready, layer=u.layer, slot=u.slot, nbytes=nbytes)
            self.issued += 1

    def acquire(self, key: tuple, wait: bool = True) -> tuple[torch.Tensor, Unit]:
        """Issue the prefetches due when unit `key` starts, make compute wait for it (unless `wait` is False:
        the caller waits on `unit.stages` and `unit.ready` itself), and return its buffer."""
        i = self.unit_index[key]
        self._issue_through(min(i + self.depth, len(self.units) - 1))
        u = self.units[i]
        if wait:
            self.engine.wait(self.engine.compute, u.ready)
        return self.ring.flat[u.buf], u

    def release(self, unit: Unit, event) -> None:
        self.ring.release[unit.buf] = event

    def unit_pending(self, key: tuple) -> Unit:
        return self.units[self.unit_index[key]]

    # ---- teardown ------------------------------------------------------------------------------------------

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        for cb in self.close_callbacks:
            cb()
        self.close_callbacks.clear()
        self.engine.synchronize()
        # layers and runtime reference each other: drop the memory now rather than at the next gc pass
        for layer in self.layers:
            layer.__dict__.update(
                {k: None for k, v in layer.__dict__.items() if k not in ("rt", "idx", "seen")}
            )
        self.layers = []
        self.units = []
        self.ring = None
        self._scratch = None
        self.fp8_stores = {}
        self.cpu_scratch = []
        self.x_pending.clear()
        _TLS.pending = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class PlanLayer(CacheLayerMixin):
    """One decoder layer's KV under the plan. Subclasses implement `units` and `_attend`."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, rt: Runtime, idx: int):
        super().__init__()
        self.rt = rt
        self.idx = idx
        self.seen = 0
        self.is_initialized = True
        self.P = self.C = 0
        self.k_new = self.v_new = None

    # -- CacheLayerMixin ----------------------------------------------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        C = key_states.shape[-2]
        if self.idx == 0:
            self.rt.begin_step(self.seen, C)
        self.P, self.C = self.seen, C
        cap = self.rt.capacity
        if cap is not None and self.seen + C > cap and not self.grows:
            from roofsim.errors import UserError

            raise UserError(
                f"the cache holds {cap} tokens and this forward needs {self.seen + C}; "
                "pass a larger max_tokens to make_cache"
            )
        self.seen += C
        self.k_new, self.v_new = key_states, value_states
        return key_states, value_states

    grows = False

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1 if self.rt.capacity is None else self.rt.capacity

    def reset(self) -> None:
        raise NotImplementedError("a roofsim plan cache cannot be reset; make a new one with make_cache")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("beam search is not supported by roofsim plan caches")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a roofsim plan cache cannot be cropped")

    # -- plan --------------------------------------------------------------------------------------------------
    def units(self, P: int, C: int) -> list[Unit]:
        return []

    def gpu_bytes(self) -> dict[str, int]:
        return {}

    def graph_ready(self) -> bool:
        """True where the layer's decode GPU work has fixed shapes and no host waits or copies over the link, so
        that a CUDA graph can replay it (executor/graphs.py)."""
        return False

    def prepare_graph(self) -> None:
        """Make the layer's decode shapes fixed before a capture (or the static-input step): buffers grown to hold
        every step up to the capacity. Slot layers preallocate at the capacity already."""

    def graph_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A graph-ready layer's K and V [B, g, T, D] as its replayed decode attends them (the decode kernel is
        chosen on them)."""
        raise NotImplementedError(f"{type(self).__name__} does not replay its decode")

    def replayed(self, n: int) -> None:
        """The host-side counts after a replayed decode step at position n (the graph ran the layer's GPU work;
        the host ran none of its code)."""
        self.P, self.C, self.seen = n, 1, n + 1

    def flush(self) -> None:
        """Send KV the layer still holds back on the GPU to its host store (slot plans' write-back tail)."""

    def attend(self, module, q: torch.Tensor, scale: float) -> torch.Tensor:
        rt, rec = self.rt, self.rt.rec
        t0 = rec.mark(rt.engine.compute)
        rec.span("compute", "gemm", rt.last_mark, t0, layer=self.idx, name="norm, projections, RoPE, MLP")
        out = self._attend(module, q, scale)
        self.k_new = self.v_new = None
        rt.last_mark = rec.mark(rt.engine.compute)
        return out

    def _attend(self, module, q: torch.Tensor, scale: float) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------------------------
    def attn_span(self, start, end, slot, keys: int, heads: int, queries: int):
        """Record an attention span with its FLOPs and the KV bytes it read."""
        sh = self.rt.shape
        flops = 4.0 * sh.batch * heads * sh.group * queries * keys * sh.head_dim
        self.rt.rec.span(
            "compute",
            "attention",
            start,
            end,
            layer=self.idx,
            slot=slot,
            nbytes=keys * sh.kv_row_bytes(heads),
            flops=flops,
        )


class RoofCache(Cache):
    """A transformers Cache whose layers run a roofsim Plan. Made by `roofsim.executor.make_cache`."""

    def __init__(self, runtime: Runtime, layers: list[PlanLayer]):
        super().__init__(layers=layers)
        self.runtime = runtime
        runtime.layers = layers

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        k, v = layer.update(key_states, value_states)
        _TLS.pending = (layer, k)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen if self.layers else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    @property
    def plan(self):
        return self.runtime.plan

    @property
    def pinned_host_bytes(self) -> int:
        pool = self.runtime.pool
        return (pool.pinned_bytes if pool is not None else 0) + self.runtime.pinned_extra

    def gpu_bytes(self) -> dict[str, int]:
        """GPU memory the cache holds, by kind. With streamed weights also "weights": what of the model stays on
        the GPU (embeddings, final norm, LM head) plus the two layer buffers."""
        out = {"kv_resident": 0, "kv_buffers": self.runtime.ring.nbytes if self.runtime.ring else 0}
        for layer in self.layers:
            for k, v in layer.gpu_bytes().items():
                out[k] = out.get(k, 0) + v
        for k, v in self.runtime.extra_gpu_bytes.items():
            out[k] = out.get(k, 0) + v
        return out

    def kv_heads_per_call(self) -> set[int]:
        """The KV-head counts one attention call of this plan covers: a whole layer's, and each slot's."""
        heads = {self.runtime.shape.n_kv_heads}
        for layer in self.layers:
            heads |= {s.g for s in getattr(layer, "slots", ())}
        return heads

    def set_prompt_length(self, n: int) -> None:
        """Tell plans that treat the prompt's end specially (evict's local tokens) where it is."""
        self.runtime.prompt_end = n

    def close(self) -> None:
        """Unregister pinned memory, remove hooks; the cache is unusable afterwards."""
        self.runtime.close()


def roofsim_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: (out [B, C, Hq, D], None)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    pending = getattr(_TLS, "pending", None)
    if pending is not None and pending[1] is key:
        _TLS.pending = None
        out = pending[0].attend(module, query, scale)
    else:
        out = causal_attention(query, key, value, scale)
    return out.transpose(1, 2), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _opaque.get("attention", roofsim_attention))


_opaque: dict = {}


def opaque_to_dynamo() -> None:
    """Make the cache's update and the registered attention function opaque calls to dynamo, for compiled decoder
    layers (fuse.compile_layers): dynamo must not trace the layers' host-side bookkeeping (token counts, the
    pending layer), which changes at every call. Done once, on first use, not at import: `torch.compiler.disable`
    imports dynamo, seconds of every fresh process's start."""
    if _opaque:
        return
    _opaque["attention"] = torch.compiler.disable(roofsim_attention)
    RoofCache.update = torch.compiler.disable(RoofCache.update)
    register_attention()
