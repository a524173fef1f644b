"""Predict validation/campaign-fp8-h100.toml with the committed calibrated H100 profile (analytic and simulated,
and the same plan in bf16 beside it) before any fp8 run, into a JSON file:

    python validation/fp8_predict_campaign.py validation/results/h100/fp8_predicted_in_advance.json
"""

from __future__ import annotations

import json
import sys

from roofsim.plan import plan_from_dict
from roofsim.planner.candidates import in_kv_dtype
from roofsim.predict import predict
from roofsim.sim import simulate
from roofsim.specs import load_gpu, load_host, load_model
from roofsim.units import parse_tokens
from roofsim.validate import load_configs
from roofsim.workload import Workload

PROFILE = "validation/results/h100/calibrated/h100-sxm-calibrated.toml"
HOST = "validation/results/h100/calibrated/h100-sxm-calibrated-host.toml"


def main(out: str) -> int:
    gpu, host = load_gpu(PROFILE), load_host(HOST)
    rows = []
    for c in load_configs("validation/campaign-fp8-h100.toml"):
        m = load_model(c.model)
        w = Workload(context=parse_tokens(c.context), batch=c.batch, gen=c.gen)
        plan = plan_from_dict(c.plan)
        a = predict(plan, m, gpu, host, w)
        s = simulate(plan, m, gpu, host, w, keep="none")
        b = predict(in_kv_dtype(plan, "bf16"), m, gpu, host, w)
        r = dict(
            name=c.name,
            plan=plan.model_dump(mode="json"),
            analytic_prefill_s=a.summary.prefill_s,
            analytic_decode_s=a.summary.decode_s_per_token,
            simulated_prefill_s=s.summary.prefill_s,
            simulated_decode_s=s.summary.decode_s_per_token,
            peak_gpu_bytes=s.summary.peak_gpu_bytes,
            bf16_analytic_decode_s=b.summary.decode_s_per_token,
            bf16_peak_gpu_bytes=b.summary.peak_gpu_bytes,
        )
        rows.append(r)
        print(
            f"{c.name:24s} prefill {r['simulated_prefill_s']:7.2f} s  decode {1e3 * r['simulated_decode_s']:7.1f} ms "
            f"(bf16 {1e3 * r['bf16_analytic_decode_s']:7.1f} ms)  GPU {r['peak_gpu_bytes'] / 2**30:6.2f} GiB "
            f"(bf16 {r['bf16_peak_gpu_bytes'] / 2**30:6.2f})"
        )
    doc = {"profile": PROFILE, "note": "predicted before any fp8 run", "configs": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
