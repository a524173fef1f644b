"""The plan file `roofsim plan -o` writes and `roofsim run` / `roofsim predict --plan` read: the plan, the model
it is for (its spec, so a model read from a config.json travels with the plan) and the prediction it was chosen
with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from roofsim.plan import Plan
from roofsim.specs.model import ModelSpec
from roofsim.trace import Summary
from roofsim.workload import Workload


class PlanDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field("roofsim.plan/2", alias="schema")
    plan: Plan
    model: str
    model_spec: ModelSpec | None = Field(
        None,
        description="the model's shapes, so that predict and run rebuild it without the file it came from",
    )
    gpu: str
    host: str
    workload: Workload
    objective: str
    gpu_mem_bytes: float | None = None
    host_mem_bytes: float | None = None
    prediction: Summary  # the analytic model's: both phases, memory by kind, what binds
    simulated: Summary | None = None  # the simulator's, where the plan was refined
    explanation: str
