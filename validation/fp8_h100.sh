#!/usr/bin/env bash
# KV in fp8 (issue #32) on the H100, in two device calls (a 768K prefill is most of a call on its own):
#   bash validation/fp8_h100.sh a   # ~8 min: every fp8 family's accuracy on Llama-3-8B shapes (random bf16
#                                   # weights, plain and outlier keys); pinned H2D bandwidth; the fp8 head_offload
#                                   # decode at 256K and at 512K under 24 GB against fp8 bytes / H2D rate + the
#                                   # resident fp8 decode step over the same KV
#   bash validation/fp8_h100.sh b   # ~7 min: Llama-3-8B at 768K under --gpu-mem 24GB, prefill and 16 measured
#                                   # decode steps (`roofsim run`, SIGINT at its deadline: a partial trace)
# The calibrated profile predicts prefill 43 s, 153 s and 331 s at 256K, 512K and 768K for this plan.
# Each writes $OUT/fp8_<part>/executor_bench.json (with must_hold) and its log; part a also fp8_accuracy.json.
# Here, afterwards: python validation/executor_bench.py --merge A.json B.json --out <results>/fp8_bench.json
set -uo pipefail
. validation/device_setup.sh || exit 1
part=${1:-a}
repo=$PWD
dir="$OUT/fp8_$part"
mkdir -p "$dir"
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$dir/gpu.txt"
# from another folder: the checkout's roofsim/ (no executor/ inside) would shadow the installed package
cd /tmp || exit 1
if [ "$part" = a ]; then
  timeout 130 python3 "$repo/validation/fp8_accuracy.py" --device cuda --model llama-3-8b --prompt 4096 \
    --chunk 1024 --gen 64 --out "$dir/fp8_accuracy.json" > "$dir/fp8_accuracy.log" 2>&1
  echo "fp8_accuracy rc=$?" >> "$dir/fp8_accuracy.log"
  tail -12 "$dir/fp8_accuracy.log"
  timeout 370 python3 "$repo/validation/executor_bench.py" --out "$dir" --stages bw,fp8_256k,fp8_512k \
    > "$dir/bench.log" 2>&1
else
  timeout 560 python3 "$repo/validation/executor_bench.py" --out "$dir" --stages bw,fp8_768k \
    --child-timeout 530 > "$dir/bench.log" 2>&1
fi
echo "bench rc=$?" >> "$dir/bench.log"
tail -c 3000 "$dir/bench.log"
