"""The plan families. Each module holds one family whole: its plan type and checks, its candidate space, its
analytic evaluation and its simulator program, registered under its name (roofsim.families.registry). Shared
machinery: the per-layer pipeline model (pipeline), slot streaming (slot_stream), the plan space (roofsim.space),
the slot geometry (roofsim.geometry) and the simulator's program builder (roofsim.sim.builder).

Importing this package registers the built-in families; the imports below are in their order of simplicity.
"""

# isort: off
from roofsim.families.resident import ResidentPlan
from roofsim.families.layer_offload import LayerOffloadPlan
from roofsim.families.head_offload import HeadOffloadPlan
from roofsim.families.kvpr import KvprPlan
from roofsim.families.cpu_attention import CpuAttentionPlan
from roofsim.families.sparse_fetch import SparseFetchPlan
from roofsim.families.evict import EvictPlan

# isort: on
from roofsim.families.registry import Family, exact_families, families, family, register, unregister

__all__ = [
    "CpuAttentionPlan",
    "EvictPlan",
    "Family",
    "HeadOffloadPlan",
    "KvprPlan",
    "LayerOffloadPlan",
    "ResidentPlan",
    "SparseFetchPlan",
    "exact_families",
    "families",
    "family",
    "register",
    "unregister",
]
