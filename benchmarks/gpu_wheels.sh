#!/usr/bin/env bash
# Wheels that gpu_checks.sh needs on an offline GPU machine whose Python already holds a
# CUDA torch and torchvision and the common scientific stack (numpy, scipy, scikit-image,
# tifffile, pandas, matplotlib, dask's small dependencies): run where pip can download,
# copy DIR over, then there
#
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#     export PYTHONPATH=/tmp/site:$PWD/src
#
#     bash benchmarks/gpu_wheels.sh [DIR [PYTHON_VERSION]]   # default .whl/ (git-ignored), 3.12
#
# nvImageCodec's wheel carries its extension for every CPython; only the one for
# PYTHON_VERSION is kept (25 -> 13 MB), which brings DIR to about 51 MB (imagecodecs: 28).
# The benchmark slides are generated there (benchmarks/.cache; 8192²: ~20 s, 16384²: ~65 s).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
pyver=${2:-3.12}
tag=cpython-${pyver//./}
mkdir -p "$dir"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$dir" \
    zarr numcodecs donfig google-crc32c dask partd locket distributed tblib tornado zict \
    imagecodecs shapely nvidia-nvimgcodec-cu13 nvidia-nvjpeg

# keep one CPython's extension in the nvImageCodec wheel
whl=$(realpath "$(ls "$dir"/nvidia_nvimgcodec_cu13-*.whl)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && python3 -m zipfile -e "$whl" .)
find "$tmp/nvidia/nvimgcodec" -maxdepth 1 -name 'nvimgcodec_impl.cpython-*.so' ! -name "nvimgcodec_impl.$tag-*" -delete
rm -f "$whl"
(cd "$tmp" && python3 -m zipfile -c "$whl" nvidia nvidia_nvimgcodec_cu13-*.dist-info)
du -sh "$dir"
