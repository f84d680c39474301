#!/usr/bin/env bash
# One call on a lent GPU (device tool): CUDA tests, the inference benchmark and a time-boxed
# training run, within BUDGET seconds (default 420: under 8 minutes with set-up), bringing the
# checkpoint and logs back under $OUT. Prepare the carried folder first, here:
#   bash benchmarks/gpu_prepare.sh            # wheels the GPU image lacks + GlaS train, in .gpu/
# then run (device tool):  bash benchmarks/gpu_run.sh        with carry [".gpu"]
# On a CPU, for a dry run:  BUDGET=60 DEVICE=cpu OUT=/tmp/gpu-out bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-420}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-out}
if [ -z "${PY:-}" ]; then  # the GPU image's python3; a CPU dry run uses the project's venv
  PY=python3
  [ "$DEVICE" = cpu ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
DATA=${DATA:-.gpu/data}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_run.log"; }

# 1. what the GPU image lacks, from the carried wheels (no network there)
if ! $PY -c "import monai, zarr, dask, torchstain, shapely, napari_glandseg" 2>/dev/null; then
  if [ -d .gpu/wheels ]; then
    $PY -m pip install -q --no-index --no-deps .gpu/wheels/*.whl >>"$OUT/gpu_run.log" 2>&1
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_run.log"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
export GLANDSEG_MODELS_DIR="$OUT/models"

# 2. the CUDA-relevant tests (a quarter of the budget at most)
t=$(( $(left) / 4 ))
log "tests (${t}s)"
timeout "$t" $PY -m pytest -q -p no:cacheprovider -x tests/test_cuda.py tests/test_pretrained.py \
  tests/test_inference.py -W ignore >"$OUT/tests.log" 2>&1
log "tests exit $? ($(tail -1 "$OUT/tests.log"))"

# 3. the inference benchmark on this device (a quarter)
t=$(( $(left) / 3 ))
log "bench_inference (${t}s)"
timeout "$t" $PY benchmarks/bench_inference.py --data "$DATA" --size 2048 \
  >"$OUT/bench_inference.log" 2>&1
log "bench_inference exit $?"

# 4. time-boxed training of glands on the pretrained encoder; the best checkpoint so far is
#    saved after every epoch that improves on val, so a timeout keeps it
t=$(( $(left) - 20 ))
if [ -d "$DATA/glas" ] && [ "$t" -gt 20 ]; then
  log "training (${t}s)"
  timeout "$t" $PY -m napari_glandseg.cli train --config src/napari_glandseg/configs/glands-he.json \
    --data "$DATA/glas" --name glands-he-gpu --encoder efficientnet-lite0 --pretrained \
    --device "$DEVICE" --epochs "${EPOCHS:-60}" --quiet >"$OUT/train.log" 2>&1
  log "training exit $? (124: time box reached)"
  cp "$OUT/models/glands-he-gpu.safetensors" "$OUT/" 2>/dev/null && log "checkpoint in \$OUT"
fi
rm -rf "$OUT/models"   # only files two folders deep come back; the checkpoint is copied
log "done"
