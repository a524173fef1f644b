"""The baseline users have today: stock transformers `DynamicCache(offloading=True)` with SDPA attention, run and
measured the same way as a plan (whole-layer KV up on a side stream, the whole layer back to pinned memory on the
default stream ahead of attention, every step). Its trace carries the layer_offload plan with full write-back,
the family the simulator prices for it."""

from __future__ import annotations

import datetime
import math
import statistics

import torch
from roofsim.executor.runner import _describe, _peaks, host_allocator_bytes
from roofsim.executor.timing import fingerprint

from roofsim.families import LayerOffloadPlan, ResidentPlan
from roofsim.trace import Summary, Trace, TraceHeader
from roofsim.workload import Workload


def release_pinned_cache() -> None:
    """Hand torch's cached pinned host blocks back to the system (torch keeps freed pinned blocks for reuse)."""
    try:
        torch._C._host_emptyCache()
    except AttributeError:
        pass


def run_hf_offloaded(
    model,
    *,
    model_name: str,
    prompt_len: int,
    gen: int,
    chunk: int,
    warmup: int = 1,
    seed=0,
    offloading: bool = True,
):
    """transformers' own offloaded cache, driven as the executor drives a plan (chunked prefill, then decode);
    offloading=False: its default cache (DynamicCache on the GPU), the same way.

    Between prefill chunks (untimed) torch's cached pinned blocks are released: the cache allocates a new host
    block per layer per chunk, torch rounds each up to a power of two and keeps the freed ones, and at long
    contexts those kept blocks exhaust host memory (docs/evidence.md#ev-hf-offloaded-pinned-blocks). Decode keeps
    torch's behaviour: its blocks are reused from step to step."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    plan = (
        LayerOffloadPlan(write_back="full", prefill_chunk=chunk)
        if offloading
        else ResidentPlan(prefill_chunk=chunk)
    )
    import transformers

    header = TraceHeader(
        producer="measured",
        tool="roofsim.executor",
        plan=plan,
        model=model_name,
        gpu=torch.cuda.get_device_name(device),
        host="",
        workload=Workload(context=prompt_len, gen=max(gen, 1)),
        fingerprint=fingerprint(device),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=[
            f"baseline: stock transformers {transformers.__version__} DynamicCache(offloading={offloading}), sdpa",
            "torch's cached pinned host blocks released between prefill chunks, outside the timed spans",
        ],
    )
    trace = Trace(header=header, summary=Summary(), complete=False)
    s = trace.summary
    cache = None
    try:
        torch.cuda.reset_peak_memory_stats(device)
        cache = DynamicCache(config=model.config, offloading=offloading)
        ids = torch.randint(
            0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed)
        )
        ids = ids.to(device)
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        first = None
        for i in range(math.ceil(prompt_len / chunk)):
            a, b = ev(), ev()
            a.record()
            first = first or a
            o = model(
                ids[:, i * chunk : (i + 1) * chunk], past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            b.record()
            torch.cuda.synchronize()
            s.prefill.step_s.append(a.elapsed_time(b) / 1e3)
            s.prefill.time_s = sum(s.prefill.step_s)
            release_pinned_cache()
        nxt = o.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for _ in range(gen):
            a, b = ev(), ev()
            a.record()
            o = model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            b.record()
            torch.cuda.synchronize()
            steps.append(a.elapsed_time(b) / 1e3)
            s.decode.step_s = steps[warmup:]
            s.decode.time_s = statistics.median(steps[warmup:]) if len(steps) > warmup else None
        s.peak_host_bytes = float(host_allocator_bytes())
        trace.complete = True
    except BaseException as e:  # noqa: B036 - partial trace, then re-raise
        trace.error = _describe(e)
        raise
    finally:
        s.peak_gpu_bytes, s.peak_gpu_reserved_bytes = _peaks(device)
        del cache
        model.set_attn_implementation(previous)
        torch.cuda.empty_cache()
    return trace
