"""`roofsim generate` and `roofsim serve`: their options and commands.

Imports nothing heavy at module level: torch, transformers and the server stack load inside the commands, which
say in one line what to install where one is missing.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from roofsim.errors import UserError


def _machine_arguments(p) -> None:
    p.add_argument(
        "checkpoint", help="a checkpoint directory: config.json, *.safetensors and its tokenizer files"
    )
    p.add_argument(
        "--plan",
        default="auto",
        help="auto (default: the planner's best here), a family name (its best knobs here) or a plan.json",
    )
    p.add_argument("--gpu-mem", help="cap this process's GPU memory, e.g. 24GB (plans for that much)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument(
        "--gpu",
        help="GPU spec (name or TOML) the plan is priced with (default: a calibrated profile for this GPU, see "
        "$ROOFSIM_PROFILE and ~/.config/roofsim/, else the built-in spec matching the device, else h100-sxm)",
    )
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on the CPU")


def add_generate_arguments(p) -> None:
    _machine_arguments(p)
    p.add_argument("--prompt-file", help="the prompt, a text file (default: read from stdin)")
    p.add_argument(
        "--chat", action="store_true", help="send the prompt as a user message through the chat template"
    )
    p.add_argument("--max-new-tokens", required=True, help="tokens to generate at most, e.g. 256")
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, help="with --do-sample (default: the checkpoint's)")
    p.add_argument("--top-p", type=float, help="with --do-sample (default: the checkpoint's)")
    p.add_argument("--top-k", type=int, help="with --do-sample (default: the checkpoint's)")
    p.add_argument("--repetition-penalty", type=float, help="1.0: none (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="the sampling seed (default: random)")
    p.add_argument(
        "--ignore-eos", action="store_true", help="generate all --max-new-tokens (benchmarks: a fixed length)"
    )
    p.add_argument(
        "--json-out", metavar="FILE", help="also write the measured and predicted times (JSON) to this file"
    )


def add_serve_arguments(p) -> None:
    _machine_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-context",
        help="prompt + generated tokens a request may take, planned for at start (default: the longest the "
        "planner fits here, at most the model's max positions)",
    )
    p.add_argument("--name", help="the model's name in the API (default: the checkpoint directory's name)")


def _need(modules: tuple[str, ...], extra: str, command: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"roofsim {command} needs {name}: pip install 'roofsim[{extra}]'") from None


def _load(args):
    """(Machine, torch dtype, model spec): the device, the GPU spec and memory here, for the checkpoint."""
    # Chunked prefill allocates and frees activations of changing sizes; expandable segments keep the caching
    # allocator from fragmenting (docs/evidence.md#ev-allocator-fragmentation). Set before torch touches CUDA.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weights load in seconds; their bar would sit among the text
    # the executor's model hooks find the cache by this name (roofsim.executor.build); the warning is not the user's
    warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

    from roofsim.executor.machine import pick_device, this_machine

    from roofsim.specs import load_model as load_spec
    from roofsim.units import parse_bytes

    path = Path(args.checkpoint)
    if not (path / "config.json").is_file():
        raise UserError(f"{args.checkpoint}: not a checkpoint directory (no config.json there)")
    device = pick_device(args.device)
    gpu_mem = parse_bytes(args.gpu_mem, "--gpu-mem") if args.gpu_mem is not None else None
    m = this_machine(device, args.gpu, gpu_mem)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if m.cuda else "fp32")
    ]
    if gpu_mem:
        from roofsim.executor.runner import cap_gpu_memory

        cap_gpu_memory(gpu_mem, device)
    return m, dtype, load_spec(str(path))


def _sampling(args):
    """The sampling options; those not given take the checkpoint's generation config (generation_config.json)."""
    from roofsim.executor.generate import Sampling
    from transformers import GenerationConfig

    if not args.do_sample:
        given = [f for f in ("temperature", "top_p", "top_k", "seed") if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag} applies to sampling: add --do-sample (the default is greedy)")

    try:
        generation_config = GenerationConfig.from_pretrained(args.checkpoint, local_files_only=True)
    except OSError:  # no generation_config.json: transformers' defaults
        generation_config = GenerationConfig()

    def pick(name):
        value = getattr(args, name)
        return value if value is not None else getattr(generation_config, name, None)

    return Sampling(
        do_sample=args.do_sample,
        temperature=pick("temperature") if args.do_sample else None,
        top_p=pick("top_p") if args.do_sample else None,
        top_k=pick("top_k") if args.do_sample else None,
        repetition_penalty=pick("repetition_penalty"),
        seed=args.seed,
    )


