#!/usr/bin/env bash
# The one command for a GPU machine (offline; its own python3, torch, triton, nvcc). Two phases,
# each sized for one device call of at most 10 minutes (docs/GPU_SESSION.md says how to use them):
#
#     bash bench/gpu_run.sh check    # build, the decisive checks first, GPU tests, validation records, sanitizers
#     bash bench/gpu_run.sh bench    # build (kept if the machine is still warm), benchmark grid, dispatch sweep
#
# check: info, build (this GPU's arch only), barrier (both backends' grid barriers with check=True:
#        a barrier that opens early is silently wrong, so it goes first), slots (the CUDA kernels' raw
#        exchange-buffer and saved-activation test), tests (every GPU test but the slow ones, writing
#        a validation report), record (python -m fusedrnn.evidence record: the package's GPU
#        validation records, fusedrnn/gpu_records/validated.json), then compute-sanitizer memcheck,
#        racecheck, synccheck, initcheck on bench/sanitize_cases.py (T <= 32) while time is left.
# bench: info, build, grid (python -m fusedrnn.bench: every case against cuDNN), dispatch (python -m
#        fusedrnn.bench --write-dispatch: fusedrnn/gpu_records/dispatch_<family>.json).
#
# Each stage runs under `timeout`, is logged to bench/results/gpu-<time>/<stage>.log and recorded
# with its status and seconds; a failing stage does not stop the next. Without a GPU (a dry run on a
# CPU machine) the stages that need one report "skipped: no GPU" and the summary is still written.
# A sanitizer that refuses the device ("Device not supported", error 999: seen on some of these
# machines' runtimes) is reported "unavailable on this machine", not as a kernel failure.
# When $OUT is set, the summary, results, records and a tarball of the logs are copied there.
# Exit status: 0 when no stage failed. Environment: GPU_RUN_TOTAL_S (default 540), GPU_RUN_SKIP
# (stage names to skip), PYTHON (default python3).
set -u
PHASE=${1:-check}
case "$PHASE" in
    check|bench) ;;
    *) echo "usage: bash bench/gpu_run.sh [check|bench]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
TOTAL=${GPU_RUN_TOTAL_S:-540}
START=$(date +%s)
STAMP=$(date +%Y%m%d-%H%M%S)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET   # real GPU kernels, never the interpreter
# The latency model printed beside the measurements reads the Triton kernels' SASS only from the
# cache (bench/triton_sass.py): compiling ~35 kernels for it would spend device time on CPU work.
export FUSEDRNN_TRITON_SASS_COMPILE=${FUSEDRNN_TRITON_SASS_COMPILE:-0}
STAGES=()

if $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
    HAVE_GPU=1
    RUN_DIR="$ROOT/bench/results/gpu-$STAMP-$PHASE"
else
    HAVE_GPU=0
    RUN_DIR="$ROOT/bench/results/gpu-$STAMP-$PHASE-dryrun"   # not committed (bench/results/.gitignore)
fi
mkdir -p "$RUN_DIR"

remaining() { echo $(( TOTAL - ($(date +%s) - START) )); }

record() { STAGES+=("$1|$2|$3|$4"); }

# stage NAME CAP_SECONDS NEEDS_GPU COMMAND...: run under timeout min(CAP, time left - 15 s), log to RUN_DIR/NAME.log
stage() {
    local name=$1 cap=$2 needs_gpu=$3; shift 3
    if [[ " ${GPU_RUN_SKIP:-} " == *" $name "* ]]; then
        record "$name" skipped 0 "GPU_RUN_SKIP"; echo "== $name: skipped (GPU_RUN_SKIP)"; return 0
    fi
    if (( needs_gpu && ! HAVE_GPU )); then
        record "$name" skipped 0 "skipped: no GPU"; echo "== $name: skipped: no GPU"; return 0
    fi
    local left; left=$(( $(remaining) - 15 ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 5 )); then
        record "$name" skipped 0 "no time left"; echo "== $name: skipped (no time left)"; return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0; t0=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$RUN_DIR/$name.log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    local note="exit $rc"
    (( rc == 124 || rc == 137 )) && note="timed out after ${limit}s"
    tail -n 12 "$RUN_DIR/$name.log"
    echo "== $name: $note in ${dt}s"
    record "$name" "$rc" "$dt" "$note"
    return $rc
}

# sanitizer TOOL CAP: compute-sanitizer over bench/sanitize_cases.py; a refused device is "unavailable".
SANITIZER_OK=1
sanitizer() {
    local tool=$1 cap=$2
    if (( ! SANITIZER_OK )); then
        record "$tool" unavailable 0 "compute-sanitizer unavailable on this machine (see sanitizer-probe.log)"; return
    fi
    stage "$tool" "$cap" 1 compute-sanitizer --tool "$tool" --error-exitcode 99 $PY bench/sanitize_cases.py \
        --budget-s $(( cap - 30 > 15 ? cap - 30 : 15 ))
    local rc=$?
    if (( rc != 0 )) && grep -qE "Device not supported|error 999|CUDA_ERROR_UNKNOWN" "$RUN_DIR/$tool.log" 2>/dev/null; then
        unset 'STAGES[${#STAGES[@]}-1]'
        record "$tool" unavailable 0 "compute-sanitizer refused the device on this machine (not a kernel failure)"
        SANITIZER_OK=0
    fi
}

