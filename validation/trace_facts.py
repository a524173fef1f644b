"""The facts validation/results/h100/README.md cites from the committed traces beyond the summary table:

  python validation/trace_facts.py validation/results/h100

- per configuration, the first prefill attention call of each traced chunk beyond the call after it (the
  kernel's set-up for a new shape), summed, beside the whole prefill error (measured - predicted);
- per cpu_attention run, the measured CPU attention per layer (one span, a call per CPU slot) against the
  calibrated price of those calls and KV bytes at the model's GQA group (the profile named in the run's predicted
  trace), the median rate of those spans (KV GB/s), and its decode step times;
- per sparse_fetch run, the CPU gather's rate (bytes read plus written, GB/s) over its decode spans: median, least
  and most, against the profile's;
- per configuration prefilled in one chunk, a layer's compute span of norm, projections, RoPE and MLP (mean over
  layers) measured and predicted, beside that layer's GEMMs as calibration timed them at the chunk's tokens (the
  measurements file beside the profile);
- per resident or evict run anywhere under the folder (repeats included), its decode step times;
- per head_offload configuration, a layer's non-attention compute span (ms, mean over layers) in each traced
  decode step: the GPU's own time where the host runs ahead, the host's issue pace where it falls behind.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from roofsim.trace import Trace


def _first_call_excess(measured: Trace) -> tuple[float, int]:
    spans = [s for s in measured.spans if s.phase == "prefill" and s.kind == "attention"]
    excess, chunks = 0.0, 0
    for step in sorted({s.step for s in spans}):
        calls = sorted((s for s in spans if s.step == step), key=lambda s: s.start_s)
        if len(calls) > 2:
            first, second = (c.end_s - c.start_s for c in calls[:2])
            excess += max(0.0, first - second)
            chunks += 1
    return excess, chunks


def _profile_path(predicted: Trace) -> str:
    """The calibrated profile a predicted trace was made with (its "profile: PATH" note)."""
    return next(n.split(": ", 1)[1] for n in predicted.header.notes if n.startswith("profile: "))


def _profile(predicted: Trace):
    from roofsim.specs import load_gpu
    from roofsim.specs.hardware import default_host_of

    path = _profile_path(predicted)
    return default_host_of(path, load_gpu(path))


def _runs(runs_files, families: tuple[str, ...]):
    """(configuration folder, run folder, runs.json row) of every run, pick or runner-up, of these families."""
    for runs_file in runs_files:
        for row in json.loads(runs_file.read_text()):
            if row["plan"]["family"] in families:
                folder = runs_file.parent
                yield folder, (folder if row["run"] == "pick" else folder / row["run"]), row


def main(root: str) -> int:
    campaign = Path(root) / "campaign"
    print("config                    chunks traced  first-call excess s  prefill error s")
    for runs_file in sorted(campaign.glob("*/runs.json")):
        folder = runs_file.parent
        measured = Trace.read(folder / "measured.json.gz")
        pick = json.loads(runs_file.read_text())[0]
        excess, traced = _first_call_excess(measured)
        err = pick["prefill_s_measured"] - pick["prefill_s_predicted"]
        chunks = len(measured.summary.prefill_chunk_s)
        print(f"{folder.name:25s} {chunks:6d} {traced:6d} {excess:20.3f} {err:+16.3f}")
    print()
    from roofsim.families.cpu_attention import cpu_slot_count, cpu_slot_heads
    from roofsim.specs import load_model

    print(
        "run                            calls/layer  measured ms/layer  calibrated ms/layer  scan GB/s  "
        "decode steps ms"
    )
    for folder, sub, row in _runs(sorted(campaign.glob("*/runs.json")), ("cpu_attention",)):
        measured = Trace.read(sub / "measured.json.gz")
        host = _profile(Trace.read(sub / "predicted.json.gz"))
        group = load_model(json.loads((folder / "config.json").read_text())["model"]).group
        n = cpu_slot_count(row["plan"]["cpu_kv_heads"], row["plan"]["kv_heads_per_slot"])
        layers = _decode_spans(measured, "cpu_attention")
        took = sum(s.end_s - s.start_s for s in layers) / len(layers)
        heads = cpu_slot_heads(row["plan"]["cpu_kv_heads"], row["plan"]["kv_heads_per_slot"])
        priced = sum(host.cpu_attention_s(s.bytes, calls=n, group=group, heads=heads) for s in layers) / len(
            layers
        )
        rate = statistics.median(_gbps(layers))
        times = " ".join(f"{t * 1e3:.0f}" for t in measured.summary.decode_step_s)
        name = f"{folder.name}/{row['run']}"
        print(f"{name:30s} {n:11d} {took * 1e3:18.2f} {priced * 1e3:20.2f} {rate:10.1f}  {times}")
    print()
    print("run                            gather GB/s median  least   most  calibrated")
    for runs_file in sorted(campaign.glob("*/runs.json")):
        if json.loads(runs_file.read_text())[0]["plan"]["family"] != "sparse_fetch":
            continue
        rates = _gbps(_decode_spans(Trace.read(runs_file.parent / "measured.json.gz"), "cpu_gather"))
        host = _profile(Trace.read(runs_file.parent / "predicted.json.gz"))
        print(
            f"{runs_file.parent.name + '/pick':30s} {statistics.median(rates):18.1f} {min(rates):6.1f} "
            f"{max(rates):6.1f} {host.gather_bytes_per_s / 1e9:11.1f}"
        )
    print()
    print("config                    chunk tokens  layer span ms measured  predicted  calibrated GEMMs ms")
    for runs_file in sorted(campaign.glob("*/runs.json")):
        measured = Trace.read(runs_file.parent / "measured.json.gz")
        if len(measured.summary.prefill_chunk_s) != 1:
            continue
        predicted = Trace.read(runs_file.parent / "predicted.json.gz")
        tokens = measured.header.workload.context
        path = _profile_path(predicted)
        raw = json.loads(Path(path.removesuffix(".toml") + "-measurements.json").read_text())
        gemms = [
            g["seconds"]
            for g in raw["gemm"]
            if g["label"].startswith("layer ") and f" {tokens}x" in g["label"]
        ]
        print(
            f"{runs_file.parent.name:25s} {tokens:12d} {_layer_span_ms(measured):23.2f} "
            f"{_layer_span_ms(predicted):10.2f} {sum(gemms) * 1e3 if gemms else float('nan'):20.2f}"
        )
    print()
    print("run (resident, evict)                              decode steps ms")
    for _, sub, _ in _runs(sorted(Path(root).rglob("runs.json")), ("resident", "evict")):
        steps = Trace.read(sub / "measured.json.gz").summary.decode_step_s
        print(f"{str(sub.relative_to(root)):50s} {' '.join(f'{t * 1e3:.0f}' for t in steps)}")
    print()
    print("config (head_offload)     non-attention span ms a layer, per traced decode step")
    for runs_file in sorted(campaign.glob("*/runs.json")):
        if json.loads(runs_file.read_text())[0]["plan"]["family"] != "head_offload":
            continue
        per_step: dict[int, list[float]] = {}
        for s in _decode_spans(Trace.read(runs_file.parent / "measured.json.gz"), "gemm"):
            if s.layer is not None:
                per_step.setdefault(s.step, []).append(s.end_s - s.start_s)
        means = " ".join(f"{statistics.fmean(v) * 1e3:.2f}" for _, v in sorted(per_step.items()))
        print(f"{runs_file.parent.name:25s} {means}")
    return 0


def _layer_span_ms(trace: Trace) -> float:
    spans = [s for s in trace.spans if s.phase == "prefill" and s.resource == "compute" and s.kind == "gemm"]
    layers = {s.layer for s in spans if s.layer is not None}
    return sum(s.end_s - s.start_s for s in spans if s.layer is not None) / len(layers) * 1e3


def _decode_spans(measured: Trace, kind: str) -> list:
    return [s for s in measured.spans if s.phase == "decode" and s.kind == kind]


def _gbps(spans) -> list[float]:
    return [s.bytes / (s.end_s - s.start_s) / 1e9 for s in spans]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "validation/results/h100"))
