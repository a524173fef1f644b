"""Streamed experts (plan.experts = "streamed"): the routed experts of the last MoE layers (all but
plan.resident_expert_layers) live in pinned host memory, and a forward fetches the experts its tokens picked once
the router has chosen them, as `roofsim.families.pipeline.expert_stream` prices them.

Mechanism: the stock experts module (Qwen3-MoE's and Mixtral's: `gate_up_proj` [E, 2I, h], `down_proj` [E, h, I])
keeps its Parameters, whose storage moves to the host; its forward is the stock eager loop over the experts hit,
except that it first copies those experts' rows into GPU staging tensors (on the compute stream: the copy waits
for the router and the MLP waits for the copy) and computes from them. Spans: resource "h2d", name "experts".
The rest of the decoder layers goes to the GPU (a model loaded with its layers in host memory, as `roofsim run`
loads it for this plan). Closing the cache puts the parameters back on the device they came from.
"""

from __future__ import annotations

import types

import torch
from roofsim.executor.hostpool import pinned_empty
from roofsim.executor.weights import decoder_layers

from roofsim.errors import UserError

STREAMABLE = ("Qwen3MoeExperts", "MixtralExperts")
"""Experts modules whose stock forward is the eager loop this module reproduces ([E, 2I, h] gate_up, no biases)."""


def experts_modules(model) -> list:
    """Each decoder layer's routed experts module that can stream (None for a dense layer, or experts of another
    layout: gpt-oss's, with biases and a transposed, interleaved gate/up)."""
    out = []
    for layer in decoder_layers(model):
        experts = getattr(getattr(layer, "mlp", None), "experts", None)
        out.append(experts if type(experts).__name__ in STREAMABLE else None)
    return out


