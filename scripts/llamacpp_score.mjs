#!/usr/bin/env node
// Teacher-forced scoring of token sequences with llama.cpp (the npm package node-llama-cpp,
// prebuilt CPU binaries, no GPU, never compiled here): per position the top-1 prediction
// (argmax of the logits) and the NLL of the next token, and the perplexity over all records.
// Used by tests/test_llamacpp.cpp to compare lowrank with llama.cpp on the same token ids.
//
// Usage:
//   node scripts/llamacpp_score.mjs --model MODEL.gguf [--lora ADAPTER.gguf[:SCALE]]...
//        (--ids FILE | --text TEXT | --text-file FILE) [--threads 2] [--tokenize-only]
//
//   --ids FILE     the token ids to score: the output of `lowrank eval --top1 --json` (each
//                  record's "ids"), a JSON array of ids, or a JSON array of such arrays. The ids
//                  are scored as given (no BOS is added).
//   --text TEXT    tokenize with llama.cpp's own tokenizer (BOS prepended as the model says)
//                  and score that; --tokenize-only prints the ids without scoring.
//   --lora         a GGUF LoRA adapter applied on top of the model (repeatable); SCALE (default
//                  1) multiplies the adapter's own alpha/r, as in llama.cpp's --lora-scaled.
//   --threads      CPU threads for evaluation (default 2).
//   --exact        F32 KV cache and no flash attention (for tight comparisons).
//   --top N        also each position's N largest logits as [id, logit] pairs ("top").
//
// Prints one JSON object on stdout:
//   {"impl":"llama.cpp","node_llama_cpp":VERSION,"nll":MEAN,"ppl":...,"tokens":N,
//    "records":[{"ids":[...],"top1":[...],"nll_pos":[...],"nll":MEAN,"tokens":n},...],
//    "load_ms":...,"eval_ms":...}
//   top1[t] is the argmax of the logits at position t (the prediction for ids[t+1]), one per
//   id; nll_pos[t] = -log softmax(logits_t)[ids[t+1]] for t < n-1.
//
// node-llama-cpp is looked up in, in order: $LOWRANK_NODE_LLAMA_CPP (an npm prefix folder that
// holds node_modules/node-llama-cpp), ${LOWRANK_CACHE:-~/.cache/lowrank}/node-llama-cpp, then
// the usual module resolution. Exit code 77 when it is not found, 2 on bad arguments or input.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {pathToFileURL} from "node:url";

