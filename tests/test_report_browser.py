"""Reports checked in a real browser: headless Chromium (Debian's package, which .ci/run installs) loads each
report from disk with the network off and dumps the DOM once its scripts have run. Every figure must have drawn
(plotly's plot container and SVG inside each figure's div) and the console must hold no uncaught error.

A `<script>` that escaped into the page would either raise in the console or, with `alert`, hang Chromium
(its dialogs block headless mode), so the evil-name page doubles as the escaping check in the browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import EVIL, GPU, HOST, MODEL, PLAN, WORK, measured_trace, predicted_trace, write_results

from roofsim.limits import Limits
from roofsim.predict import predict
from roofsim.report import build


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
]


def render(html_path: Path, tmp_path: Path, *extra: str) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's log."""
    profile = tmp_path / f"profile-{html_path.stem}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, "--dump-dom", html_path.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium hung on {html_path.name} (a JavaScript dialog would do that)")
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]


def assert_drew(page, path: Path, tmp_path: Path) -> str:
    page.write(path)
    dom, log = render(path, tmp_path)
    n = len(page.figures)
    assert dom.count('class="plotly-graph-div') == n
    assert len(re.findall(r'class="plot-container plotly"', dom)) == n, "a figure did not draw"
    assert dom.count('class="main-svg"') >= n
    assert not console_errors(log), console_errors(log)
    return dom


def test_the_error_check_sees_uncaught_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>throw new Error("boom")</script></body></html>')
    _, log = render(page, tmp_path)
    assert any("boom" in line for line in console_errors(log))


def test_measured_vs_predicted_report_draws(tmp_path):
    page = build.trace_report(measured_trace(), source="measured.json")
    assert len(page.figures) == 3
    dom = assert_drew(page, tmp_path / "measured.html", tmp_path)
    assert "compute stream · measured" in dom  # the Gantt's rows, drawn as SVG text


def test_prediction_report_with_an_evil_model_name_draws_and_shows_it_as_text(tmp_path):
    evil_model = MODEL.model_copy(update={"name": EVIL})
    preds = [
        predict(p, evil_model, GPU, HOST, WORK) for p in (PLAN, PLAN.model_copy(update={"prefetch_depth": 2}))
    ]
    page = build.prediction_report(preds, evil_model, GPU, HOST, WORK, Limits())
    assert len(page.figures) == 4  # roofline, timeline, memory, plan comparison
    dom = assert_drew(page, tmp_path / "evil.html", tmp_path)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the title, as text
    assert EVIL not in dom


def test_validation_report_draws(tmp_path):
    write_results(tmp_path / "h100")
    page = build.validation_report(tmp_path / "h100")
    assert len(page.figures) == 1
    assert_drew(page, tmp_path / "validation.html", tmp_path)


def test_screenshot(tmp_path):
    """A large screenshot, for a person to look at (kept under tmp); here only that it was written."""
    page = build.trace_report(predicted_trace())
    path = tmp_path / "predicted.html"
    page.write(path)
    png = tmp_path / "predicted.png"
    profile = tmp_path / "profile-shot"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,4000"]
    subprocess.run([*cmd, f"--screenshot={png}", path.resolve().as_uri()], capture_output=True, timeout=90)
    assert png.is_file() and png.stat().st_size > 50_000
