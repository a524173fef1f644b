#!/usr/bin/env bash
# Run the held-out H100 campaign (validation/campaign-heldout.toml; docs/validation.md#held-out-set) on the GPU
# machine, once, at the end of issue 33: calibrate on the machine, then the configurations in parts that each fit
# one 10-minute device call. Every part resumes (a configuration already measured on this warm machine is
# skipped) and rewrites $OUT/heldout-<part>.tar.gz after every configuration, so a call stopped midway keeps what
# it measured and the next call with the same part finishes it. From the repo root, with .whl/ carried:
#   bash validation/heldout_h100.sh calibrate   # ~4-5 min: $OUT/heldout-calibrated.tar.gz (reused if this machine did)
#   bash validation/heldout_h100.sh a           # 8 fixed plans, 24K-192K, ~2.5 min
#   bash validation/heldout_h100.sh b           # 192K sparse_fetch, 384K head_offload under 40 GB, Phi-3 planner, ~3.5 min
#   bash validation/heldout_h100.sh c           # Mistral-7B planner at 96K under 20 GB (pick, runners-up, families), ~2.5 min
#   bash validation/heldout_h100.sh d           # Qwen2.5-14B planner at 48K under 40 GB, ~2 min
#   bash validation/heldout_h100.sh e           # Llama-3.1-8B planner at 192K under 32 GB, ~5 min
# (the parts' minutes: the predicted prefill and decode of each run with a profile of the development set, plus
# ~10 s a run outside them, forked runs: docs/evidence.md#ev-run-overhead; calibrate says what it took)
# HELDOUT=2 runs the second held-out set (validation/campaign-heldout2.toml) into validation/results/h100-heldout2/,
# in two parts (`python validation/campaign_cost.py` prices them):
#   HELDOUT=2 bash validation/heldout_h100.sh calibrate a   # ~4 min + 9 fixed plans, ~3 min
#   HELDOUT=2 bash validation/heldout_h100.sh b             # the two planner configurations, ~5 min
# HELDOUT=3 the third (validation/campaign-heldout3.toml) into validation/results/h100-heldout3/, likewise:
#   HELDOUT=3 bash validation/heldout_h100.sh calibrate a   # ~3 min + 10 fixed plans, ~3.5 min
#   HELDOUT=3 bash validation/heldout_h100.sh b             # the two planner configurations, ~6 min
# HELDOUT=4 the fourth (validation/campaign-heldout4.toml) into validation/results/h100-heldout4/, likewise:
#   HELDOUT=4 bash validation/heldout_h100.sh calibrate a   # ~3 min + 9 fixed plans, ~3 min
#   HELDOUT=4 bash validation/heldout_h100.sh b             # the two planner configurations, ~5.5 min
# HELDOUT=5 the fifth (validation/campaign-heldout5.toml) into validation/results/h100-heldout5/, likewise:
#   HELDOUT=5 bash validation/heldout_h100.sh calibrate a   # ~4 min + 10 fixed plans, ~3.5 min
#   HELDOUT=5 bash validation/heldout_h100.sh b             # the two planner configurations, ~6 min
# Several parts in one call run in turn (`bash validation/heldout_h100.sh calibrate a`). A part that runs past its
# call: call it again on the same warm machine (it resumes); on a fresh machine run `calibrate` first, and say so in
# validation/results/h100-heldout/README.md. HOST_MONITOR=1 writes $OUT/host-<part>.csv beside the part. Then, here:
#   mkdir -p validation/results/h100-heldout && for f in heldout-*.tar.gz; do tar xzf $f -C validation/results/h100-heldout; done
#   python validation/compress_traces.py validation/results/h100-heldout/campaign
#   python validation/summarize.py validation/results/h100-heldout
set -euo pipefail
[ $# -gt 0 ] || { echo "parts: calibrate, a, b, c, d or e (HELDOUT=2 to 5: calibrate, a or b; several run in turn)" >&2; exit 2; }
. validation/device_setup.sh
set_n="${HELDOUT:-1}"
case "$set_n" in
  1) results=validation/results/h100-heldout; campaign=validation/campaign-heldout.toml; name=heldout ;;
  2) results=validation/results/h100-heldout2; campaign=validation/campaign-heldout2.toml; name=heldout2 ;;
  3) results=validation/results/h100-heldout3; campaign=validation/campaign-heldout3.toml; name=heldout3 ;;
  4) results=validation/results/h100-heldout4; campaign=validation/campaign-heldout4.toml; name=heldout4 ;;
  5) results=validation/results/h100-heldout5; campaign=validation/campaign-heldout5.toml; name=heldout5 ;;
  *) echo "HELDOUT=$set_n: the held-out sets are 1, 2, 3, 4 and 5" >&2; exit 2 ;;
