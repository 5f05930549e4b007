// lowrank checked against llama.cpp itself (the npm package node-llama-cpp, prebuilt CPU
// binaries, 2 threads) on TinyLlama-1.1B-Chat IQ2_XXS, scoring the exact same token ids:
// lowrank's tokenization of a 200-token English text (the start of the most recent State of
// the Union speech, never trained on), BOS + 200 tokens = 200 scored positions.
//
//   BaseModel: teacher-forced top-1 agreement (argmax of the logits at every position: the
//     same predicted token on both sides) >= 90 % and |ppl_llama / ppl_lowrank - 1| <= 2 %.
//   AdapterAndMergedModel: a LoRA adapter trained by lowrank (r 8, alpha 16, q_proj+v_proj,
//     seq 128, 20 steps, lr 1e-3, on older speeches) and exported to GGUF (`lowrank export`),
//     loaded by llama.cpp as a LoRA adapter (scale 1):
//       - top-1 agreement (lowrank + adapter vs llama.cpp + adapter) >= 90 %;
//       - perplexity moves the same way: with r = ppl_adapter / ppl_base on each side,
//         ln r_llama and ln r_lowrank have the same sign, and the relative change agrees:
//         |r_llama / r_lowrank - 1| <= 2 %;
//       - the merged GGUF (`lowrank merge ... --out merged.gguf`) loads in llama.cpp and its
//         perplexity is within 2 % of llama.cpp's with the unmerged adapter:
//         |ppl_llama(merged) / ppl_llama(base + adapter) - 1| <= 2 %.
//
// Noise on the llama.cpp side (measured 2026-11-27, node-llama-cpp 3.22.1): its perplexity on
// these 200 tokens moves by ~0.5 % with the batch size alone (batch 32 instead of 201: +0.6 %)
// and as soon as any LoRA adapter is attached (the trained adapter at scale 1e-6: +0.5 %), where
// lowrank's moves by ~1e-6; adapters that differ by 6e-5 (two training runs) gave llama.cpp
// perplexities 0.9 % apart (lowrank's: 1e-7). Observed ratios of the ratios over five runs:
// 1.002, 1.004, 1.005, 1.014, 0.999; merged vs unmerged: +0.5, -0.4, -0.4, -1.0, +0.7 %.
//
// Needs (else the tests skip, saying what is missing): the TinyLlama GGUF
// (scripts/fetch-tinyllama), the State of the Union corpus (scripts/fetch-sotu), Node.js and
// node-llama-cpp in $LOWRANK_NODE_LLAMA_CPP or ${LOWRANK_CACHE:-~/.cache/lowrank}/node-llama-cpp
// (scripts/fetch-node-llama-cpp). .ci/run fetches all three. The llama.cpp side runs in
// scripts/llamacpp_score.mjs; the lowrank side is the CLI (eval --top1, train, export, merge).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fixture_util.h"
#include "proc_util.h"
#include "lora/peft.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"

using json = nlohmann::json;
using namespace lowrank;
namespace fs = std::filesystem;

