#!/usr/bin/env bash
# Replayed decode where it was new or wrong, on the GPU machine: Llama-3.1-8B resident at 32K, batch 2 then 1,
# and Qwen2.5-7B evict (a 32768-token budget) at 64K, each replayed and eager, each a `roofsim run` whose trace
# lands in $OUT/replay-batch/; then the replay's GPU tests (each decode kernel against attention per sequence at
# batch 1 and 3, each replayed plan against eager logits, `roofsim generate` replaying). From the repo root, with
# .whl/ carried:
#   bash validation/replay_batch_h100.sh
# prints one line per run: the measured decode ms per step (median after warm-up) and the executor's decode note.
set -euo pipefail
. validation/device_setup.sh
dir="$OUT/replay-batch"
mkdir -p "$dir"

run() {  # name, batch, plan JSON, model, context
  local name="$1" batch="$2"
  printf '{"plan": %s, "model": "%s", "workload": {"context": %s, "batch": %s, "gen": 16}}\n' \
    "$3" "$4" "$5" "$batch" > "$dir/$name.plan.json"
  roofsim run "$dir/$name.plan.json" --batch "$batch" -o "$dir/$name.json" > "$dir/$name.log" 2>&1 \
    || { echo "$name failed: $(tail -1 "$dir/$name.log")"; return 0; }
  python3 - "$dir/$name.json" "$name" <<'PY'
import json, statistics, sys
t = json.load(open(sys.argv[1]))
steps = t["summary"]["decode"]["step_s"]
notes = [n for n in t["header"]["notes"] if n.startswith("decode") and ("graph" in n or "eager" in n)]
print(f"{sys.argv[2]}: decode {1e3 * statistics.median(steps):.2f} ms/step (n={len(steps)}); {' | '.join(notes)[:160]}")
PY
}

for graphs in true false; do
  for batch in 2 1; do
    run "l31-resident-32k-b$batch-graphs-$graphs" "$batch" \
      "{\"family\": \"resident\", \"prefill_chunk\": 8192, \"decode_graphs\": $graphs}" llama-3.1-8b 32768
  done
  run "q7-evict-b32k-64k-graphs-$graphs" 1 \
    "{\"family\": \"evict\", \"prefill_chunk\": 8192, \"budget_tokens\": 32768, \"decode_graphs\": $graphs}" qwen2.5-7b 65536
done
(repo=$PWD && cd /tmp && python3 -m pytest -q -p no:cacheprovider -m gpu "$repo/tests/test_executor_graphs.py" \
  "$repo/tests/test_generate.py") 2>&1 | tail -3
