#!/usr/bin/env bash
# Predict every committed campaign again with the current model (no GPU), each with the calibration made on the
# machine it ran on, then print each table. The READMEs quote those tables (tests/test_readme_numbers.py).
#   bash validation/repredict_all.sh
set -euo pipefail
r=validation/results
bash validation/repredict_h100.sh
roofsim validate --repredict $r/h200/campaign --gpu $r/h200/calibrated/h200-calibrated.toml >/dev/null
roofsim validate --repredict $r/h200-s12/campaign --gpu $r/h200-s12/refit/h200-calibrated.toml >/dev/null
for m in a b; do
  roofsim validate --repredict $r/h200-s13/$m/campaign --gpu $r/h200-s13/$m/calibrated/h200-calibrated.toml >/dev/null
done
roofsim validate --repredict $r/h200-s15/campaign --gpu $r/h200-s15/calibrated/h200-calibrated.toml >/dev/null
for d in h100 h200 h200-s12 h200-s13/a h200-s13/b h200-s15; do
  echo "== $d"
  python validation/summarize.py $r/$d
done