namespace {

constexpr int kScored = 200;        // scored positions of the English text
constexpr int kTrainSteps = 20;     // LoRA training steps (seq 128, batch 1)
constexpr double kMinAgreement = 0.90;
constexpr double kPplTol = 0.02;

std::string cache_dir() {
  if (const char* c = std::getenv("LOWRANK_CACHE"); c && *c) return c;
  if (const char* h = std::getenv("HOME")) return std::string(h) + "/.cache/lowrank";
  return "";
}

std::string model_path() {
  std::string p = cache_dir() + "/tinyllama-1.1b-chat-v1.0.IQ2_XXS.gguf";
  return fs::exists(p) ? p : "";
}

std::string sotu_dir() {
  std::string d = cache_dir() + "/sotu";
  return fs::exists(d + "/.complete") ? d : "";
}

// The folder holding node_modules/node-llama-cpp (same order as scripts/llamacpp_score.mjs).
std::string node_llama_cpp_prefix() {
  std::vector<std::string> c;
  if (const char* e = std::getenv("LOWRANK_NODE_LLAMA_CPP"); e && *e) c.push_back(e);
  c.push_back(cache_dir() + "/node-llama-cpp");
  for (const std::string& d : c)
    if (fs::exists(d + "/node_modules/node-llama-cpp/package.json")) return d;
  return "";
}

bool have_node() { return run_process({"node", "--version"}, "", "").rc == 0; }

std::string cli() { return std::string(LOWRANK_BINARY_DIR) + "/lowrank"; }
std::string score_script() { return std::string(LOWRANK_SOURCE_DIR) + "/scripts/llamacpp_score.mjs"; }

// Single-quotes a string for /bin/sh.
std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

std::string tail(const std::string& s, size_t n = 3000) { return s.size() > n ? s.substr(s.size() - n) : s; }

// Runs a command (words quoted with q(), split without a shell); stdout is returned, stderr is
// appended to `log`. Fails the test (and returns false) on a non-zero exit. With a label,
// prints how long the command took.
bool run(const std::string& cmd, const std::string& log, std::string& out, const char* label = nullptr) {
  out.clear();
  const auto t0 = std::chrono::steady_clock::now();
  std::ofstream(log, std::ios::app) << "\n$ " << cmd << "\n";
  const std::string out_file = log + ".stdout", err_file = log + ".stderr";
  const ProcResult pr = run_process(split_words(cmd), out_file, err_file);
  out = read_file(out_file);
  std::ofstream(log, std::ios::app) << read_file(err_file);
  if (label)
    std::printf("[ llama.cpp ]   %5.1f s  %s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), label);
  if (pr.rc != 0) {
    ADD_FAILURE() << "command failed (exit " << pr.rc << "): " << cmd << "\n--- stderr (tail):\n"
                  << tail(read_file(log));
    return false;
  }
  return true;
}

// The last line of a command's stdout as JSON.
json last_json(const std::string& out) {
  std::string s = out;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  const size_t nl = s.rfind('\n');
  return json::parse(nl == std::string::npos ? s : s.substr(nl + 1));
}

std::string squash_spaces(const std::string& s) {
  std::string out;
  bool sp = false;
  for (char c : s) {
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
      sp = true;
      continue;
    }
    if (sp && !out.empty()) out += ' ';
    sp = false;
    out += c;
  }
  return out;
}

// First `chars` characters of s, cut back to the last space.
std::string cut_at_space(const std::string& s, size_t chars) {
  if (s.size() <= chars) return s;
  size_t p = s.rfind(' ', chars);
  return s.substr(0, p == std::string::npos ? chars : p);
}

struct Speech {
  int year;
  std::string file, text;
};

// Every speech of the corpus, sorted by year (then file name).
std::vector<Speech> load_speeches(const std::string& dir) {
  std::vector<Speech> v;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".json") continue;
    json j = json::parse(read_file(e.path().string()));
    if (!j.contains("text") || !j["text"].is_string() || !j.contains("year")) continue;
    Speech s{j["year"].get<int>(), e.path().filename().string(), squash_spaces(j["text"].get<std::string>())};
    if (!s.text.empty()) v.push_back(std::move(s));
  }
  std::sort(v.begin(), v.end(), [](const Speech& a, const Speech& b) {
    return a.year != b.year ? a.year < b.year : a.file < b.file;
  });
  return v;
}

void write_jsonl(const std::string& path, const std::vector<std::string>& texts) {
  std::ofstream f(path);
  for (const std::string& t : texts) f << json{{"text", t}}.dump() << "\n";
}

// Held-out record: the start of the most recent speech. Training records: ~600-character
// pieces of the speeches from 2015 to the year before it.
struct Data {
  std::string heldout, train;
  std::string heldout_text;
  std::string describe;
};

