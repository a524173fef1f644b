#!/usr/bin/env bash
# The architecture set's H100 table (docs/validation.md, issue 34): the latest run of each of its ten configurations,
# gathered from the two folders they ran in (each folder's README has its command): eight from moe-layer (one
# calibration, the model with runtime.moe_layer_us), the two planner configurations from allocated-gap; then
# summarize.py over them.
#   bash validation/archs_table.sh
set -euo pipefail
r=validation/results/h100-archs
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/campaign"
for c in g12-planner-512k-40gb q3-8b-planner-256k-24gb; do cp -r "$r/allocated-gap/campaign/$c" "$t/campaign/"; done
cp -r "$r/moe-layer/campaign/." "$t/campaign/"
python3 validation/summarize.py "$t"
