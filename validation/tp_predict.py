"""Predictions written before any tensor-parallel run: Llama-3-8B head_offload at a 512K prompt, over 1 and 2 GPUs,
priced with the committed calibrated H100 profile, so that a later two-GPU measurement is compared with numbers fixed
in advance (nothing here is measured).

    python validation/tp_predict.py     # writes validation/results/h100/tp_predicted_in_advance.json

Two plans per degree, one KV head per slot and a 32K prefill chunk: every KV head streamed (nothing resident: the step
the links bind), and half of each GPU's KV heads resident (4 of 8 slots per layer on one GPU, 2 of 4 on each of
two), so that each link carries half of its GPU's KV in both. Two hosts:
the profile's own measured host (the machine the profile was calibrated on: its RAM bandwidth is what two links
would share) and the built-in dgx-h100 host (the HGX H100 board's own platform).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from roofsim.families.head_offload import HeadOffloadPlan
from roofsim.predict import predict
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.tensor_parallel import describe, link_share
from roofsim.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "validation/results/h100/calibrated/h100-sxm-calibrated.toml"
OUT = ROOT / "validation/results/h100/tp_predicted_in_advance.json"
WORK = Workload(context=512 * 1024, batch=1, gen=32)


def _entry(plan, model, gpu, host) -> dict:
    p = predict(plan, model, gpu, host, WORK, band=True)
    s = p.summary
    k, why = link_share(gpu, host, plan.tp)
    return {
        "plan": plan.model_dump(mode="json"),
        "decode_s_per_token": s.decode.time_s,
        "decode_band_s": s.decode.band_s,
        "decode_binding": s.decode.binding()[0],
        "prefill_s": s.prefill.time_s,
        "prefill_band_s": s.prefill.band_s,
        "h2d_bytes_per_step_per_gpu": s.decode.h2d_bytes,
        "h2d_gbps_per_gpu": gpu.link.h2d_gbps.value * k,
        "link_bound_by": why,
        "peak_gpu_bytes_per_gpu": s.peak_gpu_bytes,
        "peak_host_bytes": s.peak_host_bytes,
        "feasible": s.feasible,
        "notes": p.header.notes if plan.tp > 1 else [],
    }


def main() -> int:
    model = load_model("llama-3-8b")
    gpu = load_gpu(str(ROOT / PROFILE))
    hosts = {
        "profile host (measured)": default_host_of(str(ROOT / PROFILE), gpu),
        "dgx-h100": load_host("dgx-h100"),
    }
    doc = {
        "what": "predicted in advance, nothing measured: Llama-3-8B head_offload, 512K prompt, gen 32, batch 1, "
        "TP=1 and TP=2, with the calibrated H100 profile",
        "command": "python validation/tp_predict.py",
        "profile": PROFILE,
        "workload": WORK.model_dump(),
        "hosts": {},
    }
    for label, host in hosts.items():
        rows = {}
        for tp in (1, 2):
            streamed = HeadOffloadPlan(prefill_chunk=32768, tp=tp)
            half = HeadOffloadPlan(prefill_chunk=32768, resident_slots=model.n_kv_heads // tp // 2, tp=tp)
            rows[f"tp{tp}"] = {
                "all_streamed": _entry(streamed, model, gpu, host),
                "half_resident": _entry(half, model, gpu, host),
            }
        for which in ("all_streamed", "half_resident"):
            one, two = rows["tp1"][which], rows["tp2"][which]
            rows[f"decode_speedup_{which}"] = one["decode_s_per_token"] / two["decode_s_per_token"]
        doc["hosts"][label] = {"host": host.name, "tp2_note": describe(gpu, host, 2), **rows}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    for label, h in doc["hosts"].items():
        print(
            f"{label}: decode speedup TP=2 over TP=1, all streamed {h['decode_speedup_all_streamed']:.2f}x, "
            f"half resident {h['decode_speedup_half_resident']:.2f}x; {h['tp2_note']}"
        )
    print(f"written: {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