Data make_data(const std::string& dir, const std::string& sotu) {
  std::vector<Speech> sp = load_speeches(sotu);
  Data d;
  if (sp.size() < 2) return d;
  const Speech& last = sp.back();
  d.heldout_text = cut_at_space(last.text, 1500);
  d.heldout = dir + "/heldout.jsonl";
  write_jsonl(d.heldout, {d.heldout_text});
  std::vector<std::string> train;
  for (const Speech& s : sp) {
    if (&s == &last || s.year < 2015) continue;
    std::string rest = s.text;
    while (rest.size() > 300 && train.size() < 200) {
      std::string piece = cut_at_space(rest, 600);
      train.push_back(piece);
      rest = piece.size() < rest.size() ? rest.substr(piece.size() + 1) : "";
    }
  }
  d.train = dir + "/train.jsonl";
  write_jsonl(d.train, train);
  d.describe = "held-out: " + last.file + "; " + std::to_string(train.size()) + " training records (2015-" +
               std::to_string(last.year - 1) + ")";
  return d;
}

// Scores from one side: the ids, the per-position argmax, the perplexity over the record.
struct Scores {
  std::vector<int> ids, top1;
  double nll = 0, ppl = 0;
  int64_t tokens = 0;
};

Scores scores_of(const json& j) {
  Scores s;
  s.nll = j.at("nll").get<double>();
  s.ppl = j.at("ppl").get<double>();
  s.tokens = j.at("tokens").get<int64_t>();
  const json& r = j.at("records").at(0);
  s.ids = r.at("ids").get<std::vector<int>>();
  s.top1 = r.at("top1").get<std::vector<int>>();
  return s;
}

// Fraction of the scored positions where both sides predict the same next token.
double agreement(const Scores& a, const Scores& b, int* same = nullptr) {
  int n = 0;
  for (int t = 0; t < kScored; t++) n += a.top1.at(size_t(t)) == b.top1.at(size_t(t));
  if (same) *same = n;
  return double(n) / kScored;
}

// The check's environment; empty `skip` when everything is there.
struct Env {
  std::string model, sotu, nlc, skip;
};

Env find_env() {
  Env e;
  e.model = model_path();
  e.sotu = sotu_dir();
  e.nlc = node_llama_cpp_prefix();
  std::vector<std::string> missing;
  if (e.model.empty())
    missing.push_back("tinyllama-1.1b-chat-v1.0.IQ2_XXS.gguf in ${LOWRANK_CACHE:-~/.cache/lowrank} (scripts/fetch-tinyllama)");
  if (e.sotu.empty()) missing.push_back("the State of the Union corpus in ${LOWRANK_CACHE:-~/.cache/lowrank}/sotu (scripts/fetch-sotu)");
  if (!have_node()) missing.push_back("node (Node.js >= 20) on PATH");
  if (e.nlc.empty())
    missing.push_back("node-llama-cpp in $LOWRANK_NODE_LLAMA_CPP or ${LOWRANK_CACHE:-~/.cache/lowrank}/node-llama-cpp "
                      "(scripts/fetch-node-llama-cpp)");
  if (!fs::exists(cli())) missing.push_back(cli() + " (build the lowrank target)");
  for (size_t i = 0; i < missing.size(); i++) e.skip += (i ? "; " : "") + missing[i];
  return e;
}

class LlamaCpp : public ::testing::Test {
 protected:
  Env env;
  std::string dir, log;
  Data data;

  void SetUp() override {
    env = find_env();
    if (!env.skip.empty()) GTEST_SKIP() << "llama.cpp comparison skipped; missing: " << env.skip;
  }

  void prepare(const std::string& name) {
    dir = temp_dir(name);
    log = dir + "/stderr.log";
    data = make_data(dir, env.sotu);
    ASSERT_FALSE(data.heldout.empty()) << env.sotu << ": expected the speech JSON files";
    std::printf("[ llama.cpp ] %s\n", data.describe.c_str());
  }

