"""The plan file `roofsim plan -o` writes and `roofsim run` / `roofsim predict --plan` read: the plan and the
prediction it was chosen with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from roofsim.plan import Plan
from roofsim.trace import PhaseSummary
from roofsim.workload import Workload


class PlanDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field("roofsim.plan/1", alias="schema")
    plan: Plan
    model: str
    gpu: str
    host: str
    workload: Workload
    objective: str
    gpu_mem_bytes: float | None = None
    host_mem_bytes: float | None = None
    prediction: dict  # Prediction.summary(): analytic times, memory and bounds
    simulated: PhaseSummary | None = None  # the simulator's summary, where the plan was refined
    explanation: str
