"""The host's launch pace: microseconds to issue a fixed run of tiny in-place kernels on an idle device.

roofsim.hostpace's pure-Python loop is the pace the validation prices host-side costs at; this is a second gauge
beside it, through the path a launch-bound decode step spends its time in (Python binding, dispatcher, caching
allocator, the CUDA driver's launch), which the loop follows only in part (docs/evidence.md#ev-launch-gauge): the
executor times both before every decode step, and calibrate both beside its host-side timings.

A third gauge, `step_us`, issues one decode step of a tiny two-layer stock Llama through the executor's resident
cache: the very code a launch-bound step spends its time in (transformers' modules, the executor's cache and
attention, the dispatcher, the launches), at tiny shapes; it follows calibrate's tiny decode layers where the other
two gauges do not (docs/evidence.md#ev-tiny-step-gauge).
"""

from __future__ import annotations

import torch
from roofsim.executor.timing import device_sync, issue_s

from roofsim.hostpace import LAUNCHES  # each kernel's GPU time (~2 us) is under its launch, so none queues

_probes: dict[str, torch.Tensor] = {}


def launch_us(device: str | torch.device = "cuda") -> float:
    """Microseconds the host takes to issue LAUNCHES one-element in-place adds on `device`, from an idle device (the
    synchronisations are outside the timing)."""
    key = str(device)
    x = _probes.get(key)
    if x is None:
        x = _probes[key] = torch.zeros(1, device=device)

    def adds() -> None:
        for _ in range(LAUNCHES):
            x.add_(1.0)

    return issue_s(adds, device_sync(x.device)) * 1e6


STEP_GAUGE_TOKENS = 4096  # the tiny cache's length; the gauge starts a new one when it is full
_gauges: dict[str, StepGauge] = {}


class StepGauge:
    """A tiny two-layer stock Llama (roofsim.executor.check.tiny_config) decoding one token per call through the
    executor's resident cache, with 16 prompt tokens and one step run first (kernel loading, allocator growth)."""

    def __init__(self, device: str):
        from roofsim.executor.build import make_cache
        from roofsim.executor.check import tiny_config
        from roofsim.executor.models import random_model

        from roofsim.families import ResidentPlan

        self.model = random_model(tiny_config("llama", layers=2), device, torch.bfloat16, seed=0)
        self._new_cache = lambda: make_cache(self.model, ResidentPlan(), max_tokens=STEP_GAUGE_TOKENS)
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._reset()

    @torch.no_grad()
    def _reset(self) -> None:
        if getattr(self, "cache", None) is not None:
            self.cache.close()
        self.cache = self._new_cache()
        self.model(self.token.expand(1, 16), past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.used = 16
        self.step()

    @torch.no_grad()
    def step(self) -> float:
        """Seconds the host takes to issue one decode step from an idle device (the syncs are outside the timing)."""
        if self.used >= STEP_GAUGE_TOKENS - 1:
            self._reset()
        took = issue_s(
            lambda: self.model(self.token, past_key_values=self.cache, use_cache=True, logits_to_keep=1),
            device_sync(self.token.device),
        )
        self.used += 1
        return took


def step_us(device: str | torch.device = "cuda") -> float:
    """Microseconds the host takes to issue one decode step of StepGauge's tiny model on `device` (built on the
    first call)."""
    key = str(device)
    gauge = _gauges.get(key)
    if gauge is None:
        gauge = _gauges[key] = StepGauge(key)
    return gauge.step() * 1e6
