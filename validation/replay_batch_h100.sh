#!/usr/bin/env bash
# Replayed resident decode at batch > 1 on the GPU machine: Llama-3.1-8B resident at 32K,
# replayed and eager, batch 2 then 1, each a `roofsim run` whose trace lands in $OUT/replay-batch/; then the decode
# kernels' GPU tests (each kernel against attention per sequence, at batch 1 and 3; replay against eager logits). From the repo root, with .whl/ carried:
#   bash validation/replay_batch_h100.sh
# prints one line per run: the measured decode ms per step (median after warm-up) and the executor's kernel note.
set -euo pipefail
. validation/device_setup.sh
dir="$OUT/replay-batch"
mkdir -p "$dir"
for batch in 2 1; do
  for graphs in true false; do
    name="l31-resident-32k-b$batch-graphs-$graphs"
    cat > "$dir/$name.plan.json" <<JSON
{"plan": {"family": "resident", "prefill_chunk": 8192, "weights": "resident", "decode_graphs": $graphs},
 "model": "llama-3.1-8b", "workload": {"context": 32768, "batch": $batch, "gen": 16}}
JSON
    roofsim run "$dir/$name.plan.json" --batch "$batch" -o "$dir/$name.json" > "$dir/$name.log" 2>&1 || echo "$name failed"
    python3 - "$dir/$name.json" "$name" <<'PY'
import json, statistics, sys
t = json.load(open(sys.argv[1]))
steps = t["summary"]["decode"]["step_s"]
notes = [n for n in t["header"]["notes"] if "decode" in n and ("graph" in n or "eager" in n)]
print(f"{sys.argv[2]}: decode {1e3 * statistics.median(steps):.2f} ms/step (n={len(steps)}); {' | '.join(notes)[:160]}")
PY
  done
done
(repo=$PWD && cd /tmp && python3 -m pytest -q -p no:cacheprovider -m gpu "$repo/tests/test_executor_graphs.py") 2>&1 | tail -3
