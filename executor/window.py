"""Window layers (Gemma 3's sliding layers): every plan keeps their KV on the GPU, at most the last window - 1
tokens, which is all a later query can see. The plan's family places the global layers' KV only.

A query at position t attends keys t - window + 1 .. t (transformers' sliding mask: kv > q - window, kv <= q):
the cached rows, then the chunk's own keys, under a banded causal mask.

Replayed decode (executor/graphs.py): before a capture the kept rows move into a ring of `window` rows, the row of
position p at p mod window, so a step writes its row at the device position mod window and attends the first
min(position + 1, window) rows: fixed shapes, and softmax does not care in which order the keys lie (each was
rotated at its own position when it was written). An eager forward after replayed steps puts the rows back in
position order first.
"""

from __future__ import annotations

import torch
from roofsim.executor.attention import attend, decode_attend, merge
from roofsim.executor.cache import PlanLayer, Runtime
from roofsim.executor.slots import with_sinks


class WindowLayer(PlanLayer):
    """A window layer's KV `[B, Hkv, <= window - 1, D]` for K and V, on the GPU, trimmed after every forward."""

    def __init__(self, rt: Runtime, idx: int, window: int):
        super().__init__(rt, idx)
        self.window = window
        self.k = self.v = None
        self.ring = False  # k, v are the replay's ring of `window` rows (position p at row p mod window)
        self.sinks = False  # the module has attention sinks (gpt-oss): its decode needs the LSE, not replayed

    def gpu_bytes(self) -> dict[str, int]:
        if self.k is None:
            return {"kv_window": 0}
        return {"kv_window": 2 * self.k.numel() * self.k.element_size()}

    def graph_ready(self) -> bool:
        """After the prefill (the kept rows exist), without sinks: prepare_graph makes the decode shapes fixed."""
        return self.rt.capacity is not None and self.k is not None and not self.sinks

    def prepare_graph(self) -> None:
        """Move the kept rows (positions seen - kept .. seen - 1) into a ring of `window` rows at position mod
        window; the rows no position holds yet are zeroed (the masked decode kernel multiplies them by a
        probability of 0, and 0 x a NaN left in fresh memory is NaN)."""
        if self.ring:
            return
        W, kept = self.window, self.k.shape[2]
        rows = torch.arange(self.seen - kept, self.seen, device=self.k.device) % W
        k = self.k.new_zeros(*self.k.shape[:2], W, self.k.shape[3])
        v = torch.zeros_like(k)
        k.index_copy_(2, rows, self.k)
        v.index_copy_(2, rows, self.v)
        self.k, self.v, self.ring = k, v, True

    def graph_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k, self.v

    def _attend_replayed(self, q: torch.Tensor, scale: float, graph) -> torch.Tensor:
        """The decode step at the graph's device position p: its row written at p mod window, attention over the
        first min(p + 1, window) rows of the ring (device ops only, so a capture holds them)."""
        W = self.window
        at = graph.pos.view(1) % W
        self.k.index_copy_(2, at, self.k_new)
        self.v.index_copy_(2, at, self.v_new)
        return decode_attend(q, self.k, self.v, graph.n_keys.clamp(max=W), scale)

    def _unring(self) -> None:
        """Back from the ring to the eager layout: the last min(window - 1, seen) positions' rows in order."""
        P, W = self.P, self.window
        keep = min(W - 1, P)
        rows = torch.arange(P - keep, P, device=self.k.device) % W
        self.k = self.k.index_select(2, rows)
        self.v = self.v.index_select(2, rows)
        self.ring = False

    def _attend(self, module, q: torch.Tensor, scale: float) -> torch.Tensor:
        """q [B, Hq, C, D] -> out [B, Hq, C, D]."""
        if self.rt.graph is not None:
            return self._attend_replayed(q, scale, self.rt.graph)
        if self.ring:
            self._unring()
        rec, eng = self.rt.rec, self.rt.engine
        a0 = rec.mark(eng.compute)
        C, W = self.C, self.window
        if self.k is None:
            K, V = self.k_new, self.v_new
        else:
            K, V = torch.cat([self.k, self.k_new], dim=2), torch.cat([self.v, self.v_new], dim=2)
        out, lse = banded_attention(q, K, V, K.shape[2] - C, W, scale)
        sinks = getattr(module, "sinks", None)
        self.sinks = sinks is not None
        if sinks is not None:  # gpt-oss: one more logit per head, its sink, with no value
            out = with_sinks(out, lse, sinks)
        keep = min(W - 1, K.shape[2])
        self.k = K[:, :, K.shape[2] - keep :].contiguous()
        self.v = V[:, :, V.shape[2] - keep :].contiguous()
        # at most W keys a query: the band, not the C x (kept + C) rectangle
        self.attn_span(a0, rec.mark(eng.compute), None, min(W, K.shape[2]), K.shape[1], C)
        return out


