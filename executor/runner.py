"""Run a plan end to end and measure it: chunked prefill, greedy decode, a measured Trace.

Phase times come from events on the compute stream around each forward (the device synchronises after each
forward, never inside it); the first `warmup` decode steps are excluded from decode_s_per_token (the median of
the rest); an untimed forward of one chunk warms the kernels up before the prefill. Spans are kept for at most `trace_steps` steps per phase (the first and last prefill chunks, the
first decode steps after warm-up). A run that fails (out of memory, Ctrl-C) still returns and writes the trace
measured so far, with complete=False and the error, and frees the GPU and the pinned store.
"""

from __future__ import annotations

import datetime
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from roofsim.executor.attention import race_heads, race_prefill
from roofsim.executor.attention import warm_up as warm_attention
from roofsim.executor.build import make_cache
from roofsim.executor.engine import make_engine
from roofsim.executor.launchpace import launch_us, step_us
from roofsim.executor.progress import Progress, Silent
from roofsim.executor.timing import cpu_name as _cpu_name
from roofsim.executor.timing import fingerprint
from roofsim.executor.window import warm_up_windows

from roofsim.hostpace import loop_us
from roofsim.trace import MemorySample, Summary, Trace, TraceHeader
from roofsim.workload import Workload


@dataclass
class RunResult:
    trace: Trace
    logits: list[torch.Tensor] = field(default_factory=list)
    cache: object = None


