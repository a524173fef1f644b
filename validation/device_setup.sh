#!/usr/bin/env bash
# Source this on the GPU machine (no package index there): installs the carried wheels (.whl/: pydantic, simpy,
# plotly; stage them here with ../shared/device/stage-wheels.sh) and roofsim itself, so that roofsim.executor
# and the shipped hw_specs resolve as in a normal install.
#   . validation/device_setup.sh && roofsim calibrate --gpu h100-sxm -o "$OUT/calibrated"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/roofsim . || return 1  # --upgrade: a warm machine takes the new code
export PYTHONPATH=/tmp/roofsim:/tmp/site
export PATH=/tmp/roofsim/bin:$PATH
export PYTHONUNBUFFERED=1
# `python3 - <<EOF` and `python3 -m` put the working directory first on sys.path, where the checkout's roofsim/ (which
# has no executor/ inside: setup maps it) would shadow the installed package
export PYTHONSAFEPATH=1
