#!/usr/bin/env bash
# Gather the architecture set's ten configurations (docs/validation.md) into DEST/campaign, the latest run of each
# from the two folders they ran in (each folder's README has its command): eight from moe-layer (one calibration,
# the model with runtime.moe_layer_us), the two planner configurations from allocated-gap. REPREDICT=1 re-predicts
# each, in DEST, with the current model and the profile it ran with. The committed folders are left as they are.
#   bash validation/gather_archs.sh DEST
set -euo pipefail
dest="${1:?the folder to gather into}"
r=validation/results/h100-archs
mkdir -p "$dest/campaign"
cp -r "$r/moe-layer/campaign/." "$dest/campaign/"
if [ -n "${REPREDICT:-}" ]; then
  roofsim validate --repredict "$dest/campaign" --gpu "$r/moe-layer/calibrated/h200-calibrated.toml" >/dev/null
fi
for c in g12-planner-512k-40gb q3-8b-planner-256k-24gb; do
  cp -r "$r/allocated-gap/campaign/$c" "$dest/campaign/"
  if [ -n "${REPREDICT:-}" ]; then
    roofsim validate --repredict "$dest/campaign/$c" --gpu "$r/allocated-gap/calibrated/h100-sxm-calibrated.toml" >/dev/null
  fi
done
