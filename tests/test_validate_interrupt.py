"""A run past validate's deadline is interrupted as Ctrl-C would, so it can write its partial trace."""

import subprocess
import sys

from roofsim import validate


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_interrupt_lets_the_run_write_what_it_measured(tmp_path):
    out = tmp_path / "partial.json"
    proc = _child(
        "import sys, time\n"
        "try:\n"
        "    print('ready', file=sys.stderr, flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        f"    open({str(out)!r}, 'w').write('partial')\n"
        "    print('interrupted; the partial trace is written', file=sys.stderr)\n"
        "    raise SystemExit(130)\n"
    )
    assert proc.stderr.readline().strip() == "ready"  # the handler is in place before the signal
    err = validate._interrupt(proc)
    assert out.read_text() == "partial"
    assert "partial trace is written" in err
    assert proc.returncode == 130


def test_a_run_that_ignores_the_interrupt_is_killed(monkeypatch):
    monkeypatch.setattr(validate, "INTERRUPT_GRACE_S", 0.5)
    proc = _child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert proc.stderr.readline().strip() == "ready"
    validate._interrupt(proc)
    assert proc.returncode is not None and proc.returncode < 0  # ended by a signal, not by itself
