"""Terminal tables for predictions, plans, traces and roofline rows (rich), sized for a terminal of 100 columns.

Compact form (the default): knobs by their short names (roofsim.plan.knob_abbreviation), sizes in columns headed
by their unit, and under each table a footer that says what the columns, marks and short names mean and, one per
row, why a plan does not fit. Narrower consoles wrap the wide columns at spaces. Wide form (`--wide`): knobs by
their field names and the reasons inline, at least 180 columns wide.
"""

from __future__ import annotations

import os

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from roofsim.plan import knob_abbreviation
from roofsim.roofline import RooflineRow
from roofsim.trace import Trace
from roofsim.units import GiB, KiB, fmt_band, fmt_bytes, fmt_seconds, fmt_tokens, shows_band

WIDTH = 100  # output that is not a terminal (pipes, files, tests), unless COLUMNS says otherwise
WIDE_WIDTH = 180

SIZES = "GiB = 2^30 bytes (a GB is 10^9)"

BOUND = {  # what each resource or ceiling PhaseStats.binding() names is
    "tensor": "tensor-core math",
    "hbm": "GPU memory (HBM) traffic",
    "launch": "the GPU's fixed cost per kernel",
    "compute": "the GPU's compute stream",
    "h2d": "host-to-GPU copies",
    "d2h": "GPU-to-host copies",
    "cpu_ram": "the CPU scanning KV in host RAM",
    "cpu_compute": "CPU attention math",
    "cpu": "the CPU's share of the work",
    "host": "the Python thread issuing kernels and copies",
}


def _shows_band(s) -> bool:
    """Whether a table prints a band for this Summary's prefill or decode time (BAND_FOOTER explains it then)."""
    return shows_band(s.prefill_s, s.prefill.band_s) or shows_band(s.decode_s_per_token, s.decode.band_s)


BAND_FOOTER = (
    "(low-high): the band, the plan priced with the host's pace, the link and the CPU scan at the fast and at "
    "the slow ends of what the calibration measured"
)


def _columns() -> int | None:
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def console(wide: bool = False) -> Console:
    """A terminal keeps its width (or COLUMNS); other output (pipes, files, tests) is COLUMNS wide, else 100.
    Wide: at least 180 columns, for the long form."""
    probe = Console()
    width = _columns() or (probe.width if probe.is_terminal else WIDTH)
    if wide:
        width = max(width, WIDE_WIDTH)
    return probe if width == probe.width else Console(width=width)


def _gib(n: float | None) -> str:
    """Bytes as GiB for a column headed in GiB: 19.58, and 0 for nothing."""
    return "-" if n is None else "0" if n == 0 else f"{n / GiB:.2f}"


def _fmt_flops(x: float) -> str:
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f}"


def bound_text(p: Trace, phase: str) -> str:
    name, share = p.summary.phase(phase).binding()
    return f"{name} {share:.0%}"


def _table(**kw) -> Table:
    """A table with a rule under its header and no vertical lines: two spaces between columns. Where the
    console is too narrow, rich wraps the widest columns (at spaces, folding a word only if it must)."""
    return Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        header_style="bold",
        **kw,
    )


def _titled(title: str, table: Table, footer: list[str]) -> Group:
    """The title above the table and the footer lines under it, each wrapped at the console's width (a table's
    own title and caption would wrap at the table's)."""
    return Group(Text(title, style="table.title"), table, *(Text(line, style="dim") for line in footer))


def _knobs(plan, wide: bool) -> str:
    return plan.knobs(compact=not wide)


def _wrap_column(t: Table, header: str, texts: list[str]) -> None:
    """A column that wraps at spaces and is never narrower than its longest word (a knob is not cut in two)."""
    longest = max((len(w) for text in texts for w in text.split()), default=0)
    t.add_column(header, min_width=max(10, longest), overflow="fold")


def _knob_footer(plans, wide: bool) -> list[str]:
    """The short knob names the rows use, with their field names."""
    if wide:
        return []
    names = list(dict.fromkeys(k for p in plans for k in p.changed_knobs()))
    if not names:
        return []
    pairs = ", ".join(f"{knob_abbreviation(k)} = {k}" for k in names)
    return [f"knobs (those not at the family's default): {pairs}; K = 1024 tokens"]


def _bound_footer(
    names: set[str], lead: str = "bound: what binds the phase, with its share of its time"
) -> list[str]:
    said = [f"{n}: {BOUND[n]}" for n in BOUND if n in names]
    return [f"{lead}; " + ", ".join(said)] if said else []


def _family(p: Trace, best: bool) -> str:
    return p.plan.family + (" ~" if p.plan.approximate else "") + (" *" if best else "")


