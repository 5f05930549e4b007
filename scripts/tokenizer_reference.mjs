#!/usr/bin/env node
// Reference tokenizations and chat-template renderings for tests/test_tokenizer_families.cpp,
// from implementations other than lowrank:
//   llama.cpp (node-llama-cpp, prebuilt CPU binaries, vocabulary-only load of a GGUF):
//     llama_tokenize(text, add_special = false, parse_special = true) per text, the model's
//     BOS/EOS ids and whether it adds them, and llama_detokenize of those ids;
//   transformers.js (@lenml/tokenizers, a tokenizers-only copy of transformers.js) on an HF
//     tokenizer.json + tokenizer_config.json: encode(text) with and without special tokens,
//     decode(ids);
//   @huggingface/jinja (the Jinja engine of transformers.js, as installed with node-llama-cpp)
//     rendering chat templates with transformers' settings (trim_blocks, lstrip_blocks).
//
// Usage: node scripts/tokenizer_reference.mjs REQUEST.json > RESULT.json
//   REQUEST: {"texts": [str...],
//             "llama": [{"name": N, "gguf": PATH}...],
//             "hf": [{"name": N, "dir": PATH}...],
//             "chat": [{"name": N, "template": STR, "contexts": [{...template variables...}]}...]}
//   RESULT:  {"llama": {N: {"bos": id|null, "eos": id|null, "add_bos": b, "add_eos": b,
//                           "ids": [[...] per text], "detok": [str per text]}},
//             "hf": {N: {"ids": [[...]], "ids_special": [[...]], "decoded": [str]}},
//             "chat": {N: [{"text": str} | {"error": str} per context]},
//             "versions": {...}, "ms": {...}}
//
// Packages are looked up in $LOWRANK_NODE_LLAMA_CPP / ${LOWRANK_CACHE:-~/.cache/lowrank}/node-llama-cpp
// (node-llama-cpp, @huggingface/jinja) and ${LOWRANK_CACHE:-~/.cache/lowrank}/tokenizers/js
// (@lenml/tokenizers; scripts/fetch-tokenizers). Exit code 77 when one that the request needs
// is missing, 2 on bad input.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {pathToFileURL} from "node:url";

function die(msg, code = 2) {
  process.stderr.write(`tokenizer_reference: error: ${msg}\n`);
  process.exit(code);
}

const cache = process.env.LOWRANK_CACHE || path.join(os.homedir(), ".cache", "lowrank");

function prefixWith(pkg, candidates) {
  for (const c of candidates)
    if (c && fs.existsSync(path.join(c, "node_modules", pkg, "package.json"))) return c;
  return null;
}

async function importPkg(prefix, pkg) {
  const dir = path.join(prefix, "node_modules", pkg);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  const exp = meta.exports?.["."];
  let entry = typeof exp === "string" ? exp : (exp?.import ?? exp?.default);
  if (entry && typeof entry === "object") entry = entry.default ?? entry.import;
  entry = entry ?? meta.module ?? meta.main ?? "index.js";
  return {mod: await import(pathToFileURL(path.join(dir, entry)).href), version: meta.version};
}

if (process.argv.length !== 3) die("usage: tokenizer_reference.mjs REQUEST.json");
let req;
try {
  req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
} catch (e) {
  die(`${process.argv[2]}: ${e.message}`);
}
const texts = req.texts ?? [];
if (!Array.isArray(texts) || !texts.every(t => typeof t === "string")) die("texts must be an array of strings");

const nlcPrefix = prefixWith("node-llama-cpp", [process.env.LOWRANK_NODE_LLAMA_CPP, path.join(cache, "node-llama-cpp")]);
const out = {llama: {}, hf: {}, chat: {}, versions: {}, ms: {}};

if ((req.llama ?? []).length) {
  if (!nlcPrefix) die("node-llama-cpp not found (scripts/fetch-node-llama-cpp)", 77);
  const {mod, version} = await importPkg(nlcPrefix, "node-llama-cpp");
  out.versions["node-llama-cpp"] = version;
  const {getLlama, LlamaLogLevel} = mod;
  // build: "never" - only the prebuilt binaries; llama.cpp is never compiled here.
  const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.disabled});
  for (const job of req.llama) {
    const t0 = performance.now();
    const model = await llama.loadModel({modelPath: path.resolve(job.gguf), gpuLayers: 0, vocabOnly: true});
    const r = {bos: model.tokens.bos ?? null, eos: model.tokens.eos ?? null,
               add_bos: model.tokens.shouldPrependBosToken, add_eos: model.tokens.shouldAppendEosToken,
               ids: [], detok: []};
    for (const t of texts) {
      const ids = Array.from(model.tokenize(t, true));
      r.ids.push(ids);
      r.detok.push(model.detokenize(ids, true));
    }
    out.llama[job.name] = r;
    out.ms[`llama:${job.name}`] = Math.round(performance.now() - t0);
    await model.dispose();
  }
  await llama.dispose();
}

if ((req.hf ?? []).length) {
  const p = prefixWith("@lenml/tokenizers", [path.join(cache, "tokenizers", "js")]);
  if (!p) die("@lenml/tokenizers not found (scripts/fetch-tokenizers)", 77);
  const {mod, version} = await importPkg(p, "@lenml/tokenizers");
  out.versions["@lenml/tokenizers"] = version;
  for (const job of req.hf) {
    const t0 = performance.now();
    const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(job.dir, "tokenizer.json"), "utf8"));
    const cfgPath = path.join(job.dir, "tokenizer_config.json");
    const tokenizerConfig = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, "utf8")) : {};
    const tok = mod.TokenizerLoader.fromPreTrained({tokenizerJSON, tokenizerConfig});
    const r = {ids: [], ids_special: [], decoded: []};
    for (const t of texts) {
      const ids = Array.from(tok.encode(t, {add_special_tokens: false}));
      r.ids.push(ids);
      r.ids_special.push(Array.from(tok.encode(t, {add_special_tokens: true})));
      r.decoded.push(tok.decode(ids, {skip_special_tokens: false}));
    }
    out.hf[job.name] = r;
    out.ms[`hf:${job.name}`] = Math.round(performance.now() - t0);
  }
}

if ((req.chat ?? []).length) {
  const p = prefixWith("@huggingface/jinja", [nlcPrefix]);
  if (!p) die("@huggingface/jinja not found (it comes with node-llama-cpp: scripts/fetch-node-llama-cpp)", 77);
  const {mod, version} = await importPkg(p, "@huggingface/jinja");
  out.versions["@huggingface/jinja"] = version;
  for (const job of req.chat) {
    const res = [];
    let tmpl = null;
    try {
      tmpl = new mod.Template(job.template);
    } catch (e) {
      for (const _ of job.contexts) res.push({error: `parse: ${e.message}`});
    }
    if (tmpl) {
      for (const ctx of job.contexts) {
        try {
          // As transformers' apply_chat_template: raise_exception is a global of the engine.
          res.push({text: tmpl.render({tools: null, documents: null, ...ctx})});
        } catch (e) {
          res.push({error: e.message});
        }
      }
    }
    out.chat[job.name] = res;
  }
}

process.stdout.write(JSON.stringify(out) + "\n");
