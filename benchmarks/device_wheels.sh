#!/usr/bin/env bash
# Wheels that the lent GPU machine (its own python3 3.12 with a CUDA torch; no network there) lacks to run
# benchmarks/run_gpu.sh and the `gpu` tests: sam2's modelling code and its light needs, and rosbags. Run here (with
# network to the registry), in the repository root; the wheels land in .whl/ (git-ignored, ~5 MB). On the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   PY=python3 bash benchmarks/run_gpu.sh tests encoder     (then, in two more calls: encoder-compile;
#                                                             node train summary)
# (carry `.whl` with each call; a call may last 10 minutes; run_gpu.sh copies its results to $OUT). Versions are the ones requirements.txt pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
# pure-Python packages (two of them exist only as source: pip builds py3-none-any wheels here)
"$PY" -m pip wheel --quiet --no-deps -w .whl rf-sam-2==1.0.3 hydra-core==1.3.8 omegaconf==2.3.1 \
    antlr4-python3-runtime==4.9.3 iopath==0.1.10 portalocker==4.4.2 rosbags==0.11.9 "ruamel.yaml<0.20"
# compiled packages, for the device's CPython 3.12
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl lz4==4.4.5 apsw==3.54.1.0 backports.zstd==1.8.0
ls -la .whl
