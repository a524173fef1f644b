#!/usr/bin/env bash
# The band's coverage on runs its model-error term was not fitted on (roofsim/model_error.json is fitted on the
# development set and the spent held-out sets, validation/model_error_sets.toml): the architecture set (validation/gather_archs.sh) and the fp8
# campaign, each re-predicted on a copy with its own profile by the current model, then summarize.py (its "band
# holds" line and band_coverage_pct). No GPU; the committed folders are left as they are.
#   bash validation/band_out_of_sample.sh
set -euo pipefail
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
REPREDICT=1 bash validation/gather_archs.sh "$t/archs"
mkdir -p "$t/fp8"
cp -r validation/results/h100-fp8/kernel-timed/campaign "$t/fp8/"
roofsim validate --repredict "$t/fp8/campaign" \
  --gpu validation/results/h100-archs/moe-layer/calibrated/h200-calibrated.toml >/dev/null
for d in archs fp8; do echo "== $d"; python3 validation/summarize.py "$t/$d" | tail -2; done