def _read_prompt(args) -> str:
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_text()
        except OSError as e:
            raise UserError(f"--prompt-file {args.prompt_file}: {e.strerror or e}") from None
    if sys.stdin.isatty():
        raise UserError("give the prompt: --prompt-file FILE, or pipe it on stdin")
    return sys.stdin.read()


def _pct(measured: float | None, predicted: float | None) -> str:
    if not measured or not predicted:
        return ""
    return f" ({(measured - predicted) / predicted * 100:+.1f}%)"


def generate(args) -> int:
    _need(("torch", "transformers"), "executor", "generate")
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from roofsim.executor.generate import TextModel, chat_ids, encode, load_tokenizer
    from roofsim.executor.machine import choose_plan, mean_decode_s

    from roofsim.units import fmt_bytes, fmt_seconds, fmt_tokens, parse_tokens
    from roofsim.workload import Workload

    new_tokens = parse_tokens(args.max_new_tokens, "--max-new-tokens")
    if args.json_out is not None:
        from roofsim.outpath import check_output_file

        check_output_file(args.json_out, "--json-out")
    m, dtype, spec = _load(args)
    sampling = _sampling(args)
    err = Console(stderr=True)
    tokenizer = load_tokenizer(args.checkpoint)
    prompt = _read_prompt(args)
    if args.chat:
        ids = chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    else:
        ids = encode(tokenizer, prompt)
    if not ids:
        raise UserError("the prompt is empty: give it at least one token")
    if len(ids) + new_tokens > spec.max_positions:
        err.print(
            f"note: {len(ids)} + {new_tokens} tokens is past the model's {spec.max_positions} positions; "
            "it may not answer sensibly there"
        )
    work = Workload(context=len(ids), gen=new_tokens)
    chosen = choose_plan(args.plan, spec, m, work)
    plan, predicted = chosen.plan, chosen.prediction.summary
    pred_decode_s = mean_decode_s(predicted)
    err.print(
        f"{spec.name}: {fmt_tokens(len(ids))} prompt tokens + {new_tokens}, plan {plan.family} {plan.knobs()} "
        f"({chosen.how}; {m.gpu.name}, {m.gpu_from}); predicted prefill {fmt_seconds(predicted.prefill_s)}, decode "
        f"{1 / pred_decode_s:.2f} tokens/s",
        highlight=False,
        soft_wrap=True,
    )
    tm = TextModel.load(
        args.checkpoint,
        device=m.device,
        dtype=dtype,
        tokenizer=tokenizer,
        layers_device="cpu" if "streamed" in (plan.weights, plan.experts) else None,
        gpu_spec=m.gpu_arg,
    )
    step_s = predicted.prefill.step_s or [predicted.prefill_s]
    progress = Progress(
        TextColumn("prefill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks, predicted {task.fields[left]} left"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )

    def left(done: int, total: int) -> str:
        # the prediction's chunks are the run's (the same prompt and chunk); scale in case they are not
        rest = sum(step_s[round(done * len(step_s) / total) :]) if total else 0.0
        return fmt_seconds(rest)

    task = None

    def on_prefill(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("prefill", total=total, left=left(0, total))
        progress.update(task, completed=done, left=left(done, total))
        if done == total:
            progress.stop()  # the text follows on stdout

    def on_text(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    bar = err.is_terminal  # a bar only where it can redraw in place (not into a log file)
    if bar:
        progress.start()
    try:
        out = tm.generate(
            ids,
            plan,
            new_tokens,
            sampling,
            on_text=on_text,
            on_prefill=on_prefill if bar else None,
            ignore_eos=args.ignore_eos,
        )
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else "out of memory"
        raise UserError(
            f"out of GPU memory running {plan.family} ({first}); the model priced its peak at "
            f"{fmt_bytes(predicted.peak_gpu_bytes)}"
        ) from None
    finally:
        if bar:
            progress.stop()
    sys.stdout.write("\n")
    sys.stdout.flush()
    rate = out.decode_tokens_per_s
    line = (
        f"prefill {fmt_seconds(out.prefill_s)} measured, {fmt_seconds(predicted.prefill_s)} predicted"
        f"{_pct(out.prefill_s, predicted.prefill_s)}; decode "
        + (
            f"{rate:.2f} tokens/s measured, {1 / pred_decode_s:.2f} predicted{_pct(rate, 1 / pred_decode_s)}"
            if rate
            else f"not measured (it takes 3 tokens or more), {1 / pred_decode_s:.2f} tokens/s predicted"
        )
        + f"; {len(out.token_ids)} tokens ({out.finish_reason}), plan {plan.family}"
    )
    err.print(line, highlight=False, soft_wrap=True)
    if args.json_out is not None:
        Path(args.json_out).write_text(json.dumps(_result_doc(tm, m, chosen, out, pred_decode_s), indent=2))
    return 0


def _result_doc(tm, m, chosen, out, pred_decode_s: float) -> dict:
    from roofsim.executor.timing import fingerprint

    p = chosen.prediction.summary
    rate = out.decode_tokens_per_s
    return {
        "model": tm.name,
        "plan": chosen.plan.model_dump(mode="json"),
        "plan_chosen": chosen.how,
        "gpu_spec": m.gpu.name,
        "gpu_spec_from": m.gpu_from,
        "gpu_mem_bytes": m.limits.gpu_mem_bytes,
        "fingerprint": fingerprint(m.device).model_dump(mode="json"),
        "prompt_tokens": out.prompt_tokens,
        "new_tokens": len(out.token_ids),
        "finish_reason": out.finish_reason,
        "measured": {
            "prefill_s": out.prefill_s,
            "prefill_step_s": out.prefill_step_s,
            "decode_step_s": out.decode_step_s,
            "decode_tokens_per_s": rate,
            "cache_setup_s": out.cache_setup_s,
            "peak_gpu_bytes": out.peak_gpu_bytes,
            "notes": out.notes,
        },
        "predicted": {
            "prefill_s": p.prefill_s,
            "prefill_step_s": p.prefill.step_s,
            "decode_s_per_token_at_prompt": p.decode_s_per_token,
            "decode_s_per_token_at_end": p.decode_end_s_per_token,
            "decode_tokens_per_s": 1 / pred_decode_s,
            "peak_gpu_bytes": p.peak_gpu_bytes,
            "peak_host_bytes": p.peak_host_bytes,
        },
        "error_pct": {
            "prefill_s": (out.prefill_s - p.prefill_s) / p.prefill_s * 100 if p.prefill_s else None,
            "decode_tokens_per_s": (rate * pred_decode_s - 1) * 100 if rate else None,
        },
    }


def serve(args) -> int:
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port: give one from 1 to 65535 (0: any free one)")
    _need(("torch", "transformers"), "executor", "serve")
    _need(("starlette", "uvicorn"), "serve", "serve")
    import uvicorn
    from roofsim.executor.generate import TextModel
    from roofsim.executor.serve import Server, make_app, plan_server

    from roofsim.units import parse_tokens

    m, dtype, spec = _load(args)
    max_context = parse_tokens(args.max_context, "--max-context") if args.max_context is not None else None
    chosen, max_context = plan_server(args.plan, spec, m, max_context)
    p = chosen.prediction.summary
    print(
        f"{spec.name}: requests up to {max_context} tokens, plan {chosen.plan.family} {chosen.plan.knobs()} "
        f"({chosen.how}; {m.gpu.name}, {m.gpu_from}); at {max_context} tokens predicted prefill "
        f"{max_context / p.prefill_s:.0f} tokens/s, decode {1 / p.decode_s_per_token:.2f} tokens/s",
        file=sys.stderr,
    )
    tm = TextModel.load(
        args.checkpoint,
        device=m.device,
        dtype=dtype,
        layers_device="cpu" if "streamed" in (chosen.plan.weights, chosen.plan.experts) else None,
        gpu_spec=m.gpu_arg,
    )
    server = Server(tm, chosen, max_context, spec, m, name=args.name)
    uvicorn.run(make_app(server), host=args.host, port=args.port, log_level="info")
    return 0
