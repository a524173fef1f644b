"""The one schema for what happened in a run: predicted by the analytic model (a summary, no spans) or the
simulator, or measured by the executor.

A Trace holds spans (a resource busy with one piece of work), memory samples over time, the phases' summary and a
header saying who produced it under which plan, limits and profile. `compare(predicted, measured)` gives
per-phase and per-span-kind errors.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roofsim.errors import UserError
from roofsim.plan import Plan
from roofsim.workload import Workload

SCHEMA_VERSION = 4

Resource = Literal["compute", "h2d", "d2h", "cpu", "host"]
"""compute: the GPU compute stream; h2d/d2h: the copy engines; cpu: CPU attention or gathers; host: the issuing
Python thread (kernel launches, copy issue, synchronisations)."""
RESOURCES: tuple[str, ...] = ("compute", "h2d", "d2h", "cpu", "host")

Ceiling = Literal["tensor", "hbm", "launch", "allreduce", "cpu_ram", "cpu_compute"]
"""What limits a resource's work (the roofline): the compute stream's operators are bound by tensor-core FLOPs, HBM
bytes, their per-kernel cost or (a tensor-parallel plan's all-reduces) the GPU interconnect; the CPU's attention by
its RAM bandwidth or its FLOPs."""

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


class PhaseStats(BaseModel):
    """One phase: its time, each resource's busy time and the one that binds, and the work it moved.

    Prefill: time_s is the whole prompt, step_s each chunk, busy_s over all chunks. Decode: time_s is one step at
    the workload's context (the median of the steps, where several ran), step_s each step, busy_s per step."""

    model_config = ConfigDict(extra="forbid")

    time_s: float | None = None
    step_s: list[float] = Field(default_factory=list)
    busy_s: dict[Resource, float] = Field(default_factory=dict)
    bound: Resource | None = Field(None, description="the resource with the most busy time")
    ceiling_s: dict[Ceiling, float] = Field(
        default_factory=dict,
        description="predicted: the compute stream's and the CPU's busy time by the ceiling that binds each operator",
    )
    band_s: tuple[float, float] | None = Field(
        None,
        description="predicted: spread_band_s widened by the model's own error (roofsim.band); None: not priced, "
        "or measured",
    )
    spread_band_s: tuple[float, float] | None = Field(
        None,
        description="predicted: time_s with every unsteady resource at the fast and at the slow end of its "
        "calibrated spread (roofsim.band); None: not priced, or measured",
    )
    flops: float | None = None
    hbm_bytes: float | None = None
    h2d_bytes: float | None = None
    d2h_bytes: float | None = None
    cpu_bytes: float | None = None

    @property
    def bound_share(self) -> float:
        """The binding resource's busy time over the phase's time."""
        if not self.bound or not self.time_s:
            return 0.0
        return self.busy_s.get(self.bound, 0.0) / self.time_s

    def binding(self) -> tuple[str, float]:
        """What binds the phase and its share of the phase's time, naming the ceiling where one is known: a
        compute-bound phase is tensor-, HBM- or launch-bound by which ceiling holds most of its operators' time,
        a CPU-bound one RAM- or FLOP-bound."""
        if not self.bound:
            return "-", 0.0
        sub = {"compute": ("tensor", "hbm", "launch", "allreduce"), "cpu": ("cpu_ram", "cpu_compute")}.get(
            self.bound, ()
        )
        if self.time_s and any(self.ceiling_s.get(c) for c in sub):
            c = max(sub, key=lambda c: self.ceiling_s.get(c, 0.0))
            return c, self.ceiling_s[c] / self.time_s
        return self.bound, self.bound_share


class MemoryUse(BaseModel):
    """Bytes by kind at the peak. GPU kinds: weights, kv_resident, kv_buffers, activations, logits, workspace.
    Host kinds: kv, activations, weights, pinned_rounding."""

    model_config = ConfigDict(extra="forbid")

    gpu: dict[str, float]
    host: dict[str, float]

    @property
    def gpu_bytes(self) -> float:
        return sum(self.gpu.values())

    @property
    def host_bytes(self) -> float:
        return sum(self.host.values())


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefill: PhaseStats = Field(default_factory=PhaseStats)
    decode: PhaseStats = Field(default_factory=PhaseStats)
    decode_end_s_per_token: float | None = Field(
        None, description="predicted: the decode step at context + gen (the analytic model prices both ends)"
    )
    peak_gpu_bytes: float | None = None
    peak_gpu_reserved_bytes: float | None = None
    peak_host_bytes: float | None = Field(
        None, description="host memory the plan holds (the pinned KV store, ...)"
    )
    memory: MemoryUse | None = Field(None, description="predicted: GPU and host bytes by kind at the peak")
    feasible: bool | None = None
    reason: str | None = Field(None, description="why the plan does not fit: the need and the shortfall")
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

    @property
    def prefill_s(self) -> float | None:
        return self.prefill.time_s

    @property
    def decode_s_per_token(self) -> float | None:
        return self.decode.time_s

    def phase(self, name: str) -> PhaseStats:
        return self.prefill if name == "prefill" else self.decode


class TraceHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    producer: Literal["predicted", "measured"]
    tool: str = Field(description="roofsim.predict (analytic), roofsim.sim or roofsim.executor")
    plan: Plan
    model: str
    gpu: str
    host: str
    workload: Workload
    gpu_mem_bytes: float | None = Field(
        None, description="the cap on GPU memory the plan ran or was priced under"
    )
    host_mem_bytes: float | None = Field(None, description="the cap on host memory, where one was given")
    profile: str | None = Field(
        None, description="the GPU spec (name or file) the prediction was priced with"
    )
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


_V1_CAP = re.compile(r"^GPU memory capped at ([0-9.]+) GB")
_V1_PROFILE = re.compile(r"^profile: (.+)$")


def upgrade(data: dict) -> dict:
    """A trace document as the current schema has it, once, at reading. Schema 1 (no schema_version) kept one flat
    summary with per-phase dicts, called the host memory pinned_host_bytes, and said the GPU memory cap and the
    profile only in header notes: mapped onto the typed fields. Schema 2's resident plans and schema 3's evict
    plans decoded eager unless they said `decode_graphs` (the knob defaulted to false, or did not exist; it is true
    since schemas 3 and 4): said so explicitly."""
    header = data["header"]
    version = header.get("schema_version", 1)
    if not isinstance(version, int) or version >= SCHEMA_VERSION:
        return data  # current, or a version that is no number (validation says so)
    if version < 2:
        data = _from_schema_1(data)
    header = {**data["header"], "schema_version": SCHEMA_VERSION}
    header["plan"] = eager_if_unsaid(header.get("plan"))
    return {**data, "header": header}


def eager_if_unsaid(plan):
    """A stored plan as it ran: a plan of a family with a `decode_graphs` knob (resident, evict) written before
    the knob existed in it, or defaulted to true, decoded eager; every plan written since says the knob. Anything
    but a dict is returned as it is (validation says what is wrong with it)."""
    if isinstance(plan, dict) and "decode_graphs" not in plan and _replays(plan.get("family")):
        return {**plan, "decode_graphs": False}
    return plan


def _replays(name) -> bool:
    """Whether the family called `name` has a decode_graphs knob (its plan type has the field)."""
    from roofsim.families.registry import families

    f = families().get(name) if isinstance(name, str) else None
    return f is not None and "decode_graphs" in f.plan_type.model_fields


def _from_schema_1(data: dict) -> dict:
    header = {**data["header"], "schema_version": 2}
    if isinstance(header.get("notes", []), list):  # anything else is left for validation to reject
        notes = []
        for note in header.get("notes", []):
            if isinstance(note, str) and (m := _V1_CAP.match(note)):
                header["gpu_mem_bytes"] = float(m.group(1)) * 1e9
            elif isinstance(note, str) and (m := _V1_PROFILE.match(note)):
                header["profile"] = m.group(1)
                continue
            notes.append(note)
        header["notes"] = notes
    old = data.get("summary") or {}
    if not isinstance(old, dict) or not all(isinstance(old.get(k) or {}, dict) for k in ("bound", "busy_s")):
        return {**data, "header": header}
    old = dict(old)
    bound, busy = old.pop("bound", {}) or {}, old.pop("busy_s", {}) or {}
    summary = {
        "prefill": {
            "time_s": old.pop("prefill_s", None),
            "step_s": old.pop("prefill_chunk_s", []),
            "busy_s": busy.get("prefill", {}),
            "bound": bound.get("prefill"),
        },
        "decode": {
            "time_s": old.pop("decode_s_per_token", None),
            "step_s": old.pop("decode_step_s", []),
            "busy_s": busy.get("decode", {}),
            "bound": bound.get("decode"),
        },
        "peak_host_bytes": old.pop("pinned_host_bytes", None),
        **old,
    }
    return {**data, "header": header, "summary": summary}


class Trace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: TraceHeader
    spans: list[Span] = Field(default_factory=list)
    memory: list[MemorySample] = Field(default_factory=list)
    summary: Summary = Field(default_factory=Summary)
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
            data = json.loads(read_json_text(p))
        except (
            ValueError,
            OSError,
            EOFError,
            RecursionError,
        ) as e:  # not JSON or UTF-8, a broken .gz, too deep
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"{str(path)!r} is not a roofsim trace: {first}") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(path)!r} is not a roofsim trace: it holds a JSON {type(data).__name__}")
        try:
            if isinstance(data.get("header"), dict):
                data = upgrade(data)
            return cls.model_validate(data)
        except ValidationError as e:
            from roofsim.specs.tomlfile import first_error

            raise UserError(f"{str(path)!r} is not a roofsim trace: {first_error(e)}") from None

    @property
    def plan(self):
        return self.header.plan

    @property
    def feasible(self) -> bool:
        return self.summary.feasible is not False

    @property
    def e2e_s(self) -> float:
        """Prefill plus gen decode steps (the trapezoid between the first and the last step where both are
        priced)."""
        s, gen = self.summary, self.header.workload.gen
        first = s.decode.time_s or 0.0
        last = s.decode_end_s_per_token if s.decode_end_s_per_token is not None else first
        return (s.prefill.time_s or 0.0) + gen * 0.5 * (first + last)

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