  // lowrank eval --top1 on the held-out record truncated to BOS + kScored tokens.
  bool lowrank_eval(const std::string& adapter, const std::string& out_json, Scores& s, std::string model = "") {
    std::string out;
    if (model.empty()) model = env.model;
    std::string cmd = q(cli()) + " eval --model " + q(model) + " --data " + q(data.heldout) +
                      " --seq-len " + std::to_string(kScored + 1) + " --top1 --json";
    if (!adapter.empty()) cmd += " --adapter " + q(adapter);
    if (!run(cmd, log, out, adapter.empty() ? "lowrank eval --top1" : "lowrank eval --top1 --adapter")) return false;
    std::ofstream(out_json) << out;
    s = scores_of(last_json(out));
    EXPECT_EQ(s.tokens, kScored) << "the held-out text must have at least " << kScored + 1 << " tokens";
    EXPECT_EQ(s.ids.size(), size_t(kScored + 1));
    EXPECT_EQ(s.top1.size(), s.ids.size());
    return s.tokens == kScored && s.ids.size() == size_t(kScored + 1) && s.top1.size() == s.ids.size();
  }

  // llama.cpp on the ids lowrank scored (ids_json: a lowrank eval --top1 --json output).
  bool llama_score(const std::string& model, const std::string& lora, const std::string& ids_json, Scores& s) {
    std::string out;
    std::string cmd = "LOWRANK_NODE_LLAMA_CPP=" + q(env.nlc) + " node " + q(score_script()) + " --model " + q(model) +
                      " --ids " + q(ids_json) + " --threads 2";
    if (!lora.empty()) cmd += " --lora " + q(lora);
    if (!run(cmd, log, out, lora.empty() ? "llama.cpp score" : "llama.cpp score --lora")) return false;
    s = scores_of(last_json(out));
    EXPECT_EQ(s.tokens, kScored);
    return s.tokens == kScored && s.top1.size() == size_t(kScored + 1);
  }
};

double rel(double a, double b) { return a / b - 1.0; }

TEST_F(LlamaCpp, BaseModel) {
  ASSERT_NO_FATAL_FAILURE(prepare("llamacpp_base"));
  Scores lr, ll;
  ASSERT_TRUE(lowrank_eval("", dir + "/lowrank_base.json", lr));
  ASSERT_TRUE(llama_score(env.model, "", dir + "/lowrank_base.json", ll));
  ASSERT_EQ(ll.ids, lr.ids);

  int same = 0;
  const double agree = agreement(lr, ll, &same);
  std::printf("[ llama.cpp ] base model, %d positions: top-1 agreement %.1f %% (%d/%d); perplexity lowrank %.4f, "
              "llama.cpp %.4f (%+.2f %%)\n",
              kScored, 100 * agree, same, kScored, lr.ppl, ll.ppl, 100 * rel(ll.ppl, lr.ppl));
  EXPECT_GE(agree, kMinAgreement);
  EXPECT_LE(std::fabs(rel(ll.ppl, lr.ppl)), kPplTol) << "lowrank ppl " << lr.ppl << ", llama.cpp ppl " << ll.ppl;

  // Tokenization of the same text by each side (reported, not required to be equal: the
  // comparison above scores lowrank's ids on both sides).
  std::string out_lr, out_ll;
  if (run(q(cli()) + " tokenize --model " + q(env.model) + " --json " + q(data.heldout_text), log, out_lr) &&
      run("LOWRANK_NODE_LLAMA_CPP=" + q(env.nlc) + " node " + q(score_script()) + " --model " + q(env.model) +
              " --tokenize-only --text " + q(data.heldout_text),
          log, out_ll)) {
    const json jl = last_json(out_lr);
    const std::vector<int> a = (jl.is_object() ? jl.at("ids") : jl).get<std::vector<int>>();
    const std::vector<int> b = last_json(out_ll).at("ids").get<std::vector<int>>();
    size_t diff = 0;
    while (diff < a.size() && diff < b.size() && a[diff] == b[diff]) diff++;
    if (a == b)
      std::printf("[ llama.cpp ] tokenization of the %zu-character text: identical (%zu ids incl. BOS)\n",
                  data.heldout_text.size(), a.size());
    else
      std::printf("[ llama.cpp ] tokenization differs: lowrank %zu ids, llama.cpp %zu ids, first difference at %zu\n",
                  a.size(), b.size(), diff);
  }
}

