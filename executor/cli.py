"""`roofsim run plan.json -o measured.json`: run a plan for real and write the measured Trace.

Imports nothing heavy at module level: torch and transformers load inside `run`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from roofsim.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("plan", help="a plan.json (as `roofsim plan` writes it) or a plan family name")
    p.add_argument(
        "--model",
        help="built-in model name (random bf16 weights), a HF config.json (random weights) or a checkpoint "
        "directory with config.json and *.safetensors (default: the plan document's model, else llama-3-8b)",
    )
    p.add_argument(
        "--prompt-len", help="prompt tokens, e.g. 64K (default: the plan document's context, else 4096)"
    )
    p.add_argument("--gen", help="decode steps after the prefill (default: the plan document's gen, else 16)")
    p.add_argument("--batch", type=int, help="sequences (equal length, random tokens; default 1)")
    p.add_argument("-o", "--output", required=True, help="where to write the measured trace (JSON)")
    p.add_argument("--gpu-mem", help="cap this process's GPU memory, e.g. 24GB, to run a smaller card's plan")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--warmup", type=int, default=1, help="decode steps excluded from the per-token time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trace-steps", type=int, default=8, help="steps per phase whose spans are kept (-1: all)"
    )
    p.add_argument("--gpu", help="GPU spec for kvpr's automatic recompute split (default h100-sxm)")


def _document(text: str) -> dict:
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"plan file {text!r} does not exist")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"plan file {text!r} is not valid JSON: {e}") from None
    return {}


def run(args) -> int:
    from roofsim.plan import default_plan, plan_from_dict
    from roofsim.units import parse_bytes, parse_tokens

    doc = _document(args.plan)
    plan = plan_from_dict(doc, where=f"plan file {args.plan!r}") if doc else default_plan(args.plan)
    work = doc.get("workload", {}) if isinstance(doc.get("workload"), dict) else {}
    prompt_len = parse_tokens(args.prompt_len or work.get("context") or 4096, "--prompt-len")
    gen = parse_tokens(args.gen, "--gen") if args.gen else int(work.get("gen", 16))
    batch = args.batch or int(work.get("batch", 1))
    model_src = args.model or doc.get("model") or "llama-3-8b"
    gpu_mem = parse_bytes(args.gpu_mem, "--gpu-mem") if args.gpu_mem else None

    # Chunked prefill allocates and frees activations of changing sizes; with fixed segments the caching
    # allocator fragments, and a plan that fits a cap can run out of memory
    # (docs/evidence.md#ev-allocator-fragmentation). Expandable segments keep reserved memory close to
    # allocated memory. Must be set before torch initialises CUDA.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch
    from roofsim.executor.models import load_model
    from roofsim.executor.runner import cap_gpu_memory, run_plan

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if gpu_mem and device.type != "cuda":
        raise UserError("--gpu-mem caps GPU memory and needs --device cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if gpu_mem:
        cap_gpu_memory(gpu_mem, device)
    model = None
    try:
        model, name = load_model(
            model_src,
            device=device,
            dtype=dtype,
            seed=args.seed,
            max_positions=prompt_len + gen,
            # streamed weights: the decoder layers never go to the GPU whole (they need not fit there)
            layers_device="cpu" if plan.weights == "streamed" else None,
        )
        res = run_plan(
            plan,
            model,
            model_name=name,
            prompt_len=prompt_len,
            gen=gen,
            batch=batch,
            warmup=args.warmup,
            seed=args.seed,
            trace_steps=args.trace_steps,
            out=args.output,
            gpu_spec=args.gpu,
            gpu_mem_bytes=gpu_mem,
        )
    except KeyboardInterrupt:
        print(f"roofsim: interrupted; the partial trace is in {args.output}")
        raise
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else "out of memory"
        raise UserError(
            f"out of GPU memory running {plan.family} ({first}); the partial trace is in {args.output}"
        ) from None
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    s = res.trace.summary
    parts = [f"{plan.family} on {res.trace.header.gpu}: prefill {s.prefill_s:.3f} s"]
    if s.decode_s_per_token is not None:
        parts.append(f"decode {s.decode_s_per_token * 1e3:.2f} ms/token")
    if s.peak_gpu_bytes:
        parts.append(f"peak GPU {s.peak_gpu_bytes / 1e9:.2f} GB")
    if s.peak_host_bytes:
        parts.append(f"pinned {s.peak_host_bytes / 2**30:.2f} GiB")
    print(", ".join(parts) + f"; trace in {args.output}")
    return 0
