"""One rank's share of a stock transformers model under tensor parallelism by heads (Megatron's split), and the
all-reduces that make the ranks' partial sums whole (`roofsim.tensor_parallel` prices the same split).

Rank r of tp keeps, in every decoder layer (Linear weights are [out, in]):

    q_proj rows    [r*H/tp, (r+1)*H/tp) heads x D     (the query heads it owns; bias rows likewise)
    k_proj, v_proj rows of KV heads [r*G/tp, (r+1)*G/tp) x D  (the KV heads those queries read)
    o_proj columns of its query heads                 (a partial sum of the attention output)
    gate/up rows   [r*W/tp, (r+1)*W/tp)               (Phi-3's fused qkv_proj and gate_up_proj: the same rows
    down columns   of the same range                   of each part)

and the rest whole (embeddings, norms, per-head-dim q/k norms, the LM head). The config then says H/tp heads,
G/tp KV heads and W/tp of MLP width, so the plan cache (`build.shape_of`) sizes this rank's KV from the shard and a
plan family runs on it unchanged. A forward hook on o_proj and on down_proj sums their outputs over the ranks
(`dist.all_reduce`, in place): after it every rank holds the whole layer's hidden state. A bias of o_proj or
down_proj is added once, by rank 0 (the others' are zeroed), so the sum counts it once.

The model is sliced where it was loaded (each rank builds or loads the whole model first, from the same seed or
checkpoint, so the ranks' shares are of one model).
"""

from __future__ import annotations

import torch
from roofsim.executor.weights import decoder_layers

from roofsim.errors import UserError

_OWNER = "_roofsim_tp"


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def _keep(param: torch.nn.Parameter, index: torch.Tensor, dim: int) -> torch.nn.Parameter:
    """A new Parameter of `param`'s rows (dim 0) or columns (dim 1) at `index`, a copy on its device (the whole
    tensor is freed once the module drops it)."""
    return torch.nn.Parameter(param.data.index_select(dim, index.to(param.device)), requires_grad=False)


def _rows(linear, index) -> None:
    linear.weight = _keep(linear.weight, index, 0)
    if linear.bias is not None:
        linear.bias = _keep(linear.bias, index, 0)
    linear.out_features = linear.weight.shape[0]


def _cols(linear, index, rank: int) -> None:
    linear.weight = _keep(linear.weight, index, 1)
    if linear.bias is not None and rank:
        linear.bias.data.zero_()  # summed over ranks: rank 0's bias alone
    linear.in_features = linear.weight.shape[1]


def _span(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n)


def shard_(model, rank: int, tp: int) -> None:
    """Slice `model` in place to rank `rank`'s share of a `tp`-way split (see the module doc); tp=1 leaves it."""
    if tp == 1:
        return
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} of {tp}")
    if hasattr(model, _OWNER):
        raise ValueError(f"the model is rank {getattr(model, _OWNER)} (rank, tp) of a split already")
    cfg = _text_config(model)
    H, G, W = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads or cfg.num_attention_heads,
        cfg.intermediate_size,
    )
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    for what, n in (("attention heads", H), ("KV heads", G), ("MLP width", W)):
        if n % tp:
            raise UserError(f"--tp {tp}: the model's {n} {what} do not split {tp} ways")
    h, g, w = H // tp, G // tp, W // tp
    q, kv, mlp = _span(rank * h * D, h * D), _span(rank * g * D, g * D), _span(rank * w, w)
    for layer in decoder_layers(model, "tensor parallelism"):
        attn, ffn = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if hasattr(attn, "q_proj"):
            _rows(attn.q_proj, q)
            _rows(attn.k_proj, kv)
            _rows(attn.v_proj, kv)
        elif hasattr(attn, "qkv_proj"):  # Phi-3: rows [q | k | v]
            _rows(attn.qkv_proj, torch.cat([q, H * D + kv, H * D + G * D + kv]))
            attn.num_key_value_heads = g
        else:
            raise UserError(
                f"--tp {tp}: {type(attn).__name__} has no q/k/v projections the executor can split"
            )
        if hasattr(attn, "sinks"):
            raise UserError(f"--tp {tp}: attention sinks per head are not split by the executor")
        _cols(attn.o_proj, q, rank)
        if isinstance(getattr(ffn, "gate_proj", None), torch.nn.Linear):
            _rows(ffn.gate_proj, mlp)
            _rows(ffn.up_proj, mlp)
        elif isinstance(getattr(ffn, "gate_up_proj", None), torch.nn.Linear):  # Phi-3: rows [gate | up]
            _rows(ffn.gate_up_proj, torch.cat([mlp, W + mlp]))
        else:
            raise UserError(
                f"--tp {tp}: {type(ffn).__name__} is not a dense MLP; tensor parallelism covers dense models"
            )
        _cols(ffn.down_proj, mlp, rank)
    cfg.head_dim = D  # Phi-3 derives it from hidden / heads otherwise
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = h, g, w
    setattr(model, _OWNER, (rank, tp))


def reduce_outputs(model, group=None) -> list:
    """Forward hooks that sum o_proj's and down_proj's outputs over the process group (in place), one each per
    decoder layer; returns their handles."""
    import torch.distributed as dist

    def total(module, args, out):
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    handles = []
    for layer in decoder_layers(model, "tensor parallelism"):
        handles.append(layer.self_attn.o_proj.register_forward_hook(total))
        handles.append(layer.mlp.down_proj.register_forward_hook(total))
    return handles
