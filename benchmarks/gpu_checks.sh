#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the CUDA tests, then the inference and pool
# benchmarks whose figures go into benchmarks/RESULTS.md (GPU name and date included).
#
#     bash benchmarks/gpu_checks.sh [OUTDIR [STEP ...]]   # default gpu-results/, every step
#
# Naming steps (tests, compact_l1, ..., resnet18_l0_hybrid, pool_resnet18_l0) runs only
# those: a device call has a time limit, so a session can spread the steps over several calls.
# Needs the project importable (`make setup-test`, or its dependencies on PYTHONPATH: on an
# offline machine, the wheels of benchmarks/gpu_wheels.sh).
# Each step writes OUTDIR/<step>.txt; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "
mkdir -p "$out"
py=${PYTHON:-python3}

step() {  # step NAME COMMAND...: run, keep the output, report the exit status
    local name=$1
    shift
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then
        return
    fi
    echo "== $name: $*"
    "$@" > "$out/$name.txt" 2>&1
    echo "   exit $? (tail below)"
    tail -n 6 "$out/$name.txt"
}

{ date -u +%Y-%m-%dT%H:%MZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  "$py" -c "from nvidia import nvimgcodec; print('nvimgcodec', nvimgcodec.__version__)" 2>&1 | tail -n 1
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

step tests "$py" -m pytest -q -rsP -p no:xvfb -p no:cacheprovider tests/test_inference_pipeline.py tests/test_model.py \
    tests/test_decoders.py tests/test_readpool.py
bench=("$py" benchmarks/bench_inference.py --device cuda --batch auto)
step compact_l1 "${bench[@]}" --arch compact --patch 64 --level 1 --stride 64
step compact_l1_compiled "${bench[@]}" --arch compact --patch 64 --level 1 --stride 64 --compile
step resnet18_l1 "${bench[@]}" --arch resnet18 --patch 128 --level 1 --stride 128
# level 0 on a 16384² slide (generated once, ~1 min): the 8192² one has 376 tissue patches,
# a few tens of ms on a GPU, where starting and draining the stream weigh as much as the work
l0=("${bench[@]}" --size 16384 --level 0 --stride 256)
step mobilenet_l0 "${l0[@]}" --arch mobilenet_v2 --patch 256
step mobilenet_l0_cudagraphs "${l0[@]}" --arch mobilenet_v2 --patch 256 --compile reduce-overhead
step resnet18_l0 "${l0[@]}" --arch resnet18 --patch 224
step resnet18_l0_cudagraphs "${l0[@]}" --arch resnet18 --patch 224 --compile reduce-overhead
step resnet18_l0_cpu_decode "${l0[@]}" --arch resnet18 --patch 224 --cpu-decode --processes 0
# CPU decode in read processes (the default on CUDA when the GPU cannot decode a level), and
# read processes beside the GPU decoder, taking the blocks it has no time for
step resnet18_l0_cpu_processes "${l0[@]}" --arch resnet18 --patch 224 --cpu-decode
step resnet18_l0_hybrid "${l0[@]}" --arch resnet18 --patch 224 --processes 12
step mobilenet_l0_hybrid "${l0[@]}" --arch mobilenet_v2 --patch 256 --processes 12
# the second GPU decoder (needs the nvimgcodec extra): library defaults, the hardware
# decoder alone, and the hardware decoder sharing batches with the CUDA/host-Huffman one
step resnet18_l0_nvimgcodec "${l0[@]}" --arch resnet18 --patch 224 --decoder nvimgcodec
step resnet18_l0_nvimgcodec_hw "${l0[@]}" --arch resnet18 --patch 224 --decoder nvimgcodec:hw_gpu_only=1
step resnet18_l0_nvimgcodec_split "${l0[@]}" --arch resnet18 --patch 224 \
    --decoder nvimgcodec:hw_gpu_only=0.6,hybrid_cpu_gpu=0.4
step mobilenet_l0_nvimgcodec "${l0[@]}" --arch mobilenet_v2 --patch 256 --decoder nvimgcodec
step pool_resnet18_l0 "$py" benchmarks/bench_pool.py --device cuda --workers 1 --slides 4 --size 4096 \
    --arch resnet18 --patch 224 --level 0 --stride 256 --batch auto
