#!/usr/bin/env bash
# On the GPU machine, after a change that should not move how fast the executor runs (a refactor): the GPU-marked
# tests of one GPU (window layers' flash call, replayed decode and the fused fp8 row write among them), then four
# committed campaign configurations (validation/campaign-recheck-h100.toml: head_offload, kvpr, two cpu_attention)
# run again, to compare with their committed measurements. From the repo root,
# with .whl carried:
#   bash validation/recheck_h100.sh            # ~6 min; $OUT/gpu-tests.log, $OUT/campaign-recheck.tar.gz
# Then, here: extract the archive into a folder and compare the measured traces:
#   mkdir -p /tmp/recheck && tar xzf campaign-recheck.tar.gz -C /tmp/recheck
#   python validation/compare_measured.py validation/results/h100/campaign /tmp/recheck/campaign
# The predictions in the archive use the s22 profile (any profile serves: only the measurements are compared).
set -uo pipefail
. validation/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv > "$OUT/gpu.txt"
# from another folder: `python -m pytest` puts the working directory first on sys.path, and the checkout's roofsim/
# (which has no executor/ inside: setup maps it) would shadow the installed package
repo=$PWD
(cd /tmp && python3 -m pytest -p no:cacheprovider -m gpu -rs "$repo/tests/test_executor_calibrate.py" \
  "$repo/tests/test_executor_cli.py" "$repo/tests/test_executor_timing.py" "$repo/tests/test_executor_transfers.py" \
  "$repo/tests/test_executor_archs.py" "$repo/tests/test_executor_graphs.py" "$repo/tests/test_fp8_triton.py" \
  "$repo/tests/test_generate.py" "$repo/tests/test_random_init.py") \
  > "$OUT/gpu-tests.log" 2>&1
echo "pytest rc=$?" >> "$OUT/gpu-tests.log"
tail -3 "$OUT/gpu-tests.log"
CAMPAIGN=validation/campaign-recheck-h100.toml PROFILE=validation/results/h100/s22/h100-sxm-calibrated.toml \
  LABEL=recheck bash validation/run_campaign.sh only \
  "${CONFIGS:-l3-head-g4-r1-128k,l3-kvpr-64k,q7-cpu1-64k,l2-planner-32k-24gb}"
