"""The specs a trace names, resolved to roofsim's: a measured trace names its GPU by the device name CUDA reports
("NVIDIA H100 80GB HBM3") and its host by the CPU, so these are matched to the built-in specs when one matches
unambiguously, and each guess is said in the report."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from roofsim.errors import UserError
from roofsim.limits import Limits
from roofsim.specs import list_gpus, load_gpu, load_host, load_model
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.trace import Trace


@dataclass
class Resolved:
    model: ModelSpec | None = None
    gpu: GpuSpec | None = None
    host: HostSpec | None = None
    limits: Limits = field(default_factory=Limits)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.model is not None and self.gpu is not None and self.host is not None


def _tokens(name: str) -> set[str]:
    return set(re.split(r"[\s\-_/()]+", name.lower())) - {""}


def gpu_by_device_name(device: str) -> GpuSpec | None:
    """The one built-in GPU whose full name holds every word of the device name, if exactly one does."""
    want = _tokens(device)
    if not want:
        return None
    hits = []
    for name in list_gpus():
        g = load_gpu(name)
        if want <= _tokens(g.full_name) or want <= _tokens(g.name):
            hits.append(g)
    return hits[0] if len(hits) == 1 else None


def _try(loader, name: str):
    try:
        return loader(name)
    except (UserError, OSError):
        return None


def resolve(
    trace: Trace, predicted: Trace | None = None, gpu: str | None = None, host: str | None = None
) -> Resolved:
    """Specs for `trace` (and the predicted trace beside it, whose names are roofsim's own). `gpu` and `host`
    (names or spec files, e.g. a calibrated profile) take precedence; a bad one is the user's error."""
    out = Resolved()
    if gpu:
        out.gpu = load_gpu(gpu)
        out.notes.append(f"GPU spec {out.gpu.name} from {gpu!r}, as asked")
    if host:
        out.host = load_host(host)
    headers = [t.header for t in (predicted, trace) if t is not None]
    for h in headers:
        out.model = out.model or _try(load_model, h.model)
    if out.model is None:
        out.notes.append(f"model {trace.header.model!r} is not one roofsim knows by name")
    for h in headers:
        if out.gpu is None and h.profile:
            out.gpu = _try(load_gpu, h.profile)
            if out.gpu is not None and h.profile != h.gpu:
                out.notes.append(f"GPU spec {out.gpu.name} from the profile the trace names, {h.profile!r}")
        out.gpu = out.gpu or _try(load_gpu, h.gpu)
    if out.gpu is None:
        device = trace.header.fingerprint.gpu_name if trace.header.fingerprint else trace.header.gpu
        out.gpu = gpu_by_device_name(device)
        if out.gpu is not None:
            out.notes.append(f"GPU spec {out.gpu.name} chosen for the device {device!r}")
        else:
            out.notes.append(f"no roofsim GPU spec matches {trace.header.gpu!r}")
    for h in headers:
        if out.host is None and h.host:
            out.host = _try(load_host, h.host)
    if out.host is None and out.gpu is not None:
        out.host = _try(load_host, out.gpu.default_host)
        if out.host is None and gpu and Path(gpu).is_file():  # a profile names its host file beside it
            out.host = _try(load_host, str(Path(gpu).parent / out.gpu.default_host))
        if out.host is not None and trace.header.host:
            out.notes.append(f"host spec {out.host.name} (the GPU spec's default) for {trace.header.host!r}")
    out.limits = Limits(gpu_mem_bytes=trace.header.gpu_mem_bytes, host_mem_bytes=trace.header.host_mem_bytes)
    return out