@torch.no_grad()
def warm_up_windows(layers, chunk: int) -> None:
    """Run each banded call shape a window layer's prefill makes, once, untimed: a first chunk (no kept rows, its
    first block the odd one) and a chunk after a full window (every block regular), at each window the layers
    have. The cache-less warm-up forward never calls banded_attention, and its first calls (flash_window's
    self-check and first call on CUDA; elsewhere the blocks' kernels) and their allocations would otherwise fall
    in the timed prefill."""
    windows = sorted({layer.window for layer in layers if isinstance(layer, WindowLayer)})
    if not windows or chunk < 2:
        return
    shape = layers[0].rt.shape
    B, Hkv, G, D = shape.batch, shape.n_kv_heads, shape.group, shape.head_dim
    for W in windows:
        for kept in (0, W - 1):
            # q with the strides a layer's q has: a transposed view of [B, C, Hq, D]
            q = torch.randn(B, chunk, Hkv * G, D, device=shape.device, dtype=shape.dtype).transpose(1, 2)
            K, V = (
                torch.randn(B, Hkv, kept + chunk, D, device=shape.device, dtype=shape.dtype) for _ in "kv"
            )
            banded_attention(q, K, V, kept, W, D**-0.5)
    if shape.device.type == "cuda":
        torch.cuda.synchronize(shape.device)


GROUP_ROWS = 4096
"""Query rows of the regular blocks that one batched call of banded_attention takes: its copies and fp32 merge
temporaries stay this many rows, not the chunk's."""