stage info 30 0 bash -c "nvidia-smi || true; $PY -m fusedrnn.info 2>&1 || true; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; nvcc --version | tail -n 2; command -v compute-sanitizer || true"

# Build for this GPU only (halves nvcc time against the default 8.0;9.0 list); all cores.
ARCH=$($PY -c 'import torch; c=torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo "9.0")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
stage build 240 1 bash -c "$PY -m pip install --no-build-isolation --no-deps --no-index -e . \
    || { echo 'build with the extension failed; installing without it'; FUSEDRNN_SKIP_CUDA_BUILD=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e .; exit 1; }"

if [[ "$PHASE" == check ]]; then
    stage barrier 60 1 $PY -m fusedrnn.bench.gpu_checks barrier
    stage slots 60 1 env FUSEDRNN_TEST_DEVICE=cuda $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" -k "slots" tests/
    REPORT="$RUN_DIR/validation-report.jsonl"
    stage tests 300 1 env FUSEDRNN_TEST_DEVICE=cuda FUSEDRNN_VALIDATION_REPORT="$REPORT" \
        $PY -m pytest -m "gpu and not slow" tests/ -q -p no:cacheprovider -o addopts="" --maxfail=30
    if [[ -f "$REPORT" ]]; then
        stage record 30 1 $PY -m fusedrnn.evidence record "$REPORT"
    else
        record record skipped 0 "no validation report (tests did not run)"
    fi
    if (( HAVE_GPU )) && command -v compute-sanitizer > /dev/null; then
        # One cheap probe: some runtimes refuse the device to every tool.
        if ! compute-sanitizer --tool memcheck $PY -c "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()" \
                > "$RUN_DIR/sanitizer-probe.log" 2>&1 \
           && grep -qE "Device not supported|error 999|CUDA_ERROR_UNKNOWN" "$RUN_DIR/sanitizer-probe.log"; then
            SANITIZER_OK=0
        fi
        for tool in memcheck racecheck synccheck initcheck; do sanitizer "$tool" 90; done
    elif (( HAVE_GPU )); then
        record sanitizers 127 0 "compute-sanitizer not found"
    else
        record sanitizers skipped 0 "skipped: no GPU"
    fi
else
    LEFT=$(( $(remaining) - 30 ))
    GRID_S=$(( LEFT * 45 / 100 ))
    SWEEP_S=$(( LEFT - GRID_S ))
    stage grid "$GRID_S" 1 $PY -m fusedrnn.bench --quick --dtypes bf16,fp16 --budget-s $(( GRID_S - 40 > 20 ? GRID_S - 40 : 20 )) \
        --no-progress --out "$RUN_DIR"
    stage dispatch "$SWEEP_S" 1 $PY -m fusedrnn.bench --write-dispatch --dtypes bf16,fp16 \
        --budget-s $(( SWEEP_S - 40 > 20 ? SWEEP_S - 40 : 20 ))
fi

# Summary: the stage table, then the benchmark's own short summary (from results.json) last.
{
    echo
    echo "gpu_run.sh $PHASE summary ($(date -u +%FT%TZ), total $(( $(date +%s) - START ))s, commit $(git rev-parse --short HEAD 2>/dev/null), results in $RUN_DIR)"
    printf '%-12s %-12s %7s  %s\n' stage status seconds note
    for s in "${STAGES[@]}"; do
        IFS='|' read -r n rc dt note <<< "$s"
        printf '%-12s %-12s %7s  %s\n' "$n" "$rc" "$dt" "$note"
    done
    if [[ -f "$RUN_DIR/results.json" ]]; then
        echo
        $PY -m fusedrnn.bench.summary "$RUN_DIR/results.json" 2>&1
    fi
} | tee "$RUN_DIR/summary.txt"

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    for f in summary.txt results.csv results.json ratios.png partial.jsonl validation-report.jsonl; do
        [[ -f "$RUN_DIR/$f" ]] && cp "$RUN_DIR/$f" "$OUT/"
    done
    for f in fusedrnn/gpu_records/*.json; do [[ -f "$f" ]] && cp "$f" "$OUT/"; done
    (cd "$RUN_DIR" && ls *.log > /dev/null 2>&1) && tar -czf "$OUT/logs.tar.gz" -C "$RUN_DIR" $(cd "$RUN_DIR" && ls *.log)
fi

status=0
for s in "${STAGES[@]}"; do
    IFS='|' read -r n rc dt note <<< "$s"
    [[ "$rc" == "0" || "$rc" == "skipped" || "$rc" == "unavailable" ]] || status=1
done
exit $status
