#!/usr/bin/env bash
# The GPU machine's one command, from the repository root, for one call of at most 8 minutes:
#
#   bash benchmarks/gpu/run.sh          build, launch plan, smoke tests, tests/gpu, benchmark,
#                                       Nsight Compute, compute-sanitizer
#   bash benchmarks/gpu/run.sh dry      the same without a GPU: skips every GPU step, runs the
#                                       smoke tests against the perfect kernel, writes the files
#
# Builds costxent._core (no TensorFlow) with its CUDA kernels for 90-real only. Every step has
# a time cap and the whole run an internal deadline ($DEADLINE_S seconds, default 450; 3600 for
# dry); a step
# that would start too late is skipped and says so. At most 8 files come back, all in $OUT
# (default build/gpu-run):
#   build.log          configure + build, with ptxas's register / spill report per kernel
#   run.log            every step's output in order (smoke, tests, benchmark progress, tools)
#   failures.txt       failures appended as they happen (tests, benchmark rows, steps)
#   launch_plan.json   regime, block and cluster per dtype and C (_core.launch_plan or model)
#   bench_gpu.json     the benchmark, rewritten after every row
#   bench_gpu.md       its table, likewise
#   ncu.csv            Nsight Compute: bytes, instructions, occupancy of 12 launches
#   sanitizer.log      compute-sanitizer memcheck and racecheck on one launch per regime
# STEPS (default smoke,tests,bench,ncu,sanitizer) chooses the GPU steps, e.g. STEPS=bench,ncu for
# a second call. Exits non-zero if the build, a test or another step failed. The build stays in $COSTXENT_GPU_BUILD for
# a later call on a warm machine (set COSTXENT_CORE to skip the build).
# Never changes clocks, power or modes: ncu runs with --clock-control none.
set -uo pipefail

step="${1:-all}"
case "$step" in all | dry) ;; *) echo "usage: $0 [all|dry]" >&2; exit 2 ;; esac
OUT="${OUT:-build/gpu-run}"
BUILD="${COSTXENT_GPU_BUILD:-/tmp/costxent-gpu-build}"
DEADLINE_S="${DEADLINE_S:-$([ "$step" = dry ] && echo 3600 || echo 450)}"
PYTHON="${PYTHON:-$(command -v python3)}"
STEPS="${STEPS:-smoke,tests,bench,ncu,sanitizer}" # the GPU steps to run, after build and plan
mkdir -p "$OUT"
RUN_LOG="$OUT/run.log"
export COSTXENT_FAILURES="$OUT/failures.txt"
export PYTHONUNBUFFERED=1
: >"$RUN_LOG"
: >"$COSTXENT_FAILURES"
START=$SECONDS

log() { echo "[run.sh $(date +%T) +$((SECONDS - START))s] $*" | tee -a "$RUN_LOG"; }
fail() { echo "STEP $*" >>"$COSTXENT_FAILURES"; log "FAILED: $*"; }
left() { echo $((DEADLINE_S - (SECONDS - START))); }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
# cap SECONDS RESERVE: a step's timeout, at most SECONDS and leaving RESERVE for later steps.
cap() {
  local t=$(($(left) - $2))
  ((t > $1)) && t=$1
  echo $t
}
# run_step NAME CAP RESERVE COMMAND...: COMMAND under a timeout, its output into run.log
# (its stdout into $STEP_STDOUT instead, where that is set).
run_step() {
  local name=$1 limit rc
  limit=$(cap "$2" "$3")
  shift 3
  if ((limit < 10)); then
    fail "$name skipped: $(left) s left before the deadline"
    return 1
  fi
  log "$name (at most ${limit} s)"
  if [ -n "${STEP_STDOUT:-}" ]; then
    timeout -k 5 "$limit" "$@" >"$STEP_STDOUT" 2>>"$RUN_LOG"
    rc=$?
  else
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$RUN_LOG"
    rc=${PIPESTATUS[0]}
  fi
  ((rc == 124 || rc == 137)) && fail "$name stopped at its ${limit} s limit"
  ((rc != 0 && rc != 124 && rc != 137)) && fail "$name exit status $rc"
  return "$rc"
}

status=0
tests_rc=0
# 1. Build (unless $COSTXENT_CORE names a built one): only _core, only 90-real.
if [ -z "${COSTXENT_CORE:-}" ]; then
  log "building _core for 90-real in $BUILD"
  build_s=$(cap 200 240)
  [ "$step" = dry ] && build_s=1800 # a shared CPU machine, and no device time to save
  {
    command -v nvidia-smi >/dev/null &&
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
    nvcc --version | tail -n 2
    timeout "$build_s" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOSTXENT_TF=OFF \
      -DCOSTXENT_CUDA=ON -DCOSTXENT_CUDA_ARCHS=90-real -DPython_EXECUTABLE="$PYTHON" \
      -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" -DCMAKE_CUDA_FLAGS="-Xptxas=-v" &&
      timeout "$build_s" cmake --build "$BUILD" --target _core -j "$(nproc)"
  } >"$OUT/build.log" 2>&1
  if ! ls "$BUILD"/_core*.so >/dev/null 2>&1 || grep -q "FAILED:" "$OUT/build.log"; then
    tail -n 40 "$OUT/build.log" | tee -a "$RUN_LOG"
    fail "build (see build.log)"
    exit 1
  fi
  # Kernels that spill registers (ptxas -v), demangled where c++filt is there.
  demangle=cat
  command -v c++filt >/dev/null && demangle=c++filt
  awk -F"'" '/Compiling entry function/ { name = $2 }
             /spill stores/ && !/ 0 bytes spill stores/ { print name ": " $0 }' "$OUT/build.log" |
    $demangle | sed -E 's/\(costxent::(Softmax|Sigmoid)Problem.*\)//; s/costxent::(cuda::\(anonymous namespace\)::)?//g' |
    tee -a "$RUN_LOG"
  COSTXENT_CORE=$(ls "$BUILD"/_core*.so | head -n 1)
