#!/usr/bin/env bash
# Predict the committed H100 campaign again with the current model (no GPU), every configuration with the
# calibration made on the machine it ran on, just before it (s22; validation/results/h100/README.md).
# Then: python validation/summarize.py validation/results/h100 (docs/validation.md shows what it prints;
# tests/test_golden_predictions.py holds six rows to it).
set -euo pipefail
root=validation/results/h100
roofsim validate --repredict "$root/campaign" --gpu "$root/s22/h100-sxm-calibrated.toml" >/dev/null
