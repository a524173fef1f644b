"""Fused projections and norms.

Projections: the linear layers that read the same input (q, k and v; the MLP's gate and up) read one
concatenated weight in one matrix product, as gpt-fast's `wqkv` does. A decode step reads each weight once per
token, and one product over the concatenated weight streams it at a higher rate than three smaller ones.

The modules stay where transformers calls them. Their weights become row slices of the fused weight (no second
copy); the first module of a group computes the fused product and hands the others their slices of it, which they
return when called on the same input tensor (transformers passes the one hidden-states tensor to each), and compute
alone otherwise.

Norms (`fuse_norms`): the RMSNorm of Llama-style models (`weight * (x * rsqrt(mean(x^2) + eps)).to(dtype)`, eight
kernels in eager: the fp32 cast, square, mean, add, rsqrt, product, cast back, weight) as one call of torch's
`F.rms_norm` (one fused kernel on CUDA where torch has it), the same arithmetic in fp32 but for where the weight is
applied (before the cast to the model's dtype, not after): a one-token decode step issues 2 of these a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fuse_projections(model) -> int:
    """Fuse q/k/v and gate/up of every decoder layer that has them (same input size, dtype and device, biases on
    all or none). Returns the number of groups fused."""
    base = getattr(model, "model", model)
    n = 0
    for layer in getattr(base, "layers", ()):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        groups = [
            [getattr(attn, a, None) for a in ("q_proj", "k_proj", "v_proj")],
            [getattr(mlp, a, None) for a in ("gate_proj", "up_proj")],
        ]
        n += sum(_fuse(g) for g in groups)
    return n


def _fuse(mods: list) -> bool:
    if any(not isinstance(m, torch.nn.Linear) or getattr(m, "_roofsim_fused", False) for m in mods):
        return False
    ws = [m.weight for m in mods]
    if len({(w.shape[1], w.dtype, w.device) for w in ws}) != 1:
        return False
    biases = [m.bias for m in mods]
    if any(b is None for b in biases) != all(b is None for b in biases):
        return False
    with torch.no_grad():
        weight = torch.cat([w.detach() for w in ws])
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    sizes = [w.shape[0] for w in ws]
    start = 0
    for m, rows in zip(mods, sizes, strict=True):
        m.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
        m._roofsim_fused = True
        start += rows
    handed: dict = {}  # input tensor and the slices not yet taken

    def first(x):
        y = F.linear(x, weight, bias)
        parts = list(y.split(sizes, dim=-1))
        handed.update(x=x, parts=dict(enumerate(parts[1:], 1)))
        return parts[0]

    def later(i, m):
        def forward(x):
            parts = handed.get("parts", {})
            if handed.get("x") is x and i in parts:
                out = parts.pop(i)
                if not parts:
                    handed.clear()
                return out
            return F.linear(x, m.weight, m.bias)

        return forward

    mods[0].forward = first
    for i, m in enumerate(mods[1:], 1):
        m.forward = later(i, m)
    return True


LLAMA_STYLE_NORMS = (
    "LlamaRMSNorm",
    "MistralRMSNorm",
    "Qwen2RMSNorm",
    "Qwen3RMSNorm",
    "Qwen3MoeRMSNorm",
    "Phi3RMSNorm",
)
"""RMSNorm classes whose forward is Llama's (`weight * normed.to(dtype)`); Gemma's scales by 1 + weight instead."""


def fuse_norms(model) -> int:
    """Give every Llama-style RMSNorm of `model` (LLAMA_STYLE_NORMS, a 1-D weight) the one-call forward (see the
    module doc). Returns the number of norms changed; a module's own forward comes back with `del m.forward`."""
    n = 0
    for mod in model.modules():
        if type(mod).__name__ not in LLAMA_STYLE_NORMS or "forward" in mod.__dict__:
            continue
        weight = getattr(mod, "weight", None)
        eps = getattr(mod, "variance_epsilon", None)
        if weight is None or weight.dim() != 1 or eps is None:
            continue
        mod.forward = _one_call_norm(mod, float(eps))
        n += 1
    return n


def _one_call_norm(mod, eps: float):
    def forward(x: torch.Tensor) -> torch.Tensor:
        # a weight kept in another dtype than the input's: the stock forward's casts
        if x.dtype != mod.weight.dtype:
            return type(mod).forward(mod, x)
        return F.rms_norm(x, (x.shape[-1],), mod.weight, eps)

    return forward