def banded_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, kept: int, W: int, scale: float):
    """Sliding-window attention of a chunk without a mask. q [B, Hq, C, D] at positions P..P+C-1; K, V
    [B, Hkv, kept + C, D] hold the kept rows (positions P-kept..P-1, kept = min(W - 1, P)) then the chunk's own.
    The query at position t attends keys t-W+1..t. Returns (out [B, Hq, C, D], lse [B, Hq, C] fp32).

    The chunk's queries go in blocks of W rows. A block's queries (rows i, from position s) see its own keys
    causally (a square), and of the n <= W-1 keys before it (index j, positions s-n..s-1) those with
    j >= i - c, c = W-1-n (c > 0 only where fewer than W-1 keys precede the block: the sequence's start). That is
    an upper triangle: rows [0, c) see all n keys (unmasked); rows c..c+Q-1 see keys j >= i - c, an upper
    triangle of Q rows whose square part, rows and keys both reversed, is an ordinary causal square, and whose
    keys past it (j >= Q) every one of those rows sees. So every part is a square causal or an unmasked call of
    the flash kernels, merged by LSE: the work is the band (C x W), not C x (kept + C) under a mask. The blocks
    with c = 0 and W rows all have one shape and run batched, GROUP_ROWS query rows a call of each part."""
    B, Hq, C, D = q.shape
    if C == 1:  # a decode step: every kept key is in the window
        return attend(q, K, V, causal=False, scale=scale)
    if flash_window_ok(q.device, q.dtype, D):
        return flash_window(q, K, V, W, scale)
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, C, dtype=torch.float32, device=q.device)
    first = 0 if kept == W - 1 else 1  # block 0 is regular when W-1 keys precede it
    full = C // W  # blocks of W rows
    per = max(1, GROUP_ROWS // W)  # regular blocks per batched call: its temporaries stay a few thousand rows
    # regular blocks: keys before at K[bW : bW + W-1], own at K[kept + bW ..]
    for b0 in range(first, full, per):
        nb = min(per, full - b0)
        o, x = _regular_blocks(q, K, V, kept, W, b0, nb, scale)
        out[:, :, b0 * W : (b0 + nb) * W] = o
        lse[:, :, b0 * W : (b0 + nb) * W] = x
    odd = ({0} if first else set()) | ({full} if full * W < C else set())  # the sequence's start, a last part
    for b in sorted(odd):
        s = b * W
        L = min(W, C - s)
        n = min(W - 1, kept + s)  # keys before the block
        o, x = _one_block(q[:, :, s : s + L], K, V, kept + s - n, kept + s, L, n, W, scale)
        out[:, :, s : s + L] = o
        lse[:, :, s : s + L] = x
    return out, lse


def flash_window(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, W: int, scale: float):
    """banded_attention in one call of FlashAttention-2's own sliding window (CUDA, 16-bit, head dim <= 256):
    causal with the keys aligned bottom-right (query i of C sees key kept + i and the W-1 before it) and
    window_size_left = W-1, GQA native. The band's FLOPs at the kernel's rate, no folds, flips or merges."""
    C, L = q.shape[2], K.shape[2]
    r = torch.ops.aten._flash_attention_forward(
        q.transpose(1, 2), K.transpose(1, 2), V.transpose(1, 2), None, None, C, L, 0.0, True, False,
        scale=scale, window_size_left=W - 1, window_size_right=0,
    )  # fmt: skip
    return r[0].transpose(1, 2), r[1][..., :C]


_flash_window_checked: dict[tuple, bool] = {}


def flash_window_ok(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether flash_window runs here and agrees with the block path in fp32 (which never takes it), checked once
    per device, dtype and head dim: at a sequence's start and after a full window, GQA, attention's tolerances."""
    key = (device.type, dtype, head_dim)
    if key not in _flash_window_checked:
        ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim <= 256
        if ok:
            g = torch.Generator(device="cpu").manual_seed(0)
            try:
                for kept, C in ((0, 37), (6, 37)):
                    q = torch.randn(1, C, 4, head_dim, generator=g).to(device, dtype).transpose(1, 2)
                    K, V = (
                        torch.randn(1, 2, kept + C, head_dim, generator=g).to(device, dtype) for _ in "kv"
                    )
                    out, lse = flash_window(q, K, V, 7, head_dim**-0.5)
                    ref, ref_lse = banded_attention(
                        q.float(), K.float(), V.float(), kept, 7, head_dim**-0.5
                    )  # blocks
                    err = (out.float() - ref).norm() / ref.norm()
                    ok = ok and bool(err < 2e-2) and torch.allclose(lse.float(), ref_lse, atol=0.2, rtol=2e-2)
            except (RuntimeError, NotImplementedError, TypeError):
                ok = False
        _flash_window_checked[key] = ok
    return _flash_window_checked[key]


def _regular_blocks(q, K, V, kept: int, W: int, first: int, nb: int, scale: float):
    """Blocks first..first+nb-1 of W rows, each with W-1 keys before it: own causal square, then the reversed
    causal square of rows 0..W-2 over the W-1 keys before (row i sees key j iff j >= i), one batched call each."""
    B, Hq, _, D = q.shape
    s0 = first * W

    def fold(x, start, rows):  # blocks of `rows` rows every W, from `start`: [B*nb, H, rows, D]
        H = x.shape[1]
        st = x.stride()
        v = x.as_strided(
            (B, nb, H, rows, D), (st[0], W * st[2], st[1], st[2], st[3]), x.storage_offset() + start * st[2]
        )
        return v.reshape(B * nb, H, rows, D)

    qb = fold(q, s0, W)
    o_own, l_own = attend(qb, fold(K, kept + s0, W), fold(V, kept + s0, W), causal=True, scale=scale)
    # rows 0..W-2 against keys kept+s-(W-1) .. kept+s-1, both reversed
    qr = qb[:, :, : W - 1].flip(-2)
    kr = fold(K, kept + s0 - (W - 1), W - 1).flip(-2)
    vr = fold(V, kept + s0 - (W - 1), W - 1).flip(-2)
    o_prev, l_prev = attend(qr, kr, vr, causal=True, scale=scale)
    o, x = merge([o_own[:, :, : W - 1], o_prev.flip(-2)], [l_own[:, :, : W - 1], l_prev.flip(-1)])
    o_own[:, :, : W - 1] = o
    l_own[:, :, : W - 1] = x

    def unfold(t):  # [B*nb, H, W, ...] -> [B, H, nb*W, ...]
        t = t.reshape(B, nb, *t.shape[1:]).transpose(1, 2)
        return t.reshape(B, t.shape[1], nb * W, *t.shape[4:])

    return unfold(o_own), unfold(l_own)


def _one_block(q, K, V, k0: int, own: int, L: int, n: int, W: int, scale: float):
    """One block of L rows (q [B, Hq, L, D]) whose own keys start at K index `own`, with the n keys before it at
    K[k0 : k0 + n] (n <= W-1): the parts of banded_attention's doc, merged by LSE row range by row range."""
    o, x = attend(q, K[:, :, own : own + L], V[:, :, own : own + L], causal=True, scale=scale)
    if n == 0:
        return o, x
    o, x = o.clone(), x.clone()
    c = W - 1 - n
    Kp, Vp = K[:, :, k0 : k0 + n], V[:, :, k0 : k0 + n]

    def add(rows: slice, o2, x2):
        m, y = merge([o[:, :, rows], o2], [x[:, :, rows], x2])
        o[:, :, rows] = m
        x[:, :, rows] = y

    if c > 0:  # rows [0, c) see all n keys before the block
        r = min(c, L)
        add(slice(0, r), *attend(q[:, :, :r], Kp, Vp, causal=False, scale=scale))
    Q = min(L, W - 1) - c  # rows c..c+Q-1 see keys j >= i - c
    if Q > 0:
        rows = slice(c, c + Q)
        qr = q[:, :, rows].flip(-2)
        o2, x2 = attend(qr, Kp[:, :, :Q].flip(-2), Vp[:, :, :Q].flip(-2), causal=True, scale=scale)
        o2, x2 = o2.flip(-2), x2.flip(-1)
        if Q < n:  # keys j >= Q: every one of these rows sees them
            o3, x3 = attend(q[:, :, rows], Kp[:, :, Q:], Vp[:, :, Q:], causal=False, scale=scale)
            o2, x2 = merge([o2, o3], [x2, x3])
        add(rows, o2, x2)
    return o, x


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
