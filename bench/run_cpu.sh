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
# CORETYPE: the OpenBLAS kernel set, the same for both sides (both load the same libopenblas).
#   auto (default): the one lowrank uses when OPENBLAS_CORETYPE is unset (the library's own pick,
#   or SkylakeX when lowrank re-execs itself because the library picked pre-AVX-512 kernels on an
#   AVX-512 CPU); a name (Haswell, SkylakeX, ...) forces it; "env" keeps the inherited
#   OPENBLAS_CORETYPE. It is exported for every run and recorded by both sides' JSON.
# BASELINE=/path/to/another/lowrank also runs that binary (config "t<THREADS>-baseline", e.g. an
# older build) interleaved with the others, for before/after comparisons; the table ignores it.
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

# OpenBLAS kernel set for both sides (see CORETYPE above).
CORETYPE=${CORETYPE:-auto}
INHERITED_CORETYPE=${OPENBLAS_CORETYPE-<unset>}
case $CORETYPE in
  auto)
    printf '{"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}\n' > "$OUT/tiny-config.json"
    CORE=$(env -u OPENBLAS_CORETYPE "$LOWRANK" bench --shape "$OUT/tiny-config.json" --mode forward --seq 8 --steps 0 --warmup 0 --json |
           python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["openblas_core"])')
    rm -f "$OUT/tiny-config.json" ;;
  env) CORE=${OPENBLAS_CORETYPE:-} ;;
  *) CORE=$CORETYPE ;;
esac
if [ -n "$CORE" ]; then export OPENBLAS_CORETYPE=$CORE; else unset OPENBLAS_CORETYPE; fi

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
  echo "CORETYPE=$CORETYPE -> OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset>} for both sides (inherited: $INHERITED_CORETYPE)"
  echo "GLIBC_TUNABLES=$GLIBC_TUNABLES"
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
  local bin=$LOWRANK
  case $label in *-baseline) bin=$BASELINE ;; esac
  wait_quiet
  echo "-- lowrank[$label] $shape (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  OMP_NUM_THREADS=$t "$bin" bench --shape "$shape" --json "$@" | sed "s/^{/{\"config\":\"$label\",/" >> "$RES"
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
    if [ -n "${BASELINE:-}" ]; then run_lowrank "t$THREADS-baseline" "$THREADS" "$shape" "${args[@]}"; fi
    run_torch "t${THREADS}x${THREADS}" "$THREADS" "$THREADS" "$shape" "${args[@]}"
    run_torch "t1x${THREADS}" 1 "$THREADS" "$shape" "${args[@]}"
    if [ "$SINGLE" = 1 ] && [ "$THREADS" != 1 ]; then
      run_lowrank t1 1 "$shape" "${args[@]}"
      run_torch t1x1 1 1 "$shape" "${args[@]}"
    fi
  done
done

# Both sides must have run on the same kernel set.
python3 - "$RES" <<'EOF' | tee -a "$OUT/environment.txt"
import json, sys
cores = {}
for l in open(sys.argv[1]):
    if l.strip().startswith('{'):
        r = json.loads(l)
        cores.setdefault(r['impl'], set()).add(r.get('openblas_core', '?'))
print('openblas core used:', '; '.join('%s %s' % (k, ','.join(sorted(v))) for k, v in sorted(cores.items())))
if len({c for v in cores.values() for c in v}) > 1:
    print('WARNING: the two sides ran on different OpenBLAS kernel sets')
EOF
{ echo "OpenBLAS kernels (both sides): ${OPENBLAS_CORETYPE:-library default}"; python3 bench/summarize.py "$RES" "$THREADS"; } | tee "$OUT/table.md"
echo "results: $RES"
