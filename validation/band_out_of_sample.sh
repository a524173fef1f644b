#!/usr/bin/env bash
# The band's coverage on runs its model-error term was not fitted on (roofsim/model_error.json is fitted on the
# development set, validation/fit_model_error.py): the architecture set (as validation/archs_table.sh gathers it)
# and the fp8 campaign, each re-predicted on a copy with its own profile by the current model, then summarize.py
# (its "band holds" line and band_coverage_pct). No GPU; the committed folders are left as they are.
#   bash validation/band_out_of_sample.sh
set -euo pipefail
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
a=validation/results/h100-archs
mkdir -p "$t/archs/campaign" "$t/fp8"
cp -r "$a/moe-layer/campaign/." "$t/archs/campaign/"
roofsim validate --repredict "$t/archs/campaign" --gpu "$a/moe-layer/calibrated/h200-calibrated.toml" >/dev/null
for c in g12-planner-512k-40gb q3-8b-planner-256k-24gb; do
  cp -r "$a/allocated-gap/campaign/$c" "$t/archs/campaign/"
  roofsim validate --repredict "$t/archs/campaign/$c" --gpu "$a/allocated-gap/calibrated/h100-sxm-calibrated.toml" >/dev/null
done
cp -r validation/results/h100-fp8/kernel-timed/campaign "$t/fp8/"
roofsim validate --repredict "$t/fp8/campaign" --gpu "$a/moe-layer/calibrated/h200-calibrated.toml" >/dev/null
for d in archs fp8; do echo "== $d"; python3 validation/summarize.py "$t/$d" | tail -2; done
