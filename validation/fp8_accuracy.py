"""Accuracy of KV in fp8 (issue #32): each family's fp8 plan against the resident plan in the model dtype.

For every family that stores fp8 (resident, layer_offload, head_offload, cpu_attention: a few knob shapes) and two kinds of
keys (the model's own, and keys with a few large outlier channels per KV head, as trained Llama keys have: k_proj's
rows for those channels scaled up), on random weights:

  rel_err_logits    ||logits_fp8 - logits_ref|| / ||logits_ref|| over the prefill's last position and `gen` decode
                    steps fed the reference's own greedy tokens (so both see the same inputs)
  forced_agree      share of those positions whose argmax agrees
  greedy_agree      share of `gen` free-running greedy tokens equal to the reference's (each plan feeds its own
                    tokens: one early flip makes every later token differ, so this is the strict measure)
  first_divergence  the first free-running step whose token differs (gen where none does)
  ref_margin_median the reference's median gap between its top two logits (random weights give small gaps, which
                    makes argmax fragile: read the agreements beside it)

    python validation/fp8_accuracy.py --out fp8_accuracy.json                      # CPU, tiny Llama (fp32)
    python validation/fp8_accuracy.py --device cuda --model llama-3-8b --prompt 8192 --chunk 2048 --out ...

On the GPU the model is in bf16 (the reference is bf16 resident); on the CPU in fp32. Writes the JSON after each
plan and prints one line per (keys, plan).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from roofsim.executor.build import make_cache
from roofsim.executor.check import greedy_logits, rel_err, tiny_config
from roofsim.executor.models import load_model, random_model

from roofsim.families import CpuAttentionPlan, HeadOffloadPlan, LayerOffloadPlan, ResidentPlan

FP8 = "fp8_e4m3"


def fp8_plans(chunk: int) -> dict:
    """The fp8 plans measured, one or more knob shapes per family that stores fp8."""
    return {
        "resident": ResidentPlan(kv_dtype=FP8, prefill_chunk=chunk),
        "layer_offload_full": LayerOffloadPlan(kv_dtype=FP8, prefill_chunk=chunk),
        "layer_offload_incremental": LayerOffloadPlan(
            kv_dtype=FP8, write_back="incremental", prefill_chunk=chunk
        ),
        "head_offload_g1_streamed": HeadOffloadPlan(
            kv_dtype=FP8, kv_heads_per_slot=1, prefetch_depth=2, slot_buffers=3, prefill_chunk=chunk
        ),
        "head_offload_g2_resident1": HeadOffloadPlan(
            kv_dtype=FP8, kv_heads_per_slot=2, resident_slots=1, prefill_chunk=chunk
        ),
        "cpu_attention_1head": CpuAttentionPlan(kv_dtype=FP8, cpu_kv_heads=1, prefill_chunk=chunk),
    }


def outlier_keys(model, channels=(3, 11), factor: float = 20.0):
    """A few large channels in every KV head's keys: k_proj's rows for those channels scaled by `factor`."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.k_proj.weight
            for h in range(cfg.num_key_value_heads):
                for c in channels:
                    w[h * D + c] *= factor
    return model


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[gen + 1, B, vocab] -> the greedy token after each position, [B, gen + 1]."""
    return logits.argmax(-1).T


def measure(model, plan, ids, chunk: int, gen: int, ref: torch.Tensor) -> dict:
    tokens = greedy_tokens(ref)[:, :-1]
    cap = ids.shape[1] + gen
    cache = make_cache(model, plan, max_tokens=cap)
    forced = greedy_logits(model, cache, ids, chunk, gen, tokens=tokens)
    cache.close()
    cache = make_cache(model, plan, max_tokens=cap)
    free = greedy_logits(model, cache, ids, chunk, gen)
    cache.close()
    same = (greedy_tokens(free) == greedy_tokens(ref))[0, 1:]  # the gen decoded tokens (after the prefill's)
    first = int((~same).nonzero()[0]) if (~same).any() else gen
    return {
        "rel_err_logits": rel_err(forced, ref),
        "forced_agree": float((forced.argmax(-1) == ref.argmax(-1)).float().mean()),
        "greedy_agree": float(same.float().mean()),
        "first_divergence": first,
    }


def margin(ref: torch.Tensor) -> float:
    top = ref.topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).median())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--model", help="a roofsim model name or config.json (random weights); default: a tiny Llama"
    )
    ap.add_argument("--layers", type=int, help="keep only the first N decoder layers (a faster run)")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--factor", type=float, default=20.0, help="outlier channels' scale (default 20)")
    ap.add_argument("--only", help="comma-separated plan names (default: all)")
    ap.add_argument("--out", help="write the results (JSON) here")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plans = fp8_plans(args.chunk)
    if args.only:
        plans = {k: v for k, v in plans.items() if k in args.only.split(",")}
    data = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "prompt": args.prompt,
        "chunk": args.chunk,
        "gen": args.gen,
        "reference": f"resident plan, KV in the model dtype ({str(dtype).removeprefix('torch.')})",
        "keys": {},
    }
    out = Path(args.out) if args.out else None
    for keys in ("plain", "outlier_keys"):
        t0 = time.perf_counter()
        if args.model:
            model, name = load_model(
                args.model, device=device, dtype=dtype, max_positions=args.prompt + args.gen
            )
        else:
            model, name = random_model(tiny_config("llama"), device, dtype, seed=1), "tiny-llama"
        if args.layers:
            model.model.layers = model.model.layers[: args.layers]
            model.config.num_hidden_layers = args.layers
        if keys == "outlier_keys":
            outlier_keys(model, factor=args.factor)
        data["model"] = name
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0)).to(device)
        ref_cache = make_cache(
            model, ResidentPlan(prefill_chunk=args.chunk), max_tokens=args.prompt + args.gen
        )
        ref = greedy_logits(model, ref_cache, ids, args.chunk, args.gen)
        ref_cache.close()
        entry = data["keys"].setdefault(keys, {"ref_margin_median": margin(ref), "plans": {}})
        for pname, plan in plans.items():
            r = measure(model, plan, ids, args.chunk, args.gen, ref)
            entry["plans"][pname] = {"plan": plan.model_dump(mode="json"), **r}
            print(
                f"{keys:13s} {pname:28s} rel_err {r['rel_err_logits']:.4f}  forced_agree {r['forced_agree']:.3f}  "
                f"greedy_agree {r['greedy_agree']:.3f}  first_divergence {r['first_divergence']}",
                flush=True,
            )
            if out:
                out.write_text(json.dumps(data, indent=1))
        entry["seconds"] = time.perf_counter() - t0
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if out:
        out.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
