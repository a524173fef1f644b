#!/usr/bin/env bash
# Issue 36 (tensor parallelism) on a 2-GPU machine (nvidia-h100-x2), from the repo root with .whl carried: Llama-3-8B
# head_offload at CONTEXT tokens with TP=2 (each GPU streams its 4 KV heads over its own link) and with TP=1, in one
# call, each a `roofsim run` of the same plan file but for its tp. Must hold: TP=2 decode within 10% of the
# prediction of its plan, and TP=1 / TP=2 decode step time >= 1.7.
#   bash validation/tp_h100.sh                          # 512K: TP=2 then TP=1 (~8 min, ~64 GiB pinned per run)
#   CONTEXT=256K GEN=9 bash validation/tp_h100.sh       # where 512K does not fit the call or host memory
#   TPS=2 bash validation/tp_h100.sh; TPS=1 ...         # one run per call where both do not fit one (two tp.json)
#   PROFILE=path/h100-calibrated.toml ...               # price and run with a calibrated profile (--gpu)
# Results: $OUT/trace_tp{1,2}.json, run_tp{1,2}.log, tp.json (measured, predicted, must-hold), verdict.txt,
# gpu.txt, topo.txt, host.txt. Each run is stopped (SIGINT) at RUN_TIMEOUT seconds, or where the runs together reach
# BUDGET, and then writes what it measured. The prediction is roofsim.predict's for each trace's plan (tp included).
# Time: the 512K prefill is ~8e16 FLOPs, most of it attention, minutes on one H100; TP=2 halves each rank's share.
# A decode step of this plan at 512K moves the whole KV over the link: 64 GiB (TP=1), 32 GiB on each GPU's (TP=2).
set -uo pipefail
. validation/device_setup.sh || exit 1
CONTEXT=${CONTEXT:-512K}
GEN=${GEN:-9}
TPS=${TPS:-2 1}
RUN_TIMEOUT=${RUN_TIMEOUT:-330}   # one run's limit
BUDGET=${BUDGET:-540}             # all runs together, seconds from here (the call's limit is 600)
start=$SECONDS
nvidia-smi --query-gpu=index,name,driver_version,pcie.link.gen.current,pcie.link.width.current,pci.bus_id \
    --format=csv > "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
free -b > "$OUT/host.txt"
cat "$OUT/gpu.txt"
GPU_ARG=()
if [ -n "${PROFILE:-}" ]; then
    GPU_ARG=(--gpu "$PROFILE")
    cp "$PROFILE" "$OUT/"
fi

# the 1-GPU 512K plan of issue 31 (validation/executor_bench.py STREAM_PLAN), written for each tp
python3 - "$OUT" <<'EOF' || exit 1
import sys
from roofsim.families import HeadOffloadPlan

plan = HeadOffloadPlan(kv_heads_per_slot=1, resident_slots=0, prefetch_depth=2, slot_buffers=3, prefill_chunk=16384)
for tp in (1, 2):
    with open(f"{sys.argv[1]}/plan_tp{tp}.json", "w") as f:
        f.write(plan.model_copy(update={"tp": tp}).model_dump_json())
EOF

for tp in $TPS; do
    limit=$(( BUDGET - (SECONDS - start) ))
    [ "$limit" -gt "$RUN_TIMEOUT" ] && limit=$RUN_TIMEOUT
    [ "$limit" -lt 30 ] && { echo "tp=$tp: no time left"; continue; }
    # from /tmp: the checkout's roofsim/ (no executor/ inside) would shadow the installed package
    (cd /tmp && timeout -s INT "$limit" roofsim run "$OUT/plan_tp$tp.json" --model llama-3-8b \
        --prompt-len "$CONTEXT" --gen "$GEN" --trace-steps 2 ${GPU_ARG[@]+"${GPU_ARG[@]}"} -o "$OUT/trace_tp$tp.json") \
        > "$OUT/run_tp$tp.log" 2>&1
    echo "roofsim run tp=$tp rc=$?" >> "$OUT/run_tp$tp.log"
    grep -v '^\s' "$OUT/run_tp$tp.log" | grep -iv 'warning' | tail -3
done

python3 - "$OUT" <<'EOF' | tee "$OUT/verdict.txt"
import json, sys
from pathlib import Path

from roofsim.predict import predict
from roofsim.specs import load_gpu, load_model
from roofsim.specs.hardware import default_host_of
from roofsim.trace import Trace

out = Path(sys.argv[1])
res = {"runs": {}, "must_hold": {}}
for tp in (1, 2):
    path = out / f"trace_tp{tp}.json"
    if not path.exists():
        print(f"tp={tp}: no trace")
        continue
    t = Trace.read(path)
    s, h = t.summary, t.header
    gpu_arg = h.profile or "h100-sxm"
    gpu = load_gpu(gpu_arg)
    pred = predict(h.plan, load_model("llama-3-8b"), gpu, default_host_of(gpu_arg, gpu), h.workload).summary
    res["runs"][tp] = run = {
        "complete": t.complete, "error": t.error, "gpu": h.gpu, "context": h.workload.context,
        "prefill_s": s.prefill_s, "decode_s_per_token": s.decode_s_per_token, "decode_steps": len(s.decode.step_s),
        "peak_gpu_bytes": s.peak_gpu_bytes, "pinned_host_bytes": s.peak_host_bytes, "gpu_spec": gpu_arg,
        "predicted_prefill_s": pred.prefill_s, "predicted_decode_s_per_token": pred.decode_s_per_token,
        "notes": h.notes,
    }
    m, p = run["decode_s_per_token"], run["predicted_decode_s_per_token"]
    err = (m / p - 1) * 100 if m and p else None
    run["decode_error_pct"] = err
    print(f"tp={tp} on {h.gpu} at {h.workload.context} tokens: prefill {s.prefill_s or float('nan'):.1f} s "
          f"(predicted {pred.prefill_s or float('nan'):.1f} s), decode {(m or float('nan')) * 1e3:.1f} ms/token "
          f"(predicted {(p or float('nan')) * 1e3:.1f} ms, {err if err is not None else float('nan'):+.1f}%), "
          f"{len(s.decode.step_s)} steps, complete={t.complete}")
two, one = res["runs"].get(2, {}), res["runs"].get(1, {})
if two.get("decode_error_pct") is not None:
    res["must_hold"]["tp2_decode_within_10pct_of_prediction"] = {
        "error_pct": two["decode_error_pct"], "holds": abs(two["decode_error_pct"]) <= 10}
if one.get("decode_s_per_token") and two.get("decode_s_per_token"):
    ratio = one["decode_s_per_token"] / two["decode_s_per_token"]
    res["must_hold"]["tp1_over_tp2_decode_at_least_1.7"] = {"ratio": ratio, "holds": ratio >= 1.7}
for name, v in res["must_hold"].items():
    print(("PASS" if v["holds"] else "FAIL"), name, {k: round(x, 3) for k, x in v.items() if k != "holds"})
(out / "tp.json").write_text(json.dumps(res, indent=1, default=str))
EOF
