#!/usr/bin/env bash
# The architecture set's H100 table (docs/validation.md, issue 34): its ten configurations as
# validation/gather_archs.sh gathers them, then summarize.py over them.
#   bash validation/archs_table.sh
set -euo pipefail
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
bash validation/gather_archs.sh "$t"
python3 validation/summarize.py "$t"