def _trace_prefill(i: int, n: int, k: int) -> bool:
    half = max(k // 2, 1) if k else 0
    return k < 0 or i < half or i >= n - half


def _oom_types():
    types = [torch.cuda.OutOfMemoryError] if hasattr(torch.cuda, "OutOfMemoryError") else []
    return tuple(types) or (RuntimeError,)


@torch.no_grad()
def warm_up_kernels(model, ids: torch.Tensor, engine, cache, prompt_len: int, forward: bool = True) -> None:
    """One forward of a prefill-sized chunk with no cache (the registered attention then attends the chunk alone),
    then the attention calls of a chunk after a past and of a decode step at the plan's head counts: the first
    use of each kernel, cuBLAS's handle and workspace and the allocator's growth happen here, so that the timed
    prefill is the steady state the model predicts (docs/evidence.md#ev-warm-up-first-chunk). Before all of it,
    the prefill kernel race on the past part a chunk attends, then the race of that call whole against one call per
    KV head (attention.race_heads). forward=False (streamed weights: a forward would stream every layer's weights
    once more) keeps the races and the attention calls, which touch no weight and are most of a cold first chunk's
    cost (docs/evidence.md#ev-streamed-weights-cold-attention)."""
    heads = cache.kv_heads_per_call()
    race_prefill(cache.runtime.shape, ids.shape[1], min(heads), prompt_len)
    race_heads(cache.runtime.shape, ids.shape[1], max(heads), prompt_len)
    if forward:
        model(ids, use_cache=False, logits_to_keep=1)
    warm_attention(cache.runtime.shape, ids.shape[1], heads)
    warm_up_windows(cache.layers, ids.shape[1])
    engine.synchronize()


def compile_and_warm(
    plan, model, device, *, prompt_len: int, mode: str | None = None, merge: bool = True, **run
):
    """fuse.compile_for_run, then the untimed run that compiles every shape the timed run will meet: two chunks of
    the prompt at most (the first chunk after a past hands the code after the attention call other strides, which
    dynamo compiles apart) and two decode steps (the replayed step's graph). `run` are run_plan's arguments for
    both runs (model_name, batch, seed, gpu_spec, gpu_mem_bytes). Returns compile_for_run's note for the trace."""
    from roofsim.executor.fuse import compile_for_run

    note = compile_for_run(model, device, mode=mode, merge=merge)
    chunk = plan.prefill_chunk or prompt_len
    run_plan(plan, model, prompt_len=min(prompt_len, 2 * chunk), gen=2, warmup=0, trace_steps=0, **run)
    return note


def run_plan(
    plan,
    model,
    *,
    model_name: str,
    prompt_len: int,
    gen: int,
    batch: int = 1,
    warmup: int = 1,
    seed: int = 0,
    trace_steps: int = 8,
    out: str | Path | None = None,
    keep_logits: bool = False,
    keep_cache: bool = False,
    gpu_spec: str | None = None,
    gpu_mem_bytes: float | None = None,
    engine=None,
    notes: list[str] | None = None,
    extra_tokens: int = 0,
    prefill_warmup: bool = True,
    graphs: bool | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Prefill `prompt_len` random tokens in the plan's chunks, then `gen` greedy decode steps, measured.

    graphs: replay each decode step from a CUDA graph (executor/graphs.py) where the cache allows it, eager
    otherwise (said in the notes); None takes the plan's `decode_graphs` (False where the family has none)."""
    device = next(model.parameters()).device
    progress = progress or Silent()
    engine = engine or make_engine(device)
    cuda = device.type == "cuda"
    header = TraceHeader(
        producer="measured",
        tool="roofsim.executor",
        plan=plan,
        model=model_name,
        gpu=torch.cuda.get_device_name(device) if cuda else "cpu",
        host=_cpu_name(),
        workload=Workload(context=prompt_len, batch=batch, gen=max(gen, 1)),
        fingerprint=fingerprint(device),
        gpu_mem_bytes=gpu_mem_bytes or None,
        profile=gpu_spec,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=list(notes or []),
    )
    trace = Trace(header=header, complete=False)
    summary = trace.summary = Summary()
    result = RunResult(trace=trace)
    cache = None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        cache = make_cache(
            model,
            plan,
            max_tokens=prompt_len + gen + extra_tokens,
            batch_size=batch,
            engine=engine,
            record=True,
            gpu_spec=gpu_spec,
        )
        rt, rec = cache.runtime, cache.runtime.rec
        trace.spans = rec.spans
        summary.peak_host_bytes = float(cache.pinned_host_bytes)
        header.notes.append(
            f"cache set-up {time.perf_counter() - t0:.2f} s (pinned store {cache.pinned_host_bytes / 2**30:.2f} GiB)"
        )
        progress.stage(f"cache set up ({cache.pinned_host_bytes / 2**30:.2f} GiB pinned)")
        cache.set_prompt_length(prompt_len)
        g = torch.Generator().manual_seed(seed)
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)
        chunk = min(plan.prefill_chunk or prompt_len, prompt_len)
        n_chunks = math.ceil(prompt_len / chunk)
        if prefill_warmup:
            resident = plan.weights == "resident"
            warm_up_kernels(model, ids[:, :chunk], engine, cache, prompt_len, forward=resident)
            header.notes.append(
                f"prefill: one untimed forward of a {chunk}-token chunk without the cache, and the attention calls "
                "of a chunk after a past and of a decode step, ran first (kernel loading, library handles, "
                "allocator growth are not prefill time)"
                if resident
                else f"prefill: the attention calls of a {chunk}-token chunk, of a chunk after a past and of a "
                "decode step ran first, untimed (streamed weights: no warm-up forward)"
            )
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
        rec.start()
        first = None
        logits = None
        for i in range(n_chunks):
            rec.enabled = _trace_prefill(i, n_chunks, trace_steps)
            a, b = i * chunk, min(prompt_len, (i + 1) * chunk)
            s0 = engine.event(engine.compute)
            first = first or s0
            o = model(ids[:, a:b], past_key_values=cache, use_cache=True, logits_to_keep=1)
            s1 = engine.event(engine.compute)
            engine.synchronize()
            rec.flush()
            summary.prefill.step_s.append(engine.elapsed_s(s0, s1))
            summary.prefill.time_s = engine.elapsed_s(first, s1)
            logits = o.logits[:, -1]
            progress.step("prefill chunk", i, n_chunks)
        if keep_logits:
            result.logits.append(logits.float().cpu())
        trace.memory.append(_memory_sample(cache, rec, device, weights, "prefill"))
        summary.peak_gpu_bytes, summary.peak_gpu_reserved_bytes = _peaks(device)
        nxt = logits.argmax(-1, keepdim=True)
        decoder = graph_decoder(model, cache, graphs, header.notes, nxt) if gen else None
        steps = []
        for i in range(gen):
            rec.enabled = trace_steps < 0 or warmup <= i < warmup + trace_steps
            if (
                i >= warmup
            ):  # the host's pace before the step, with the device idle (outside the step's timing)
                summary.host_pace_us.append(loop_us())
                summary.launch_pace_us.append(launch_us(device))
                summary.step_pace_us.append(step_us(device))
            s0 = engine.event(engine.compute)
            if decoder is None:
                last = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            else:
                h0 = time.perf_counter()
                last = decoder.step(nxt)
                rec.host_span("host", "issue", h0, time.perf_counter(), name="graph replay")
            nxt = last.argmax(-1, keepdim=True)
            s1 = engine.event(engine.compute)
            if decoder is not None:
                rec.span("compute", "layer", s0, s1, name="replayed decode step (CUDA graph)")
            engine.synchronize()
            rec.flush()
            steps.append(engine.elapsed_s(s0, s1))
            if keep_logits:
                result.logits.append(last.float().cpu())
            measured = steps[warmup:] if len(steps) > warmup else []
            summary.decode.step_s = measured
            summary.decode.time_s = statistics.median(measured) if measured else None
            progress.step("decode step", i, gen)
        trace.memory.append(_memory_sample(cache, rec, device, weights, "decode"))
        if warmup and gen:
            header.notes.append(
                f"decode: first {min(warmup, gen)} step(s) are warm-up, excluded from the decode step times"
            )
        from roofsim.executor.attention import kernels_used
        from roofsim.executor.kvquant import row_writes_used

        header.notes += [
            *rt.notes,
            *filter(None, (note() for note in rt.end_notes)),
            kernels_used(),
            *filter(None, [row_writes_used()]),
        ]
        trace.complete = True
        if keep_cache:
            result.cache = cache
    except BaseException as e:  # noqa: B036 - the partial trace is written for every failure, then re-raised
        trace.error = _describe(e)
        if cache is not None:
            cache.runtime.rec.drop()
        raise
    finally:
        summary.peak_gpu_bytes, summary.peak_gpu_reserved_bytes = _peaks(device)
        if out is not None:
            trace.write(out)
        if cache is not None and result.cache is None:
            cache.close()
            del cache
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return result


def graph_decoder(model, cache, graphs: bool | None, notes: list[str], first_ids):
    """The GraphDecoder of this run, captured on the first decode token, or None (eager, with the reason noted)."""
    if graphs is None:
        graphs = bool(getattr(cache.plan, "decode_graphs", False))
    if not graphs:
        return None
    from roofsim.executor.graphs import GraphDecoder, graph_unsupported

    why = graph_unsupported(cache)
    if why:
        notes.append(f"decode ran eager: {why}")
        return None
    t0 = time.perf_counter()
    decoder = GraphDecoder(model, cache)
    try:
        decoder.capture(first_ids)
    except RuntimeError as e:  # a kernel or library call the capture does not allow: the run goes on eager
        torch.cuda.synchronize()
        notes.append(f"decode ran eager: the CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]})")
        return None
    notes.append(
        f"decode: each step replayed from a CUDA graph (captured in {time.perf_counter() - t0:.2f} s, outside the "
        f"step times; decode attention kernel {decoder.kernel})"
    )
    return decoder


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(e, _oom_types()) and "out of memory" in str(e).lower():
        return f"out of GPU memory: {first}"
    return f"{type(e).__name__}: {first}"


def _peaks(device):
    if device.type != "cuda":
        return None, None
    return float(torch.cuda.max_memory_allocated(device)), float(torch.cuda.max_memory_reserved(device))


def _memory_sample(cache, rec, device, weights: int, phase: str) -> MemorySample:
    gpu = {"weights": float(weights), **{k: float(v) for k, v in cache.gpu_bytes().items()}}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        gpu["activations"] = max(0.0, float(peak) - sum(gpu.values()))
    t = 0.0
    if rec.origin is not None:
        ev = rec.engine.event(rec.engine.compute)
        rec.engine.host_wait(ev)
        t = rec.time_of(ev)
    return MemorySample(t_s=t, gpu=gpu, pinned_host_bytes=float(cache.pinned_host_bytes))


def host_allocator_bytes() -> int:
    """Pinned bytes held by torch's caching host allocator (power-of-two rounded)."""
    try:
        stats = torch.cuda.host_memory_stats()
    except (AttributeError, RuntimeError):
        return 0
    for key in ("allocated_bytes.current", "allocated_bytes.all.current", "reserved_bytes.current"):
        if key in stats:
            return int(stats[key])
    return 0


def cap_gpu_memory(gpu_mem_bytes: float, device) -> None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_mem_bytes / total), index)
