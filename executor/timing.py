"""How the executor, `roofsim calibrate` and the validation tools time work, and the fingerprint of the machine.

Two clocks, and what each may contain:
- CUDA events (`Stopwatch` on a CUDA device, `cuda_time_s`, `copy_once_s`): the GPU's time between two events
  recorded on the current stream around the work; the host's issue is in it only where the GPU waits for the host
  (a call of a few hundred microseconds), unless the GPU sleeps behind a long kernel while the host issues
  (`sleep_cycles`, QUEUE_CYCLES), so that the events time the kernels alone.
- The host clock (`wall_time_s`, `wall_s`, `issue_s`): time.perf_counter around the call, the device synchronised
  before it, so that no earlier work is in it; `wall_s` also synchronises inside the timing (the call's completion),
  `issue_s` after it (the host's issue only: a GPU slower than the host at tiny shapes does not enter it).

Medians here are the upper median of the sorted times (upper_median: the middle one for an odd count, so always a
time that was measured).

The fingerprint is the measured trace's schema (roofsim.trace.Fingerprint); a calibration stores it as a plain
dict (Measurements.fingerprint, model_dump without the None fields).
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from roofsim.trace import Fingerprint

# ~10 ms of torch.cuda._sleep at H100/H200 clocks: longer than any timed call's issue
QUEUE_CYCLES = 20_000_000


def _no_sync() -> None:
    pass


def device_sync(device: str | torch.device | None = None) -> Callable[[], None]:
    """The call that waits for everything queued on `device`: torch.cuda.synchronize for a CUDA device, nothing
    elsewhere. None: CUDA where it is available (calibrate's timers on a GPU machine, the CPU in tests)."""
    if device is None:
        return torch.cuda.synchronize if torch.cuda.is_available() else _no_sync
    device = torch.device(device)
    return partial(torch.cuda.synchronize, device) if device.type == "cuda" else _no_sync


def upper_median(times: list[float]) -> float:
    """The middle of the sorted times (the upper of the two middle ones for an even count)."""
    return sorted(times)[len(times) // 2]


class Stopwatch:
    """Seconds of the work issued inside a `with` block, in `seconds` after it.

    On a CUDA device: CUDA events recorded on the current stream before and after the block, then the device
    synchronised, so the device is idle when the block ends; with sleep_cycles, a torch.cuda._sleep kernel is queued
    before the first event, so that the GPU starts the block's kernels only after the host has issued them.
    Elsewhere: the host clock around the block (the CPU stand-in runs each call as it is issued)."""

    def __init__(self, device: str | torch.device = "cuda", sleep_cycles: int = 0):
        self.cuda = torch.device(device).type == "cuda"
        self.sleep_cycles = sleep_cycles
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            if self.sleep_cycles:
                torch.cuda._sleep(self.sleep_cycles)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            torch.cuda.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0


def cuda_times(
    fn: Callable[[], None], repeat: int = 5, warmup: int = 2, sleep_cycles: int = 0
) -> list[float]:
    """Seconds of each of `repeat` calls of fn on the current stream, CUDA-event timed (Stopwatch), after `warmup`
    untimed calls and a synchronisation. sleep_cycles (QUEUE_CYCLES): the GPU sleeps while the host issues each
    call, so the events time its kernels alone, as a run's prefill times them with the host ahead of the GPU;
    without it a call of about a millisecond also times the host's lead to its first kernel."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        with Stopwatch("cuda", sleep_cycles) as watch:
            fn()
        times.append(watch.seconds)
    return times


def cuda_time_s(fn: Callable[[], None], repeat: int = 5, warmup: int = 2, sleep_cycles: int = 0) -> float:
    """The upper median of cuda_times."""
    return upper_median(cuda_times(fn, repeat, warmup, sleep_cycles))


def window_times(fn: Callable[[], None], seconds: float, window_s: float = 0.25) -> tuple[int, list[float]]:
    """fn run back to back for about `seconds`, one CUDA-event pair per window of about `window_s`: (calls per
    window, each window's seconds, in order). The first windows run at the clock an idle GPU boosts to; within a
    fraction of a second of full load its power limit lowers the clock, and the later windows run at the clock
    the GPU holds (a CUDA device; the call count per window comes from a short cuda_time_s first)."""
    one = cuda_time_s(fn, repeat=3, warmup=1)
    per = max(1, round(window_s / one))
    windows = max(2, round(seconds / (per * one)))
    events = [torch.cuda.Event(enable_timing=True) for _ in range(windows + 1)]
    events[0].record()
    for i in range(windows):
        for _ in range(per):
            fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return per, [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(windows)]


def copy_once_s(dst: torch.Tensor, src: torch.Tensor) -> float:
    """Seconds of one copy of src into dst (non_blocking), CUDA-event timed from an idle device, with no warm-up
    copy: a copy between a CPU write of src and the timed one would change what is timed (the first read of
    freshly written pinned memory)."""
    return cuda_times(lambda: dst.copy_(src, non_blocking=True), repeat=1, warmup=0)[0]


def wall_s(fn: Callable[[], object], sync: Callable[[], None] = _no_sync) -> float:
    """Host seconds of one fn() to its completion: sync() before (outside the timing) and after (inside it)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def issue_s(fn: Callable[[], object], sync: Callable[[], None] = _no_sync) -> float:
    """Host seconds to issue one fn() from an idle device: sync() before and after, both outside the timing."""
    sync()
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    sync()
    return took


def wall_time_s(fn: Callable[[], None], repeat: int = 5) -> float:
    """The upper median of `repeat` wall_s of fn after one untimed call, synchronising CUDA where it is available
    (device_sync(None)): the whole call's time, host issue and device work, for work on several streams or on
    the CPU."""
    sync = device_sync(None)
    fn()
    return upper_median([wall_s(fn, sync) for _ in range(repeat)])


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_ram_bytes() -> float | None:
    """The host's RAM (/proc/meminfo MemTotal), None where unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fingerprint(device: torch.device | str = "cuda") -> Fingerprint:
    """Where a measurement was taken: GPU, driver, torch, CUDA and transformers versions, CPU, host RAM, torch's
    CPU threads and the CPU worker's (roofsim.executor.cpu_worker.worker_threads), and the PCIe link (pcie_gen and
    pcie_width the link's maximum, *_current what it runs at now: an idle GPU may drop its link's generation).
    Fields that cannot be read (no nvidia-smi, a CPU device) stay None."""
    import transformers
    from roofsim.executor.cpu_worker import worker_threads

    device = torch.device(device)
    fp = Fingerprint(
        gpu_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu (stand-in for the GPU)",
        cuda=torch.version.cuda,
        torch=torch.__version__,
        transformers=transformers.__version__,
        cpu=cpu_name(),
        host_ram_bytes=host_ram_bytes(),
        cpu_threads=torch.get_num_threads(),
        cpu_worker_threads=worker_threads(),
    )
    if device.type == "cuda":
        q = "driver_version,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max"
        try:
            idx = device.index if device.index is not None else torch.cuda.current_device()
            out = subprocess.run(
                ["nvidia-smi", f"--id={idx}", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            drv, gen, gen_max, width, width_max = [x.strip() for x in out.split(",")]
            fp.driver = drv
            fp.pcie_gen = int(gen_max) if gen_max.isdigit() else None
            fp.pcie_width = int(width_max) if width_max.isdigit() else None
            fp.pcie_gen_current = int(gen) if gen.isdigit() else None
            fp.pcie_width_current = int(width) if width.isdigit() else None
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return fp
