"""How much of a host-bound decode step Python's cyclic garbage collector takes: a tiny-width Llama of 32 layers
(8 KV heads) run on the CPU under head_offload with one KV head a slot, bf16 and fp8 KV, each with 1 and with 25
generated tokens; the collector's time (gc.callbacks) of the second less the first, per decode step, and the step
itself. A probe for docs/evidence.md#ev-gc-not-the-fp8-host-cost; nothing in roofsim reads it.

    python validation/gc_probe.py
"""

from __future__ import annotations

import gc
import time

import torch
from roofsim.executor.check import tiny_config
from roofsim.executor.runner import run_plan
from transformers import AutoModelForCausalLM

from roofsim.families import HeadOffloadPlan

STEPS = 24


def gc_seconds(plan, model, gen: int) -> tuple[float, float]:
    """(collector seconds, decode s per token) of one run of `gen` tokens after a 1,024-token prompt."""
    spent, started = [0.0], [0.0]

    def cb(phase, info) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - started[0]

    gc.collect()  # the run's own explicit collection comes before its timed part; this one keeps it small
    gc.callbacks.append(cb)
    try:
        r = run_plan(plan, model, model_name="tiny", prompt_len=1024, gen=gen, warmup=0, trace_steps=0)
    finally:
        gc.callbacks.remove(cb)
    return spent[0], r.trace.summary.decode_s_per_token or 0.0


def main() -> None:
    torch.manual_seed(0)
    cfg = tiny_config("llama", kv_heads=8, heads=32, layers=32, head_dim=16)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for kv in ("bf16", "fp8_e4m3"):
        plan = HeadOffloadPlan(
            kv_heads_per_slot=1, prefetch_depth=2, slot_buffers=3, prefill_chunk=512, kv_dtype=kv
        )
        short, _ = gc_seconds(plan, model, 1)
        long, step = gc_seconds(plan, model, 1 + STEPS)
        per = (long - short) / STEPS
        print(f"{kv}: collector {per * 1e3:.2f} ms a decode step of {step * 1e3:.1f} ms ({per / step:.1%})")


if __name__ == "__main__":
    main()
