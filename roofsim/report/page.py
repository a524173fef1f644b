"""One self-contained HTML page: sections of escaped text, tables and plotly figures, with plotly's JavaScript
inlined once in the head so the file opens offline.

Everything that reaches the page goes through `esc` (text) or `Raw` (markup this package built from escaped
parts). Plotly JSON-encodes its figures with `<`, `>` and `/` escaped, but it renders a subset of HTML inside
titles and hover text, so the chart builders escape user strings before handing them to plotly too.
"""

from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from roofsim import __version__

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"scale": 2}}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Raw:
    """Markup built by this package from escaped parts: inserted as is."""

    markup: str


Cell = str | float | int | Raw | None


def _cell(value: Cell) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, Raw):
        return value.markup
    return esc(value)


def table(
    headers: list[str],
    rows: list[list[Cell]],
    numeric: set[int] | None = None,
    cls: str = "",
    wrap: set[int] | None = None,
) -> Raw:
    """An HTML table; `numeric` holds the column indices to right-align, `wrap` those whose text may wrap
    (the others keep to one line when `wrap` is given)."""
    numeric = numeric or set()

    def align(i: int) -> str:
        names = (["num"] if i in numeric else []) + (["nowrap"] if wrap is not None and i not in wrap else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{align(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{align(i)}>{_cell(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    klass = f' class="{esc(cls)}"' if cls else ""
    return Raw(f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def paragraph(text: str, cls: str = "") -> Raw:
    klass = f' class="{esc(cls)}"' if cls else ""
    return Raw(f"<p{klass}>{esc(text)}</p>")


def code(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


Block = Raw | go.Figure


@dataclass
class Section:
    title: str
    intro: str | None = None
    blocks: list[Block] = field(default_factory=list)
    anchor: str | None = None


@dataclass
class Page:
    title: str
    subtitle: str = ""
    badge: str = ""  # "predicted", "measured vs predicted", "validation"
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    @property
    def figures(self) -> list[go.Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, go.Figure)]

    def render(self) -> str:
        parts: list[str] = []
        nav = []
        for i, s in enumerate(self.sections):
            anchor = s.anchor or f"s{i}"
            nav.append(f'<a href="#{esc(anchor)}">{esc(s.title)}</a>')
            parts.append(f'<section id="{esc(anchor)}"><h2>{esc(s.title)}</h2>')
            if s.intro:
                parts.append(f'<p class="intro">{esc(s.intro)}</p>')
            for b in s.blocks:
                if isinstance(b, go.Figure):
                    div = pio.to_html(b, include_plotlyjs=False, full_html=False, config=PLOT_CONFIG)
                    parts.append(f'<div class="figure">{div}</div>')
                else:
                    parts.append(b.markup)
            parts.append("</section>")
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        badge = f'<span class="badge">{esc(self.badge)}</span>' if self.badge else ""
        return _TEMPLATE.format(
            title=esc(self.title),
            badge=badge,
            subtitle=esc(self.subtitle),
            nav=" ".join(nav),
            body="\n".join(parts),
            plotlyjs=get_plotlyjs(),
            footer=esc(f"roofsim {__version__}, {created}"),
        )

    def write(self, path) -> int:
        """Write the page; returns its size in bytes."""
        text = self.render()
        data = text.encode("utf-8")
        with open(path, "wb") as f:
            f.write(data)
        return len(data)


_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
       margin: 0; color: #1f2933; background: #f7f8fa; font-size: 14px; line-height: 1.45; }
header { background: #1f2933; color: #f7f8fa; padding: 18px 32px 12px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .subtitle { color: #cbd2d9; margin: 0 0 10px; }
header nav a { color: #9fb3c8; margin-right: 14px; text-decoration: none; font-size: 13px; }
header nav a:hover { color: #fff; }
.badge { display: inline-block; background: #e8a33d; color: #1f2933; border-radius: 4px; padding: 1px 8px;
         font-size: 12px; font-weight: 600; margin-left: 10px; vertical-align: middle; text-transform: uppercase; }
main { max-width: 1500px; margin: 0 auto; padding: 8px 32px 32px; }
section { background: #fff; border: 1px solid #e4e7eb; border-radius: 6px; margin: 18px 0; padding: 4px 20px 16px; }
h2 { font-size: 17px; margin: 14px 0 6px; }
h3 { font-size: 14px; margin: 12px 0 4px; color: #3e4c59; }
p.intro { color: #52606d; margin: 0 0 10px; max-width: 1100px; }
p.note { color: #7b8794; font-size: 12px; margin: 4px 0; }
p.warn { color: #9b1c1c; background: #fdecea; padding: 6px 10px; border-radius: 4px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #52606d; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td .src, .src { color: #7b8794; font-size: 12px; }
.grid { display: grid; grid-template-columns: minmax(340px, 520px) minmax(0, 1fr); gap: 0 40px; }
td.num, td.nowrap { white-space: nowrap; }
pre { background: #f0f2f5; padding: 8px 10px; border-radius: 4px; font-size: 12px; overflow-x: auto; }
.figure { margin: 6px 0 10px; }
.err-ok { color: #1e7b34; } .err-mid { color: #a86400; } .err-bad { color: #b42318; }
footer { color: #9aa5b1; font-size: 12px; text-align: center; padding: 0 0 20px; }
"""

_TEMPLATE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>"""
    + _CSS.replace("{", "{{").replace("}", "}}")
    + """</style>
<script type="text/javascript">{plotlyjs}</script>
</head><body>
<header><h1>{title}{badge}</h1><p class="subtitle">{subtitle}</p><nav>{nav}</nav></header>
<main>
{body}
</main>
<footer>{footer}</footer>
</body></html>
"""
)
