#!/usr/bin/env bash
# Predict the committed H100 campaign again with the current model (no GPU), each configuration with the
# calibration made on the machine it ran on where one was made (validation/results/h100/README.md):
# - 23 configurations: one machine, after `calibrate` there (s19);
# - l3-cpu2-64k, q7-cpu1-64k, l3-cpu4-128k, l2-planner-32k-24gb: a second machine, after `calibrate` there (s21);
# - l3-head-g1-256k, l3-head-512k-24gb: a third machine, which made no calibration: held out, predicted with s19's.
# Then: python validation/summarize.py validation/results/h100 (docs/validation.md shows what it prints;
# tests/test_golden_predictions.py holds six rows to it).
set -euo pipefail
root=validation/results/h100
roofsim validate --repredict "$root/campaign" --gpu "$root/s19/h100-sxm-calibrated.toml" >/dev/null
for name in l3-cpu2-64k q7-cpu1-64k l3-cpu4-128k l2-planner-32k-24gb; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/s21/h100-sxm-calibrated.toml" >/dev/null
done
