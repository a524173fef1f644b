"""Host-side costs: what the issuing thread spends where the GPU waits for it. A device synchronisation, a decoder
layer's issue in a decode step (alone and beside the CPU worker's scan), a hand-off to the CPU worker and back, and
the host-pace gauges sampled beside these timings.

The host's speed moves in spells (a virtualised host's within seconds): each timing here interleaves
what it compares, so that both sides of a difference see the same spell, and takes the host-pace gauges beside it
(time_gauges), so that roofsim.calibration can restate each cost at one reference pace (host_paces)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from roofsim.executor.calibrate.cpu import timed_scans
from roofsim.executor.calibrate.hostkv import cold_kv_blocks
from roofsim.executor.launchpace import launch_us, step_us
from roofsim.executor.timing import device_sync, issue_s

from roofsim.hostpace import loop_us
from roofsim.specs.model import ModelSpec


def time_gauges(
    device: str, pace: list[float] | None, launch: list[float] | None, step: list[float] | None = None
) -> None:
    """One sample of each host-pace gauge asked for, appended to its list: roofsim.hostpace's loop, then
    roofsim.executor.launchpace's launches and its tiny decode step."""
    if pace is not None:
        pace.append(loop_us())
    if launch is not None:
        launch.append(launch_us(device))
    if step is not None:
        step.append(step_us(device))


@contextmanager
def tiny_decoding(plan, device: str, dtype, steps: int, record: bool = False, width=None, **config):
    """A tiny stock Llama under `plan`, through the executor, with 16 prompt tokens prefilled and one decode step
    run to warm up: yields (step, cache), where step() runs one more decode step. width: a ModelSpec whose layer
    shapes (hidden, heads, MLP, family) the model takes instead of the tiny ones, at config["layers"] layers and a
    128-token vocabulary."""
    from roofsim.executor.build import make_cache
    from roofsim.executor.check import tiny_config
    from roofsim.executor.models import config_for_spec, random_model

    if width is None:
        hf_config = tiny_config("llama", **config)
    else:
        hf_config = config_for_spec(width)
        hf_config.num_hidden_layers = config["layers"]
        hf_config.vocab_size = 128
    model = random_model(hf_config, device, dtype, seed=0)
    cache = make_cache(model, plan, max_tokens=16 + steps + 8, record=record)
    if record:
        cache.runtime.rec.start()
    ids = torch.randint(0, 128, (1, 16), device=device)
    token = ids[:, -1:]

    @torch.no_grad()
    def step() -> None:
        model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)

    try:
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        step()  # warm-up step
        yield step, cache
    finally:
        cache.close()


def decode_layer_cost(
    device: str = "cuda",
    steps: int = 20,
    pace: list[float] | None = None,
    width: ModelSpec | None = None,
    launch: list[float] | None = None,
    step_pace: list[float] | None = None,
    engine_sync: bool = False,
) -> tuple[float, ModelSpec, float]:
    """Seconds one decoder layer adds to a decode step's host issue, through the executor itself (stock
    transformers layer, the plan's cache, the registered attention, the recorder on as in a measured run's traced
    steps): the framework's per-layer cost, which bounds decode at short contexts. Measured as the difference
    between a 6-layer and a 2-layer model, so the embedding, the LM head and sampling cancel out; at tiny shapes,
    or with `width` at that model's layer shapes (a 128-token vocabulary): a wider layer issues slower than a tiny
    one, and recording its spans adds to it. Each step is timed from an idle device to the end of its issue
    (timing.issue_s: no sync inside the timing), so a GPU slower than the host at these shapes does not enter it.
    Third: the intercept, the seconds of a step outside its layers (the forward's preamble, embedding, final norm
    and LM head). `pace`, where given, gets the host's pace (roofsim.hostpace) timed once per pair of steps, and
    `launch` the launch pace (roofsim.executor.launchpace) right after it, and `step_pace` its tiny decode step
    after that. engine_sync: "idle" means the cache's own streams idle (its engine synchronised), not the whole
    device, so that work queued on another stream (decode_layer_cost_beside_link's copies) runs on through the
    timing."""
    from roofsim.families import ResidentPlan

    if device != "cuda":
        width = (
            None  # on the CPU (tests) a step's issue is its compute: the model's shapes would time its GEMMs
        )
    sync = device_sync(device)
    with (
        tiny_decoding(ResidentPlan(), device, torch.bfloat16, steps, True, width, layers=2) as (step2, c2),
        tiny_decoding(ResidentPlan(), device, torch.bfloat16, steps, True, width, layers=6) as (step6, c6),
    ):
        # the two models' steps interleaved, so that a slower spell of the host (or of a busy CI machine) weighs
        # on both alike
        spent = {2: 0.0, 6: 0.0}
        for _ in range(steps):
            time_gauges(device, pace, launch, step_pace)
            for layers, step, cache in ((2, step2, c2), (6, step6, c6)):
                spent[layers] += issue_s(step, cache.runtime.engine.synchronize if engine_sync else sync)
                cache.runtime.rec.flush()  # outside the timing, as a run flushes after its step's sync
                cache.runtime.rec.spans.clear()
    two, six = spent[2] / steps, spent[6] / steps
    per_layer = max(0.0, (six - two) / 4)
    if width is None:
        spec = ModelSpec(
            name="tiny-llama", source="roofsim calibrate", family="llama", n_layers=1, hidden=64, n_heads=4,
            n_kv_heads=2, head_dim=16, intermediate=128, vocab=128, max_positions=4096,
        )  # fmt: skip
    else:
        spec = width.model_copy(update={"n_layers": 1, "vocab": 128, "name": f"{width.name}-layer"})
    return per_layer, spec, max(0.0, two - 2 * per_layer)


