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
        for mod in self.mods:
            homes = []
            for name in ("gate_up_proj", "down_proj"):
                p = getattr(mod, name)
                host = pinned_empty(tuple(p.shape), p.dtype, pinned)
                host.copy_(p.data)
                homes.append((p, p.device))
                p.data = host
            self.saved.append(homes)
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
        start = rt.rec.mark(eng.compute)
        nbytes = 0
        for j, e in enumerate(hit):
            for dst, src in ((gate_up[j], mod.gate_up_proj.data[e]), (down[j], mod.down_proj.data[e])):
                eng.copy(eng.compute, dst, src, "h2d")
                nbytes += src.numel() * src.element_size()
        end = rt.rec.mark(eng.compute)
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
        self.mods, self.saved, self.moved = [], [], []


def _fetching_forward(streamer: ExpertStreamer):
    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """The stock eager loop over the experts hit, from staged copies of their weights."""
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = [int(e) for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten()]
        hit = [e for e in hit if e < self.num_experts]
        gate_up, down = streamer.fetch(self, hit)
        for j, e in enumerate(hit):
            top_k_pos, token_idx = torch.where(mask[e])
            state = hidden_states[token_idx]
            gate, up = torch.nn.functional.linear(state, gate_up[j]).chunk(2, dim=-1)
            out = torch.nn.functional.linear(self.act_fn(gate) * up, down[j])
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    return forward
