"""`roofsim run plan.json -o measured.json`: run a plan for real and write the measured Trace.

Imports nothing heavy at module level: torch and transformers load inside `run`.
"""

from __future__ import annotations

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
    p.add_argument(
        "--gpu",
        help="GPU spec (name or TOML, e.g. a calibrated profile) that prices the plan before it runs, picks a "
        "family's knobs and kvpr's automatic split (default: the built-in spec matching the device, else h100-sxm)",
    )
    p.add_argument(
        "--force", action="store_true", help="run a plan even where the model says it does not fit in memory"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="fuse projections and norms and torch.compile the decoder layers and the merge of a chunk's attention "
        "parts (compiled by an untimed run of two chunks first); faster on CUDA, while roofsim's model prices the "
        "stock layers; needs resident weights and experts and one GPU",
    )
    p.add_argument(
        "--tp",
        type=int,
        help="tensor-parallel degree: run the plan on this many GPUs of this host (torchrun), each holding and "
        "streaming 1/tp of every layer's heads (default: the plan's tp, else 1)",
    )


def plan_document(text: str) -> dict | None:
    """The plan file's JSON object, or None where `text` names a family rather than a file."""
    from roofsim.jsonfile import read_json_object

    path = Path(text)
    if text.endswith(".json") or path.exists():
        return read_json_object(path, "plan file")
    return None


def _model_spec(source):
    """The model's spec (roofsim.specs.ModelSpec): a plan document's own, a built-in name, a config.json or a
    checkpoint directory holding one."""
    from roofsim.specs import load_model as load_spec
    from roofsim.specs.model import ModelSpec

    return source if isinstance(source, ModelSpec) else load_spec(source)


