"""`roofsim plan`: search the plan space for the fastest plan within memory and explain the choice."""

from roofsim.planner.candidates import candidates
from roofsim.planner.document import PlanDocument
from roofsim.planner.explain import explain
from roofsim.planner.search import OBJECTIVES, PlanResult, search
from roofsim.space import SearchSpace

__all__ = ["OBJECTIVES", "PlanDocument", "PlanResult", "SearchSpace", "candidates", "explain", "search"]
