"""The report's header: model, hardware with each number's provenance, workload, plan, and where a measured
trace was taken (its fingerprint)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from roofsim.report.page import Raw, Section, esc, table
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.model import ModelSpec
from roofsim.specs.sourced import Sourced
from roofsim.trace import Fingerprint
from roofsim.units import fmt_bytes, fmt_tokens
from roofsim.workload import Workload


@dataclass
class RunInfo:
    """What a report is about. Specs are None when they could not be loaded by name (a measured trace from a
    GPU roofsim has no spec file for): the names still show."""

    model_name: str
    gpu_name: str
    host_name: str
    workload: Workload | None = None
    plan: object | None = None  # a Plan
    model: ModelSpec | None = None
    gpu: GpuSpec | None = None
    host: HostSpec | None = None
    fingerprint: Fingerprint | None = None
    notes: list[str] = field(default_factory=list)
    gpu_mem_bytes: float | None = None  # the cap on GPU memory the plan ran or was priced under
    host_mem_bytes: float | None = None
    profile: str | None = None  # the GPU spec (name or file) the trace was priced or planned with

    @property
    def title(self) -> str:
        ctx = f" at {fmt_tokens(self.workload.context)} tokens" if self.workload else ""
        return f"{self.model_name} on {self.gpu_name}{ctx}"


def provenance(s: Sourced) -> Raw:
    """The provenance of a number; URLs become links (escaped, and only http(s) ones)."""
    for kind in ("measured", "source", "derived", "assumed"):
        text = getattr(s, kind)
        if not text:
            continue
        if kind == "source" and text.startswith(("https://", "http://")):
            url = text.split()[0]
            rest = text[len(url) :]
            return Raw(f'<span class="src">source: <a href="{esc(url)}">{esc(url)}</a>{esc(rest)}</span>')
        return Raw(f'<span class="src">{esc(kind)}: {esc(text)}</span>')
    return Raw("")


def _num(v: float, unit: str) -> str:
    return f"{v:,.6g} {unit}".strip()


def gpu_rows(g: GpuSpec) -> list[list]:
    c, m, link, e, r = g.compute, g.memory, g.link, g.efficiency, g.runtime
    rows = [
        ("bf16 tensor peak", c.bf16_tflops, "TFLOP/s"),
        ("fp32 peak", c.fp32_tflops, "TFLOP/s"),
        ("HBM capacity", m.capacity_gib, "GiB"),
        ("reserved (context, allocator)", m.reserved_gib, "GiB"),
        ("HBM bandwidth", m.bandwidth_gbps, "GB/s"),
        ("GEMM efficiency", e.gemm, ""),
        ("attention efficiency", e.attention, ""),
        ("memory efficiency", e.memory, ""),
        ("kernel launch", e.kernel_us, "us"),
        (f"{link.name} H2D (pinned)", link.h2d_gbps, "GB/s"),
        (f"{link.name} D2H (pinned)", link.d2h_gbps, "GB/s"),
        ("H2D pageable", link.pageable_h2d_gbps, "GB/s"),
        ("copy latency", link.copy_latency_us, "us"),
        ("duplex efficiency", link.duplex_efficiency, ""),
        ("copy issue (host)", r.copy_issue_us, "us"),
        ("synchronisation (host)", r.sync_us, "us"),
    ]
    optional = [  # calibrated profiles only
        ("H2D of a just-gathered stage", link.h2d_gathered_gbps, "GB/s"),
        ("attention call (host)", r.attention_call_us, "us"),
        ("streamed call extra (host)", r.streamed_call_us, "us"),
        ("host pace: loop", r.host_pace_us, "us"),
        ("host pace: launches", r.launch_pace_us, "us"),
        ("host pace: tiny step", r.step_pace_us, "us"),
    ]
    rows += [row for row in optional if row[1] is not None]
    return [[name, _num(s.value, unit), provenance(s)] for name, s, unit in rows]


def host_rows(h: HostSpec) -> list[list]:
    rows = [
        ("RAM capacity", h.ram_capacity_gib, "GiB"),
        ("RAM bandwidth", h.ram_bandwidth_gbps, "GB/s"),
        ("RAM efficiency", h.ram_efficiency, ""),
        ("CPU cores", h.cpu_cores, ""),
        ("CPU peak", h.cpu_tflops, "TFLOP/s"),
        ("CPU attention scan", h.cpu_attention_gbps, "GB/s"),
    ]
    return [[name, _num(s.value, unit), provenance(s)] for name, s, unit in rows]


def _model_rows(info: RunInfo) -> list[list]:
    m = info.model
    if m is None:
        return [["name", info.model_name], ["spec", "not found among roofsim's models: shapes unknown"]]
    return [
        ["name", m.name],
        ["parameters", f"{m.params / 1e9:.2f} B"],
        ["layers", m.n_layers],
        ["heads (query / KV)", f"{m.n_heads} / {m.n_kv_heads}, head dim {m.head_dim}"],
        ["hidden / intermediate", f"{m.hidden} / {m.intermediate}"],
        ["KV per token", fmt_bytes(m.kv_bytes_per_token)],
        ["weights", fmt_bytes(m.weight_bytes)],
        ["config", _link_or_text(m.source)],
    ]


def _link_or_text(text: str) -> Raw:
    if text.startswith(("https://", "http://")):
        return Raw(f'<a href="{esc(text)}">{esc(text)}</a>')
    return Raw(esc(text))


def _run_rows(info: RunInfo) -> list[list]:
    rows: list[list] = []
    if info.workload:
        w = info.workload
        rows += [
            ["context", f"{fmt_tokens(w.context)} tokens ({w.context:,})"],
            ["batch", w.batch],
            ["generated tokens", w.gen],
        ]
    if info.gpu_mem_bytes is not None:
        rows.append(["GPU memory cap", fmt_bytes(info.gpu_mem_bytes)])
    if info.host_mem_bytes is not None:
        rows.append(["host memory cap", fmt_bytes(info.host_mem_bytes)])
    if info.profile and info.profile != info.gpu_name:
        rows.append(["GPU spec (profile)", info.profile])
    if info.plan is not None:
        plan = info.plan
        rows += [
            ["plan family", plan.family + (" (approximate)" if plan.approximate else "")],
            ["knobs", plan.knobs()],
        ]
    return rows


def header_section(info: RunInfo, title: str = "What ran") -> Section:
    s = Section(title, anchor="header")
    left = [Raw("<h3>Model</h3>"), table(["", ""], _model_rows(info), cls="kv")]
    left += [Raw("<h3>Workload and plan</h3>"), table(["", ""], _run_rows(info), cls="kv")]
    if info.plan is not None:
        left.append(Raw("<h3>Plan JSON</h3>"))
        left.append(Raw(f"<pre>{esc(json.dumps(info.plan.model_dump(), indent=1))}</pre>"))
    right: list[Raw] = []
    if info.gpu is not None:
        right += [Raw(f"<h3>GPU: {esc(info.gpu.full_name)} ({esc(info.gpu.name)})</h3>")]
        right.append(table(["quantity", "value", "provenance"], gpu_rows(info.gpu), numeric={1}))
    else:
        right.append(Raw(f"<h3>GPU: {esc(info.gpu_name)}</h3>"))
        right.append(Raw('<p class="note">no roofsim spec file by this name: datasheet numbers unknown</p>'))
    if info.host is not None:
        right += [Raw(f"<h3>Host: {esc(info.host.full_name)} ({esc(info.host.name)})</h3>")]
        right.append(table(["quantity", "value", "provenance"], host_rows(info.host), numeric={1}))
    else:
        right.append(Raw(f"<h3>Host: {esc(info.host_name)}</h3>"))
    if info.fingerprint is not None:
        fp = info.fingerprint.model_dump(exclude_none=True)
        rows = [[k, fmt_bytes(v) if k.endswith("_bytes") else v] for k, v in fp.items()]
        left += [Raw("<h3>Measured on (fingerprint)</h3>"), table(["", ""], rows, cls="kv")]
    grid = (
        '<div class="grid"><div>'
        + "".join(b.markup for b in left)
        + "</div><div>"
        + "".join(b.markup for b in right)
        + "</div></div>"
    )
    s.blocks.append(Raw(grid))
    for note in info.notes:
        s.blocks.append(Raw(f'<p class="note">{esc(note)}</p>'))
    return s
