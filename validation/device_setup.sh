#!/usr/bin/env bash
# Source this on the GPU machine (no package index there): installs the carried wheels (.whl/: pydantic, simpy,
# plotly; stage them here with ../shared/device/stage-wheels.sh) and roofsim itself, so that roofsim.executor
# and the shipped hw_specs resolve as in a normal install. Nothing run on the GPU machine renders a report, so
# plotly's wheel (10 MB) can stay behind: the tree (about 55 MB) with every wheel passes the 64 MiB a call carries.
#   bash ../shared/device/stage-wheels.sh && rm .whl/plotly-*.whl
#   . validation/device_setup.sh && roofsim calibrate --gpu h100-sxm -o "$OUT/calibrated"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/roofsim . || return 1  # --upgrade: a warm machine takes the new code
export PYTHONPATH=/tmp/roofsim:/tmp/site
export PATH=/tmp/roofsim/bin:$PATH
export PYTHONUNBUFFERED=1
# `python3 - <<EOF` and `python3 -m` put the working directory first on sys.path, where the checkout's roofsim/ (which
# has no executor/ inside: setup maps it) would shadow the installed package
export PYTHONSAFEPATH=1
# roofsim validate forks each run from a server that imported torch once (roofsim/runproc.py). The first setup on a
# machine checks that a forked run can use the GPU (the GPU test of tests/test_runproc.py, ~15 s) and keeps the
# answer in /tmp (a warm machine keeps it between calls); where it cannot, every run starts a fresh interpreter.
if [ ! -f /tmp/roofsim-run-process ]; then
  # from another folder, as recheck_h100.sh runs pytest: the checkout's roofsim/ must not shadow the installed one
  if (repo=$PWD && cd /tmp && python3 -m pytest -q -p no:cacheprovider -m gpu -rs "$repo/tests/test_runproc.py") \
    > /tmp/roofsim-run-process.log 2>&1; then
    echo fork > /tmp/roofsim-run-process
  else
    echo exec > /tmp/roofsim-run-process
  fi
  cp /tmp/roofsim-run-process.log "${OUT:-/tmp}/run-process-check.log" 2>/dev/null || true
fi
ROOFSIM_RUN_PROCESS="$(cat /tmp/roofsim-run-process)"
export ROOFSIM_RUN_PROCESS
echo "runs: $ROOFSIM_RUN_PROCESS (roofsim/runproc.py)"
