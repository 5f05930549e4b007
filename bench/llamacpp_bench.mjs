#!/usr/bin/env node
// llama.cpp side of bench/llamacpp.sh: prompt processing and greedy decode with node-llama-cpp
// (prebuilt CPU binaries, never compiled here), the way an application uses it:
// sequence.evaluate(prompt, {temperature: 0}) - the time to the first generated token is the
// prefill of the prompt, every later token is one decode step with the KV cache.
//
// Usage: node bench/llamacpp_bench.mjs --model M.gguf --prompt-ids FILE --seq 256 --decode 64
//          [--threads 2] [--reps 3]
//   --prompt-ids: JSON array of ids or {"ids": [...]} (`lowrank tokenize --json`); the first
//   --seq ids are the prompt (as given, BOS included if the file has it).
// Prints one JSON line: prefill_tok_s / decode_tok_s (medians over --reps after one warm-up),
// every repetition, the generated ids, and llama.cpp's own timings summed over the warm-up and
// all repetitions (llama_perf_context: prompt eval and eval ms per token, without the
// JavaScript around them).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {pathToFileURL} from "node:url";

function die(msg, code = 2) {
  process.stderr.write(`llamacpp_bench: error: ${msg}\n`);
  process.exit(code);
}

const a = {threads: 2, reps: 3, seq: 256, decode: 64};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i], v = argv[i + 1];
  if (v === undefined) die(`${k} needs a value`);
  i++;
  if (k === "--model") a.model = v;
  else if (k === "--prompt-ids") a.promptIds = v;
  else if (k === "--seq") a.seq = Number(v);
  else if (k === "--decode") a.decode = Number(v);
  else if (k === "--threads") a.threads = Number(v);
  else if (k === "--reps") a.reps = Number(v);
  else die(`unknown argument ${k}`);
}
if (!a.model || !a.promptIds) die("--model and --prompt-ids are required");

function findPrefix() {
  const c = [];
  if (process.env.LOWRANK_NODE_LLAMA_CPP) c.push(process.env.LOWRANK_NODE_LLAMA_CPP);
  c.push(path.join(process.env.LOWRANK_CACHE || path.join(os.homedir(), ".cache", "lowrank"), "node-llama-cpp"));
  return c.find(d => fs.existsSync(path.join(d, "node_modules", "node-llama-cpp", "package.json"))) ?? null;
}
const prefix = findPrefix();
if (!prefix) die("node-llama-cpp not found (scripts/fetch-node-llama-cpp, or set LOWRANK_NODE_LLAMA_CPP)", 77);
const pkgDir = path.join(prefix, "node_modules", "node-llama-cpp");
const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(path.join(pkgDir, pkg.exports["."].import)).href);

let j = JSON.parse(fs.readFileSync(a.promptIds, "utf8"));
const ids = Array.isArray(j) ? j : j.ids;
if (!Array.isArray(ids) || ids.length < a.seq) die(`${a.promptIds}: need at least ${a.seq} ids`);
const prompt = ids.slice(0, a.seq);

// llama.cpp's own performance report comes through the logger (info level).
let perfLines = [];
const llama = await getLlama({
  gpu: false, build: "never", maxThreads: a.threads, logLevel: LlamaLogLevel.info,
  logger: (level, message) => {
    if (/llama_perf_context_print/.test(message)) perfLines.push(message.trim());
  },
});
const model = await llama.loadModel({modelPath: path.resolve(a.model), gpuLayers: 0});
const context = await model.createContext({
  contextSize: a.seq + a.decode + 64, batchSize: 512, threads: {ideal: a.threads, min: a.threads},
  performanceTracking: true,
});
const seq = context.getSequence();

async function once(nPrompt, nDecode) {
  await seq.clearHistory();
  const t0 = performance.now();
  let t1 = 0, n = 0;
  const out = [];
  // yieldEogToken: keep decoding through an end-of-sequence token, like lowrank bench.
  for await (const tok of seq.evaluate(prompt.slice(0, nPrompt), {temperature: 0, yieldEogToken: true})) {
    if (n === 0) t1 = performance.now();
    out.push(tok);
    if (++n > nDecode) break;  // the first token comes with the prefill, then nDecode steps
  }
  const t2 = performance.now();
  return {prefill_s: (t1 - t0) / 1e3, decode_s: (t2 - t1) / 1e3, tokens: out};
}

// CPU time other processes took during the measurement, as a fraction of wall × cores (the
// same accounting as lowrank bench's foreign_cpu_frac): /proc/stat busy time minus our own.
function cpuSample() {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1, 11).map(Number);
  const hz = 100;  // USER_HZ
  const total = f.reduce((x, y) => x + y, 0) - (f[8] || 0) - (f[9] || 0);
  const u = process.cpuUsage();
  return {busy: (total - f[3] - f[4]) / hz, self: (u.user + u.system) / 1e6, wall: performance.now() / 1e3};
}
const foreignFrac = (a, b) =>
  Math.max(0, ((b.busy - a.busy) - (b.self - a.self)) / ((b.wall - a.wall) * os.cpus().length));

const median = v => {
  const s = [...v].sort((x, y) => x - y), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};

await once(8, 2);  // warm-up
const cpu0 = cpuSample();
const pre = [], dec = [];
let tokens = [];
for (let r = 0; r < a.reps; r++) {
  const res = await once(a.seq, a.decode);
  pre.push(res.prefill_s);
  dec.push(res.decode_s);
  tokens = res.tokens;
}
const foreign = foreignFrac(cpu0, cpuSample());
try {
  await context.printTimings();
} catch { /* no timings in this version */ }

const out = {
  impl: "llama.cpp (node-llama-cpp)", node_llama_cpp: pkg.version, threads: a.threads, seq: a.seq,
  decode_tokens: a.decode, reps: a.reps,
  prefill_tok_s: a.seq / median(pre), decode_tok_s: a.decode / median(dec),
  prefill_ms: 1e3 * median(pre), decode_ms_per_tok: 1e3 * median(dec) / a.decode,
  prefill_ms_all: pre.map(x => 1e3 * x), decode_tok_s_all: dec.map(x => a.decode / x),
  // tokens[0] is the token chosen after the prompt, tokens[i] the one after decode step i.
  decode_ids: tokens.slice(0, a.decode),
  llama_perf: perfLines,
  system_info: llama.systemInfo,
  foreign_cpu_frac: foreign,
  loadavg_end: os.loadavg()[0],
};
process.stdout.write(JSON.stringify(out) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
