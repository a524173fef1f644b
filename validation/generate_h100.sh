#!/usr/bin/env bash
# On the GPU machine: `roofsim generate` at 128K tokens under 24 GB streams tokens at the plan's predicted rate
# (issue 35's target: decode tokens/s within 10% of the prediction). From the repo root, with .whl carried:
#   bash validation/generate_h100.sh     # $OUT/generate-128k.json (measured against predicted), verdict.txt
# Each step is skipped where its output is already there, so a warm machine can take the steps in several calls:
#   1. a random-weights Llama-3-8B checkpoint (bf16 safetensors, ~16 GB, positions raised to 128K + 64) with a word
#      tokenizer built here (no network), in $CKPT, and a prompt of 131072 random words (one token each);
#   2. this machine's calibration, written where `roofsim generate` looks for it ($XDG_CONFIG_HOME/roofsim/;
#      roofsim/specs/profile.py), unless PROFILE names one (it is then passed as $ROOFSIM_PROFILE);
#   3. roofsim generate --gpu-mem 24GB --max-new-tokens 64 --ignore-eos (all 64 steps: random weights may say
#      end-of-sequence early), the plan chosen by the planner for this GPU.
set -uo pipefail
. validation/device_setup.sh || exit 1
CKPT=${CKPT:-/tmp/llama-3-8b-random}
PROMPT_LEN=${PROMPT_LEN:-131072}
NEW=${NEW:-64}
export XDG_CONFIG_HOME=${XDG_CONFIG_HOME:-$HOME/.config}
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$OUT/gpu.txt"

if [ ! -f "$CKPT/model.safetensors.index.json" ] && [ ! -f "$CKPT/model.safetensors" ]; then
    python3 - "$CKPT" "$PROMPT_LEN" "$NEW" <<'EOF' || exit 1
import random, sys
import torch
from roofsim.executor.check import write_checkpoint
from roofsim.executor.models import config_for_spec
from roofsim.specs import load_model

path, n, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = load_model("llama-3-8b")
write_checkpoint(path, config_for_spec(spec, max_positions=n + new), dtype=torch.bfloat16, device="cuda")
rng = random.Random(0)
with open(f"{path}/prompt.txt", "w") as f:
    f.write(" ".join(f"w{rng.randrange(spec.vocab - 8)}" for _ in range(n)))
print(f"checkpoint and a {n}-word prompt in {path}")
EOF
fi

if [ -n "${PROFILE:-}" ]; then
    export ROOFSIM_PROFILE=$PROFILE
    cp "$PROFILE" "$OUT/"
else
    if ! ls "$XDG_CONFIG_HOME"/roofsim/*-calibrated.toml >/dev/null 2>&1; then
        BASE=$(python3 -c "import torch; from roofsim.report.resolve import gpu_by_device_name as g; \
s = g(torch.cuda.get_device_name()); print(s.name if s else 'h100-sxm')")
        roofsim calibrate --gpu "$BASE" -o "$XDG_CONFIG_HOME/roofsim" || exit 1
    fi
    cp "$XDG_CONFIG_HOME"/roofsim/*-calibrated* "$OUT/"
fi

roofsim generate "$CKPT" --prompt-file "$CKPT/prompt.txt" --max-new-tokens "$NEW" --ignore-eos --gpu-mem 24GB \
    --json-out "$OUT/generate-128k.json" > "$OUT/generate-128k.txt" 2> "$OUT/generate-128k.log"
echo "roofsim generate rc=$?" >> "$OUT/generate-128k.log"
tail -2 "$OUT/generate-128k.log"

python3 - "$OUT/generate-128k.json" <<'EOF' | tee "$OUT/verdict.txt"
import json, sys
d = json.load(open(sys.argv[1]))
m, p, e = d["measured"], d["predicted"], d["error_pct"]
print(f"{d['fingerprint']['gpu_name']}, plan {d['plan']['family']} ({d['gpu_spec']}, {d['gpu_spec_from']})")
print(f"prefill {m['prefill_s']:.2f} s measured, {p['prefill_s']:.2f} s predicted ({e['prefill_s']:+.1f}%)")
print(f"decode {m['decode_tokens_per_s']:.3f} tokens/s measured, {p['decode_tokens_per_s']:.3f} predicted "
      f"({e['decode_tokens_per_s']:+.1f}%) over {d['new_tokens']} tokens")
print(f"peak GPU {m['peak_gpu_bytes'] / 1e9:.2f} GB measured (cap 24 GB), {p['peak_gpu_bytes'] / 1e9:.2f} GB predicted")
ok = abs(e["decode_tokens_per_s"]) <= 10 and m["peak_gpu_bytes"] <= 24e9
print("PASS" if ok else "FAIL", "(decode tokens/s within 10% of the prediction, under 24 GB)")
sys.exit(0 if ok else 1)
EOF
