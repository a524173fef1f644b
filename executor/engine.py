"""Streams, events and copies: real CUDA streams, or a CPU stand-in whose copy engines run late.

Every copy between host and GPU memory goes through an Engine, on one of its streams: `compute` (the stream
the model runs on), `h2d` and `d2h` (one per copy engine), and `h2d_weights` (streamed weights: a second stream
into the H2D copy engine, so a weight copy waiting for its buffer does not hold back the KV's copies). Events
order them; the host never synchronises inside the layer loop unless the plan asks for it (CPU attention, sparse
fetch, HeadInfer's syncs).

The CPU stand-in (`CpuEngine`) runs compute eagerly, as the host thread issues it, but queues each copy on its
stream and runs it only when something waits on an event recorded after it (or at `synchronize`). A copy that
the plan forgot to order against a later write therefore reads or writes late, as a real copy engine may, and
the CPU tests see wrong numbers instead of passing by luck.

Both engines refuse a non-contiguous host<->device copy: torch would silently stage it through pageable memory.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class CopyStats:
    copies: int = 0
    bytes: int = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if not (dst.is_contiguous() and src.is_contiguous()):
        raise ValueError(
            f"non-contiguous copy {tuple(src.shape)}:{src.stride()} -> {tuple(dst.shape)}:{dst.stride()}; "
            "the executor keeps every transfer one contiguous run"
        )
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"copy shape/dtype mismatch {src.shape}/{src.dtype} -> {dst.shape}/{dst.dtype}")


class CudaEngine:
    """CUDA streams; events with timing; copies issued with non_blocking on the given stream."""

    kind = "cuda"

    def __init__(self, device: torch.device | str = "cuda"):
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.compute = torch.cuda.current_stream(self.device)
        self.h2d = torch.cuda.Stream(self.device)
        self.d2h = torch.cuda.Stream(self.device)
        self.h2d_weights = torch.cuda.Stream(self.device)
        self.stats = {"h2d": CopyStats(), "d2h": CopyStats()}

    def event(self, stream) -> torch.cuda.Event:
        """An event recorded now on `stream` (also a timing mark)."""
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    def wait(self, stream, ev) -> None:
        if ev is not None:
            stream.wait_event(ev)

    def copy(self, stream, dst: torch.Tensor, src: torch.Tensor, direction: str | None = None) -> None:
        self.copy_many(stream, ((dst, src),), direction)

    def copy_many(self, stream, pairs, direction: str | None = None) -> None:
        """copy() of each (dst, src) of `pairs`, issued under one stream context (a layer's streamed experts: 2
        copies a hit expert, whose issue runtime.expert_fetch_us prices). Counted by the direction they go."""
        with torch.cuda.stream(stream):
            for dst, src in pairs:
                _check_copy(dst, src)
                dst.copy_(src, non_blocking=True)
                s = self.stats["h2d" if dst.is_cuda else "d2h"]
                s.copies += 1
                s.bytes += _nbytes(src)

    def keep_alive(self, t: torch.Tensor, stream) -> None:
        """`t` (made on compute) is read by `stream`: the caching allocator must not reuse it before that."""
        t.record_stream(stream)

    def host_wait(self, ev) -> None:
        ev.synchronize()

    def stream_sync(self, stream) -> None:
        stream.synchronize()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def elapsed_s(self, origin, ev) -> float:
        return origin.elapsed_time(ev) / 1e3

    def stream(self, stream):
        return torch.cuda.stream(stream)


class CpuEvent:
    __slots__ = ("done", "owner", "t")

    def __init__(self, owner=None):
        self.done = owner is None
        self.owner = owner
        self.t = time.perf_counter() if self.done else None


@dataclass
class DeferredStream:
    """A copy engine that runs its queue only when made to (the CPU stand-in)."""

    name: str
    ops: deque = field(default_factory=deque)


class _Eager:
    name = "compute"


def _locked(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return run


class CpuEngine:
    """CPU stand-in: 'GPU' tensors live in ordinary memory, compute runs eagerly, copies run late (see module doc).

    `lazy=False` runs every copy at once (plain synchronous copies)."""

    kind = "cpu"

    def __init__(self, lazy: bool = True):
        self.lock = (
            threading.RLock()
        )  # cpu_attention's worker thread waits on events while this one queues copies
        self.device = torch.device("cpu")
        self.compute = _Eager()
        self.h2d = DeferredStream("h2d")
        self.d2h = DeferredStream("d2h")
        self.h2d_weights = DeferredStream("h2d")  # counted as h2d
        self.lazy = lazy
        self.stats = {"h2d": CopyStats(), "d2h": CopyStats()}

    @_locked
    def event(self, stream) -> CpuEvent:
        if stream is self.compute:
            return CpuEvent()
        ev = CpuEvent(owner=stream)
        stream.ops.append(("record", ev))
        if not self.lazy:
            self._run(stream, ev)
        return ev

    @_locked
    def wait(self, stream, ev) -> None:
        if ev is None or ev.done:
            return
        if stream is self.compute:
            self._run(ev.owner, ev)
        else:
            stream.ops.append(("wait", ev))

    def copy_many(self, stream, pairs, direction: str | None = None) -> None:
        for dst, src in pairs:
            self.copy(stream, dst, src, direction)

    @_locked
    def copy(self, stream, dst: torch.Tensor, src: torch.Tensor, direction: str | None = None) -> None:
        _check_copy(dst, src)
        s = self.stats[direction or stream.name]
        s.copies += 1
        s.bytes += _nbytes(src)
        if stream is self.compute:
            dst.copy_(src)
            return
        stream.ops.append(("copy", dst, src))
        if not self.lazy:
            self._run(stream, None)

    def keep_alive(self, t: torch.Tensor, stream) -> None:
        """Nothing to do: a queued copy holds a reference, and the CPU allocator never hands out a live block."""

    def host_wait(self, ev) -> None:
        self.wait(self.compute, ev)

    @_locked
    def stream_sync(self, stream) -> None:
        if stream is not self.compute:
            self._run(stream, None)

    @_locked
    def synchronize(self) -> None:
        for s in (self.h2d, self.d2h, self.h2d_weights):
            self._run(s, None)

    def _run(self, stream: DeferredStream, until: CpuEvent | None) -> None:
        """Run `stream`'s queue up to the record of `until` (all of it if None), honouring cross-stream waits."""
        while stream.ops:
            op = stream.ops.popleft()
            if op[0] == "copy":
                op[1].copy_(op[2])
            elif op[0] == "wait":
                ev = op[1]
                if not ev.done:
                    self._run(ev.owner, ev)
            else:
                ev = op[1]
                ev.done, ev.t = True, time.perf_counter()
                if ev is until:
                    return

    def elapsed_s(self, origin, ev) -> float:
        return (ev.t or origin.t) - origin.t

    def stream(self, stream):
        import contextlib

        return contextlib.nullcontext()


Engine = CudaEngine | CpuEngine


def make_engine(device: torch.device | str) -> Engine:
    device = torch.device(device)
    return CudaEngine(device) if device.type == "cuda" else CpuEngine()
