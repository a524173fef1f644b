#!/usr/bin/env bash
# Predict the committed H100 campaign again with the current model (no GPU), each configuration with the
# calibration made on the machine it ran on where one was made (validation/results/h100/README.md):
# - 23 configurations: the nineteenth session's runs on one H100 after `calibrate` there (s19);
# - l3-cpu2-64k, q7-cpu1-64k, l3-cpu4-128k, l2-planner-32k-24gb: the twentieth session's last device call, after
#   `calibrate` on that machine (s21), with the executor whose merge reads the CPU heads' output in place;
# - l3-head-g1-256k, l3-head-512k-24gb: the twentieth session's first machine, which made no calibration: held
#   out, predicted with s19's.
# Earlier runs are in git (`git show 71f1430:validation/results/h100/campaign/NAME/runs.json`); the twentieth
# session's other runs are in validation/results/h100/s20.
# Then: python validation/summarize.py validation/results/h100
set -euo pipefail
root=validation/results/h100
roofsim validate --repredict "$root/campaign" --gpu "$root/s19/h100-sxm-calibrated.toml" >/dev/null
for name in l3-cpu2-64k q7-cpu1-64k l3-cpu4-128k l2-planner-32k-24gb; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/s21/h100-sxm-calibrated.toml" >/dev/null
done
