"""What the user runs: prompt (context) length, batch, and tokens generated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    context: int = Field(gt=0, description="prompt tokens per sequence; decode is priced at this context")
    batch: int = Field(1, gt=0, description="sequences decoded together")
    gen: int = Field(32, gt=0, description="tokens generated per sequence (for end-to-end time)")

    @property
    def max_tokens(self) -> int:
        """Tokens per sequence the KV store must hold by the end of generation."""
        return self.context + self.gen
