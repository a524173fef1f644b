"""The one schema for what happened in a run, predicted (simulator) or measured (executor).

A Trace holds spans (a resource busy with one piece of work), memory samples over time, phase summaries and a
header saying who produced it. `compare(predicted, measured)` gives per-phase and per-span-kind errors.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from roofsim.errors import UserError
from roofsim.plan import Plan
from roofsim.workload import Workload

Resource = Literal["compute", "h2d", "d2h", "cpu", "host"]
"""compute: the GPU compute stream; h2d/d2h: the copy engines; cpu: CPU attention or gathers; host: the issuing
Python thread (kernel launches, copy issue, synchronisations)."""

SpanKind = Literal[
    "h2d",
    "d2h",
    "attention",
    "gemm",
    "vector",
    "recompute",
    "cpu_attention",
    "cpu_gather",
    "sync",
    "issue",
    "layer",
]
Phase = Literal["prefill", "decode"]


class Span(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource: Resource
    kind: SpanKind
    phase: Phase
    step: int = Field(description="prefill chunk index or decode step index")
    layer: int | None = None
    slot: int | None = None
    start_s: float
    end_s: float
    bytes: float = 0.0
    flops: float = 0.0
    name: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class MemorySample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t_s: float
    gpu: dict[str, float] = Field(
        description="GPU bytes by kind: weights, kv_resident, kv_buffers, activations, ..."
    )
    pinned_host_bytes: float = 0.0

    @property
    def gpu_bytes(self) -> float:
        return sum(self.gpu.values())


class Fingerprint(BaseModel):
    """Where a measured trace was taken."""

    model_config = ConfigDict(extra="allow")

    gpu_name: str
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    transformers: str | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    cpu: str | None = None
    host_ram_bytes: float | None = None


class PhaseSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefill_s: float | None = None
    prefill_chunk_s: list[float] = Field(default_factory=list)
    decode_s_per_token: float | None = None
    decode_step_s: list[float] = Field(default_factory=list)
    peak_gpu_bytes: float | None = None
    peak_gpu_reserved_bytes: float | None = None
    pinned_host_bytes: float | None = None
    host_pace_us: list[float] = Field(
        default_factory=list,
        description="measured runs: roofsim.hostpace's loop timed before each decode step (outside its timing), us",
    )
    launch_pace_us: list[float] = Field(
        default_factory=list,
        description="measured runs: roofsim.executor.launchpace's kernel launches timed right after host_pace_us, us",
    )
    step_pace_us: list[float] = Field(
        default_factory=list,
        description="measured runs: roofsim.executor.launchpace's tiny decode step timed right after launch_pace_us, us",
    )
    bound: dict[str, str] = Field(default_factory=dict, description="phase -> binding resource, where known")
    busy_s: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="phase -> resource -> busy s"
    )
    feasible: bool | None = None
    reason: str | None = Field(None, description="why the plan does not fit: the moment and the shortfall")


class TraceHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    producer: Literal["predicted", "measured"]
    tool: str = Field(description="e.g. roofsim.sim, roofsim.executor")
    plan: Plan
    model: str
    gpu: str
    host: str
    workload: Workload
    fingerprint: Fingerprint | None = None
    created: str | None = None
    notes: list[str] = Field(default_factory=list)


def _gz_twin(p: Path) -> Path:
    return p.with_name(p.name + ".gz")


def json_exists(path: str | Path) -> bool:
    """A JSON file is there, plain or gzip-compressed (`name.json.gz`: committed results keep big traces so)."""
    p = Path(path)
    return p.is_file() or (p.suffix != ".gz" and _gz_twin(p).is_file())


def read_json_text(path: str | Path) -> str:
    """The text of a JSON file, or of its gzip-compressed twin where only that exists."""
    p = Path(path)
    if p.suffix != ".gz" and not p.is_file() and _gz_twin(p).is_file():
        p = _gz_twin(p)
    if p.suffix == ".gz":
        return gzip.decompress(p.read_bytes()).decode()
    return p.read_text()


def write_json_text(path: str | Path, text: str) -> None:
    """Write JSON text; gzip-compressed (and reproducibly: no timestamp) where the name ends in .gz."""
    p = Path(path)
    if p.suffix == ".gz":
        p.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        p.write_text(text)


class Trace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: TraceHeader
    spans: list[Span] = Field(default_factory=list)
    memory: list[MemorySample] = Field(default_factory=list)
    summary: PhaseSummary = Field(default_factory=PhaseSummary)
    complete: bool = True
    error: str | None = Field(None, description="what failed, for a run that stopped early")

    def write(self, path: str | Path) -> None:
        """As JSON; gzip-compressed where the name ends in .gz."""
        write_json_text(path, self.model_dump_json(indent=1))

    @classmethod
    def read(cls, path: str | Path) -> Trace:
        """From `path`, or from its compressed twin `path.gz` where only that exists."""
        p = Path(path)
        if not json_exists(p):
            raise UserError(f"trace file {str(path)!r} does not exist")
        try:
            return cls.model_validate_json(read_json_text(p))
        except ValueError as e:
            first = str(e).splitlines()[0]
            raise UserError(f"{str(path)!r} is not a roofsim trace: {first}") from None

    def busy_by_kind(self, phase: Phase | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.spans:
            if phase is None or s.phase == phase:
                out[s.kind] = out.get(s.kind, 0.0) + s.duration_s
        return out

    def bytes_by_resource(self, phase: Phase | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.spans:
            if phase is None or s.phase == phase:
                out[s.resource] = out.get(s.resource, 0.0) + s.bytes
        return out


class ErrorRow(BaseModel):
    name: str
    predicted: float | None
    measured: float | None

    @property
    def error_pct(self) -> float | None:
        if self.predicted is None or self.measured in (None, 0):
            return None
        return 100.0 * (self.predicted - self.measured) / self.measured


class Comparison(BaseModel):
    phases: list[ErrorRow]
    span_kinds: dict[str, list[ErrorRow]] = Field(description="per phase: busy time per span kind")

    def row(self, name: str) -> ErrorRow:
        return next(r for r in self.phases if r.name == name)


def compare(predicted: Trace, measured: Trace) -> Comparison:
    p, m = predicted.summary, measured.summary
    phases = [
        ErrorRow(name="prefill_s", predicted=p.prefill_s, measured=m.prefill_s),
        ErrorRow(name="decode_s_per_token", predicted=p.decode_s_per_token, measured=m.decode_s_per_token),
        ErrorRow(name="peak_gpu_bytes", predicted=p.peak_gpu_bytes, measured=m.peak_gpu_bytes),
    ]
    kinds: dict[str, list[ErrorRow]] = {}
    for phase in ("prefill", "decode"):
        pk, mk = predicted.busy_by_kind(phase), measured.busy_by_kind(phase)
        # per step, so that a trace keeping fewer steps compares fairly
        ps = max(1, len({s.step for s in predicted.spans if s.phase == phase}))
        ms = max(1, len({s.step for s in measured.spans if s.phase == phase}))
        kinds[phase] = [
            ErrorRow(name=k, predicted=pk.get(k, 0.0) / ps, measured=mk.get(k, 0.0) / ms)
            for k in sorted(set(pk) | set(mk))
        ]
    return Comparison(phases=phases, span_kinds=kinds)
