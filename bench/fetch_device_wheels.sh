#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, numpy, pillow, onnx, onnxruntime, tqdm,
# matplotlib, h5py, safetensors, but no package index) into .whl/ for Python 3.12 on x86-64 Linux.
# Then run on the device, carrying .whl:   bash bench/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(webdataset braceexpand kornia kornia_rs simplejpeg platformdirs)
mkdir -p .whl
for p in "${PKGS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p"
done
ls -la .whl
