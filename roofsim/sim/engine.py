"""The discrete-event machine (simpy): one process per resource stream.

- host: the Python thread. It issues tasks in program order, paying each task's issue cost, and blocks on the
  tasks marked as synchronisations.
- compute, cpu: in-order streams; a task starts when it has been issued, its stream is free and its
  dependencies are done.
- h2d, d2h: the copy engines. A task of k back-to-back copies occupies its engine for k * copy_gap + bytes /
  rate; while the other direction is moving bytes too, each runs at duplex_efficiency of its rate (re-rated
  whenever the other starts or stops). Completion is seen copy_latency - copy_gap later, and never before
  copy_min after the start (an isolated small copy's floor).
- memory: GPU bytes by kind change when tasks start (alloc) and end (free), sampled at each change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from roofsim.specs.hardware import GpuSpec
from roofsim.trace import MemorySample, Span

STREAMS = ("compute", "h2d", "d2h", "cpu")


@dataclass
class Task:
    resource: str  # one of STREAMS
    kind: str
    phase: str
    step: int
    layer: int | None = None
    slot: int | None = None
    duration_s: float = 0.0  # compute and cpu tasks
    nbytes: float = 0.0  # copy tasks
    copies: int = 1
    deps: tuple[int, ...] = ()
    issue_s: float = 0.0
    # copy tasks: the share of the link's rate the copy reaches (a stage the CPU has just written copies slower:
    # link.h2d_gathered_gbps)
    rate_scale: float = 1.0
    # copy tasks: the gap between back-to-back copies, s (link.gap_s); None: the engine's, link.copy_gap_us
    gap_s: float | None = None
    flops: float = 0.0
    name: str | None = None
    host_wait: bool = False
    issue_t: float = 0.0  # when the host finished issuing it (set by the machine)
    stream: str | None = (
        None  # a second CUDA stream on the same engine (e.g. weights); None: the engine's own
    )
    alloc: dict[str, float] = field(default_factory=dict)
    free: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    end_s: float
    spans: list[Span]
    memory: list[MemorySample]
    busy: dict[tuple[str, str], float]  # (phase, resource) -> busy seconds
    step_end: dict[tuple[str, int], float]  # (phase, step) -> time its last task completed
    step_start: dict[tuple[str, int], float]
    peak_gpu_bytes: float
    over_capacity: tuple[float, float] | None  # (time, shortfall bytes) at the worst moment
    events: int = 0  # simpy events scheduled


class Machine:
    def __init__(
        self,
        gpu: GpuSpec,
        base_memory: dict[str, float],
        capacity_bytes: float,
        keep_span: Callable[[str, int], bool] = lambda phase, step: True,
    ):
        self.gpu = gpu
        self.env = simpy.Environment()
        self.keep_span = keep_span
        link = gpu.link
        self.rate = {"h2d": link.h2d_gbps.value * 1e9, "d2h": link.d2h_gbps.value * 1e9}
        self.gap = link.copy_gap_us.value * 1e-6
        self.tail = max(0.0, (link.copy_latency_us.value - link.copy_gap_us.value) * 1e-6)
        self.floor = link.copy_min_us.value * 1e-6
        self.duplex = link.duplex_efficiency.value
        self.moving = {"h2d": False, "d2h": False}
        self.wake: dict[str, simpy.Event | None] = {"h2d": None, "d2h": None}
        self.pending: dict[str, deque] = {r: deque() for r in STREAMS}  # per CUDA stream, in issue order
        self.streams_of: dict[str, list[str]] = {r: [r] for r in STREAMS}  # the streams each engine serves
        self.arrival: dict[str, simpy.Event | None] = {r: None for r in STREAMS}
        self.mem = dict(base_memory)
        self.capacity = capacity_bytes
        self.spans: list[Span] = []
        self.samples: list[MemorySample] = [MemorySample(t_s=0.0, gpu=dict(self.mem))]
        self.busy: dict[tuple[str, str], float] = {}
        self.step_end: dict[tuple[str, int], float] = {}
        self.step_start: dict[tuple[str, int], float] = {}
        self.peak = sum(self.mem.values())
        self.worst: tuple[float, float] | None = None
        self._host_span: Span | None = None

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    def _record(self, task: Task, resource: str, start: float, end: float, kind: str | None = None) -> None:
        key = (task.phase, resource)
        self.busy[key] = self.busy.get(key, 0.0) + (end - start)
        if not self.keep_span(task.phase, task.step):
            return
        self.spans.append(
            Span(
                resource=resource,
                kind=kind or task.kind,
                phase=task.phase,
                step=task.step,
                layer=task.layer,
                slot=task.slot,
                start_s=start,
                end_s=end,
                bytes=task.nbytes if resource in ("h2d", "d2h", "cpu") else 0.0,
                flops=task.flops,
                name=task.name,
            )
        )

    def _memory(self, delta: dict[str, float], sign: float) -> None:
        if not delta:
            return
        for kind, nbytes in delta.items():
            self.mem[kind] = self.mem.get(kind, 0.0) + sign * nbytes
        total = sum(self.mem.values())
        self.samples.append(MemorySample(t_s=self.env.now, gpu=dict(self.mem)))
        if total > self.peak:
            self.peak = total
        if total > self.capacity and (self.worst is None or total - self.capacity > self.worst[1]):
            self.worst = (self.env.now, total - self.capacity)

    def _started(self, task: Task) -> None:
        key = (task.phase, task.step)
        self.step_start.setdefault(key, self.env.now)
        self._memory(task.alloc, +1)

    def _finished(self, task: Task) -> None:
        self._memory(task.free, -1)
        key = (task.phase, task.step)
        self.step_end[key] = max(self.step_end.get(key, 0.0), self.env.now)

    # ---- processes -------------------------------------------------------------------------------------------
    # The host's issue times are computed, not simulated event by event: it issues back to back and only waits
    # at synchronisations. Streams hold deques and wait on an arrival event when empty.
    def _host(self, tasks: list[Task], done: list[simpy.Event]):
        env = self.env
        t = env.now
        for i, task in enumerate(tasks):
            t += task.issue_s
            task.issue_t = t
            if task.issue_s:
                key = (task.phase, "host")
                self.busy[key] = self.busy.get(key, 0.0) + task.issue_s
                self._host_span_add(task, t - task.issue_s, t, "issue")
            if task.stream and task.stream not in self.pending:
                self.pending[task.stream] = deque()
                self.streams_of[task.resource].append(task.stream)
            self.pending[task.stream or task.resource].append((i, task))
            arrival = self.arrival[task.resource]
            if arrival is not None and not arrival.triggered:
                arrival.succeed()
            if task.host_wait:
                if t > env.now:
                    yield env.timeout(t - env.now)
                if not done[i].triggered:
                    start = env.now
                    yield done[i]
                    self._host_span_add(task, start, env.now, "sync")
                t = env.now

    def _host_span_add(self, task: Task, start: float, end: float, kind: str) -> None:
        if end <= start or not self.keep_span(task.phase, task.step):
            return
        span = self._host_span
        if (
            span is not None
            and kind == span.kind
            and abs(span.end_s - start) < 1e-12
            and span.step == task.step
        ):
            span.end_s = end  # merge back-to-back issue work into one span
            return
        self._host_span = Span(
            resource="host",
            kind=kind,
            phase=task.phase,
            step=task.step,
            layer=task.layer,
            start_s=start,
            end_s=end,
        )
        self.spans.append(self._host_span)

    def _next(self, resource: str, done: list[simpy.Event]):
        """Wait for the next task of a stream to be issued and its dependencies to be done. An engine fed by
        several streams takes the first head (in issue order) that is ready: streams are in order, the engine is
        not bound to one stream's order."""
        env = self.env
        queue = self.pending[resource]
        while not queue:
            if len(self.streams_of[resource]) > 1:  # a second stream appeared while this one was empty
                return (yield from self._next_of_many(resource, done))
            self.arrival[resource] = env.event()
            yield self.arrival[resource]
        if len(self.streams_of[resource]) > 1:
            return (yield from self._next_of_many(resource, done))
        i, task = queue.popleft()
        if task.issue_t > env.now:
            yield env.timeout(task.issue_t - env.now)
        waiting = [done[d] for d in task.deps if not done[d].triggered]
        if len(waiting) == 1:
            yield waiting[0]
        elif waiting:
            yield env.all_of(waiting)
        return i, task

    def _next_of_many(self, resource: str, done: list[simpy.Event]):
        env = self.env
        while True:
            heads = [self.pending[k][0] for k in self.streams_of[resource] if self.pending[k]]
            ready = [
                (i, t) for i, t in heads if t.issue_t <= env.now and all(done[d].triggered for d in t.deps)
            ]
            if ready:
                i, task = min(ready, key=lambda it: it[0])
                self.pending[task.stream or task.resource].popleft()
                return i, task
            self.arrival[resource] = env.event()
            waits = [self.arrival[resource]]
            for _, t in heads:
                if t.issue_t > env.now:
                    waits.append(env.timeout(t.issue_t - env.now))
                else:
                    waits.append(env.all_of([done[d] for d in t.deps if not done[d].triggered]))
            yield env.any_of(waits)

    def _stream(self, resource: str, done: list[simpy.Event]):
        env = self.env
        while True:
            i, task = yield from self._next(resource, done)
            self._started(task)
            start = env.now
            if task.duration_s > 0:
                yield env.timeout(task.duration_s)
            self._record(task, resource, start, env.now)
            self._finished(task)
            done[i].succeed()

    def _set_moving(self, direction: str, moving: bool) -> None:
        self.moving[direction] = moving
        other = "d2h" if direction == "h2d" else "h2d"
        wake = self.wake[other]
        if wake is not None and not wake.triggered:
            wake.succeed()

    def _copy_engine(self, direction: str, done: list[simpy.Event]):
        env = self.env
        other = "d2h" if direction == "h2d" else "h2d"
        while True:
            i, task = yield from self._next(direction, done)
            self._started(task)
            start = env.now
            if task.copies:
                yield env.timeout(task.copies * (self.gap if task.gap_s is None else task.gap_s))
            remaining = task.nbytes
            if remaining > 0:
                self._set_moving(direction, True)
            while remaining > 0:
                rate = self.rate[direction] * task.rate_scale * (self.duplex if self.moving[other] else 1.0)
                seg_start = env.now
                end = seg_start + remaining / rate
                wake = self.wake[direction] = env.event()
                env.timeout(remaining / rate).callbacks.append(lambda _ev, w=wake: w.triggered or w.succeed())
                yield wake
                if env.now >= end * (1 - 1e-12):
                    remaining = 0.0
                else:
                    remaining = max(0.0, remaining - (env.now - seg_start) * rate)
            self.wake[direction] = None
            if task.nbytes > 0:
                self._set_moving(direction, False)
            self._record(task, direction, start, env.now)
            seen = max(env.now + self.tail, start + self.floor)
            if seen > env.now:
                env.timeout(seen - env.now).callbacks.append(
                    lambda _ev, t=task, d=done[i]: self._complete(t, d)
                )
            else:
                self._complete(task, done[i])

    def _complete(self, task: Task, event: simpy.Event) -> None:
        self._finished(task)
        event.succeed()

    def run(self, tasks: list[Task]) -> RunResult:
        env = self.env
        done = [env.event() for _ in tasks]
        for r in ("compute", "cpu"):
            env.process(self._stream(r, done))
        for d in ("h2d", "d2h"):
            env.process(self._copy_engine(d, done))
        host = env.process(self._host(tasks, done))
        env.run(until=host)
        if tasks:
            env.run(until=env.all_of(done))
        return RunResult(
            end_s=env.now,
            spans=self.spans,
            memory=self.samples,
            busy=self.busy,
            step_end=self.step_end,
            step_start=self.step_start,
            peak_gpu_bytes=self.peak,
            over_capacity=self.worst,
            events=next(env._eid),  # simpy's event counter (internal, read for the benchmark only)
        )