def compile_layers(model, prefill: bool = False, backend: str = "inductor", mode: str | None = None) -> int:
    """Give every decoder layer of `model` a torch.compile'd forward for replayed decode steps, and with
    `prefill` for every forward through a plan's cache (prefill chunks, eager decode); other calls keep the
    layer's own forward. Returns the number of layers changed.

    Beside the matrix products and the attention, a layer runs tens of elementwise kernels (RoPE's slices,
    negations, concatenations and products, the norms' casts, SiLU times up, the residual adds). In a replayed
    decode step each is a launch gap and a few KB; in a prefill chunk each is a pass over a chunk-sized tensor in
    HBM. Inductor fuses each run of them between two opaque calls (matrix products, the cache's update and the
    attention function, which dynamo does not trace: cache.py) into one Triton kernel. Shapes are fixed per call
    site (a decode step's, a chunk's: the past's length reaches only the opaque calls): dynamic=False, one
    compilation per shape, a replayed step's in the warm-up before capture. Integer attributes of the layers
    (their index) are constants to dynamo, so each layer compiles once per shape (the same graph each time, which
    inductor's cache serves after the first). backend: torch.compile's (the CPU tests trace with "aot_eager",
    which checks dynamo's capture around the opaque calls without generating code). mode: torch.compile's
    ("max-autotune-no-cudagraphs" also times Triton templates against cuBLAS for each matrix product's shape and
    keeps the faster; the step's graph is the executor's own, so never a mode that captures one)."""
    import torch._dynamo
    from roofsim.executor.cache import opaque_to_dynamo

    opaque_to_dynamo()
    base = getattr(model, "model", model)
    # a few frames a layer (its own, its attention's, the resumes after opaque calls), for a few shapes
    limit = 8 * len(getattr(base, "layers", ())) + 8
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, limit)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * limit)
    compiled: dict[type, object] = {}
    n = 0
    for layer in getattr(base, "layers", ()):
        own = layer.__dict__.get("forward")
        if own is not None and not getattr(own, "roofsim_compiled", False):
            continue  # a forward of someone else's
        cls = type(layer)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, dynamic=False, backend=backend, mode=mode)
        layer.forward = _compiled_forward(layer, compiled[cls], prefill)
        n += 1
    return n


def _compiled_forward(layer, compiled, prefill: bool):
    eager = type(layer).forward

    def forward(*args, **kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        runtime = getattr(cache, "runtime", None)
        if runtime is not None and (prefill or runtime.graph is not None):
            return compiled(layer, *args, **kwargs)
        return eager(layer, *args, **kwargs)

    forward.roofsim_compiled = True  # a later compile_layers call may re-wrap it (prefill on, say)
    return forward


def compile_merge(backend: str = "inductor") -> None:
    """Merge a prefill chunk's two attention parts (its past's and its own keys') with a torch.compile'd
    attention.merge_two from now on in this process: one generated kernel instead of the eager merge's five
    passes. Merges of fewer query rows (decode steps, which may be captured in a CUDA graph) stay eager. The
    attention call is opaque to dynamo (compile_layers), so compiled layers do not reach the merge by themselves.
    Shapes are fixed per call (dynamic=False): one compilation per chunk shape, made by the first such chunk."""
    from roofsim.executor import attention

    attention._merge_two_fn = torch.compile(attention.merge_two, dynamic=False, backend=backend)


def compile_for_run(model, device, mode: str | None = None, merge: bool = True) -> str:
    """Everything above at once, for a run (`roofsim run --compile`): fused projections and norms, every decoder
    layer compiled for prefill chunks and the replayed decode step (in torch.compile's `mode`), and with `merge` a
    chunk's two attention parts merged by one compiled kernel. On CUDA with inductor (generated Triton kernels); on
    the CPU with aot_eager (dynamo's capture without generated code: a check that the run compiles, not a
    speed-up). The compilations happen on the first calls of each shape, so the caller runs the plan untimed first
    (two chunks: the first chunk after a past hands the code after the attention call other strides, which dynamo
    compiles apart). Returns the trace's note."""
    backend = "inductor" if torch.device(device).type == "cuda" else "aot_eager"
    fused = fuse_projections(model)
    norms = fuse_norms(model)
    layers = compile_layers(model, prefill=True, backend=backend, mode=mode)
    if merge:
        compile_merge(backend=backend)
    return (
        f"compiled ({backend}{', ' + mode if mode else ''}): {fused} fused projection groups, {norms} one-call "
        f"norms, {layers} decoder layers torch.compile'd (prefill chunks and the replayed decode step)"
        + (" and the merge of a chunk's two attention parts" if merge else "")
        + ", compiled by an untimed run of two chunks first; roofsim's model prices the stock layers"
    )
