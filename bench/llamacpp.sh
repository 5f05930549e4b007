#!/usr/bin/env bash
# lowrank vs llama.cpp (npm node-llama-cpp, prebuilt CPU binaries) on TinyLlama-1.1B-Chat
# IQ2_XXS (2-bit GGUF), same threads, same prompt ids:
#   prefill: tokens/s of a SEQ-token English prompt (the start of the most recent State of the
#            Union speech, tokenized by lowrank; both engines get the same ids);
#   decode:  tokens/s of DECODE greedy tokens after it, with the KV cache;
#   and lowrank's LoRA training tokens/s on the same model (r 8, q_proj+v_proj, batch 1 ×
#   TRAIN_SEQ tokens, `lowrank bench --mode lora`: zero grads + forward + backward + AdamW).
# Runs are interleaved (lowrank, llama.cpp, lowrank, ...), each after the quiet-machine gate of
# bench/lib.sh; each run reports the median of 3 repetitions after a warm-up, and the table
# shows the median over REPEATS runs. Ratio = lowrank / llama.cpp (> 1: lowrank faster).
#
# Usage: bench/llamacpp.sh   (env: THREADS=2 REPEATS=3 SEQ=256 DECODE=64 TRAIN_SEQ=128
#                              TRAIN_STEPS=4 BUILD=build OUT=bench/results/llamacpp-<date>
#                              QUIET=0.85 MAXWAIT=900, LOWRANK_CACHE, LOWRANK_NODE_LLAMA_CPP)
# Fetches (once) the model, node-llama-cpp and the corpus with scripts/fetch-*.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-$ROOT/build}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}
SEQ=${SEQ:-256}
DECODE=${DECODE:-64}
TRAIN_SEQ=${TRAIN_SEQ:-128}
TRAIN_STEPS=${TRAIN_STEPS:-4}
OUT=${OUT:-$ROOT/bench/results/llamacpp-$(date +%Y%m%d-%H%M%S)}
. "$ROOT/bench/lib.sh"
LOWRANK=$BUILD/lowrank
[[ -x "$LOWRANK" ]] || { echo "llamacpp.sh: $LOWRANK not found (build first, or set BUILD)" >&2; exit 1; }

MODEL=$(bash scripts/fetch-tinyllama)
SOTU=$(bash scripts/fetch-sotu)
NLC=$(bash scripts/fetch-node-llama-cpp)
export LOWRANK_NODE_LLAMA_CPP=$NLC
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"

# The prompt: lowrank's tokenization (BOS + ids) of the start of the most recent speech.
TEXT=$(node -e '
  const fs = require("fs"), path = require("path"), dir = process.argv[1];
  const sp = fs.readdirSync(dir).filter(f => f.endsWith(".json")).sort()
    .map(f => JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")))
    .filter(s => typeof s.text === "string" && s.text.trim()).sort((a, b) => a.year - b.year);
  process.stdout.write(sp[sp.length - 1].text.replace(/\s+/g, " ").trim().slice(0, 8 * Number(process.argv[2])));
' "$SOTU" "$SEQ")
"$LOWRANK" tokenize --model "$MODEL" --json "$TEXT" > "$OUT/prompt_ids.json"

{
  echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores online, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
  echo "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx512vbmi|avx_vnni)$' | tr '\n' ' ')"
  echo "kernel: $(uname -r)"
  echo "loadavg: $(cat /proc/loadavg)"
  echo "lowrank: $LOWRANK (built $(date -u -r "$LOWRANK" +%Y-%m-%dT%H:%M:%SZ); checkout at git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tools 2>/dev/null || echo ', with uncommitted changes in src/ tools/'))"
  echo "OMP_NUM_THREADS=$THREADS OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-} GLIBC_TUNABLES=${GLIBC_TUNABLES:-}"
  echo "node $(node --version), node-llama-cpp $(node -p "require('$NLC/node_modules/node-llama-cpp/package.json').version") in $NLC"
  echo "llama.cpp build: $(node -p "JSON.stringify(require('$NLC/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/_nlcBuildMetadata.json').buildOptions?.llamaCpp ?? {})" 2>/dev/null || echo unknown)"
  echo "model: $MODEL ($(stat -c %s "$MODEL") bytes)"
  echo "prompt: $SEQ ids of $OUT/prompt_ids.json; decode: $DECODE greedy tokens; threads $THREADS"
} | tee "$OUT/environment.txt"

run_lowrank() {
  wait_quiet
  echo "-- lowrank: prefill $SEQ + decode $DECODE" >&2
  OMP_NUM_THREADS=$THREADS "$LOWRANK" bench --model "$MODEL" --mode forward --steps 0 --warmup 0 --seq "$SEQ" \
    --decode "$DECODE" --decode-reps 3 --prompt-ids "$OUT/prompt_ids.json" --json \
    | sed 's/^{/{"bench":"infer",/' >> "$RES"
}
run_llama() {
  wait_quiet
  echo "-- llama.cpp: prefill $SEQ + decode $DECODE" >&2
  node "$ROOT/bench/llamacpp_bench.mjs" --model "$MODEL" --prompt-ids "$OUT/prompt_ids.json" --seq "$SEQ" \
    --decode "$DECODE" --threads "$THREADS" --reps 3 2>>"$OUT/llamacpp.stderr" \
    | sed 's/^{/{"bench":"infer",/' >> "$RES"
}
run_train() {
  wait_quiet
  echo "-- lowrank: LoRA training steps, 1 x $TRAIN_SEQ tokens" >&2
  OMP_NUM_THREADS=$THREADS "$LOWRANK" bench --model "$MODEL" --mode lora --r 8 --targets q_proj,v_proj --seq "$TRAIN_SEQ" \
    --steps "$TRAIN_STEPS" --warmup 1 --json | sed 's/^{/{"bench":"train",/' >> "$RES"
}

for r in $(seq 1 "$REPEATS"); do
  echo "== repeat $r/$REPEATS" >&2
  run_lowrank
  run_llama
done
run_train

python3 "$ROOT/bench/llamacpp_summary.py" "$RES" "$OUT/summary.md"
echo "results: $OUT" >&2