TEST_F(LlamaCpp, AdapterAndMergedModel) {
  ASSERT_NO_FATAL_FAILURE(prepare("llamacpp_adapter"));
  const std::string adapter = dir + "/adapter", adapter_gguf = dir + "/adapter.gguf", merged = dir + "/merged.gguf";
  std::string out;
  ASSERT_TRUE(run(q(cli()) + " train --model " + q(env.model) + " --data " + q(data.train) + " --out " + q(adapter) +
                      " --r 8 --alpha 16 --targets q_proj,v_proj --seq-len 128 --steps " + std::to_string(kTrainSteps) +
                      " --lr 1e-3 --batch 1 --seed 0 --no-progress --json-log " + q(dir + "/train_log.jsonl"),
                  log, out, "lowrank train"));
  ASSERT_TRUE(run(q(cli()) + " export --model " + q(env.model) + " --adapter " + q(adapter) +
                      " --format gguf --out " + q(adapter_gguf),
                  log, out, "lowrank export --format gguf"));
  // F16 merged tensors (llama-export-lora's choice): the merge itself is checked; and the
  // default, each adapted tensor in the base's own type (IQ2_XXS has no encoder without an
  // importance matrix: Q2_K), whose requantization cost is printed.
  ASSERT_TRUE(run(q(cli()) + " merge --model " + q(env.model) + " --adapter " + q(adapter) + " --out " + q(merged) +
                      " --dtype f16",
                  log, out, "lowrank merge --dtype f16 (GGUF)"));
  const std::string merged_keep = dir + "/merged-keep.gguf";
  ASSERT_TRUE(run(q(cli()) + " merge --model " + q(env.model) + " --adapter " + q(adapter) + " --out " + q(merged_keep),
                  log, out, "lowrank merge (GGUF, keep types)"));

  Scores lr_base, lr_ad, ll_base, ll_ad, ll_merged, ll_keep;
  const std::string ids = dir + "/lowrank_base.json";
  ASSERT_TRUE(lowrank_eval("", ids, lr_base));
  ASSERT_TRUE(lowrank_eval(adapter, dir + "/lowrank_adapter.json", lr_ad));
  ASSERT_TRUE(llama_score(env.model, "", ids, ll_base));
  ASSERT_TRUE(llama_score(env.model, adapter_gguf, ids, ll_ad));
  ASSERT_TRUE(llama_score(merged, "", ids, ll_merged));
  ASSERT_TRUE(llama_score(merged_keep, "", ids, ll_keep));
  fs::remove(merged);
  fs::remove(merged_keep);

  int same = 0, same_merged = 0;
  const double agree = agreement(lr_ad, ll_ad, &same);
  const double agree_merged = agreement(ll_merged, ll_ad, &same_merged);
  const double r_lr = lr_ad.ppl / lr_base.ppl, r_ll = ll_ad.ppl / ll_base.ppl;
  std::printf("[ llama.cpp ] adapter (r 8, q_proj+v_proj, %d steps): top-1 agreement %.1f %% (%d/%d)\n", kTrainSteps,
              100 * agree, same, kScored);
  std::printf("[ llama.cpp ]   perplexity base -> adapter: lowrank %.4f -> %.4f (%+.2f %%), llama.cpp %.4f -> %.4f "
              "(%+.2f %%); ratio of the ratios %.4f\n",
              lr_base.ppl, lr_ad.ppl, 100 * (r_lr - 1), ll_base.ppl, ll_ad.ppl, 100 * (r_ll - 1), r_ll / r_lr);
  std::printf("[ llama.cpp ]   merged GGUF in llama.cpp: perplexity %.4f (%+.2f %% vs the unmerged adapter), top-1 "
              "agreement with the unmerged adapter %.1f %%\n",
              ll_merged.ppl, 100 * rel(ll_merged.ppl, ll_ad.ppl), 100 * agree_merged);
  std::printf("[ llama.cpp ]   merged keeping the base's types (q/v requantized IQ2_XXS -> Q2_K): perplexity %.4f "
              "(%+.2f %% vs the F16 merge, %+.2f %% vs the unmerged adapter; the base is %.4f)\n",
              ll_keep.ppl, 100 * rel(ll_keep.ppl, ll_merged.ppl), 100 * rel(ll_keep.ppl, ll_ad.ppl), ll_base.ppl);
  EXPECT_LT(ll_keep.ppl, ll_base.ppl) << "the requantized merge lost the adapter's improvement";

  EXPECT_GE(agree, kMinAgreement);
  // The adapter must move perplexity measurably, or "the same direction" means nothing.
  EXPECT_GT(std::fabs(std::log(r_lr)), 0.01) << "the trained adapter barely changes lowrank's perplexity";
  EXPECT_EQ(std::log(r_ll) > 0, std::log(r_lr) > 0) << "perplexity moves in opposite directions";
  EXPECT_LE(std::fabs(r_ll / r_lr - 1), kPplTol) << "relative perplexity change: lowrank " << r_lr << ", llama.cpp " << r_ll;
  EXPECT_LE(std::fabs(rel(ll_merged.ppl, ll_ad.ppl)), kPplTol)
      << "merged " << ll_merged.ppl << " vs unmerged adapter " << ll_ad.ppl;
}

