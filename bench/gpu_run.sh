#!/usr/bin/env bash
# The one command for a GPU machine (offline; its own python3, torch, triton, nvcc):
#
#     bash bench/gpu_run.sh
#
# Stages, each under `timeout`, each recorded with its exit status; a failing stage does not stop
# the next. Everything fits in GPU_RUN_TOTAL_S seconds (default 470, inside an 8-minute lease call):
#   info      nvidia-smi, python -m fusedrnn.info
#   build     pip install --no-build-isolation --no-deps -e . (builds fusedrnn._C in place for this
#             GPU's arch only; falls back to an install without the extension if the build fails)
#   tests     FUSEDRNN_TEST_DEVICE=cuda python -m pytest -m gpu tests/
#   memcheck  compute-sanitizer --tool memcheck  python bench/sanitize_cases.py
#   racecheck compute-sanitizer --tool racecheck python bench/sanitize_cases.py
#   grid      python -m fusedrnn.bench (bf16+fp16, both modes, every case and provider, time-budgeted:
#             the budget skips the slowest baselines first and says so in the results)
# Writes bench/results/gpu-<time>/ (logs, results.csv/json, ratios.png, summary.txt) and copies the
# results, the summary and a tarball of the logs to $OUT when it is set. Prints a summary table last.
# Exit status: 0 when every stage exited 0. GPU_RUN_SKIP="build tests" skips named stages (a rerun on a
# machine that already built); PYTHON picks the interpreter (default python3).
#
# Phases (first argument): "all" (default: everything above in one call), "check" (info, build, tests,
# sanitizers; the tests get up to 300 s) or "bench" (info, build, grid). One device call is at most
# 10 minutes, so a session with time for two calls runs `check` then `bench` on the warm machine
# (the in-place build is kept between calls while the machine stays warm).
set -u
PHASE=${1:-all}
case "$PHASE" in
    all) TESTS_CAP=120 ;;
    check) TESTS_CAP=300; GPU_RUN_SKIP="${GPU_RUN_SKIP:-} grid" ;;
    bench) TESTS_CAP=0; GPU_RUN_SKIP="${GPU_RUN_SKIP:-} tests memcheck racecheck" ;;
    *) echo "usage: bash bench/gpu_run.sh [all|check|bench]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
TOTAL=${GPU_RUN_TOTAL_S:-470}
START=$(date +%s)
STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR="$ROOT/bench/results/gpu-$STAMP"
mkdir -p "$RUN_DIR"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET   # real GPU kernels, never the interpreter
STAGES=()

remaining() { echo $(( TOTAL - ($(date +%s) - START) )); }

# stage NAME CAP_SECONDS COMMAND...: run with timeout min(CAP, time left - reserve), log to RUN_DIR/NAME.log
stage() {
    local name=$1 cap=$2; shift 2
    if [[ " ${GPU_RUN_SKIP:-} " == *" $name "* ]]; then
        STAGES+=("$name|skipped|0|GPU_RUN_SKIP")
        echo "== $name: skipped (GPU_RUN_SKIP)"
        return
    fi
    local left; left=$(( $(remaining) - 10 ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 5 )); then
        STAGES+=("$name|skipped|0|no time left")
        echo "== $name: skipped (no time left)"
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0; t0=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$RUN_DIR/$name.log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    local note="exit $rc"
    (( rc == 124 || rc == 137 )) && note="timed out after ${limit}s"
    tail -n 15 "$RUN_DIR/$name.log"
    STAGES+=("$name|$rc|$dt|$note")
}

stage info 20 bash -c "nvidia-smi; $PY -m fusedrnn.info 2>&1 || true; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; nvcc --version | tail -n 2; command -v compute-sanitizer"

# Build for this GPU only (halves nvcc time against the default 8.0;9.0 list).
ARCH=$($PY -c 'import torch; c=torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo "9.0")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
stage build 200 bash -c "$PY -m pip install --no-build-isolation --no-deps --no-index -e . \
    || { echo 'build with the extension failed; installing without it'; FUSEDRNN_SKIP_CUDA_BUILD=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e .; exit 1; }"

# Slow GPU tests (T=10,000, offsets past 2^31) are left to a separate call: -m "gpu and slow".
stage tests "$TESTS_CAP" env FUSEDRNN_TEST_DEVICE=cuda $PY -m pytest -m "gpu and not slow" tests/ -q -p no:cacheprovider -o addopts="" --maxfail=20

if command -v compute-sanitizer > /dev/null; then
    stage memcheck 45 compute-sanitizer --tool memcheck --error-exitcode 99 $PY bench/sanitize_cases.py
    stage racecheck 45 compute-sanitizer --tool racecheck --error-exitcode 99 $PY bench/sanitize_cases.py
else
    STAGES+=("memcheck|127|0|compute-sanitizer not found" "racecheck|127|0|compute-sanitizer not found")
fi

if [[ " ${GPU_RUN_SKIP:-} " == *" grid "* ]]; then
    STAGES+=("grid|skipped|0|phase $PHASE")
else
# The grid takes what is left; its own budget stops new measurements early enough to write results.
GRID_LIMIT=$(( $(remaining) - 15 ))
GRID_BUDGET=$(( GRID_LIMIT - 45 ))
(( GRID_BUDGET < 20 )) && GRID_BUDGET=20
stage grid "$GRID_LIMIT" $PY -m fusedrnn.bench --quick --dtypes bf16,fp16 --budget-s "$GRID_BUDGET" \
    --no-progress --out "$RUN_DIR"
fi

# Summary: stage table, then the benchmark's own short summary (from results.json) last.
{
    echo
    echo "gpu_run.sh summary ($(date -u +%FT%TZ), total $(( $(date +%s) - START ))s, results in $RUN_DIR)"
    printf '%-10s %-8s %6s  %s\n' stage status seconds note
    for s in "${STAGES[@]}"; do
        IFS='|' read -r n rc dt note <<< "$s"
        printf '%-10s %-8s %6s  %s\n' "$n" "$rc" "$dt" "$note"
    done
    echo
    if [[ -f "$RUN_DIR/results.json" ]]; then
        $PY -m fusedrnn.bench.summary "$RUN_DIR/results.json" 2>&1 || $PY bench/summary.py "$RUN_DIR/results.json"
    elif [[ -f "$RUN_DIR/partial.jsonl" ]]; then
        echo "grid did not finish: $(wc -l < "$RUN_DIR/partial.jsonl") measurements in partial.jsonl"
    else
        echo "no benchmark results (see grid.log)"
    fi
} | tee "$RUN_DIR/summary.txt"

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    for f in results.csv results.json ratios.png summary.txt partial.jsonl; do
        [[ -f "$RUN_DIR/$f" ]] && cp "$RUN_DIR/$f" "$OUT/"
    done
    [[ -f "$RUN_DIR/results.json" ]] && rm -f "$OUT/partial.jsonl"
    tar -czf "$OUT/logs.tar.gz" -C "$RUN_DIR" $(cd "$RUN_DIR" && ls *.log 2>/dev/null)
fi

status=0
for s in "${STAGES[@]}"; do
    IFS='|' read -r n rc dt note <<< "$s"
    [[ "$rc" == "0" || "$rc" == "skipped" ]] || status=1
done
exit $status