def best_index(preds: list[Trace], allow_approximate: bool = False) -> int | None:
    """The row of the fastest decode per token among the plans that fit (exact ones unless allow_approximate),
    the prefill breaking a tie: the plan `roofsim predict`'s context sweep takes at each context."""
    fit = [i for i, p in enumerate(preds) if p.feasible and (allow_approximate or not p.plan.approximate)]
    if not fit:
        return None
    return min(fit, key=lambda i: (preds[i].summary.decode.time_s, preds[i].summary.prefill.time_s))


def predictions_table(
    preds: list[Trace],
    title: str,
    traces: list | None = None,
    wide: bool = False,
    allow_approximate: bool = False,
) -> Group:
    """One row per prediction: under each phase's time what binds it; `traces` (the simulator's, in the same
    order) add its times between the two."""
    best = best_index(preds, allow_approximate)
    t = _table()
    t.add_column("family", no_wrap=True)  # family names are short: the knobs wrap instead
    _wrap_column(t, "knobs", [_knobs(p.plan, wide) for p in preds])
    t.add_column("fits", max_width=40 if wide else None)
    for col in ("prefill", "decode", "GPU\nGiB", "host\nGiB"):
        t.add_column(col, justify="right")
    for i, p in enumerate(preds):
        s = p.summary
        phases = {
            "prefill": [fmt_band(s.prefill_s, s.prefill.band_s)],
            "decode": [fmt_band(s.decode_s_per_token, s.decode.band_s)],
        }
        if traces:
            sim = traces[i].summary
            phases["prefill"].append(fmt_seconds(sim.prefill_s or float("nan")))
            phases["decode"].append(fmt_seconds(sim.decode_s_per_token or float("nan")))
        if p.feasible:
            fits = "yes"
        else:
            fits = f"[red]no[/red]: {s.reason}" if wide else "[red]no[/red]"
        t.add_row(
            _family(p, i == best),
            _knobs(p.plan, wide),
            fits,
            *("\n".join([*lines, f"[dim]{bound_text(p, ph)}[/dim]"]) for ph, lines in phases.items()),
            _gib(s.peak_gpu_bytes),
            _gib(s.peak_host_bytes),
        )
    exact = "" if allow_approximate else "exact "
    footer = []
    if best is not None:
        footer.append(f"* best: the fastest decode per token of the {exact}plans that fit")
    if any(p.plan.approximate and p.plan.kv_dtype == "bf16" for p in preds):
        footer.append("~ approximate: attends only part of the context (accuracy not modelled)")
    if any(p.plan.kv_dtype != "bf16" for p in preds):
        footer.append("~ approximate: KV stored in fp8 (accuracy measured by validation/fp8_accuracy.py)")
    if not wide:
        footer += [f"{p.plan.family} does not fit: {p.summary.reason}" for p in preds if not p.feasible]
    footer += _knob_footer([p.plan for p in preds], wide)
    footer.append(
        "prefill: the whole prompt; decode: one step per generated token at the full context"
        + ("; the simulator's time under the analytic one" if traces else "")
    )
    if any(_shows_band(p.summary) for p in preds):
        footer.append(BAND_FOOTER)
    footer += _bound_footer(
        {p.summary.phase(ph).binding()[0] for p in preds for ph in ("prefill", "decode")},
        "under each time: what binds that phase, with its share of the phase's time",
    )
    footer.append(f"GPU, host: the most memory the plan holds on each, in GiB; {SIZES}")
    return _titled(title, t, footer)


def context_sweep_table(rows: list[tuple[int, Trace | None]], title: str, wide: bool = False) -> Group:
    t = _table()
    t.add_column("context", justify="right")
    _wrap_column(
        t, "best plan", [f"{p.plan.family} {_knobs(p.plan, wide)}" for _, p in rows if p is not None]
    )
    for col in ("decode", "prefill", "GPU\nGiB", "host\nGiB"):
        t.add_column(col, justify="right")
    t.add_column("bound\ndecode")
    for ctx, p in rows:
        if p is None:
            t.add_row(fmt_tokens(ctx), "[red]nothing fits[/red]", "-", "-", "-", "-", "-")
            continue
        t.add_row(
            fmt_tokens(ctx),
            f"{p.plan.family} {_knobs(p.plan, wide)}",
            fmt_seconds(p.summary.decode_s_per_token),
            fmt_seconds(p.summary.prefill_s),
            _gib(p.summary.peak_gpu_bytes),
            _gib(p.summary.peak_host_bytes),
            bound_text(p, "decode"),
        )
    found = [p for _, p in rows if p is not None]
    footer = [
        "best plan: the fastest decode per token that fits at that context (K, M = 1024, 1024^2 tokens)",
        *_knob_footer([p.plan for p in found], wide),
        "decode: one step per generated token at the full context; prefill: the whole prompt",
        f"GPU, host: the most memory the plan holds on each, in GiB; {SIZES}",
        *_bound_footer({p.summary.decode.binding()[0] for p in found}),
    ]
    return _titled(title, t, footer)