function die(msg, code = 2) {
  process.stderr.write(`llamacpp_score: error: ${msg}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const a = {lora: [], threads: 2, tokenizeOnly: false, exact: false, top: 1};
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) die(`${k} needs a value`);
      return argv[++i];
    };
    if (k === "--model") a.model = val();
    else if (k === "--lora") a.lora.push(val());
    else if (k === "--ids") a.ids = val();
    else if (k === "--text") a.text = val();
    else if (k === "--text-file") a.text = fs.readFileSync(val(), "utf8");
    else if (k === "--threads") a.threads = Number(val());
    else if (k === "--tokenize-only") a.tokenizeOnly = true;
    else if (k === "--exact") a.exact = true;
    else if (k === "--top") a.top = Number(val());
    else if (k === "--help" || k === "-h") {
      process.stdout.write(fs.readFileSync(new URL(import.meta.url), "utf8").split("\n")
        .filter(l => l.startsWith("//")).map(l => l.slice(3)).join("\n") + "\n");
      process.exit(0);
    } else die(`unknown argument ${k}`);
  }
  if (!a.model) die("--model is required");
  if ((a.ids == null) === (a.text == null)) die("give exactly one of --ids, --text, --text-file");
  if (!Number.isInteger(a.threads) || a.threads < 1) die("--threads must be a positive integer");
  if (!Number.isInteger(a.top) || a.top < 1 || a.top > 100) die("--top must be an integer in 1..100");
  return a;
}

// The folder that holds node_modules/node-llama-cpp, or null.
function findPrefix() {
  const cands = [];
  if (process.env.LOWRANK_NODE_LLAMA_CPP) cands.push(process.env.LOWRANK_NODE_LLAMA_CPP);
  cands.push(path.join(process.env.LOWRANK_CACHE || path.join(os.homedir(), ".cache", "lowrank"), "node-llama-cpp"));
  for (const c of cands)
    if (fs.existsSync(path.join(c, "node_modules", "node-llama-cpp", "package.json"))) return c;
  return null;
}

async function loadNodeLlamaCpp() {
  const prefix = findPrefix();
  if (prefix) {
    const dir = path.join(prefix, "node_modules", "node-llama-cpp");
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
    const exp = pkg.exports?.["."];
    const entry = (typeof exp === "string" ? exp : exp?.import ?? exp?.default) ?? pkg.main ?? "dist/index.js";
    const mod = await import(pathToFileURL(path.join(dir, entry)).href);
    return {mod, version: pkg.version, dir};
  }
  try {
    const mod = await import("node-llama-cpp");
    return {mod, version: "unknown", dir: "(module resolution)"};
  } catch {
    die("node-llama-cpp not found: set LOWRANK_NODE_LLAMA_CPP to the folder holding " +
        "node_modules/node-llama-cpp, or install it into ~/.cache/lowrank/node-llama-cpp (see .ci/run)", 77);
  }
}

// Records of ids from a lowrank eval JSON, an array of ids or an array of arrays.
function readIds(file) {
  let j;
  try {
    const text = fs.readFileSync(file, "utf8").trim();
    // lowrank eval prints its JSON object as the last line.
    j = JSON.parse(text.includes("\n") && !text.startsWith("[") ? text.split("\n").pop() : text);
  } catch (e) {
    die(`${file}: ${e.message}`);
  }
  let recs;
  if (Array.isArray(j)) recs = j.length > 0 && Array.isArray(j[0]) ? j : [j];
  else if (j && Array.isArray(j.records)) recs = j.records.map((r, i) => {
    if (!Array.isArray(r.ids)) die(`${file}: record ${i} has no "ids" (run lowrank eval with --top1)`);
    return r.ids;
  });
  else die(`${file}: expected lowrank eval --top1 --json output or a JSON array of token ids`);
  for (const r of recs)
    if (!r.every(x => Number.isInteger(x) && x >= 0)) die(`${file}: token ids must be non-negative integers`);
  return recs;
}

function parseLora(arg) {
  const m = /^(.*):([-+0-9.eE]+)$/.exec(arg);
  const filePath = m ? m[1] : arg;
  const scale = m ? Number(m[2]) : 1;
  if (!fs.existsSync(filePath)) die(`--lora ${filePath}: no such file`);
  if (!Number.isFinite(scale)) die(`--lora ${arg}: bad scale`);
  return {filePath: path.resolve(filePath), scale};
}

const args = parseArgs(process.argv.slice(2));
if (!fs.existsSync(args.model)) die(`--model ${args.model}: no such file`);
const adapters = args.lora.map(parseLora);
const {mod, version} = await loadNodeLlamaCpp();
const {getLlama, LlamaLogLevel} = mod;

const t0 = performance.now();
// build: "never" - use the prebuilt binaries only; never try to compile llama.cpp here.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: args.threads});
const model = await llama.loadModel({modelPath: path.resolve(args.model), gpuLayers: 0});
const loadMs = performance.now() - t0;

let records;
if (args.text != null) {
  const toks = Array.from(model.tokenize(args.text));
  const bos = model.tokens.bos;
  records = [bos != null && model.tokens.shouldPrependBosToken ? [bos, ...toks] : toks];
  if (args.tokenizeOnly) {
    process.stdout.write(JSON.stringify({impl: "llama.cpp", node_llama_cpp: version, ids: records[0]}) + "\n");
    await model.dispose();
    await llama.dispose();
    process.exit(0);
  }
} else {
  records = readIds(args.ids);
}

const longest = Math.max(1, ...records.map(r => r.length));
const t1 = performance.now();
const context = await model.createContext({
  contextSize: Math.max(256, longest),
  batchSize: longest,          // the whole record in one batch, like lowrank's forward
  threads: {ideal: args.threads, min: args.threads},
  ...(adapters.length ? {lora: {adapters}} : {}),
  // --exact: F32 KV cache and no flash attention (its f16 cache moves NLL by ~1e-3).
  ...(args.exact ? {flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"} : {}),
});
const loraMs = performance.now() - t1;
const sequence = context.getSequence();

const out = {impl: "llama.cpp", node_llama_cpp: version, threads: args.threads,
             adapters: adapters.map(a => `${a.filePath}:${a.scale}`), records: []};
let total = 0, tokens = 0, evalMs = 0;
for (const ids of records) {
  await sequence.clearHistory();
  const t2 = performance.now();
  // Per position: the largest logit (includeTop 1), the next token's logit and the sum of
  // exp(logit - max) over the vocabulary (totalLogitWeight), all from the raw logits (the
  // sampler at its defaults is greedy and leaves them as they are).
  const res = await sequence.controlledEvaluate(ids.map((tok, t) => [tok, {generateNext: {
    logits: {filter: {tokens: t + 1 < ids.length ? [ids[t + 1]] : [], includeTop: args.top}},
    totalLogitWeight: true,
  }}]));
  evalMs += performance.now() - t2;
  const top1 = [], nllPos = [], topk = [];
  let sum = 0;
  for (let t = 0; t < ids.length; t++) {
    const next = res[t]?.next;
    const logits = next?.logits;
    if (!logits || logits.size === 0 || !(next.totalLogitWeight > 0))
      die(`llama.cpp returned no logits at position ${t}`, 1);
    const entries = [...logits.entries()];  // sorted: the largest logits first
    const [arg, mx] = entries[0];
    top1.push(arg);
    if (args.top > 1) topk.push(entries.slice(0, args.top));
    if (t + 1 < ids.length) {
      const lt = logits.get(ids[t + 1]);
      if (lt === undefined) die(`token ${ids[t + 1]} is outside the model's vocabulary`);
      const nll = mx + Math.log(next.totalLogitWeight) - lt;
      nllPos.push(nll);
      sum += nll;
    }
  }
  const n = ids.length - 1;
  total += sum;
  tokens += n;
  out.records.push({ids, top1, nll_pos: nllPos, nll: n > 0 ? sum / n : 0, tokens: n,
                    ...(args.top > 1 ? {top: topk} : {})});
}
out.nll = tokens ? total / tokens : 0;
out.ppl = Math.exp(out.nll);
out.tokens = tokens;
out.load_ms = loadMs;
out.context_ms = loraMs;
out.eval_ms = evalMs;
process.stdout.write(JSON.stringify(out) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