esac
calib=calibrated
profile="$results/$calib/h100-sxm-calibrated.toml"
kept=/tmp/roofsim-calibrations/$name
mkdir -p "$results"

parts_of() {  # the configurations of one part of held-out set $1
  case "$1:$2" in
    1:a) echo "m7-resident-48k,p3-layer-inc-48k,l31-resident-b2-32k,l2-cpu8-24k,l31-kvpr-inter-96k,l31-cpu3-96k,q14-head-g1-r2-96k,q7-evict-b32k-192k" ;;
    1:b) echo "l3-sparse-f10-192k,l3-head-g2-r1-384k-40gb,p3-planner-32k-16gb" ;;
    1:c) echo "m7-planner-96k-20gb" ;;
    1:d) echo "q14-planner-48k-40gb" ;;
    1:e) echo "l31-planner-192k-32gb" ;;
    2:a) echo "q3-8b-resident-b4-16k,q7-resident-eager-b3-40k,l3-head-g1-r1-b2-48k,g27-head-g2-r2-96k,q3-14b-kvpr-intra-128k,q25-14b-cpu2-64k,l2-sparse-f20-64k,q3-8b-evict-b16k-128k,m7-layer-full-64k" ;;
    2:b) echo "g12-planner-160k-24gb,q3-8b-planner-160k-20gb" ;;
    3:a) echo "g27-resident-32k,g12-head-g1-r2-128k-c32k,goss20-resident-64k,q7-kvpr-inter-160k,m7-cpu3-128k,q25-14b-evict-b8k-b2-96k,l31-resident-b2-64k,q3-14b-layer-full-48k,l2-head-g4-r2-48k,q3-8b-sparse-f15-96k" ;;
    3:b) echo "l31-planner-224k-24gb,q7-planner-96k-16gb" ;;
    4:a) echo "q25-32b-resident-12k,q3-32b-head-g2-r2-40k-76gb,p3-head-g8-r3-80k,l31-layer-full-112k-32gb,q3-8b-kvpr-inter-80k,m7-sparse-f25-144k,q25-14b-head-g8-r0-40k,l2-evict-b4k-80k,q3-14b-resident-b2-40k" ;;
    4:b) echo "p3-planner-112k-12gb,q3-8b-planner-144k-20gb" ;;
    5:a) echo "l31-head-g1-r6-d3-176k-40gb,q25-14b-kvpr-inter-56k,m7-evict-b2k-64k,g12-layer-full-64k-32gb,goss20-head-g2-96k-48gb,p3-kvpr-intra-40k,q3-14b-sparse-f30-64k,l31-resident-c2k-20k,q3-8b-cpu2-96k,l3-layer-inc-b2-96k-28gb" ;;
    5:b) echo "q25-14b-planner-96k-28gb,m7-planner-176k-24gb" ;;
    *) return 1 ;;
  esac
}

run_part() {
  local part="$1" only monitor=""
  if [ -n "${HOST_MONITOR:-}" ]; then
    python3 validation/host_monitor.py "$OUT/host-$part.csv" & monitor=$!
  fi
  if [ ! -f "$profile" ] && [ -d "$kept" ]; then  # a warm machine keeps its calibration in /tmp between calls
    rm -rf "${results:?}/$calib" && cp -r "$kept" "$results/$calib"
  fi
  case "$part" in
    calibrate)
      if [ -d "$kept" ]; then
        echo "reusing this machine's calibration $kept (boot $(cat "$kept/boot_id.txt"))"
      else
        roofsim calibrate --gpu h100-sxm -o "$results/$calib"
        cat /proc/sys/kernel/random/boot_id > "$results/$calib/boot_id.txt"
        mkdir -p "$(dirname "$kept")" && rm -rf "$kept" && cp -r "$results/$calib" "$kept"
      fi
      tar czf "$OUT/$name-calibrated.tar.gz" -C "$results" "$calib"
      if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null || true; fi
      return 0 ;;
    *) only="$(parts_of "$set_n" "$part")" || { echo "unknown part $part of held-out set $set_n" >&2; exit 2; } ;;
  esac
  if [ ! -f "$profile" ]; then
    echo "no calibration on this machine: run 'HELDOUT=$set_n bash validation/heldout_h100.sh calibrate' first" >&2
    exit 2
  fi
  echo "boot $(cat /proc/sys/kernel/random/boot_id); calibration of boot $(cat "$results/$calib/boot_id.txt")"
  mkdir -p "/tmp/$name"
  roofsim validate "$campaign" --gpu "$profile" -o "/tmp/$name/campaign" --timeout 400 \
    --only "$only" --archive "$OUT/$name-$part.tar.gz" --resume
  if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null || true; fi
}

for part in "$@"; do run_part "$part"; done
