"""This machine as the planner sees it, and the plan for a workload on it (`roofsim generate`, `roofsim serve`).

The GPU spec: `--gpu`, else the calibrated profile `roofsim.specs.profile.find_profile` finds for the device,
else the built-in spec whose name matches the device's, else h100-sxm. The memory: the card's (or --gpu-mem,
whichever is less) and the host's RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import Trace
from roofsim.workload import Workload


@dataclass
class Machine:
    device: torch.device
    gpu_arg: str  # the spec's name or file, as make_cache and the trace header take it
    gpu: GpuSpec
    host: HostSpec
    limits: Limits
    gpu_from: str  # where the spec came from, in words

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def pick_device(arg: str | None) -> torch.device:
    device = torch.device(arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return device


def this_machine(device: torch.device, gpu: str | None = None, gpu_mem_bytes: float | None = None) -> Machine:
    from roofsim.executor.cli import device_gpu_spec
    from roofsim.executor.timing import host_ram_bytes

    from roofsim.specs import load_gpu
    from roofsim.specs.hardware import default_host_of
    from roofsim.specs.profile import find_profile

    if gpu_mem_bytes and device.type != "cuda":
        raise UserError("--gpu-mem caps GPU memory and needs --device cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if gpu:
        gpu_arg, spec, why = gpu, load_gpu(gpu), f"--gpu {gpu}"
    elif (profile := find_profile(name)) is not None:
        gpu_arg, spec, why = str(profile), load_gpu(str(profile)), f"calibrated profile {profile}"
    else:
        gpu_arg, spec = device_gpu_spec(None, device)
        why = f"built-in spec for {name}" if name and gpu_arg != "h100-sxm" else "built-in default"
    card = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    caps = [x for x in (gpu_mem_bytes, card) if x]
    limits = Limits(gpu_mem_bytes=min(caps) if caps else None, host_mem_bytes=host_ram_bytes())
    return Machine(device, gpu_arg, spec, default_host_of(gpu_arg, spec), limits, why)


@dataclass
class Chosen:
    plan: object
    prediction: Trace  # the analytic model's, at the workload it was chosen for
    how: str  # how it was chosen, in words


def choose_plan(text: str, spec: ModelSpec, m: Machine, work: Workload, objective: str = "e2e") -> Chosen:
    """`auto`: the planner's best for the objective; a family name: its best knobs within the memory here; a
    plan.json: as written. Refused, with its need, where the model says it does not fit here."""
    from roofsim.executor.cli import plan_document, shortfall

    from roofsim.plan import family_of, plan_from_dict
    from roofsim.predict import predict

    if text == "auto":
        from roofsim.planner import search

        plan = search(spec, m.gpu, m.host, work, m.limits, objective=objective).best.plan
        how = f"the planner's best for {objective} time"
    elif doc := plan_document(text):
        plan, how = plan_from_dict(doc, where=f"plan file {text!r}"), f"plan file {text}"
    else:
        from roofsim.sweep import best_of_family

        family_of(text, "--plan")
        plan = best_of_family(text, spec, m.gpu, m.host, work, m.limits).plan
        how = f"{text}'s best knobs here"
    prediction = predict(plan, spec, m.gpu, m.host, work, m.limits)
    short = shortfall(prediction.summary, m.limits, m.gpu, cuda=m.cuda)
    if short:
        raise UserError(
            f"plan {plan.family} ({plan.knobs()}) for {spec.name} at {work.context} + {work.gen} tokens does not "
            f"fit: it needs {' and '.join(short)} (priced with {m.gpu.name}); try --plan auto, a shorter prompt or fewer new tokens"
        )
    return Chosen(plan, prediction, how)


def mean_decode_s(summary) -> float:
    """A prediction's decode step averaged over the generation: the model prices the step at the prompt's length
    and at prompt + gen, and it grows linearly in between."""
    end = summary.decode_end_s_per_token or summary.decode_s_per_token
    return (summary.decode_s_per_token + end) / 2
