#!/usr/bin/env bash
# The architecture set's H100 table (docs/validation.md, issue 34): the latest run of each of its ten configurations,
# gathered from the four folders they ran in (each folder's README has its command), then summarize.py over them.
#   bash validation/archs_table.sh
set -euo pipefail
r=validation/results/h100-archs
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/campaign"
for c in q3-8b-head-g1-r1-128k-24gb q3-14b-layer-inc-64k-40gb; do cp -r "$r/campaign/$c" "$t/campaign/"; done
for c in g12-resident-64k-40gb g12-layer-inc-128k-32gb g12-head-g2-r1-256k-40gb; do
  cp -r "$r/fresh-calibration/campaign/$c" "$t/campaign/"
done
cp -r "$r/allocated-gap/campaign/." "$t/campaign/"
cp -r "$r/fetch-calibrated/campaign/." "$t/campaign/"  # the two MoE configurations' latest runs
python3 validation/summarize.py "$t"