// The real TinyLlama IQ2_XXS file requantized by `lowrank quantize` to Q4_K_M and to Q8_0:
// each loads in llama.cpp, scores within 2 % of llama.cpp on the original file, and lowrank
// reads it as llama.cpp does (top-1 agreement >= 90 % and perplexity within 2 %, the criteria
// of BaseModel). Q4_K_M is written with --uniform-imatrix (llama.cpp's importance-matrix
// quantizers with an all-ones importance, the bytes llama-quantize --imatrix writes with such a
// file): measured +1.6 % (2026-12-05). Without it (llama-quantize's default, also byte-identical)
// the re-rounding of 2-bit codebook weights to 4-bit levels costs +3.8 %; even with unrounded
// per-group scales and offsets the best 16-level affine fit of these IQ2_XXS weights has 2.3 %
// relative RMSE (blk.5.ffn_gate), so that target is out of reach of the default search.
TEST_F(LlamaCpp, RequantizedQ4KMAndQ8_0) {
  ASSERT_NO_FATAL_FAILURE(prepare("llamacpp_requant"));
  const std::string ids = dir + "/lowrank_base.json";
  Scores lr_base, ll_base;
  ASSERT_TRUE(lowrank_eval("", ids, lr_base));
  ASSERT_TRUE(llama_score(env.model, "", ids, ll_base));
  for (const auto& [type, flags] : {std::pair<std::string, std::string>{"Q4_K_M", " --uniform-imatrix"}, {"Q8_0", ""}}) {
    SCOPED_TRACE(type);
    const std::string out_model = dir + "/tinyllama-" + type + ".gguf";
    std::string out;
    ASSERT_TRUE(run(q(cli()) + " quantize --model " + q(env.model) + " --out " + q(out_model) + " --type " + type + flags,
                    log, out, ("lowrank quantize --type " + type + flags).c_str()));
    Scores lr, ll;
    ASSERT_TRUE(llama_score(out_model, "", ids, ll));
    ASSERT_TRUE(lowrank_eval("", dir + "/lowrank_" + type + ".json", lr, out_model));
    ASSERT_EQ(lr.ids, lr_base.ids);
    int same = 0;
    const double agree = agreement(lr, ll, &same);
    std::printf("[ llama.cpp ] requantized %s%s: llama.cpp perplexity %.4f (original %.4f, %+.2f %%); lowrank %.4f "
                "(%+.2f %% vs llama.cpp); top-1 agreement %.1f %% (%d/%d)\n",
                type.c_str(), flags.c_str(), ll.ppl, ll_base.ppl, 100 * rel(ll.ppl, ll_base.ppl), lr.ppl, 100 * rel(ll.ppl, lr.ppl), 100 * agree,
                same, kScored);
    EXPECT_LE(std::fabs(rel(ll.ppl, ll_base.ppl)), kPplTol) << "requantized vs original, both in llama.cpp";
    EXPECT_LE(std::fabs(rel(ll.ppl, lr.ppl)), kPplTol) << "llama.cpp vs lowrank on the requantized file";
    EXPECT_GE(agree, kMinAgreement);
    fs::remove(out_model);
  }
}

