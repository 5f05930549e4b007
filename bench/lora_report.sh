#!/usr/bin/env bash
# The LoRA paper's measurable claims, on this engine (random f32 weights, real shapes):
#   1. trainable-parameter fraction (r 8 on q,v / GPT-2 c_attn, and all-linear)
#   2. adapter file size vs model file size (f32)
#   3. gradient + optimizer memory, LoRA vs full fine-tuning (from buffers and peak RSS)
#   4. step time LoRA vs full on the same model (GPT-2-124M shape, lm_head untied in both:
#      full fine-tuning does not support tied embeddings)
#   5. merged-model latency vs base (Model::merge_adapter): forward over 256 tokens + decode
#   6. adapter swap time (remove_adapter + add_adapter of a loaded adapter)
# Usage: bench/lora_report.sh   (env: THREADS=2 REPEATS=3 BUILD=build-bench OUT=... TINYLLAMA=1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-$ROOT/build-bench}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}
TINYLLAMA=${TINYLLAMA:-1}
OUT=${OUT:-$ROOT/bench/results/lora-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$BUILD" lowrank >/dev/null
export OMP_NUM_THREADS=$THREADS
export GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}
. "$ROOT/bench/lib.sh"
B() {
  wait_quiet
  echo "-- lowrank bench $* (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  "$BUILD/lowrank" bench --json "$@" >> "$RES"
}
TMP=$(mktemp -d /tmp/lowrank-lora-report.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, OMP_NUM_THREADS=$THREADS"
  echo "libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-}"
  echo "loadavg: $(cat /proc/loadavg)"
} | tee "$OUT/environment.txt"

# 1 + 2: parameter counts and file sizes.
B --shape gpt2-124m --mode sizes --targets c_attn --r 8 --out-dir "$TMP/g1" --write-model
B --shape gpt2-124m --mode sizes --targets all-linear --r 8 --out-dir "$TMP/g2"
if [ "$TINYLLAMA" = 1 ]; then
  B --shape tinyllama-1.1b --mode sizes --targets q_proj,v_proj --r 8 --out-dir "$TMP/t1"
  B --shape tinyllama-1.1b --mode sizes --targets all-linear --r 8 --out-dir "$TMP/t2"
fi
rm -rf "$TMP"/g1/model.safetensors

# 3 + 4: LoRA vs full on the same (untied) GPT-2 model, interleaved.
for rep in $(seq 1 "$REPEATS"); do
  B --shape gpt2-124m --mode lora --untie --targets c_attn --r 8 --seq 256 --steps 5 --warmup 1
  B --shape gpt2-124m --mode full --untie --seq 256 --steps 5 --warmup 1
done

# 5: merged latency.
B --shape gpt2-124m --mode merged-latency --targets c_attn --r 8 --seq 256 --steps 7 --warmup 1 --decode 32 --decode-reps 3
if [ "$TINYLLAMA" = 1 ]; then
  B --shape tinyllama-1.1b --mode merged-latency --targets q_proj,v_proj --r 8 --seq 256 --steps 3 --warmup 1 --decode 16 --decode-reps 1
fi

# 6: adapter swap.
B --shape gpt2-124m --mode swap --targets c_attn --r 8 --swaps 2000 --out-dir "$TMP/s1"
if [ "$TINYLLAMA" = 1 ]; then
  B --shape tinyllama-1.1b --mode swap --targets q_proj,v_proj --r 8 --swaps 2000 --out-dir "$TMP/s2"
fi

python3 bench/lora_summary.py "$RES" | tee "$OUT/report.md"
echo "results: $RES"