class ExpertStreamer:
    """Moves the routed experts of the last `streamed` MoE layers to pinned host memory and swaps in the fetching
    forward (see the module doc)."""

    def __init__(self, rt, model, streamed: int):
        self.rt = rt
        mods = [m for m in experts_modules(model) if m is not None]
        if not mods:
            raise UserError(
                'experts="streamed" needs a MoE model (Qwen3-MoE, Mixtral); this one has no experts'
            )
        if streamed > len(mods):
            raise UserError(
                f"the plan streams the experts of {streamed} layers; the model has {len(mods)} MoE layers"
            )
        self.mods = mods[len(mods) - streamed :]
        self.device = rt.shape.device
        self.saved = []
        self.bytes_moved = 0  # H2D bytes of the experts fetched so far
        pinned = rt.engine.kind == "cuda"
        # per module (by id): each expert's host gate_up and down rows, the views a fetch copies from
        self.rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for mod in self.mods:
            homes = []
            for name in ("gate_up_proj", "down_proj"):
                p = getattr(mod, name)
                host = pinned_empty(tuple(p.shape), p.dtype, pinned)
                host.copy_(p.data)
                homes.append((p, p.device))
                p.data = host
            self.saved.append(homes)
            # made once: a decode step would otherwise make 2 a hit expert
            self.rows[id(mod)] = list(
                zip(mod.gate_up_proj.data.unbind(0), mod.down_proj.data.unbind(0), strict=True)
            )
            mod.forward = types.MethodType(_fetching_forward(self), mod)
        # the rest of the decoder layers on the GPU: a model loaded with its layers in host memory (what `roofsim
        # run` does for this plan, so that the experts need never fit on the GPU) gets them there now
        streamed = {id(p) for homes in self.saved for p, _ in homes}
        self.moved: list[tuple[torch.nn.Parameter, torch.device]] = []
        for layer in decoder_layers(model):
            for p in layer.parameters():
                if id(p) not in streamed and p.device != self.device:
                    self.moved.append((p, p.device))
                    p.data = p.data.to(self.device)
            for mod in layer.modules():
                for name, b in mod.named_buffers(recurse=False):
                    if b.device != self.device:
                        mod._buffers[name] = b.to(self.device)
        rt.close_callbacks.append(self.close)

    def fetch(self, mod, hit: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The picked experts' gate_up and down weights on the GPU, [n, 2I, h] and [n, h, I]."""
        rt, eng = self.rt, self.rt.engine
        gate_up = torch.empty(
            (len(hit), *mod.gate_up_proj.shape[1:]), dtype=mod.gate_up_proj.dtype, device=self.device
        )
        down = torch.empty(
            (len(hit), *mod.down_proj.shape[1:]), dtype=mod.down_proj.dtype, device=self.device
        )
        rows = self.rows[id(mod)]
        pairs = [
            pair
            for j, (g, d) in enumerate(zip(gate_up.unbind(0), down.unbind(0), strict=True))
            for pair in ((g, rows[hit[j]][0]), (d, rows[hit[j]][1]))
        ]
        start = rt.rec.mark(eng.compute)
        eng.copy_many(eng.compute, pairs, "h2d")
        end = rt.rec.mark(eng.compute)
        nbytes = sum(src.numel() * src.element_size() for _, src in pairs)
        rt.rec.span("h2d", "h2d", start, end, name="experts", nbytes=nbytes)
        self.bytes_moved += nbytes
        return gate_up, down

    def close(self) -> None:
        for mod, homes in zip(self.mods, self.saved, strict=True):
            for p, device in homes:
                p.data = p.data.to(device)
            del mod.forward  # the class's stock forward again
        for p, device in self.moved:
            p.data = p.data.to(device)
        self.mods, self.saved, self.moved, self.rows = [], [], [], {}


def expert_loop(self, hidden_states, top_k_index, top_k_weights, weights_of) -> torch.Tensor:
    """The stock eager loop over the experts hit (ascending, each over its tokens in ascending order, summed into
    the output by index_add_ as stock transformers does), with one host synchronisation a call instead of two a
    hit expert: the tokens sorted by expert once on the GPU and each hit expert's count read back together.
    `weights_of(hit)` gives the hit experts' gate_up and down weights ([n, 2I, h], [n, h, I])."""
    final = torch.zeros_like(hidden_states)
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    counts = torch.bincount(flat, minlength=self.num_experts)[: self.num_experts].tolist()  # the one sync
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs by expert, tokens ascending within one
    hit = [e for e, n in enumerate(counts) if n]
    gate_up, down = weights_of(hit)
    # every pair's token and routing weight in expert order, once: each hit expert's are then slices (views), so
    # the loop issues only its expert's own work (gather, gate/up, act, product, down, weight, index_add)
    tokens = order // k
    weights = top_k_weights.reshape(-1)[order, None]
    start = 0  # experts before the first hit one have no pairs
    for j, e in enumerate(hit):
        token_idx, weight = tokens[start : start + counts[e]], weights[start : start + counts[e]]
        start += counts[e]
        gate, up = torch.nn.functional.linear(hidden_states[token_idx], gate_up[j]).chunk(2, dim=-1)
        out = torch.nn.functional.linear(self.act_fn(gate) * up, down[j]) * weight
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final


def _fetching_forward(streamer: ExpertStreamer):
    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """The expert loop (expert_loop), from staged copies of the hit experts' weights."""
        return expert_loop(
            self, hidden_states, top_k_index, top_k_weights, lambda hit: streamer.fetch(self, hit)
        )

    return forward


def resident_forward(
    self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
):
    """The expert loop (expert_loop) over the module's own GPU weights: what use_expert_loop installs, and what
    calibrate times per expert hit."""

    def weights_of(hit):  # the j-th hit expert's weights: views of the module's own, nothing copied
        return _Picked(self.gate_up_proj, hit), _Picked(self.down_proj, hit)

    return expert_loop(self, hidden_states, top_k_index, top_k_weights, weights_of)


class _Picked:
    """weights[hit[j]] for j, as expert_loop indexes the staged copies."""

    def __init__(self, weights: torch.Tensor, hit: list[int]):
        self.weights, self.hit = weights, hit

    def __getitem__(self, j: int) -> torch.Tensor:
        return self.weights[self.hit[j]]


def use_expert_loop(model):
    """Give every streamable experts module that keeps its weights on the GPU the one-sync expert loop
    (expert_loop); ExpertStreamer gives the streamed ones theirs. Same results as the stock loop. Returns the
    function that gives them back their stock forward."""
    mods = [m for m in experts_modules(model) if m is not None and "forward" not in m.__dict__]
    for mod in mods:
        mod.forward = types.MethodType(resident_forward, mod)

    def restore() -> None:
        for mod in mods:
            mod.__dict__.pop("forward", None)

    return restore


BALANCED_TABLE = 4096  # positions of the routing table, reused cyclically
BALANCED_SCALE = 4.0  # the table's weight in the router logits, against their ~1 of random weights


def balance_routing(model, rt):
    """Route a random-weight MoE model's tokens as a trained model's load balancing spreads them. Random weights
    route badly: the residual stream of a random model grows alike across tokens layer by layer, so deep layers send
    a chunk's 16K tokens to a few dozen of 128 experts, where a trained model's balancing loss sends them to nearly
    all (what roofsim's models price: ModelSpec.experts_touched). Each router's logits get a fixed random row per
    token position (BALANCED_SCALE x N(0, 1) from a seeded table, shifted per layer), so the experts a token picks
    are spread uniformly and depend on its position only: the same in every plan and every chunking. The softmax,
    top-k and normalisation are the stock router's. Only for random weights (`roofsim run` without a checkpoint,
    load_model marks them); returns the function that gives the routers back their stock forward."""
    routers = [
        getattr(getattr(layer, "mlp", None), "gate", None) for layer in decoder_layers(model)
    ]  # Qwen3-MoE's and Mixtral's top-k routers: weight [E, h], top_k, num_experts
    routers = [(i, r) for i, r in enumerate(routers) if r is not None and hasattr(r, "top_k")]
    if not routers:
        return lambda: None
    E = routers[0][1].num_experts
    g = torch.Generator(device="cpu").manual_seed(1234)
    table = BALANCED_SCALE * torch.randn(BALANCED_TABLE, E, generator=g)
    tables: dict = {}  # the table on each device a router runs on

    def forward_of(layer: int):
        def forward(self, hidden_states):
            h = hidden_states.reshape(-1, self.hidden_dim)
            logits = torch.nn.functional.linear(h, self.weight)
            rows = torch.arange(h.shape[0], device=h.device)
            # rows are [batch, C] flattened; a forward without the cache (a warm-up) counts from 0
            pos = rt.P + rows % rt.C if rt.in_forward and rt.C else rows
            t = tables[h.device] if h.device in tables else tables.setdefault(h.device, table.to(h.device))
            logits = logits + t[(pos + 977 * layer) % BALANCED_TABLE].to(logits.dtype)
            probs = torch.nn.functional.softmax(logits, dtype=torch.float, dim=-1)
            top, idx = torch.topk(probs, self.top_k, dim=-1)
            if getattr(self, "norm_topk_prob", True):  # Mixtral's router always normalises
                top /= top.sum(dim=-1, keepdim=True)
            return logits, top.to(logits.dtype), idx

        return forward

    for i, r in routers:
        r.forward = types.MethodType(forward_of(i), r)

    def restore() -> None:
        for _, r in routers:
            r.__dict__.pop("forward", None)

    return restore