else
  echo "not built: COSTXENT_CORE=$COSTXENT_CORE" >"$OUT/build.log"
fi
export COSTXENT_CORE
log "core: $COSTXENT_CORE"

# 2. The launch plan (no GPU needed for the model).
run_step "launch plan" 30 0 "$PYTHON" benchmarks/gpu/launches.py plan "$OUT/launch_plan.json" || status=1

if [ "$step" = dry ]; then
  export COSTXENT_GPU_HARNESS=perfect
  run_step "smoke tests (perfect kernel)" 120 0 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider -m smoke ||
    status=1
  run_step "benchmark (dry run)" 60 0 "$PYTHON" benchmarks/gpu/bench_gpu.py --out "$OUT" --dry-run || status=1
  echo "dry run: no Nsight Compute" >"$OUT/ncu.csv"
  echo "dry run: no compute-sanitizer" >"$OUT/sanitizer.log"
  log "dry run done, status $status"
  exit $status
fi
export COSTXENT_GPU_HARNESS=cuda

# 3. Smoke: one case per regime and dtype, then the whole suite (no --maxfail: every mode runs).
workers=()
"$PYTHON" -c "import xdist" 2>/dev/null && workers=(-n 8)
timeouts=()
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && timeouts=(--timeout=120)
want smoke && { run_step "smoke tests" 40 280 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider \
  -m smoke -rf ${timeouts[@]+"${timeouts[@]}"} || tests_rc=1; }
want tests && { run_step "tests/gpu" 150 140 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider -rf \
  --tb=short ${workers[@]+"${workers[@]}"} ${timeouts[@]+"${timeouts[@]}"} || tests_rc=1; }

# 4. Benchmark: rows until its own deadline, leaving time for the tools.
bench_s=$(cap 150 90)
want bench && { run_step "benchmark" $((bench_s + 20)) 65 "$PYTHON" benchmarks/gpu/bench_gpu.py \
  --out "$OUT" --deadline-s "$bench_s" || status=1; }

# 5. Nsight Compute over 12 launches (only the costxent softmax kernels are profiled).
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum
metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_registers
metrics+=,launch__registers_per_thread,launch__block_size,launch__grid_size
metrics+=,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__shared_mem_per_block_static
ncu_args=(--clock-control none --csv --kernel-name regex:softmax_kernel --launch-count 12)
if ! want ncu; then
  echo "not run: STEPS=$STEPS" >"$OUT/ncu.csv"
elif command -v ncu >/dev/null; then
  if ! STEP_STDOUT="$OUT/ncu.csv" run_step "ncu" 45 30 ncu "${ncu_args[@]}" --metrics "$metrics" \
    "$PYTHON" benchmarks/gpu/launches.py shapes; then
    STEP_STDOUT="$OUT/ncu.csv" run_step "ncu (default sections)" 45 25 ncu "${ncu_args[@]}" \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$PYTHON" benchmarks/gpu/launches.py shapes || status=1
  fi
else
  fail "ncu not on PATH"
fi

# 6. compute-sanitizer on one small launch per mode kind, dtype and regime.
if ! want sanitizer; then
  echo "not run: STEPS=$STEPS" >"$OUT/sanitizer.log"
elif command -v compute-sanitizer >/dev/null; then
  : >"$OUT/sanitizer.log"
  for tool in memcheck racecheck; do
    reserve=$([ $tool = memcheck ] && echo 30 || echo 0)
    run_step "compute-sanitizer $tool" 60 "$reserve" compute-sanitizer --tool "$tool" --error-exitcode 3 \
      --log-file "/tmp/costxent-sanitizer-$tool.log" "$PYTHON" benchmarks/gpu/launches.py regimes || status=1
    # (outside $OUT: no ninth file comes back if the step is cut short)
    { echo "== $tool"; cat "/tmp/costxent-sanitizer-$tool.log" 2>/dev/null; } >>"$OUT/sanitizer.log"
    rm -f "/tmp/costxent-sanitizer-$tool.log"
  done
else
  fail "compute-sanitizer not on PATH"
fi

[ -f "$OUT/bench_gpu.md" ] && cat "$OUT/bench_gpu.md"
log "failures: $(wc -l <"$COSTXENT_FAILURES")"
head -n 40 "$COSTXENT_FAILURES"
log "done: tests $([ $tests_rc = 0 ] && echo passed || echo FAILED), other steps status $status"
exit $((tests_rc | status))
