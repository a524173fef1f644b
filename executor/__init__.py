"""roofsim.executor: the torch runtime that runs a Plan on CUDA (or on the CPU stand-in) with stock transformers
models and records a measured Trace.

    from roofsim.executor import make_cache
    cache = make_cache(model, plan, max_tokens=prompt_len + new_tokens)
    model.generate(input_ids, past_key_values=cache, max_new_tokens=new_tokens)

Imported lazily: `import roofsim.executor` (and `roofsim run --help`) loads no torch.
"""

from __future__ import annotations

__all__ = ["make_cache", "load_model", "run_plan", "run_hf_offloaded"]


def __getattr__(name):
    if name == "make_cache":
        from roofsim.executor.build import make_cache

        return make_cache
    if name == "load_model":
        from roofsim.executor.models import load_model

        return load_model
    if name == "run_plan":
        from roofsim.executor.runner import run_plan

        return run_plan
    if name == "run_hf_offloaded":
        from roofsim.executor.baseline import run_hf_offloaded

        return run_hf_offloaded
    raise AttributeError(name)
