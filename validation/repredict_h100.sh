#!/usr/bin/env bash
# Predict the committed H100 campaign again with the current model (no GPU), each configuration with the
# calibration made on the machine and with the executor it ran on. Since the nineteenth session (2026-12-06) 27 of
# its 29 configurations are the runs of that session's three device calls on one H100, after `calibrate` in the
# first: validation/results/h100/s19 (see validation/results/h100/README.md). l3-head-g1-256k and l3-head-512k-24gb
# are still part b's runs (executor of b3d84ae, FlashAttention-2): calibrated-fa2, the calibration made then.
# Their earlier runs of the other 27 are in git: `git show 2f2af8d:validation/results/h100/campaign/NAME/runs.json`.
# Then: python validation/summarize.py validation/results/h100
set -euo pipefail
root=validation/results/h100
roofsim validate --repredict "$root/campaign" --gpu "$root/s19/h100-sxm-calibrated.toml" >/dev/null
for name in l3-head-g1-256k l3-head-512k-24gb; do
  roofsim validate --repredict "$root/campaign/$name" --gpu "$root/calibrated-fa2/h100-sxm-calibrated.toml" >/dev/null
done
