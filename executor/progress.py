"""Where a long run is, on stderr: a line at each stage (model built, cache set up, prefill, decode) and, within
the prefill's chunks and the decode's steps, at most one line every `every_s` seconds plus the last one. On a
terminal the step line is rewritten in place; elsewhere (a log, validate's captured stderr) each is a new line, so
the tail of a run stopped at its deadline says how far it got. Reporting happens between forwards, after the
device has synchronised, never inside a timed step."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0, prefix: str = "roofsim run"):
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.prefix = prefix
        self.t0 = time.perf_counter()
        self._last = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False  # a step line on a terminal waits to be overwritten or ended

    def _write(self, text: str, rewrite: bool) -> None:
        line = f"{self.prefix}: {text} ({time.perf_counter() - self.t0:.1f} s)"
        if self._tty and rewrite:
            self.stream.write("\r\x1b[K" + line)
            self._open = True
        else:
            self.stream.write(("\n" if self._open else "") + line + "\n")
            self._open = False
        self.stream.flush()

    def stage(self, text: str) -> None:
        """A stage begins or ends: always reported."""
        self._write(text, rewrite=False)
        self._last = time.perf_counter()

    def step(self, what: str, i: int, n: int) -> None:
        """Step i (0-based) of n of `what` is done: reported at the last step or every_s after the last line."""
        now = time.perf_counter()
        if i + 1 < n and now - self._last < self.every_s:
            return
        self._last = now
        self._write(f"{what} {i + 1}/{n}", rewrite=True)
        if i + 1 == n and self._open:
            self.stream.write("\n")
            self._open = False


class Silent(Progress):
    """No reporting (library calls and tests)."""

    def __init__(self):
        super().__init__(stream=None)

    def stage(self, text: str) -> None:
        pass

    def step(self, what: str, i: int, n: int) -> None:
        pass
