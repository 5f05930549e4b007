#!/usr/bin/env bash
# The CUDA checks and benchmark, one command, on the GPU machine:
#
#   bash bench/cuda/run.sh [BUILD_DIR]        (default: build-cuda)
#
# 1. builds BUILD_DIR if cuda_step / lowrank_cuda_tests are missing (needs nvcc + cmake there),
# 2. runs lowrank_cuda_tests (every CUDA op vs the CPU op; CUDA model vs CPU model),
# 3. measures the card's bf16 GEMM rate (the MFU denominator),
# 4. for each configuration runs our training step and PEFT's (same shape, random weights,
#    same batch, bf16, AdamW, r 8), one after the other in this one run,
# 5. times mixed-adapter batches (32 rows; 8 and 32 distinct adapters) against the merged
#    single-adapter forward,
# 6. prints the table (tok/s, peak memory, ratios, MFU) and whether each target is met.
# Results: $OUT/results.jsonl and $OUT/summary.txt (OUT defaults to bench/results/cuda-<time>).
# Environment: PYTHON (default python3, with torch/transformers/peft), STEPS (default 10),
# SKIP_TESTS=1, SKIP_PEFT=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build-cuda}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-10}"
OUT="${OUT:-$ROOT/bench/results/cuda-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: > "$RES"
log() { echo "run.sh: $*" >&2; }

if [[ ! -x "$BUILD/cuda_step" || ! -x "$BUILD/lowrank_cuda_tests" ]]; then
  log "building $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWRANK_CUDA=ON -DLOWRANK_TESTS=ON
  cmake --build "$BUILD" --target cuda_step lowrank_cuda_tests
fi

# cuBLASLt is linked dynamically (libcublasLt.so.13). If the system has none, use the one a
# CUDA 13 PyTorch wheel ships (nvidia-cublas).
if ldd "$BUILD/cuda_step" | grep -q "libcublasLt.so.13 => not found"; then
  libdir="$("$PY" -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)"
  if [[ -n "$libdir" && -e "$libdir/libcublasLt.so.13" ]]; then
    export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
    log "using libcublasLt from $libdir"
  else
    log "error: libcublasLt.so.13 not found (install CUDA 13 cuBLAS or a cu13 PyTorch wheel)"
    exit 1
  fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/gpu.txt" || true

if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
  log "correctness: lowrank_cuda_tests"
  "$BUILD/lowrank_cuda_tests" 2>&1 | tee "$OUT/tests.txt" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]" || true
fi

log "bf16 GEMM rate"
"$BUILD/cuda_step" --mode gemm | tee -a "$RES"

# shape batch seq targets
CONFIGS=(
  "gpt2-124m 8 1024 c_attn"
  "tinyllama-1.1b 4 2048 q_proj,v_proj"
  "tinyllama-1.1b 4 2048 all-linear"
)
for c in "${CONFIGS[@]}"; do
  read -r shape b t targets <<< "$c"
  log "train $shape b$b x $t targets=$targets: lowrank"
  "$BUILD/cuda_step" --mode train --shape "$shape" --batch "$b" --seq "$t" --targets "$targets" --r 8 \
    --steps "$STEPS" | tee -a "$RES"
  log "train $shape b$b x $t targets=$targets: lowrank --recompute"
  "$BUILD/cuda_step" --mode train --shape "$shape" --batch "$b" --seq "$t" --targets "$targets" --r 8 \
    --steps "$STEPS" --recompute | tee -a "$RES" || log "recompute run failed"
  if [[ "${SKIP_PEFT:-0}" != 1 ]]; then
    log "train $shape b$b x $t targets=$targets: PEFT"
    "$PY" "$ROOT/bench/cuda/peft_step.py" --shape "$shape" --batch "$b" --seq "$t" --targets "$targets" --r 8 \
      --steps "$STEPS" | tee -a "$RES" || log "PEFT run failed"
  fi
done

for shape in gpt2-124m tinyllama-1.1b; do
  for k in 8 32; do
    log "mixed adapters: $shape, 32 rows, $k adapters"
    "$BUILD/cuda_step" --mode mixed --shape "$shape" --rows 32 --seq 256 --adapters "$k" --steps "$STEPS" \
      | tee -a "$RES"
  done
done

"$PY" "$ROOT/bench/cuda/summarize.py" "$RES" | tee "$OUT/summary.txt"
