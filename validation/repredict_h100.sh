#!/usr/bin/env bash
# Predict the committed H100 campaign again with the current model (no GPU): each configuration with the
# calibration made with the executor it ran on, where possible in the same device call. By default
# validation/results/h100/calibrated, made in the call that ran `run_campaign.sh cpu` and `l2-planner` (executor of
# ed1273c): l3-cpu2-64k is still that run, and l3-resident-16k (commit 8ce8418, same GPU kernels) is predicted with
# it too. Part b ran at commit b3d84ae, before cuDNN was a candidate (FlashAttention-2): calibrated-fa2, the
# calibration made then. Sixth session (2026-11-23): q7-planner-64k-24gb and l3-resident-64k ran in the call that
# made calibrated-s6a, l3-head-g1-r4-64k and l3-head-g1-r4-wb8-64k in the call that made calibrated-s6b,
# q7-head-g2-r1-wb16-64k in the call that made calibrated-s6c. Seventh session (executor and model of 449980b):
# twelve configurations ran in the call that made calibrated-s7a (ten of those runs are still here), six (l3-planner-128k-24gb with its runners-up
# among them) in the call that made calibrated-s7b (l2-planner-32k-24gb's run in the call that made calibrated-s7c
# is in git at 449980b's results, 9f440d5).
# Eighth session (executor and model of b56c37c): l3-sparse-64k, q7-cpu1-64k and l2-planner-32k-24gb (with its
# runners-up) ran in the call that made calibrated-s8a, the first with the CPU attention kernel timed per GQA group
# (l3-sparse-64k's run is still here). Ninth session (executor of 8af2f00, model and calibration with the CPU scan
# priced per CPU slot): q7-cpu1-64k and l2-planner-32k-24gb (with its runners-up) ran in the call that made
# calibrated-s9a.
# Each configuration is predicted once, after the default pass.
# Then: python validation/summarize.py validation/results/h100
set -euo pipefail
root=validation/results/h100
roofsim validate --repredict "$root/campaign" --gpu "$root/calibrated/h100-sxm-calibrated.toml" >/dev/null
for name in l3-head-g1-256k l3-head-512k-24gb l3-head-g4-r1-128k; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-fa2/h100-sxm-calibrated.toml" >/dev/null
done
for name in q7-planner-64k-24gb l3-resident-64k; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-s6a/h100-sxm-calibrated.toml" >/dev/null
done
for name in l3-head-g1-r4-64k l3-head-g1-r4-wb8-64k; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-s6b/h100-sxm-calibrated.toml" >/dev/null
done
roofsim validate --repredict "$root/campaign/q7-head-g2-r1-wb16-64k" --gpu "$root/calibrated-s6c/h100-sxm-calibrated.toml" >/dev/null
for name in l3-head-g1-64k q7-head-g2-r1-64k l2-head-g8-r1-32k l3-evict-128k l2-kvpr-inter-32k \
  l2-kvpr-intra-32k l3-kvpr-64k l2-resident-16k q7-resident-32k l3-layer-full-32k; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-s7a/h100-sxm-calibrated.toml" >/dev/null
done
for name in l3-planner-128k-24gb l3-head-g2-r1-128k q7-head-g1-128k l3-cpu4-128k l2-layer-inc-32k l3-layer-inc-64k; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-s7b/h100-sxm-calibrated.toml" >/dev/null
done
roofsim validate --repredict "$root/campaign/l3-sparse-64k" --gpu "$root/calibrated-s8a/h100-sxm-calibrated.toml" >/dev/null
for name in q7-cpu1-64k l2-planner-32k-24gb; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-s9a/h100-sxm-calibrated.toml" >/dev/null
done