def roofline_table(rows: list[RooflineRow], title: str) -> Group:
    t = _table()
    for col in ("operator", "FLOPs", "bytes", "FLOP/byte", "time", "bound"):
        t.add_column(col, justify="left" if col in ("operator", "bound") else "right")
    for r in rows:
        t.add_row(
            r.name,
            _fmt_flops(r.flops),
            fmt_bytes(r.hbm_bytes),
            f"{r.intensity:.1f}",
            fmt_seconds(r.time_s),
            r.bound,
        )
    footer = [
        "FLOPs: K, M, G, T = 10^3, 10^6, 10^9, 10^12; bytes: HBM traffic (KiB, MiB, GiB = 2^10, 2^20, 2^30)",
        "FLOP/byte: FLOPs over bytes; time: the slower of its math and its traffic, or its launch",
        *_bound_footer({r.bound for r in rows}, "bound: the ceiling that sets the operator's time"),
    ]
    return _titled(title, t, footer)


def trace_table(trace, title: str, wide: bool = False) -> Group:
    s = trace.summary
    plan = trace.header.plan
    t = _table()
    t.add_column("quantity")
    t.add_column("value")
    t.add_row("plan", f"{plan.family} {_knobs(plan, wide)}")
    t.add_row("fits", "yes" if s.feasible else f"no: {s.reason}")
    t.add_row("prefill", fmt_band(s.prefill_s, s.prefill.band_s))
    t.add_row("prefill chunks", str(len(s.prefill.step_s)))
    t.add_row("decode / token (median)", fmt_band(s.decode_s_per_token, s.decode.band_s))
    t.add_row("peak GPU memory", fmt_bytes(s.peak_gpu_bytes or 0))
    t.add_row("host memory", fmt_bytes(s.peak_host_bytes or 0))
    for phase in ("prefill", "decode"):
        stats = s.phase(phase)
        total = stats.time_s
        share = ", ".join(
            f"{r} {v / total:.0%}" for r, v in sorted(stats.busy_s.items(), key=lambda kv: -kv[1]) if total
        )
        if share:
            t.add_row(f"busy in {phase}", share)
    footer = [
        *_knob_footer([plan], wide),
        "busy: each resource's busy time over the phase's time (they overlap, so shares add past 100%)",
        SIZES,
    ]
    return _titled(f"{title}: {trace.header.producer} by {trace.header.tool}", t, footer)


def _distinct(cands, n: int):
    """The best candidate of each distinct plan once the prefill chunk is set aside, best first."""
    seen, out = set(), []
    for c in cands:
        key = (
            c.plan.family,
            tuple(sorted((k, str(v)) for k, v in c.plan.model_dump().items() if k != "prefill_chunk")),
        )
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
        if len(out) == n:
            break
    return out


def _score(result, c) -> str:
    return fmt_tokens(int(-c.score)) if result.objective == "max-context" else fmt_seconds(c.score)


def ranked_table(result, title: str, n: int = 10, wide: bool = False) -> Group:
    t = _table()
    objective = result.objective
    t.add_column("#", justify="right")
    shown = _distinct(result.ranked, n)
    t.add_column("family", no_wrap=True)
    _wrap_column(t, "knobs", [_knobs(c.plan, wide) for c in shown])
    t.add_column(f"{objective}\n(score)", justify="right")
    for col in ("decode", "prefill", "peak GPU\nGiB"):
        t.add_column(col, justify="right")
    t.add_column("bound")
    t.add_column("by")
    phase = "prefill" if objective == "prefill" else "decode"
    for i, c in enumerate(shown, 1):
        p = c.prediction
        t.add_row(
            f"{i}{' *' if c is result.best else ''}",
            p.plan.family + (" ~" if p.plan.approximate else ""),
            _knobs(p.plan, wide),
            _score(result, c),
            fmt_band(p.summary.decode_s_per_token, p.summary.decode.band_s, "\n"),
            fmt_band(p.summary.prefill_s, p.summary.prefill.band_s, "\n"),
            _gib(p.summary.peak_gpu_bytes),
            bound_text(p, phase),
            "simulator" if c.simulated is not None else "analytic",
        )
    footer = [
        f"* best: the plan chosen, first by {objective} among the plans that fit (a simpler family wins a "
        "tie within 1%)",
        *_knob_footer([c.plan for c in shown], wide),
        f"{objective} (score): what the search ranks by, from the model in 'by' (the simulator refines the "
        "leaders); decode: the analytic time per generated token; prefill: the whole prompt",
        f"peak GPU: the most GPU memory the plan holds; {SIZES}",
        *_bound_footer({c.prediction.summary.phase(phase).binding()[0] for c in shown}),
    ]
    if any(_shows_band(c.prediction.summary) for c in shown):
        footer.append(BAND_FOOTER)
    return _titled(title, t, footer)


