"""What a decoder layer costs the issuing thread, by the model's width, its layer count and the recorder: in the
H200 session-16 runs (validation/results/h200-s16/a) resident decode took ~1.2-1.3x roofsim.hostpace's loop in ms
per layer, while the calibration's tiny layer (hidden 64, the difference of a 6- and a 2-layer model, unrecorded)
took 1.0x. Models of tiny and of llama-3-8b widths at 2, 6 and 32 layers, random weights, the resident plan, 16
prompt tokens; their decode steps interleaved round by round, each step's host issue time (no sync inside, the
device idle before it) beside the loop timed just before it, recorded (as a measured run's traced steps) and not.
Writes OUT/layer_host_cost.json; prints per model the median issue ms, the median loop us, their ratio per layer.

    python validation/layer_host_cost.py --out $OUT     # GPU machine, after . validation/device_setup.sh
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from roofsim.executor.build import make_cache
from roofsim.executor.check import tiny_config
from roofsim.executor.models import config_for_spec, random_model

from roofsim.hostpace import loop_us
from roofsim.plan import ResidentPlan
from roofsim.specs import load_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to try the script out


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(width: str, layers: int, record: bool):
    if width == "tiny":
        config = tiny_config("llama", layers=layers)
    else:
        config = config_for_spec(load_model(width))
        config.num_hidden_layers = layers
    model = random_model(config, DEVICE, torch.bfloat16, seed=0)
    cache = make_cache(model, ResidentPlan(), max_tokens=16 + 200, record=record)
    if record:
        cache.runtime.rec.start()
    ids = torch.randint(0, 128, (1, 16), device=DEVICE)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = ids[:, -1:]

    @torch.no_grad()
    def step() -> float:
        sync()
        t0 = time.perf_counter()
        model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        sync()
        if record:
            cache.runtime.rec.flush()
            cache.runtime.rec.spans.clear()
        return t1 - t0

    step()
    return step, cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--widths", default="tiny,llama-3-8b")
    args = ap.parse_args()
    variants = [(w, n, False) for w in args.widths.split(",") for n in (2, 6, 32)]
    variants += [(w, 32, True) for w in args.widths.split(",")]
    steps = {v: build(*v) for v in variants}
    issue = {v: [] for v in variants}
    pace = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, (step, _) in steps.items():
            pace[v].append(loop_us())
            issue[v].append(step())
    rows = []
    for v in variants:
        w, n, rec = v
        ms, us = statistics.median(issue[v]) * 1e3, statistics.median(pace[v])
        ratios = [
            i * 1e6 / p for i, p in zip(issue[v], pace[v], strict=True)
        ]  # step issue over the loop, per step
        rows.append(
            dict(width=w, layers=n, record=rec, issue_ms=ms, pace_us=us, issue_over_pace=statistics.median(ratios),
                 issue_ms_all=[x * 1e3 for x in issue[v]], pace_us_all=pace[v])
        )  # fmt: skip
        print(f"{w:11s} layers={n:2d} record={rec!s:5s} issue {ms:7.2f} ms  loop {us:6.0f} us  "
              f"issue/loop {statistics.median(ratios):6.2f}")  # fmt: skip
    by = {(r["width"], r["layers"], r["record"]): r["issue_over_pace"] for r in rows}
    for w in args.widths.split(","):
        print(f"{w}: per layer over the loop, (6-2)/4 = {(by[w, 6, False] - by[w, 2, False]) / 4:.3f}, "
              f"(32-2)/30 = {(by[w, 32, False] - by[w, 2, False]) / 30:.3f}, recorded (32-2)/30 = "
              f"{(by[w, 32, True] - by[w, 2, False]) / 30:.3f}")  # fmt: skip
    Path(args.out, "layer_host_cost.json").write_text(
        json.dumps({"command": "python validation/layer_host_cost.py", "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
