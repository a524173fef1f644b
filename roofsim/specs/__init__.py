"""Hardware and model specs: what the machine and the model are, each number with its provenance."""

from roofsim.specs.hardware import GpuSpec, HostSpec, list_gpus, list_hosts, load_gpu, load_host
from roofsim.specs.model import ModelSpec, list_models, load_model

__all__ = [
    "GpuSpec",
    "HostSpec",
    "ModelSpec",
    "list_gpus",
    "list_hosts",
    "list_models",
    "load_gpu",
    "load_host",
    "load_model",
]