def device_gpu_spec(arg: str | None, device):
    """--gpu, else the built-in spec whose name matches the CUDA device's, else h100-sxm."""
    from roofsim.report.resolve import gpu_by_device_name
    from roofsim.specs import load_gpu

    if arg is not None:
        return arg, load_gpu(arg)
    if device.type == "cuda":
        import torch

        spec = gpu_by_device_name(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec.name, spec
    return "h100-sxm", load_gpu("h100-sxm")


def shortfall(priced, limits, gpu, cuda: bool) -> list[str]:
    """What a priced plan (its Summary) needs beyond the memory here, in words; empty where it fits. GPU memory
    counts only on a CUDA device (the CPU stand-in has none of its own)."""
    from roofsim.units import fmt_bytes

    short = []
    if cuda and priced.peak_gpu_bytes > limits.gpu_bytes(gpu):
        short.append(
            f"{fmt_bytes(priced.peak_gpu_bytes)} of GPU memory where {fmt_bytes(limits.gpu_bytes(gpu))} is usable"
        )
    if limits.host_mem_bytes and priced.peak_host_bytes > limits.host_mem_bytes:
        short.append(
            f"{fmt_bytes(priced.peak_host_bytes)} of host memory where this machine has "
            f"{fmt_bytes(limits.host_mem_bytes)}"
        )
    return short


def tp_degree(arg: int | None, doc: dict, plan, where: str) -> int:
    """The run's tensor-parallel degree: --tp, else the plan's. A plan file that states tp must agree with --tp."""
    from roofsim.argchecks import positive_int

    body = doc.get("plan") if isinstance(doc.get("plan"), dict) else doc
    stated = plan.tp if plan is not None and "tp" in body else None
    if arg is None:
        return plan.tp if plan is not None else 1
    positive_int(arg, "--tp", 64, "GPUs")
    if stated is not None and stated != arg:
        raise UserError(
            f"--tp {arg} conflicts with {where}'s tp {stated}; leave --tp out to run the plan as written"
        )
    return arg


def run(args) -> int:
    from roofsim.argchecks import MAX_BATCH, positive_int
    from roofsim.limits import Limits
    from roofsim.outpath import check_output_file
    from roofsim.plan import family_of, plan_from_dict
    from roofsim.predict import predict
    from roofsim.specs import load_gpu
    from roofsim.specs.hardware import default_host_of
    from roofsim.specs.model import ModelSpec
    from roofsim.tensor_parallel import check_degree
    from roofsim.units import parse_bytes, parse_tokens
    from roofsim.workload import Workload

    check_output_file(args.output, "-o")
    doc = plan_document(args.plan)
    where = f"plan file {args.plan!r}"
    # a plan file, or a family name: that family's best knobs, chosen below once the memory here is known
    plan = plan_from_dict(doc, where=where) if doc is not None else None
    family = family_of(args.plan, "plan") if plan is None else None
    doc = doc or {}
    tp = tp_degree(getattr(args, "tp", None), doc, plan, where)
    work = doc.get("workload", {}) if isinstance(doc.get("workload"), dict) else {}
    prompt_len = parse_tokens(
        args.prompt_len if args.prompt_len is not None else work.get("context", 4096),
        "--prompt-len" if args.prompt_len is not None else f"{where}: workload.context",
    )
    gen = (
        parse_tokens(args.gen, "--gen")
        if args.gen is not None
        else parse_tokens(work.get("gen", 16), f"{where}: workload.gen")
    )
    batch = args.batch if args.batch is not None else work.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise UserError(f"{where}: workload.batch must be a whole number of sequences, got {batch!r}")
    positive_int(
        batch, "--batch" if args.batch is not None else f"{where}: workload.batch", MAX_BATCH, "sequences"
    )
    if args.warmup < 0:
        raise UserError(
            f"--warmup is decode steps left out of the per-token time, 0 or more; got {args.warmup}"
        )
    if args.trace_steps < -1:
        raise UserError(
            f"--trace-steps is steps per phase whose spans are kept (-1: all); got {args.trace_steps}"
        )
    model_src = args.model
    if model_src is None and isinstance(doc.get("model_spec"), dict):
        from pydantic import ValidationError

        from roofsim.specs.tomlfile import first_error

        try:  # the plan's own model, wherever it came from
            model_src = ModelSpec.model_validate(doc["model_spec"])
        except ValidationError as e:
            raise UserError(f"{where}: its model_spec is not valid: {first_error(e)}") from None
    if model_src is None:
        model_src = doc.get("model", "llama-3-8b")
        if not isinstance(model_src, str):
            raise UserError(f"{where}: 'model' must be a model name or a config.json path, got {model_src!r}")
    spec = _model_spec(model_src)
    check_degree(spec, tp)
    if args.gpu is not None:
        load_gpu(args.gpu)
    gpu_mem = parse_bytes(args.gpu_mem, "--gpu-mem") if args.gpu_mem is not None else None

    # Chunked prefill allocates and frees activations of changing sizes; with fixed segments the caching
    # allocator fragments, and a plan that fits a cap can run out of memory
    # (docs/evidence.md#ev-allocator-fragmentation). Expandable segments keep reserved memory close to
    # allocated memory. Must be set before torch initialises CUDA.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        import torch
        from roofsim.executor.launch import rank_env
        from roofsim.executor.models import load_model
        from roofsim.executor.progress import Progress, Silent
        from roofsim.executor.runner import cap_gpu_memory, run_plan
        from roofsim.executor.timing import host_ram_bytes
    except ImportError as e:
        raise UserError(
            f"roofsim run needs the executor's packages ({e.name or e}): pip install 'roofsim[executor]' "
            "(torch, transformers, safetensors)"
        ) from None

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if gpu_mem and device.type != "cuda":
        raise UserError("--gpu-mem caps GPU memory and needs --device cuda")
    if device.type == "cuda" and tp > torch.cuda.device_count():
        raise UserError(
            f"--tp {tp} needs {tp} GPUs on this host; {torch.cuda.device_count()} visible (CUDA_VISIBLE_DEVICES)"
        )
    ranked = rank_env()
    rank, local_rank = (ranked[0], ranked[2]) if ranked else (0, 0)
    node = None  # the NUMA node a rank's threads are bound to
    if ranked and ranked[1] != tp:
        raise UserError(
            f"launched as {ranked[1]} ranks for a tp {tp} run; launch it with --nproc-per-node {tp}"
        )
    say = print if rank == 0 and (tp == 1 or ranked) else (lambda *a, **k: None)
    if ranked:  # this rank's GPU (cuda:LOCAL_RANK) before anything touches CUDA, then the process group
        from roofsim.executor.launch import init

        device, node = init(device.type, local_rank)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    # Price the plan before anything is allocated: a family name takes its best knobs within the memory there is,
    # and a plan the model says cannot fit is refused with its need (a run would stop at out of memory).
    gpu_arg, gpu = device_gpu_spec(args.gpu, device)
    host = default_host_of(gpu_arg, gpu)
    card = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    limits = Limits(
        gpu_mem_bytes=min(x for x in (gpu_mem, card) if x) if (gpu_mem or card) else None,
        host_mem_bytes=host_ram_bytes(),
    )
    workload = Workload(context=prompt_len, batch=batch, gen=max(gen, 1))
    if plan is None:
        from roofsim.sweep import best_of_family

        # tp > 1: priced over tp ranks (roofsim.tensor_parallel), its knobs counting one rank's heads
        plan = best_of_family(family.name, spec, gpu, host, workload, limits, tp=tp).plan
        say(
            f"{plan.family}: the best knobs for {spec.name} on {gpu.name} within the memory here: {plan.knobs()}"
        )
    if plan.tp != tp:
        plan = plan.model_copy(update={"tp": tp})
    priced = predict(plan, spec, gpu, host, workload, limits).summary
    short = shortfall(priced, limits, gpu, cuda=device.type == "cuda")
    if short and not args.force:
        raise UserError(
            f"plan {plan.family} ({plan.knobs()}) for {spec.name} at {prompt_len} tokens does not fit: it needs "
            f"{' and '.join(short)} (priced with {gpu.name}); --force runs it anyway"
        )
    if getattr(args, "compile", False) and (tp > 1 or "streamed" in (plan.weights, plan.experts)):
        raise UserError(
            "--compile needs the plan's weights and experts resident and one GPU (tp 1): a compiled layer would "
            "capture weights that stream, or one rank's shard; run without --compile"
        )
    if tp > 1 and not ranked:
        from roofsim.executor.launch import launch

        args.tp = tp
        return launch(args, tp)
    if gpu_mem:
        cap_gpu_memory(gpu_mem, device)
    model = None
    progress = Progress() if rank == 0 else Silent()  # rank 0 speaks for a tensor-parallel run
    progress.stage(f"building {spec.name} ({plan.family}, {prompt_len} tokens)")
    try:
        model, name = load_model(
            model_src,
            device=device,
            dtype=dtype,
            seed=args.seed,
            max_positions=prompt_len + gen,
            # streamed weights or experts: the decoder layers never go to the GPU whole (they need not fit there)
            layers_device="cpu" if "streamed" in (plan.weights, plan.experts) else None,
        )
        progress.stage("model built")
        notes = []
        if tp > 1:
            from roofsim.executor.shard import reduce_outputs, shard_

            shard_(model, rank, tp)
            reduce_outputs(model)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            notes.append(
                f"tensor parallel: {tp} ranks, each holding 1/{tp} of every layer's heads (its own KV, pinned store "
                "and copy streams) and of the MLP, with an all-reduce after o_proj and down_proj; spans and memory "
                "are rank 0's"
            )
            if node is not None:
                notes.append(f"rank 0's threads and pinned store on NUMA node {node}, its GPU's")
        if getattr(args, "compile", False):
            from roofsim.executor.runner import compile_and_warm

            progress.stage("compiling (an untimed run of two chunks)")
            notes.append(
                compile_and_warm(
                    plan,
                    model,
                    device,
                    prompt_len=prompt_len,
                    model_name=name,
                    batch=batch,
                    seed=args.seed,
                    gpu_spec=gpu_arg,
                    gpu_mem_bytes=gpu_mem,
                )
            )
            progress.stage("compiled")
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
            out=args.output if rank == 0 else None,
            gpu_spec=gpu_arg,
            gpu_mem_bytes=gpu_mem,
            progress=progress,
            notes=notes,
        )
        if tp > 1:
            from roofsim.executor.launch import merge_phases

            merge_phases(res.trace, rank, tp)
            if rank == 0:
                res.trace.write(args.output)
    except KeyboardInterrupt:
        say(f"roofsim: interrupted; the partial trace is in {args.output}")
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
    on = f"{tp} x {res.trace.header.gpu} (tp {tp})" if tp > 1 else res.trace.header.gpu
    parts = [f"{plan.family} on {on}: prefill {s.prefill_s:.3f} s"]
    if s.decode_s_per_token is not None:
        parts.append(f"decode {s.decode_s_per_token * 1e3:.2f} ms/token")
    if s.peak_gpu_bytes:
        parts.append(f"peak GPU {s.peak_gpu_bytes / 1e9:.2f} GB" + (" (rank 0)" if tp > 1 else ""))
    if s.peak_host_bytes:
        parts.append(f"pinned {s.peak_host_bytes / 2**30:.2f} GiB" + (" per rank" if tp > 1 else ""))
    say(", ".join(parts) + f"; trace in {args.output}")
    if ranked:
        from roofsim.executor.launch import leave

        leave()
    return 0