def pareto_table(result, wide: bool = False) -> Group:
    t = _table()
    t.add_column("peak GPU\nGiB", justify="right")
    t.add_column(result.objective, justify="right")
    shown = result.pareto[:12]
    t.add_column("family")
    _wrap_column(t, "knobs", [_knobs(c.plan, wide) for c in shown])
    for c in shown:
        t.add_row(
            _gib(c.prediction.summary.peak_gpu_bytes),
            _score(result, c),
            c.plan.family + (" *" if c is result.best else ""),
            _knobs(c.plan, wide),
        )
    footer = [f"each plan is the fastest by {result.objective} within its peak GPU memory"]
    if any(c is result.best for c in shown):
        footer.append("* best: the plan chosen")
    footer += _knob_footer([c.plan for c in shown], wide)
    return _titled("Pareto frontier: less GPU memory costs time", t, footer)


def gpus_table(gpus: dict) -> Group:
    t = _table()
    for col, justify in (
        ("name", "left"),
        ("full name", "left"),
        ("memory\nGiB", "right"),
        ("BF16\nTFLOP/s", "right"),
        ("bandwidth\nGB/s", "right"),
        ("link", "left"),
        ("H2D/D2H\nGB/s", "right"),
        ("host", "left"),
    ):
        t.add_column(col, justify=justify, no_wrap=col == "name")
    for name, g in gpus.items():
        t.add_row(
            name,
            g.full_name,
            f"{g.memory.capacity_gib.value:.1f}",
            f"{g.compute.bf16_tflops.value:.1f}",
            f"{g.memory.bandwidth_gbps.value:.0f}",
            g.link.name,
            f"{g.link.h2d_gbps.value:.0f}/{g.link.d2h_gbps.value:.0f}",
            g.default_host,
        )
    return _titled(
        "built-in GPUs (--gpu NAME; your own: roofsim gpus --template > my-gpu.toml)",
        t,
        [
            "GiB: 2^30 bytes; GB/s: 10^9 bytes/s; TFLOP/s: dense, no sparsity; H2D/D2H: pinned copies each "
            "way; host: the host spec used unless --host names another"
        ],
    )


def hosts_table(hosts: dict) -> Group:
    t = _table()
    for col, justify in (
        ("name", "left"),
        ("full name", "left"),
        ("RAM\nGiB", "right"),
        ("RAM\nGB/s", "right"),
        ("cores", "right"),
        ("CPU attention\nGB/s", "right"),
    ):
        t.add_column(col, justify=justify, no_wrap=col == "name")
    for name, h in hosts.items():
        t.add_row(
            name,
            h.full_name,
            f"{h.ram_capacity_gib.value:.0f}",
            f"{h.ram_bandwidth_gbps.value:.1f}",
            f"{h.cpu_cores.value:.0f}",
            f"{h.cpu_attention_gbps.value:.0f}",
        )
    return _titled(
        "built-in hosts (--host NAME; your own: roofsim hosts --template > my-host.toml)",
        t,
        [
            "RAM GiB: 2^30 bytes (--host-mem 1TB is 931 GiB); GB/s: 10^9 bytes/s, the peak; CPU attention: "
            "KV bytes a many-threaded CPU attention kernel scans per second"
        ],
    )


def models_table(models: dict) -> Group:
    t = _table()
    for col, justify in (
        ("name", "left"),
        ("params\nbillion", "right"),
        ("layers", "right"),
        ("heads\nq/kv", "right"),
        ("KV/token\nKiB", "right"),
        ("experts\nper token", "right"),
        ("source", "left"),
    ):
        t.add_column(col, justify=justify, no_wrap=col == "name", overflow="fold")
    for name, m in models.items():
        layers = str(m.n_layers)
        if m.window_layers:
            layers = f"{m.kv_layers}+{len(m.window_layers)}w"
        t.add_row(
            name,
            f"{m.params / 1e9:.2f}",
            layers,
            f"{m.n_heads}/MLA" if m.is_mla else f"{m.n_heads}/{m.n_kv_heads}",
            f"{m.kv_bytes_per_token / KiB:.0f}",
            f"{m.experts_per_token}/{m.n_experts}" if m.n_experts else "-",
            m.source,
        )
    return _titled(
        "built-in models (--model NAME, or the path of a Hugging Face config.json)",
        t,
        [
            "layers: 8+40w = 8 global layers and 40 that attend a window (their KV stays on the GPU); KV/token: the "
            "KV cache one token adds over the global layers, KiB (2^10 bytes); MLA: one latent per token and layer; "
            "experts: routed experts a token picks / routed experts per MoE layer"
        ],
    )
