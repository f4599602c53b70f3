#!/usr/bin/env bash
# The GPU checks of issue 4, as one run on a lent GPU machine (.library/device): the tests that
# need CUDA, the engine benchmark on the GPU, and the HTTP benchmark of the service with
# MCDROPOUT_DEVICE=cuda beside MCDROPOUT_DEVICE=cpu on the same machine.
#
# That machine has torch but not the service's web packages: they travel as wheels in .whl/,
# wrk, hey and wrk's libluajit in .gpu/ (both built here by bench/gpu-bundle.sh), and the
# default checkpoint in checkpoints/. Logs go to $OUT.
# Dry run on the CPU: GPU_DEVICE=cpu NO_WHEELS=1 PY=.venv/bin/python bash bench/gpu.sh
set -u
DEVICE=${GPU_DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .gpu ] && export PATH=$PWD/.gpu:$PATH LD_LIBRARY_PATH=$PWD/.gpu
LOADGEN=wrk
if ! command -v wrk >/dev/null || ldd "$(command -v wrk)" | grep -q 'not found'; then LOADGEN=hey; fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1
    nproc
    $PY -c 'import torch, fastapi; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    echo "load generator: $LOADGEN"
} 2>&1 | tee "$OUT/machine.txt"

echo "== tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -rs tests/models/test_engine.py \
    tests/models/test_masks.py tests/models/test_cnn.py tests/service/test_device.py \
    2>&1 | tee "$OUT/tests.txt" | tail -8

# Each default model's answers alone and in company, on the GPU (its engine fuses) and the CPU.
for arch in cnn mlp; do
    for device in "$DEVICE" cpu; do
        echo "== company: $arch on $device"
        timeout 60 $PY scripts/company.py "checkpoints/fashion-$arch.safetensors" --device "$device" \
            2>&1 | tee -a "$OUT/company.txt"
    done
done

# What no run has measured yet comes first (the CUDA graphs of K concurrent requests), every
# B and N last: a run cut short by its time limit still returns what it wrote to $OUT.
echo "== engine: B = 1, N = 100, and K concurrent requests"
timeout 150 $PY bench/engine.py --device "$DEVICE" --quick --requests 1,32,256 \
    2>&1 | tee "$OUT/engine-requests.txt"
timeout 100 $PY bench/engine.py --device cpu --threads 1 --quick --requests 32 \
    2>&1 | tee "$OUT/engine-cpu.txt"
timeout 100 $PY bench/engine.py --arch cnn --device "$DEVICE" --quick --requests 1,32,256 \
    2>&1 | tee "$OUT/engine-cnn.txt"

# http NAME CONCURRENCY KEY=VALUE...: the service with those settings, eval and N = 100.
http() {
    local name=$1 concurrency=$2 env=()
    shift 2
    for kv in "$@"; do env+=(--env "$kv"); done
    echo "== HTTP $name: $*"
    timeout 150 $PY bench/http_bench.py --servers ours --concurrency "$concurrency" --duration 5 \
        --warmup 1 --load-generator "$LOADGEN" --threads 2 "${env[@]}" \
        --json "$OUT/http-$name.json" \
        2>&1 | tee "$OUT/http-$name.txt" | tail -6
}
http gpu 32,128 "MCDROPOUT_DEVICE=$DEVICE"
http gpu-4-workers 32,128 "MCDROPOUT_DEVICE=$DEVICE" MCDROPOUT_WORKERS=4
http cpu 32 MCDROPOUT_DEVICE=cpu
http cpu-1-thread 32 MCDROPOUT_DEVICE=cpu MCDROPOUT_TORCH_THREADS=1
http cpu-4-threads 32 MCDROPOUT_DEVICE=cpu MCDROPOUT_TORCH_THREADS=4

echo "== engine: every B and N"
timeout 200 $PY bench/engine.py --device "$DEVICE" 2>&1 | tee "$OUT/engine.txt"
date -u
