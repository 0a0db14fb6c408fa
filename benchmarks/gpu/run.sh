#!/usr/bin/env bash
# The GPU machine's one command, run from the repository root:
#
#   bash benchmarks/gpu/run.sh [build|test|bench|all]     (default: all)
#
# builds costxent._core with its CUDA kernels for sm_90 (no TensorFlow needed), runs
# tests/gpu against it, then benchmarks the fused kernel against a device-to-device copy,
# PyTorch eager, torch.compile and JAX jit (benchmarks/gpu/bench_gpu.py). Everything it
# writes goes under $OUT (default build/gpu-bench): build.log (with ptxas's register and
# spill report), tests.log, bench.log, bench_gpu.json, bench_gpu.md, bench_gpu.png.
# Exits non-zero if the build, a test or the benchmark failed. `all` fits the device tool's
# 10-minute command limit (build ~1 min, tests <= 4, benchmark <= 4.5); the steps can also
# run as separate calls on a warm machine (the build stays in $COSTXENT_GPU_BUILD).
set -uo pipefail

step="${1:-all}"
OUT="${OUT:-build/gpu-bench}"
BUILD="${COSTXENT_GPU_BUILD:-/tmp/costxent-gpu-build}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$(command -v python3)}"

log() { echo "[run.sh $(date +%T)] $*"; }

build() {
  log "building _core for sm_90 in $BUILD"
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv
    nvcc --version | tail -n 2
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOSTXENT_TF=OFF \
      -DCOSTXENT_CUDA=ON -DCOSTXENT_CUDA_ARCHS=90 -DPython_EXECUTABLE="$PYTHON" \
      -DCMAKE_CUDA_FLAGS="-Xptxas=-v" &&
      cmake --build "$BUILD" -j "$(nproc)"
  } >"$OUT/build.log" 2>&1
  local rc=$?
  # Kernels that spill registers (ptxas -v), and any compiler error.
  awk '/Compiling entry function/ { name = $7 } /spill stores/ && !/ 0 bytes spill stores/ { print name ": " $0 }
       /error/ { print }' "$OUT/build.log" | tail -n 20
  if [ $rc -ne 0 ]; then
    tail -n 40 "$OUT/build.log"
    log "build FAILED (see $OUT/build.log)"
    return $rc
  fi
  log "build done"
}

core_path() {
  local so
  so=$(ls "$BUILD"/_core*.so 2>/dev/null | head -n 1)
  if [ -z "$so" ]; then
    log "no $BUILD/_core*.so: run the build step first"
    return 1
  fi
  export COSTXENT_CORE="$so"
}

run_tests() {
  core_path || return 1
  log "tests/gpu against $COSTXENT_CORE"
  # The float64 oracle is CPU work: a few pytest-xdist workers share the GPU where it exists.
  local workers=()
  "$PYTHON" -c "import xdist" 2>/dev/null && workers=(-n 4)
  timeout 240 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider --maxfail=20 ${workers[@]+"${workers[@]}"} \
    >"$OUT/tests.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/tests.log"
  log "tests exit status $rc"
  return $rc
}

run_bench() {
  core_path || return 1
  log "benchmark"
  timeout 270 "$PYTHON" benchmarks/gpu/bench_gpu.py --out "$OUT" --budget-s 150 2>&1 |
    tee "$OUT/bench.log" |
    grep -E "^\[bench_gpu|Error|error" | tail -n 60
  local rc=${PIPESTATUS[0]}
  [ -f "$OUT/bench_gpu.md" ] && cat "$OUT/bench_gpu.md"
  log "benchmark exit status $rc"
  return $rc
}

status=0
case "$step" in
  build) build || status=1 ;;
  test) run_tests || status=1 ;;
  bench) run_bench || status=1 ;;
  all)
    build || exit 1
    run_tests || status=1
    run_bench || status=1
    ;;
  *)
    echo "usage: $0 [build|test|bench|all]" >&2
    exit 2
    ;;
esac
exit $status
