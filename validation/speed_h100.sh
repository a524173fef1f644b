#!/usr/bin/env bash
# Issue 31 (executor speed) on the GPU machine, from the repo root with .whl carried: the GPU-marked tests of the
# replayed decode, then executor_bench stages, each run bounded so that one call stays under ~8 minutes.
#   bash validation/speed_h100.sh                                  # tests + decode, prefill, streamed decode
#   TESTS=0 STAGES=bw,ceilings,512k bash validation/speed_h100.sh  # the 512K prefill under 24 GB
#   TESTS=0 STAGES=bw,ceilings,512k_compiled bash validation/speed_h100.sh   # the same with `roofsim run --compile`
#   TESTS=0 STAGES=bw,ceilings,decode16k_fused,decode16k_fusednorms,decode64k_fused,decode64k_fusednorms \
#     bash validation/speed_h100.sh                                # replayed decode, fused projections, one-call norms
#   TESTS=0 STAGES=bw,ceilings,decode64k_fusednorms,decode16k_compiled,decode64k_compiled,prefill128k_compiled \
#     bash validation/speed_h100.sh      # also torch.compile'd layers (fuse.compile_layers); they stay for later stages
#   TESTS=0 STAGES=bw,ceilings,decode16k_autotune,decode64k_autotune bash validation/speed_h100.sh
#                                      # compiled with mode max-autotune-no-cudagraphs (Triton GEMM templates timed)
#   TESTS=0 STAGES=bw,ceilings,prefill128k_compiled_merge,prefill128k_compiled_64k bash validation/speed_h100.sh
#                                      # the 128K prefill with the chunk's two attention parts merged by a compiled
#                                      # kernel (fuse.compile_merge), and in 64K chunks
#   TESTS=0 STAGES=bw,attn_layout bash validation/speed_h100.sh   # cuDNN over the cache's strided past against
#                                      # contiguous keys, and FlexAttention (bottom-right causal, one call a layer)
# PROFILE_FUSE=compiled (or none, projections, norms) then profiles a replayed decode step at PROFILE_CONTEXT
# (65536) with validation/profile_decode.py, bounded by PROFILE_TIMEOUT (90 s): $OUT/profile/, $OUT/profile.log.
# TEST_FILES (default tests/test_executor_graphs.py) names the GPU-marked test files run first, TEST_K a -k filter.
# Results: $OUT/gpu-tests.log, $OUT/bench/executor_bench.json (+ traces), $OUT/bench.log, $OUT/gpu.txt
set -uo pipefail
. validation/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$OUT/gpu.txt"
repo=$PWD
# SMI_LOG=1: the GPU's clock, power and temperature every 200 ms through the whole call, beside the bench's stage
# start times (bench.log prints them): $OUT/smi.csv
if [ "${SMI_LOG:-0}" = 1 ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv,nounits -lms 200 > "$OUT/smi.csv" 2>&1 &
  smi_pid=$!
fi
STAGES=${STAGES:-bw,ceilings,decode16k,decode64k,decode64k_fused,decode16k_fused,hfdefault16k,hfdefault64k,exact,64k,attn,prefill128k,hf64k}
if [ "${TESTS:-1}" = 1 ]; then
  # from another folder: the checkout's roofsim/ (no executor/ inside) would shadow the installed package
  files=()
  for f in ${TEST_FILES:-tests/test_executor_graphs.py}; do files+=("$repo/$f"); done
  (cd /tmp && timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -p no:cacheprovider -m gpu -rA ${TEST_K:+-k "$TEST_K"} \
    "${files[@]}") > "$OUT/gpu-tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu-tests.log"
  tail -3 "$OUT/gpu-tests.log"
fi
# SIGINT at the deadline: the bench has saved its JSON after every finished stage
(cd /tmp && timeout -s INT "${BENCH_TIMEOUT:-330}" python3 "$repo/validation/executor_bench.py" --out "$OUT/bench" \
  --stages "$STAGES") > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
grep -v '^{' "$OUT/bench.log" | tail -20
python3 - "$OUT/bench/executor_bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d.get("must_hold", {}).items():
    print(k, {x: v.get(x) for x in ("ratio", "holds")})
print("errors:", list(d.get("errors", {})))
PY
if [ -n "${PROFILE_FUSE:-}" ]; then
  (cd /tmp && timeout "${PROFILE_TIMEOUT:-90}" python3 "$repo/validation/profile_decode.py" \
    --context "${PROFILE_CONTEXT:-65536}" --fuse "$PROFILE_FUSE" --out "$OUT/profile") > "$OUT/profile.log" 2>&1
  echo "profile rc=$?" >> "$OUT/profile.log"
  tail -4 "$OUT/profile.log"
fi
[ -n "${smi_pid:-}" ] && kill "$smi_pid"
true