// `lowrank eval --top1` (no llama.cpp needed): on the tiny llama fixture with an adapter, each
// record's "ids" are the data set's tokenization and "top1" the argmax of the logits of a
// forward through the library at every position; the existing fields are still there.
TEST(EvalTop1, IdsAndArgmaxOfTheLogits) {
  const std::string model_dir = fixtures_dir() + "/tiny-llama/model";
  const std::string adapter_dir = fixtures_dir() + "/tiny-llama/adapters/qv-r4";
  if (!fs::exists(model_dir + "/model.safetensors") || !fs::exists(adapter_dir))
    GTEST_SKIP() << "fixtures not found at " << fixtures_dir();
  if (!fs::exists(cli())) GTEST_SKIP() << cli() << " not built";
  const std::string dir = temp_dir("eval_top1");
  const std::string data = dir + "/data.jsonl", log = dir + "/stderr.log";
  write_jsonl(data, {"The quick brown fox jumps over the lazy dog.", "Hello world, hello again",
                     "Once upon a time there was a tiny model that predicted the next token."});
  std::string out;
  ASSERT_TRUE(run(q(cli()) + " eval --model " + q(model_dir) + " --adapter " + q(adapter_dir + ":0.5") + " --data " +
                      q(data) + " --top1 --json",
                  log, out));
  const json j = last_json(out);
  ASSERT_TRUE(j.contains("nll") && j.contains("ppl") && j.contains("tokens"));

  Tokenizer tok = Tokenizer::from_hf_dir(model_dir);
  std::vector<Example> ex = load_jsonl(data, tok, 0);
  std::unique_ptr<Model> m = load_model(model_dir);
  m->keep_logits = true;
  const int slot = m->add_adapter(load_peft_adapter(adapter_dir));
  ASSERT_EQ(j.at("records").size(), ex.size());
  for (size_t i = 0; i < ex.size(); i++) {
    const json& r = j["records"][i];
    Batch b;
    b.B = 1;
    b.T = int64_t(ex[i].ids.size());
    b.ids = ex[i].ids;
    b.targets = ex[i].targets;
    b.row_adapters = {{{slot, 0.5f}}};
    const double sum = m->forward(b, false);
    const int64_t V = m->cfg.vocab;
    std::vector<int> want;
    for (int64_t t = 0; t < b.T; t++) {
      const float* row = m->logits().data() + t * V;
      want.push_back(int(std::max_element(row, row + V) - row));
    }
    EXPECT_EQ(r.at("ids").get<std::vector<int32_t>>(), ex[i].ids) << "record " << i;
    EXPECT_EQ(r.at("top1").get<std::vector<int>>(), want) << "record " << i;
    EXPECT_EQ(r.at("tokens").get<int64_t>(), ex[i].scored());
    EXPECT_NEAR(r.at("nll").get<double>(), sum / double(ex[i].scored()), 1e-6);
  }
  // Without --json the flag prints the lists too, and plain --per-record JSON has no lists.
  ASSERT_TRUE(run(q(cli()) + " eval --model " + q(model_dir) + " --data " + q(data) + " --top1", log, out));
  EXPECT_NE(out.find("top1 ["), std::string::npos) << out;
  ASSERT_TRUE(run(q(cli()) + " eval --model " + q(model_dir) + " --data " + q(data) + " --per-record --json", log, out));
  const json plain = last_json(out);
  EXPECT_FALSE(plain.at("records").at(0).contains("top1"));
  EXPECT_FALSE(plain.at("records").at(0).contains("ids"));
}

}  // namespace
