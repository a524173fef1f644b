"""Spans of a measured run: device events (CUDA events on the stream the work ran on) or host wall-clock times,
resolved to seconds from one origin after each step's synchronisation, in the Trace schema."""

from __future__ import annotations

import time
from dataclasses import dataclass

from roofsim.trace import Span


@dataclass
class _Pending:
    resource: str
    kind: str
    phase: str
    step: int
    layer: int | None
    slot: int | None
    start: object  # engine event, or a host time (float)
    end: object
    bytes: float
    flops: float
    name: str | None


class Recorder:
    """Collects spans while `enabled`; `flush()` (after the engine has synchronised) turns them into Spans."""

    def __init__(self, engine, enabled: bool = True):
        self.engine = engine
        self.enabled = enabled
        self.phase = "prefill"
        self.step = 0
        self.spans: list[Span] = []
        self._pending: list[_Pending] = []
        self.origin = None
        self.host_origin = 0.0

    def start(self) -> None:
        """Anchor device and host clocks together (the engine is idle here)."""
        self.engine.synchronize()
        self.origin = self.engine.event(self.engine.compute)
        self.engine.host_wait(self.origin)
        self.host_origin = time.perf_counter()

    def mark(self, stream):
        return self.engine.event(stream) if self.enabled else None

    def span(self, resource, kind, start, end, *, layer=None, slot=None, nbytes=0.0, flops=0.0, name=None):
        if self.enabled and start is not None and end is not None:
            self._pending.append(
                _Pending(resource, kind, self.phase, self.step, layer, slot, start, end, nbytes, flops, name)
            )

    def host_span(self, resource, kind, t0: float, t1: float, **kw):
        """A span timed by the host clock (perf_counter)."""
        self.span(resource, kind, float(t0), float(t1), **kw)

    def time_of(self, mark) -> float:
        if isinstance(mark, float):
            return mark - self.host_origin
        return self.engine.elapsed_s(self.origin, mark)

    def flush(self) -> None:
        for p in self._pending:
            self.spans.append(
                Span(
                    resource=p.resource,
                    kind=p.kind,
                    phase=p.phase,
                    step=p.step,
                    layer=p.layer,
                    slot=p.slot,
                    start_s=self.time_of(p.start),
                    end_s=self.time_of(p.end),
                    bytes=float(p.bytes),
                    flops=float(p.flops),
                    name=p.name,
                )
            )
        self._pending.clear()

    def drop(self) -> None:
        self._pending.clear()
