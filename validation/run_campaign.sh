#!/usr/bin/env bash
# Run the H100 validation campaign on the GPU machine in parts that each fit one 10-minute device call and bring
# back one file ($OUT/<part>.tar.gz, rewritten after every configuration, so a call stopped midway keeps what it
# measured). From the repo root, with .whl carried:
#   bash validation/run_campaign.sh calibrate   # ~1 min: a fresh calibrated profile, $OUT/calibrated.tar.gz
#   bash validation/run_campaign.sh a           # 17 configurations of 16K-64K, ~8 min (466 s on 2026-11-23)
#   bash validation/run_campaign.sh b           # 256K, 512K (24 GB cap) and one 128K, ~7 min
#   bash validation/run_campaign.sh c           # four fixed plans at 128K, ~4 min
#   bash validation/run_campaign.sh cpu         # the three fixed cpu_attention configurations of a and c, ~3 min
#   bash validation/run_campaign.sh l2-planner  # a planner configuration: its pick, runners-up and the best plan
#   bash validation/run_campaign.sh q7-planner  # of every other exact family that fits (up to 7 runs), each
#   bash validation/run_campaign.sh l3-planner  # ~4-7 min
#   bash validation/run_campaign.sh fp8         # validation/campaign-fp8-h100.toml: KV in fp8 (issue #32), ~8 min
#   bash validation/run_campaign.sh only NAME,NAME  # the named configurations ($OUT/campaign-$LABEL.tar.gz)
# CALIB=<folder> (default calibrated) names the calibration's folder under validation/results/<gpu>/: calibrate
# writes it, the parts predict with it. Calibrating in the same call as a part predicts that part with the host
# speed of the machine it ran on (it varies between machines: docs/evidence.md#ev-calibrate-beside-runs).
# GPU=<spec> (default h100-sxm) is the base spec calibrate starts from; its results go to validation/results/h100
# for h100-sxm and validation/results/<spec> otherwise (GPU=h200: validation/results/h200), with the configurations
# of CAMPAIGN (default validation/campaign-h100.toml: model, context and plan, nothing GPU-specific).
#   bash validation/run_campaign.sh recalibrate  # calibrate unless this machine already did for CALIB (a warm
#                                                # machine keeps /tmp between calls): then that profile is reused
# RESUME=1 skips the configurations this machine already measured into /tmp/campaign/<campaign> (a warm machine keeps /tmp
# between calls), so that one list can be handed to several calls in a row.
# HOST_MONITOR=1 writes $OUT/host-<part or LABEL>.csv beside the part: the host's speed every half second.
# Then, here: extract each archive into validation/results/h100/, compress the traces (the device takes at most
# 64 MiB of working tree per call) and print the table:
#   python validation/compress_traces.py validation/results/h100/campaign
#   python validation/summarize.py validation/results/h100
set -euo pipefail
part="${1:?part: calibrate, recalibrate, a, b, c, cpu, l2-planner, q7-planner, l3-planner, fp8 or only}"
. validation/device_setup.sh
calib="${CALIB:-calibrated}"
gpu="${GPU:-h100-sxm}"
if [ "$gpu" = h100-sxm ]; then results=validation/results/h100; else results="validation/results/$gpu"; fi
profile="${PROFILE:-$results/$calib/$gpu-calibrated.toml}"
campaign="${CAMPAIGN:-validation/campaign-h100.toml}"
kept="/tmp/roofsim-calibrations/$calib"
label="$part"
if [ "$part" = only ]; then label="${LABEL:-only}"; fi
if [ -n "${HOST_MONITOR:-}" ] && [ "$part" != recalibrate ]; then
  # the host's speed beside the part, every half second: validation/host_monitor.py
  python3 validation/host_monitor.py "$OUT/host-$label.csv" & monitor=$!
  trap 'kill $monitor 2>/dev/null || true' EXIT
fi
case "$part" in
  recalibrate)
    if [ -d "$kept" ]; then
      mkdir -p "$results" && rm -rf "${results:?}/$calib" && cp -r "$kept" "$results/$calib"
      echo "reusing this machine's calibration $kept (boot $(cat /proc/sys/kernel/random/boot_id))"
      exit 0
    fi
    exec bash "$0" calibrate ;;
  calibrate)
    # into the working copy too, so that a part run after it in the same call predicts with the fresh profile
    roofsim calibrate --gpu "$gpu" -o "$results/$calib"
    cat /proc/sys/kernel/random/boot_id > "$results/$calib/boot_id.txt"
    mkdir -p "$(dirname "$kept")" && rm -rf "$kept" && cp -r "$results/$calib" "$kept"
    tar czf "$OUT/$calib.tar.gz" -C "$results" "$calib"
    exit 0 ;;
  a) only="l3-resident-16k,l3-resident-64k,l3-layer-full-32k,l3-layer-inc-64k,l3-head-g1-64k,l3-head-g1-r4-64k,l3-kvpr-64k,l3-cpu2-64k,l3-sparse-64k,q7-resident-32k,q7-head-g2-r1-64k,q7-cpu1-64k,l2-resident-16k,l2-layer-inc-32k,l2-kvpr-intra-32k,l2-kvpr-inter-32k,l2-head-g8-r1-32k" ;;
  b) only="l3-head-g1-256k,l3-head-512k-24gb,l3-head-g4-r1-128k" ;;
  cpu) only="l3-cpu2-64k,q7-cpu1-64k,l3-cpu4-128k" ;;
  l2-planner) only="l2-planner-32k-24gb" ;;
  q7-planner) only="q7-planner-64k-24gb" ;;
  l3-planner) only="l3-planner-128k-24gb" ;;
  fp8)
    campaign="${CAMPAIGN:-validation/campaign-fp8-h100.toml}"
    only="q7-layer-inc-fp8-64k,l3-head-g2-r1-fp8-128k,l3-cpu2-fp8-64k,l3-resident-fp8-16k,l3-resident-fp8-64k,l3-layer-full-fp8-32k,l3-layer-inc-fp8-64k,l3-head-g1-fp8-64k,l3-head-g4-r1-fp8-128k,l3-head-g1-fp8-256k,q7-head-g1-fp8-64k" ;;
  only) only="${2:?only: a comma-separated list of configuration names}" ;;
  c) only="l3-head-g2-r1-128k,l3-cpu4-128k,l3-evict-128k,q7-head-g1-128k" ;;
  *) echo "unknown part $part: calibrate, recalibrate, a, b, c, cpu, l2-planner, q7-planner, l3-planner, fp8 or only" >&2; exit 2 ;;
esac
# one working folder per campaign file, so that an archive holds only its own campaign's runs
runs="/tmp/campaign/$(basename "$campaign" .toml)/campaign"
mkdir -p "$(dirname "$runs")"
resume=()
if [ -n "${RESUME:-}" ]; then resume=(--resume); fi
roofsim validate "$campaign" --gpu "$profile" -o "$runs" --timeout 400 \
  --only "$only" --archive "$OUT/campaign-$label.tar.gz" "${resume[@]}"
