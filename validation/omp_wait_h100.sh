#!/usr/bin/env bash
# Does the issuing thread slow down right after each CPU attention scan because the CPU worker's OpenMP threads
# spin-wait after their parallel region (sharing cores with it)? The development set's q7-cpu1-64k decode took
# 1.6-1.7 ms between one layer's scan and the next against 1.0 ms priced (docs/evidence.md#ev-dev-h100-replayed).
# On the GPU machine, from the repo root, with .whl/ carried: the two development-set cpu_attention plans at 64K
# run with OpenMP's default wait policy, then with OMP_WAIT_POLICY=PASSIVE (threads sleep as soon as a region
# ends), each a `roofsim run` in a fresh process (the policy is read when OpenMP starts), in turn, twice:
#   bash validation/omp_wait_h100.sh            # ~3 min; traces and logs in $OUT/omp-wait/
# prints one line per run: decode ms per step (median), the median gap between layers' CPU scans and the median
# scan, and the host's pace (the gauge loop, median).
set -euo pipefail
. validation/device_setup.sh
dir="$OUT/omp-wait"
mkdir -p "$dir"
printf '%s\n' '{"plan": {"family": "cpu_attention", "prefill_chunk": 8192, "cpu_kv_heads": 1}, "model": "qwen2.5-7b", "workload": {"context": 65536, "batch": 1, "gen": 16}}' > "$dir/q7-cpu1-64k.plan.json"
printf '%s\n' '{"plan": {"family": "cpu_attention", "prefill_chunk": 8192, "cpu_kv_heads": 2}, "model": "llama-3-8b", "workload": {"context": 65536, "batch": 1, "gen": 16}}' > "$dir/l3-cpu2-64k.plan.json"

run() {  # name, policy ("" = OpenMP's default), round
  local name="$1" policy="$2" round="$3" out
  out="$dir/$name-${policy:-default}-$round"
  if [ -n "$policy" ]; then export OMP_WAIT_POLICY="$policy"; else unset OMP_WAIT_POLICY; fi
  roofsim run "$dir/$name.plan.json" -o "$out.json" > "$out.log" 2>&1 \
    || { echo "$name ${policy:-default}: failed: $(tail -1 "$out.log")"; return 0; }
  unset OMP_WAIT_POLICY
  python3 - "$out.json" "$name ${policy:-default} $round" <<'PY'
import json, statistics, sys
t = json.load(open(sys.argv[1]))
dec = [s for s in t["spans"] if s["phase"] == "decode"]
scans = sorted((s for s in dec if s["kind"] == "cpu_attention"), key=lambda s: (s["step"], s["start_s"]))
gaps, lens = [], []
for a, b in zip(scans, scans[1:]):
    lens.append(a["end_s"] - a["start_s"])
    if a["step"] == b["step"]:
        gaps.append(b["start_s"] - a["end_s"])
step = statistics.median(t["summary"]["decode"]["step_s"])
pace = t["summary"].get("host_pace_us") or [float("nan")]
print(f"{sys.argv[2]}: decode {1e3 * step:.1f} ms/step; between scans {1e3 * statistics.median(gaps):.2f} ms, "
      f"scan {1e3 * statistics.median(lens):.2f} ms; host pace {statistics.median(pace):.0f} us")
PY
}

for round in 1 2; do
  for name in q7-cpu1-64k l3-cpu2-64k; do
    run "$name" "" "$round"
    run "$name" PASSIVE "$round"
  done
done