def mean_tiny(samples: list[tuple[float, ModelSpec, float]]) -> tuple[float, ModelSpec, float]:
    """decode_layer_cost's (per layer, model, intercept) over several samples: the mean of each figure (a decode
    step pays the host's mean speed, and the host's speed moves between spells)."""
    return (
        statistics.fmean(s[0] for s in samples),
        samples[0][1],
        statistics.fmean(s[2] for s in samples),
    )


def decode_layer_cost_beside_cpu(
    model: ModelSpec, device: str = "cuda", steps: int = 20, tokens: int = 32769, cold_bytes: int = 1 << 30
) -> float:
    """decode_layer_cost's seconds per layer while the CPU worker scans, back to back, one CPU slot of the model's
    group over cold host blocks (half its KV heads, `tokens` long), on its threads: cpu_attention's issuing thread
    launches the GPU heads' kernels beside that scan, and a step's time can go to that issue (the GPU-side spans
    the host issues) rather than to the scan. The worker's loop stops after the timed steps."""
    import threading

    from roofsim.executor.cpu_worker import worker

    heads = model.n_kv_heads // 2 or 1
    q = torch.randn(1, heads * model.group, 1, model.head_dim, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    blocks = [[b] for b in cold_kv_blocks(heads, tokens, model.head_dim, cold_bytes)]
    stop = threading.Event()

    def scans() -> None:
        while not stop.is_set():
            timed_scans(q, blocks, tokens, out)

    job = worker().submit(scans)
    try:
        per_layer, _, _ = decode_layer_cost(device, steps, width=model)
    finally:
        stop.set()
        job.result()
    return per_layer


def decode_layer_cost_beside_link(
    model: ModelSpec, device: str = "cuda", steps: int = 20, nbytes: int = 256 << 20, in_flight: int = 4
) -> float | None:
    """decode_layer_cost's seconds per layer while the link streams: pinned host-to-device copies of `nbytes`,
    `in_flight` of them queued at a time on a side stream by a helper thread that only enqueues and waits (it
    holds the GIL a few microseconds a copy), so that the issuing thread shares the host with the DMA engine's
    reads of pinned memory, as an offload family's decode issues while its KV streams. The steps are timed from
    their own streams idle (engine_sync), so the copies run on through them. None without CUDA: nothing streams."""
    import threading
    from collections import deque

    if device != "cuda" or not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    side = torch.cuda.Stream()
    stop = threading.Event()

    def stream() -> None:
        queued: deque = deque()
        while not stop.is_set():
            with torch.cuda.stream(side):
                dst.copy_(src, non_blocking=True)
                done = torch.cuda.Event()
                done.record(side)
            queued.append(done)
            if len(queued) >= in_flight:
                queued.popleft().synchronize()  # releases the GIL while the oldest copy runs
        side.synchronize()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        per_layer, _, _ = decode_layer_cost(device, steps, width=model, engine_sync=True)
    finally:
        stop.set()
        t.join()
    return per_layer


def worker_round_trips(job: Callable[[], None], n: int) -> list[float]:
    """Seconds of n hand-offs of `job` to the CPU worker, each from submit to its result back (after one untimed)."""
    from roofsim.executor.cpu_worker import worker

    pool = worker()
    pool.submit(job).result()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pool.submit(job).result()
        times.append(time.perf_counter() - t0)
    return times


def cpu_part_job() -> Callable[[], None]:
    """A job shaped like cpu_attention's CPU part less its scan: a completed event's wait, the span bookkeeping."""
    ev = torch.cuda.Event() if torch.cuda.is_available() else None
    if ev is not None:
        ev.record()
        torch.cuda.synchronize()
    marks: list[tuple[float, float]] = []

    def job() -> None:
        t0 = time.perf_counter()
        if ev is not None:
            ev.synchronize()
        marks.append((t0, time.perf_counter()))
        if len(marks) > 64:
            marks.clear()

    return job


def worker_round_trip_s(n: int = 500) -> float:
    """Median seconds from handing a job to the CPU worker to having its result back, for a job shaped like
    cpu_attention's CPU part less its scan (a completed event's wait, the span bookkeeping): the worker's wake-up
    and the issuing thread's, which every layer of a cpu_attention decode step pays on the CPU part's path beside
    the scan. It is longer while another thread issues kernels than with the issuing thread idle."""
    return statistics.median(worker_round_trips(cpu_part_job(), n))


def sync_us(n: int = 200) -> float:
    """Host microseconds of one torch.cuda.synchronize on an idle device, the mean over n."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def trimmed_mean(xs: list[float], cut: float = 0.1) -> float:
    """The mean of xs less its lowest and highest `cut` share (at least one each side from 5 values on): a decode
    step pays the host's mean speed, and one hiccup of a step (a page fault, a busy CPU) is not part of it."""
    k = max(int(len(xs) * cut), 1 if len(xs) >= 5 else 0)
    kept = sorted(xs)[k : len(xs) - k]
    return statistics.fmean(kept)
