#!/usr/bin/env bash
# lowrank vs plain PyTorch on CPU: GPT-2-124M and TinyLlama-1.1B shapes (random f32 weights),
# LoRA r 8 (GPT-2: c_attn; llama: q_proj,v_proj), 1×256 tokens, frozen base.
# Per run: zero-grad + forward + backward (+ AdamW), then greedy decode with a KV cache on the
# base model after a 256-token prompt. Runs are interleaved (lowrank, torch, lowrank, ...) and
# repeated; the table shows medians over repeats and the speed ratio torch_time / lowrank_time.
#
# Usage: bench/run_cpu.sh            (env: THREADS=2 REPEATS=3 SHAPES="gpt2-124m tinyllama-1.1b"
#                                      BUILD=build-bench OUT=bench/results/<date> SINGLE=1
#                                      QUIET=0.85 MAXWAIT=900 FOREIGN_MAX=0.10, see bench/lib.sh)
# SINGLE=1 also runs both sides single-threaded (less sensitive to other load on the machine).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-$ROOT/build-bench}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}
SHAPES=${SHAPES:-"gpt2-124m tinyllama-1.1b"}
SINGLE=${SINGLE:-1}
OUT=${OUT:-$ROOT/bench/results/cpu-$(date +%Y%m%d-%H%M%S)}
PY=/usr/bin/python3   # Debian's torch lives here, not in the python3 first on PATH
. "$ROOT/bench/lib.sh"
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"

# Build (incremental) if needed.
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$BUILD" lowrank >/dev/null
LOWRANK=$BUILD/lowrank

# Large temporaries (logits, MLP activations) make glibc mmap/munmap them on every op, and page
# faults are expensive in this VM: PyTorch's eager mode suffers most (2.7× on a 256×768×50257
# matmul). Both sides run with the same tunables so that neither pays for it.
export GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}

{
  echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores online, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
  echo "kernel: $(uname -r)"
  echo "loadavg: $(cat /proc/loadavg)"
  echo "libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
  update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep -E '^(Value|Best)' || true
  echo "lowrank links: $(ldd "$LOWRANK" | grep -Eo '/\S*(openblas|blas|gomp)\S*' | xargs -n1 readlink -f | sort -u | tr '\n' ' ')"
  echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-} GLIBC_TUNABLES=$GLIBC_TUNABLES"
  OPENBLAS_NUM_THREADS=$THREADS $PY - <<EOF
import torch, re, ctypes, os
cfg = torch.__config__.show()
print('torch', torch.__version__, '| BLAS_INFO=%s' % re.search(r'BLAS_INFO=(\w+)', cfg).group(1),
      '| CPU capability:', re.search(r'CPU capability usage: (\S+)', cfg).group(1))
libs = sorted(set(re.findall(r'(/\S*(?:blas|lapack|gomp)\S*)', open('/proc/self/maps').read())))
print('torch process maps:', ' '.join(libs))
L = ctypes.CDLL([l for l in libs if 'openblasp' in l][0])
L.openblas_get_config.restype = ctypes.c_char_p
L.openblas_get_corename.restype = ctypes.c_char_p
torch.set_num_threads($THREADS)
print('openblas:', L.openblas_get_config().decode().strip(), '| core', L.openblas_get_corename().decode(),
      '| threads', L.openblas_get_num_threads(), '| torch.get_num_threads()', torch.get_num_threads())
EOF
} | tee "$OUT/environment.txt"

# args: label threads blas_threads shape extra...
run_lowrank() {
  local label=$1 t=$2 shape=$3; shift 3
  wait_quiet
  echo "-- lowrank[$label] $shape (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  OMP_NUM_THREADS=$t "$LOWRANK" bench --shape "$shape" --json "$@" | sed "s/^{/{\"config\":\"$label\",/" >> "$RES"
}
run_torch() {
  local label=$1 t=$2 bt=$3 shape=$4; shift 4
  wait_quiet
  echo "-- pytorch[$label] $shape (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$bt $PY bench/torch_step.py --shape "$shape" --threads "$t" --blas-threads "$bt" \
    --json "$@" | sed "s/^{/{\"config\": \"$label\",/" >> "$RES"
}

for shape in $SHAPES; do
  case $shape in
    gpt2-124m) args=(--mode lora --batch 1 --seq 256 --steps 5 --warmup 1 --decode 64 --r 8) ;;
    tinyllama-1.1b) args=(--mode lora --batch 1 --seq 256 --steps 3 --warmup 1 --decode 32 --r 8) ;;
    *) args=(--mode lora --batch 1 --seq 256 --steps 3 --warmup 1 --decode 32 --r 8) ;;
  esac
  for rep in $(seq 1 "$REPEATS"); do
    # torch "T×T": torch.set_num_threads(T) + OpenBLAS T threads (the plain setting);
    # torch "1×T": one intra-op thread + OpenBLAS T threads (faster here: the two pools do not
    # fight over the cores). The table uses the faster of the two per metric.
    run_lowrank "t$THREADS" "$THREADS" "$shape" "${args[@]}"
    run_torch "t${THREADS}x${THREADS}" "$THREADS" "$THREADS" "$shape" "${args[@]}"
    run_torch "t1x${THREADS}" 1 "$THREADS" "$shape" "${args[@]}"
    if [ "$SINGLE" = 1 ] && [ "$THREADS" != 1 ]; then
      run_lowrank t1 1 "$shape" "${args[@]}"
      run_torch t1x1 1 1 "$shape" "${args[@]}"
    fi
  done
done

python3 bench/summarize.py "$RES" "$THREADS" | tee "$OUT/table.md"
echo "results: $RES"
