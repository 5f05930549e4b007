// Tokenizers of the model families lowrank supports, on their real vocabularies, checked against
// implementations that are not lowrank's:
//   - llama.cpp (node-llama-cpp, vocabulary-only load): the ids of the GGUF tokenizer;
//   - transformers.js (@lenml/tokenizers) on tokenizer.json: the ids of the HF-dir tokenizer;
//   - Hugging Face tokenizers itself, through the ids llama.cpp's repository keeps next to its
//     vocabulary GGUFs (models/ggml-vocab-*.gguf.out, written by convert_hf_to_gguf_update.py);
//   - @huggingface/jinja (transformers.js's Jinja) for chat templates.
//
// Families (scripts/fetch-tokenizers puts the vocabularies in ${LOWRANK_CACHE:-~/.cache/lowrank}/tokenizers):
//   llama3 (Llama-3 BPE, no BOS in its post-processor), llama3_1 (Llama-3.1 BPE), qwen3 (Qwen BPE),
//   gemma3 (Gemma-3 SentencePiece-style BPE, no space prefix), mistral (the tiny-llama fixture's
//   tokenizer.json is Mistral-7B's SentencePiece vocabulary), gpt2 (the tiny-gpt2 fixture),
//   smollm (SmolLM's pre-tokenizer - digits split one by one - on the GPT-2 vocabulary), and
//   llama.cpp's own converted GGUFs of Llama-2 (llama-spm), Llama-3 (llama-bpe), Qwen (qwen2),
//   Phi-3 (phi-3) and GPT-2 (gpt-2).
// Each family test loads its tokenizers once. Needs Node.js, node-llama-cpp
// (scripts/fetch-node-llama-cpp) and scripts/fetch-tokenizers; skips saying what is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "fixture_util.h"
#include "proc_util.h"
#include "io/gguf.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

using json = nlohmann::json;
using namespace lowrank;
namespace fs = std::filesystem;

namespace {

using Ids = std::vector<int32_t>;

std::string cache_dir() {
  if (const char* c = std::getenv("LOWRANK_CACHE"); c && *c) return c;
  if (const char* h = std::getenv("HOME")) return std::string(h) + "/.cache/lowrank";
  return "";
}
std::string tok_dir() { return cache_dir() + "/tokenizers"; }
std::string llamacpp_vocab_dir() { return tok_dir() + "/llama.cpp"; }

std::string node_llama_cpp_prefix() {
  std::vector<std::string> c;
  if (const char* e = std::getenv("LOWRANK_NODE_LLAMA_CPP"); e && *e) c.push_back(e);
  c.push_back(cache_dir() + "/node-llama-cpp");
  for (const std::string& d : c)
    if (fs::exists(d + "/node_modules/node-llama-cpp/package.json")) return d;
  return "";
}

// What a reference run needs that is missing ("" when everything is there).
bool have_node() { return run_process({"node", "--version"}, "", "").rc == 0; }

std::string missing_reference_tools() {
  if (!have_node()) return "Node.js (node) is not in PATH";
  if (node_llama_cpp_prefix().empty()) return "node-llama-cpp is missing (scripts/fetch-node-llama-cpp)";
  if (!fs::exists(tok_dir() + "/js/node_modules/@lenml/tokenizers/package.json"))
    return "@lenml/tokenizers is missing (scripts/fetch-tokenizers)";
  return "";
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs scripts/tokenizer_reference.mjs on `request`; null (and a test failure) when it fails.
json run_reference(const json& request, const std::string& work) {
  const std::string req = work + "/request.json", out = work + "/reference.json", log = work + "/reference.log";
  std::ofstream(req) << request.dump();
  const std::string script = std::string(LOWRANK_SOURCE_DIR) + "/scripts/tokenizer_reference.mjs";
  const auto t0 = std::chrono::steady_clock::now();
  const ProcResult pr = run_process({"node", script, req}, out, log, "", 600);
  std::printf("[ reference ] %5.1f s  node scripts/tokenizer_reference.mjs\n", seconds_since(t0));
  if (pr.rc != 0) {
    std::string l = read_file(log);
    if (l.size() > 3000) l = "..." + l.substr(l.size() - 3000);
    ADD_FAILURE() << "reference run failed (exit " << pr.rc << (pr.timed_out ? ", timed out" : "") << "): node "
                  << script << " " << req << "\n" << l;
    return json();
  }
  try {
    return json::parse(read_file(out));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "reference output is not JSON: " << e.what();
    return json();
  }
}

struct Text {
  std::string name, text;
};

std::vector<Text> family_texts() {
  json j = json::parse(read_file(std::string(LOWRANK_SOURCE_DIR) + "/tests/data/tokenizer_texts.json"));
  std::vector<Text> out;
  for (const auto& e : j) out.push_back({e["name"].get<std::string>(), e["text"].get<std::string>()});
  return out;
}

// llama.cpp's models/ggml-vocab-*.gguf.inp / .out: texts and Hugging Face's ids (no special tokens).
bool read_inp_out(const std::string& gguf, std::vector<Text>& texts, std::vector<Ids>& ids) {
  std::string inp = read_file(gguf + ".inp"), out = read_file(gguf + ".out");
  if (inp.empty() || out.empty()) return false;
  const std::string sep = "\n__ggml_vocab_test__\n";
  size_t pos = 0;
  while (true) {
    size_t e = inp.find(sep, pos);
    if (e == std::string::npos) break;
    texts.push_back({"inp[" + std::to_string(texts.size()) + "]", inp.substr(pos, e - pos)});
    pos = e + sep.size();
  }
  std::istringstream os(out);
  std::string line;
  while (std::getline(os, line)) {
    Ids v;
    std::istringstream ls(line);
    int32_t x;
    while (ls >> x) v.push_back(x);
    ids.push_back(v);
  }
  return texts.size() == ids.size() && !texts.empty();
}

std::string show(const Ids& v, size_t from = 0, size_t n = 24) {
  std::string s = "[";
  for (size_t i = from; i < v.size() && i < from + n; i++) s += (i > from ? " " : "") + std::to_string(v[i]);
  return s + (v.size() > from + n ? " ...]" : "]");
}

// "" when equal, else where they first differ.
std::string diff(const Ids& a, const Ids& b) {
  if (a == b) return "";
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) i++;
  size_t from = i > 4 ? i - 4 : 0;
  return "first difference at " + std::to_string(i) + " (sizes " + std::to_string(a.size()) + " vs " +
         std::to_string(b.size()) + "): " + show(a, from) + " vs " + show(b, from);
}

Ids ids_of(const json& j) { return j.get<Ids>(); }

// llama.cpp's ids with the special tokens llama_tokenize(add_special = true) adds.
Ids with_special(const json& ref, const Ids& ids) {
  Ids out;
  if (ref["add_bos"].get<bool>()) out.push_back(ref["bos"].get<int32_t>());
  out.insert(out.end(), ids.begin(), ids.end());
  if (ref["add_eos"].get<bool>()) out.push_back(ref["eos"].get<int32_t>());
  return out;
}

// A vocabulary-only GGUF as convert_hf_to_gguf.py --vocab-only writes it: the hyperparameters
// llama.cpp reads before the vocabulary (a "llama" architecture; it does not change the
// tokenizer) and the tokenizer metadata of the HF dir.
void write_vocab_gguf(const std::string& hf_dir, const std::string& model_type, const std::string& out,
                      const std::function<void(GgufWriter&)>& edit = nullptr) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "vocab");
  w.set_u32("llama.context_length", 4096);
  w.set_u32("llama.embedding_length", 64);
  w.set_u32("llama.block_count", 1);
  w.set_u32("llama.feed_forward_length", 128);
  w.set_u32("llama.attention.head_count", 1);
  w.set_u32("llama.attention.head_count_kv", 1);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  gguf_write_tokenizer(w, hf_dir, model_type);
  if (edit) edit(w);
  w.write(out);
}

// A GGUF written from the family's HF dir, possibly edited afterwards (to check GGUFs that other
// converters write), with what the writer must have chosen and what may legitimately differ.
struct Variant {
  std::string name;                           // reference job name
  std::function<void(GgufWriter&)> edit;      // applied to the written metadata
  std::string want_model, want_pre;           // tokenizer.ggml.model / .pre in the file
  // Texts on which llama.cpp's tokenization of the GGUF legitimately differs from HF's of
  // tokenizer.json, with the reason; checked to differ (so a change on either side shows).
  std::vector<std::pair<std::string, std::string>> hf_vs_llamacpp;
  bool cross_check = true;  // false: the edited GGUF is not meant to match HF's tokenization
};

struct Family {
  std::string name;        // test-tmp folder
  std::string src;         // folder holding tokenizer.json (+ tokenizer_config.json)
  std::string model_type;  // config.json model_type
  json config;             // the rest of config.json (vocab_size, special ids)
  std::string tokenizer_json_override;  // non-empty: write this tokenizer.json instead of linking
  std::vector<Variant> variants;        // the first: lowrank's writer as it is
};

std::string reason_for(const std::vector<std::pair<std::string, std::string>>& list, const std::string& name) {
  for (const auto& [n, r] : list)
    if (n == name) return r;
  return "";
}

// Whether a decoded text holds what the references' space clean-up would change
// (" ." " ?" " !" " ," and " '").
bool cleanup_sensitive(const std::string& s) {
  for (const char* p : {" .", " ?", " !", " ,", " '"})
    if (s.find(p) != std::string::npos) return true;
  return false;
}

bool has_special_text(const Tokenizer& t, const Ids& ids) {
  for (int32_t id : ids)
    if (t.is_special(id) || t.id_to_token(id).rfind("<", 0) == 0) return true;
  return false;
}

std::string names(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& n : v) s += " " + n;
  return s.empty() ? " none" : s;
}

// Loads the HF tokenizer once, writes and loads each variant's GGUF, gets every reference in one
// run of scripts/tokenizer_reference.mjs, then compares text by text.
void check_family(const Family& fam) {
  if (!fs::exists(fam.src + "/tokenizer.json")) GTEST_SKIP() << fam.src << "/tokenizer.json is missing (scripts/fetch-tokenizers)";
  if (std::string m = missing_reference_tools(); !m.empty()) GTEST_SKIP() << m;
  const std::string work = temp_dir("families-" + fam.name), hf_dir = work + "/hf";
  fs::create_directories(hf_dir);
  if (fam.tokenizer_json_override.empty()) fs::create_symlink(fs::absolute(fam.src + "/tokenizer.json"), hf_dir + "/tokenizer.json");
  else std::ofstream(hf_dir + "/tokenizer.json") << fam.tokenizer_json_override;
  if (fs::exists(fam.src + "/tokenizer_config.json"))
    fs::create_symlink(fs::absolute(fam.src + "/tokenizer_config.json"), hf_dir + "/tokenizer_config.json");
  json cfg = fam.config;
  cfg["model_type"] = fam.model_type;
  std::ofstream(hf_dir + "/config.json") << cfg.dump(1);

  auto t0 = std::chrono::steady_clock::now();
  Tokenizer hf = Tokenizer::from_hf_dir(hf_dir);
  std::printf("[ %-12s ] load tokenizer.json %.2f s\n", fam.name.c_str(), seconds_since(t0));
  std::vector<std::string> paths;
  std::vector<GgufFile> files;
  std::vector<Tokenizer> ggufs;
  for (const Variant& v : fam.variants) {
    paths.push_back(work + "/" + v.name + ".gguf");
    t0 = std::chrono::steady_clock::now();
    write_vocab_gguf(hf_dir, fam.model_type, paths.back(), v.edit);
    const double t_write = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    files.push_back(GgufFile::open(paths.back()));
    ggufs.push_back(gguf_tokenizer(files.back()));
    std::printf("[ %-12s ] write GGUF %.2f s, load GGUF %.2f s\n", v.name.c_str(), t_write, seconds_since(t0));
    EXPECT_EQ(files.back().get_string("tokenizer.ggml.model", ""), v.want_model) << v.name;
    EXPECT_EQ(files.back().get_string("tokenizer.ggml.pre", ""), v.want_pre) << v.name;
  }

  const std::vector<Text> texts = family_texts();
  json req;
  req["texts"] = json::array();
  for (const Text& t : texts) req["texts"].push_back(t.text);
  req["llama"] = json::array();
  for (size_t k = 0; k < fam.variants.size(); k++) req["llama"].push_back({{"name", fam.variants[k].name}, {"gguf", paths[k]}});
  req["hf"] = json::array({{{"name", fam.name}, {"dir", hf_dir}}});
  json ref = run_reference(req, work);
  if (ref.is_null()) return;
  const json& hr = ref["hf"][fam.name];

  // HF dir: lowrank == transformers.js (ids with and without special tokens, decode).
  bool js_cleans = true;  // transformers.js cleans up spaces unless the config says not to
  if (fs::exists(hf_dir + "/tokenizer_config.json")) {
    json tc = json::parse(read_file(hf_dir + "/tokenizer_config.json"));
    if (tc.contains("clean_up_tokenization_spaces") && tc["clean_up_tokenization_spaces"].is_boolean())
      js_cleans = tc["clean_up_tokenization_spaces"].get<bool>();
  }
  std::vector<Ids> hf_ids;
  int n_hf = 0, n_decode = 0;
  for (size_t i = 0; i < texts.size(); i++) {
    SCOPED_TRACE(fam.name + " text \"" + texts[i].name + "\"");
    hf_ids.push_back(hf.encode(texts[i].text, false));
    if (std::string d = diff(hf_ids.back(), ids_of(hr["ids"][i])); d.empty()) n_hf++;
    else ADD_FAILURE() << "HF dir: lowrank vs transformers.js: " << d;
    EXPECT_EQ(hf.encode(texts[i].text, true), ids_of(hr["ids_special"][i]));
    const std::string dec = hf.decode(hf_ids.back());
    if (!(js_cleans && cleanup_sensitive(dec))) {
      EXPECT_EQ(dec, hr["decoded"][i].get<std::string>()) << "lowrank's HF decode vs transformers.js";
      n_decode++;
    }
  }
  std::printf("[ %-12s ] %zu texts: HF dir == transformers.js %d, decode compared %d\n", fam.name.c_str(),
              texts.size(), n_hf, n_decode);

  for (size_t k = 0; k < fam.variants.size(); k++) {
    const Variant& v = fam.variants[k];
    const Tokenizer& gg = ggufs[k];
    const json& lr = ref["llama"][v.name];
    const std::string pre_name = files[k].get_string("tokenizer.ggml.pre", "");
    // llama.cpp cleans up detokenized spaces for BPE vocabularies except these pre-tokenizers.
    const bool llama_cleans = v.want_model == "gpt2" && pre_name != "qwen2" && pre_name != "smollm";
    const bool spm_prefix = v.want_model == "llama" && files[k].get_bool("tokenizer.ggml.add_space_prefix", true);
    int n_llama = 0, n_cross = 0, n_roundtrip = 0, n_detok = 0;
    std::vector<std::string> crossed;
    for (size_t i = 0; i < texts.size(); i++) {
      const Text& t = texts[i];
      SCOPED_TRACE(v.name + " text \"" + t.name + "\"");
      // GGUF: lowrank == llama.cpp, with and without the special tokens.
      const Ids llama_ids = ids_of(lr["ids"][i]);
      const Ids g = gg.encode(t.text, false);
      if (std::string d = diff(g, llama_ids); d.empty()) n_llama++;
      else ADD_FAILURE() << "GGUF: lowrank vs llama.cpp: " << d;
      EXPECT_EQ(gg.encode(t.text, true), with_special(lr, llama_ids));
      // The two sides agree, except where HF and llama.cpp legitimately differ.
      const std::string why = reason_for(v.hf_vs_llamacpp, t.name);
      if (!v.cross_check) {
        if (hf_ids[i] != llama_ids) crossed.push_back(t.name);
      } else if (why.empty()) {
        if (std::string d = diff(hf_ids[i], llama_ids); d.empty()) n_cross++;
        else ADD_FAILURE() << "HF dir vs GGUF (llama.cpp): " << d;
        EXPECT_EQ(hf.encode(t.text, true), with_special(lr, llama_ids));
      } else {
        EXPECT_NE(hf_ids[i], llama_ids) << "HF and llama.cpp no longer differ here (" << why << "): drop the exception";
        crossed.push_back(t.name);
      }
      // Decoding: the GGUF tokenizer gives the text back, except that SentencePiece with a
      // space prefix puts a space after each special token (llama.cpp and HF do the same); and
      // it equals llama.cpp's detokenize where llama.cpp's space clean-up leaves the text alone.
      const std::string back = gg.decode(g);
      if (back == t.text) n_roundtrip++;
      else if (!(spm_prefix && has_special_text(gg, g))) ADD_FAILURE() << "GGUF decode(encode(text)) = \"" << back << "\"";
      if (!(llama_cleans && cleanup_sensitive(back))) {
        EXPECT_EQ(back, lr["detok"][i].get<std::string>()) << "lowrank's GGUF decode vs llama.cpp's detokenize";
        n_detok++;
      }
    }
    std::printf("[ %-12s ] %zu texts: GGUF == llama.cpp %d, HF dir == llama.cpp %d, GGUF round trip %d, decode "
                "compared with llama.cpp %d; HF and llama.cpp differ%s:%s\n",
                v.name.c_str(), texts.size(), n_llama, n_cross, n_roundtrip, n_detok,
                v.cross_check ? " (expected)" : " (not compared)", names(crossed).c_str());
  }
}

Variant plain(const std::string& name, const std::string& model, const std::string& pre) {
  Variant v;
  v.name = name;
  v.want_model = model;
  v.want_pre = pre;
  return v;
}

}  // namespace

TEST(TokenizerFamilies, Llama3) {
  Family f;
  f.name = "llama3";
  f.src = tok_dir() + "/llama3";
  f.model_type = "llama";
  f.config = {{"vocab_size", 128256}, {"bos_token_id", 128000}, {"eos_token_id", 128001}};
  f.variants.push_back(plain("llama3", "gpt2", "llama-bpe"));
  // As llama.cpp's converter labels this tokenizer.json: its pre-tokenizer hash is
  // Smaug-Llama-3's, the Llama-3 regex without ignore_merges.
  Variant smaug = plain("llama3_smaug", "gpt2", "smaug-bpe");
  smaug.edit = [](GgufWriter& w) { w.set_string("tokenizer.ggml.pre", "smaug-bpe"); };
  smaug.hf_vs_llamacpp = {{"khmer_vietnamese", "\"Việt\" is a token that BPE merges do not reach; tokenizer.json has "
                                               "ignore_merges (so has llama.cpp's llama-bpe), smaug-bpe does not"}};
  f.variants.push_back(smaug);
  check_family(f);
}

TEST(TokenizerFamilies, Llama31) {
  Family f;
  f.name = "llama3_1";
  f.src = tok_dir() + "/llama3_1";
  f.model_type = "llama";
  f.config = {{"vocab_size", 128256}, {"bos_token_id", 128000}, {"eos_token_id", json::array({128001, 128008, 128009})}};
  f.variants.push_back(plain("llama3_1", "gpt2", "llama-bpe"));
  check_family(f);
}

TEST(TokenizerFamilies, Qwen3) {
  Family f;
  f.name = "qwen3";
  f.src = tok_dir() + "/qwen3";
  f.model_type = "qwen3";
  f.config = {{"vocab_size", 151936}, {"bos_token_id", 151643}, {"eos_token_id", 151645}};
  Variant v = plain("qwen3", "gpt2", "qwen2");
  v.hf_vs_llamacpp = {
      {"nfd_accents", "tokenizer.json normalizes to NFC first; llama.cpp has no normalizer for BPE vocabularies"},
      {"spm_specials", "llama.cpp treats the plain token \"</s>\" (id 128247) as an end-of-generation control "
                       "token by its text, so it is cut out of the input; for HF it is ordinary text"}};
  f.variants.push_back(v);
  check_family(f);
}

TEST(TokenizerFamilies, Gemma3) {
  Family f;
  f.name = "gemma3";
  f.src = tok_dir() + "/gemma3";
  f.model_type = "gemma3";
  f.config = {{"vocab_size", 262208}, {"bos_token_id", 2}, {"eos_token_id", 1}, {"pad_token_id", 0}};
  f.variants.push_back(plain("gemma3", "llama", "default"));
  // As llama.cpp's converter writes it when there is no tokenizer.model: a BPE vocabulary whose
  // pre-tokenizer hash names granite-embed-multi-311m (llama.cpp's Gemma-4 style: "▁" for spaces,
  // split at newlines, <0xXX> byte fallback, BOS forced on).
  Variant bpe = plain("gemma3_bpe", "gpt2", "granite-embed-multi-311m");
  const std::string src = f.src;
  bpe.edit = [src](GgufWriter& w) {
    json tj = json::parse(read_file(src + "/tokenizer.json"));
    std::vector<std::string> merges;
    for (const auto& m : tj["model"]["merges"])
      merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "granite-embed-multi-311m");
    w.remove("tokenizer.ggml.scores");
    w.remove("tokenizer.ggml.add_space_prefix");
    w.set_string_array("tokenizer.ggml.merges", merges);
  };
  f.variants.push_back(bpe);
  check_family(f);
}

TEST(TokenizerFamilies, Mistral) {
  Family f;
  f.name = "mistral";
  f.src = fixtures_dir() + "/tiny-llama/model";
  f.model_type = "mistral";
  f.config = {{"vocab_size", 32000}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  f.variants.push_back(plain("mistral", "llama", "default"));
  check_family(f);
}

TEST(TokenizerFamilies, Gpt2) {
  Family f;
  f.name = "gpt2";
  f.src = fixtures_dir() + "/tiny-gpt2/model";
  f.model_type = "gpt2";
  f.config = {{"vocab_size", 50257}, {"bos_token_id", 50256}, {"eos_token_id", 50256}};
  f.variants.push_back(plain("gpt2", "gpt2", "gpt-2"));
  // llama.cpp's "default" BPE pre-tokenizer (what it uses for old files): lowrank must tokenize
  // exactly as llama.cpp; HF's GPT-2 pre-tokenizer differs by design.
  Variant def = plain("gpt2_default", "gpt2", "default");
  def.edit = [](GgufWriter& w) { w.set_string("tokenizer.ggml.pre", "default"); };
  def.cross_check = false;
  f.variants.push_back(def);
  check_family(f);
}

TEST(TokenizerFamilies, SmolLM) {
  // SmolLM's pre-tokenizer (each digit alone, then GPT-2's byte-level regex) on the GPT-2 vocabulary.
  Family f;
  f.name = "smollm";
  f.src = fixtures_dir() + "/tiny-gpt2/model";
  if (!fs::exists(f.src + "/tokenizer.json")) GTEST_SKIP() << f.src << "/tokenizer.json is missing";
  json tj = json::parse(read_file(f.src + "/tokenizer.json"));
  tj["pre_tokenizer"] = {{"type", "Sequence"},
                         {"pretokenizers",
                          json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                        {"use_regex", true}}})}};
  f.tokenizer_json_override = tj.dump();
  f.model_type = "llama";
  f.config = {{"vocab_size", 50257}, {"bos_token_id", 50256}, {"eos_token_id", 50256}};
  f.variants.push_back(plain("smollm", "gpt2", "smollm"));
  check_family(f);
}

// lowrank's GGUF reader on the vocabulary GGUFs that llama.cpp's own converter wrote (not
// lowrank's writer): its ids == llama.cpp's on those files, and == the ids Hugging Face's
// tokenizers gave for llama.cpp's test texts (the .out files next to them).
TEST(TokenizerFamilies, LlamaCppConvertedVocabularies) {
  const std::vector<std::string> names = {"llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2"};
  for (const auto& n : names)
    if (!fs::exists(llamacpp_vocab_dir() + "/ggml-vocab-" + n + ".gguf"))
      GTEST_SKIP() << llamacpp_vocab_dir() << "/ggml-vocab-" << n << ".gguf is missing (scripts/fetch-tokenizers)";
  if (std::string m = missing_reference_tools(); !m.empty()) GTEST_SKIP() << m;
  const std::string work = temp_dir("families-llamacpp-vocabs");
  // Texts: llama.cpp's own test texts (the same for every vocabulary) and the family texts.
  std::vector<Text> inp;
  std::vector<Ids> unused;
  ASSERT_TRUE(read_inp_out(llamacpp_vocab_dir() + "/ggml-vocab-llama-bpe.gguf", inp, unused));
  std::vector<Text> texts = inp;
  for (const Text& t : family_texts()) texts.push_back(t);
  json req;
  req["texts"] = json::array();
  for (const Text& t : texts) req["texts"].push_back(t.text);
  req["llama"] = json::array();
  for (const auto& n : names) req["llama"].push_back({{"name", n}, {"gguf", llamacpp_vocab_dir() + "/ggml-vocab-" + n + ".gguf"}});
  json ref = run_reference(req, work);
  if (ref.is_null()) return;

  for (const auto& n : names) {
    const std::string gguf = llamacpp_vocab_dir() + "/ggml-vocab-" + n + ".gguf";
    SCOPED_TRACE(gguf);
    std::vector<Text> vt;
    std::vector<Ids> hf_ids;
    ASSERT_TRUE(read_inp_out(gguf, vt, hf_ids));
    ASSERT_EQ(vt.size(), inp.size());
    Tokenizer tok = gguf_tokenizer(gguf);
    const json& lr = ref["llama"][n];
    int n_llama = 0, n_hf = 0, n_hf_llama = 0;
    std::string hf_differs;
    for (size_t i = 0; i < texts.size(); i++) {
      SCOPED_TRACE(n + " text " + texts[i].name + " \"" + texts[i].text.substr(0, 40) + "\"");
      const Ids mine = tok.encode(texts[i].text, false);
      const Ids llama_ids = ids_of(lr["ids"][i]);
      if (std::string d = diff(mine, llama_ids); d.empty()) n_llama++;
      else ADD_FAILURE() << "lowrank vs llama.cpp: " << d;
      EXPECT_EQ(tok.encode(texts[i].text, true), with_special(lr, llama_ids));
      if (i < inp.size()) {
        if (mine == hf_ids[i]) n_hf++;
        if (llama_ids == hf_ids[i]) n_hf_llama++;
        else hf_differs += " " + texts[i].name;
        // Where llama.cpp agrees with Hugging Face, lowrank does too (the loop above makes
        // lowrank == llama.cpp everywhere); where it does not, the difference is llama.cpp's.
        EXPECT_EQ(mine == hf_ids[i], llama_ids == hf_ids[i]);
      }
    }
    std::printf("[ %-9s ] %zu texts: lowrank == llama.cpp %d; on llama.cpp's %zu test texts lowrank == HF %d, "
                "llama.cpp == HF %d (llama.cpp differs from HF on:%s)\n",
                n.c_str(), texts.size(), n_llama, inp.size(), n_hf, n_hf_llama,
                hf_differs.empty() ? " none" : hf_differs.c_str());
  }
}

// The writer against llama.cpp's own converter: lowrank's tokenizer.ggml.tokens, token_type and
// merges for the Llama-3 tokenizer.json, the GPT-2 fixture and Qwen3's tokenizer.json equal
// those of the GGUFs convert_hf_to_gguf.py made from Meta-Llama-3-8B, GPT-2 and Qwen1.5 (the
// same base vocabulary; Qwen3 adds special tokens after id 151645).
TEST(TokenizerFamilies, WriterMatchesLlamaCppConverter) {
  struct Case {
    std::string src, model_type, ref;
    json config;
    int64_t compare_ids;  // -1: all
  };
  const std::vector<Case> cases = {
      {tok_dir() + "/llama3", "llama", "llama-bpe", {{"vocab_size", 128256}, {"bos_token_id", 128000}, {"eos_token_id", 128001}}, -1},
      {fixtures_dir() + "/tiny-gpt2/model", "gpt2", "gpt-2", {{"vocab_size", 50257}}, -1},
      {tok_dir() + "/qwen3", "qwen3", "qwen2", {{"vocab_size", 151936}, {"bos_token_id", 151643}}, 151646},
  };
  int checked = 0;
  for (const Case& c : cases) {
    const std::string ref_path = llamacpp_vocab_dir() + "/ggml-vocab-" + c.ref + ".gguf";
    if (!fs::exists(c.src + "/tokenizer.json") || !fs::exists(ref_path)) {
      std::printf("[ writer    ] skipped %s: %s or %s missing (scripts/fetch-tokenizers)\n", c.ref.c_str(),
                  (c.src + "/tokenizer.json").c_str(), ref_path.c_str());
      continue;
    }
    SCOPED_TRACE(c.src + " vs " + ref_path);
    const std::string work = temp_dir("writer-" + c.ref), hf_dir = work + "/hf";
    fs::create_directories(hf_dir);
    fs::create_symlink(fs::absolute(c.src + "/tokenizer.json"), hf_dir + "/tokenizer.json");
    if (fs::exists(c.src + "/tokenizer_config.json"))
      fs::create_symlink(fs::absolute(c.src + "/tokenizer_config.json"), hf_dir + "/tokenizer_config.json");
    json cfg = c.config;
    cfg["model_type"] = c.model_type;
    std::ofstream(hf_dir + "/config.json") << cfg.dump();
    GgufWriter w;
    gguf_write_tokenizer(w, hf_dir, c.model_type);
    const std::vector<uint8_t> bytes = w.to_bytes();
    GgufFile mine = GgufFile::from_memory(bytes.data(), bytes.size(), "written");
    GgufFile ref = GgufFile::open(ref_path);
    EXPECT_EQ(mine.get_string("tokenizer.ggml.model", ""), ref.get_string("tokenizer.ggml.model", "?"));
    EXPECT_EQ(mine.get_string("tokenizer.ggml.pre", ""), ref.get_string("tokenizer.ggml.pre", "?"));
    auto a_tok = mine.get_string_array("tokenizer.ggml.tokens"), b_tok = ref.get_string_array("tokenizer.ggml.tokens");
    auto a_ty = mine.get_int_array("tokenizer.ggml.token_type"), b_ty = ref.get_int_array("tokenizer.ggml.token_type");
    ASSERT_EQ(a_tok.size(), b_tok.size());
    ASSERT_EQ(a_ty.size(), b_ty.size());
    const size_t n = c.compare_ids < 0 ? a_tok.size() : size_t(c.compare_ids);
    size_t bad_tok = 0, bad_ty = 0;
    for (size_t i = 0; i < n; i++) {
      if (a_tok[i] != b_tok[i] && bad_tok++ < 5) ADD_FAILURE() << "token " << i << ": " << a_tok[i] << " vs " << b_tok[i];
      if (a_ty[i] != b_ty[i] && bad_ty++ < 5) ADD_FAILURE() << "token_type " << i << ": " << a_ty[i] << " vs " << b_ty[i];
    }
    EXPECT_EQ(mine.get_string_array("tokenizer.ggml.merges"), ref.get_string_array("tokenizer.ggml.merges"));
    EXPECT_EQ(mine.get_int("tokenizer.ggml.bos_token_id", -1), ref.get_int("tokenizer.ggml.bos_token_id", -1));
    std::printf("[ writer    ] %s: %zu of %zu tokens and types, %zu merges equal to llama.cpp's converter (%zu / %zu differ)\n",
                c.ref.c_str(), n, a_tok.size(), ref.get_string_array("tokenizer.ggml.merges").size(), bad_tok, bad_ty);
    checked++;
  }
  if (checked == 0) GTEST_SKIP() << "no tokenizer to compare (scripts/fetch-tokenizers)";
}

// Chat templates of real models rendered by lowrank's Jinja subset exactly as @huggingface/jinja
// (transformers.js's engine, with transformers' trim_blocks / lstrip_blocks) renders them, for
// conversations with and without system prompts: the templates of the tokenizer_config.json
// files above and those llama.cpp keeps for its chat tests (models/templates).
TEST(TokenizerFamilies, ChatTemplates) {
  if (!have_node()) GTEST_SKIP() << "Node.js (node) is not in PATH";
  if (node_llama_cpp_prefix().empty()) GTEST_SKIP() << "node-llama-cpp is missing (it brings @huggingface/jinja)";
  struct Tmpl {
    std::string name, source, bos, eos;
  };
  std::vector<Tmpl> tmpls;
  for (const char* fam : {"llama3", "llama3_1", "qwen3", "gemma3"}) {
    const std::string p = tok_dir() + "/" + fam + "/tokenizer_config.json";
    if (!fs::exists(p)) continue;
    json tc = json::parse(read_file(p));
    auto tok = [&](const char* k) {
      const json& v = tc.contains(k) ? tc[k] : json();
      return v.is_string() ? v.get<std::string>() : v.is_object() ? v.value("content", "") : std::string();
    };
    tmpls.push_back({fam, tc["chat_template"].get<std::string>(), tok("bos_token"), tok("eos_token")});
  }
  const std::string bos_ds = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string eos_ds = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::vector<std::array<std::string, 3>> jinja = {
      {"meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>"},
      {"meta-llama-Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>"},
      {"meta-llama-Llama-3.3-70B-Instruct", "<|begin_of_text|>", "<|eot_id|>"},
      {"Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>"},
      {"Qwen-Qwen3-0.6B", "", "<|im_end|>"},
      {"google-gemma-2-2b-it", "<bos>", "<eos>"},
      {"microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>"},
      {"mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>"},
      {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B", bos_ds, eos_ds},
      {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", bos_ds, eos_ds},
      {"HuggingFaceTB-SmolLM3-3B", "", "<|im_end|>"},
  };
  for (const auto& [name, bos, eos] : jinja) {
    const std::string p = llamacpp_vocab_dir() + "/templates/" + name + ".jinja";
    if (fs::exists(p)) tmpls.push_back({name, read_file(p), bos, eos});
  }
  if (tmpls.empty()) GTEST_SKIP() << "no chat template found (scripts/fetch-tokenizers)";
  const json convs = json::parse(read_file(std::string(LOWRANK_SOURCE_DIR) + "/tests/data/chat_conversations.json"));
  json req;
  req["chat"] = json::array();
  std::vector<std::vector<nlohmann::ordered_json>> contexts;
  for (const Tmpl& t : tmpls) {
    json job = {{"name", t.name}, {"template", t.source}, {"contexts", json::array()}};
    contexts.emplace_back();
    for (const auto& c : convs) {
      nlohmann::ordered_json ctx;
      ctx["messages"] = nlohmann::ordered_json::parse(c["messages"].dump());
      ctx["add_generation_prompt"] = c["add_generation_prompt"];
      ctx["bos_token"] = t.bos;
      ctx["eos_token"] = t.eos;
      ctx["date_string"] = "26 Jul 2024";  // Llama 3.x; else it would ask for today's date
      job["contexts"].push_back(json::parse(ctx.dump()));
      contexts.back().push_back(ctx);
    }
    req["chat"].push_back(job);
  }
  json ref = run_reference(req, temp_dir("families-chat"));
  if (ref.is_null()) return;
  for (size_t k = 0; k < tmpls.size(); k++) {
    const Tmpl& t = tmpls[k];
    SCOPED_TRACE("template " + t.name);
    int same = 0, both_refuse = 0;
    std::unique_ptr<ChatTemplate> ct;
    std::string parse_error;
    try {
      ct = std::make_unique<ChatTemplate>(t.source);
    } catch (const Error& e) {
      parse_error = e.what();
    }
    for (size_t i = 0; i < convs.size(); i++) {
      SCOPED_TRACE("conversation " + convs[i]["name"].get<std::string>());
      const json& r = ref["chat"][t.name][i];
      std::string mine, err = parse_error;
      if (ct) {
        try {
          mine = ct->render_json(contexts[k][i]);
        } catch (const Error& e) {
          err = e.what();
        }
      }
      if (r.contains("error")) {
        // The template itself refuses the conversation (raise_exception), on both sides.
        EXPECT_FALSE(err.empty()) << "@huggingface/jinja failed (" << r["error"] << ") but lowrank rendered:\n" << mine;
        if (!err.empty()) both_refuse++;
        continue;
      }
      ASSERT_TRUE(err.empty()) << "lowrank failed: " << err;
      if (mine == r["text"].get<std::string>()) same++;
      else EXPECT_EQ(mine, r["text"].get<std::string>());
    }
    std::printf("[ chat      ] %-42s %d of %zu conversations rendered identically, %d refused by the template on both sides\n",
                t.name.c_str(), same, convs.size(), both_refuse);
  }
}

namespace {

// A Llama-style tokenizer.json built from a SentencePiece GGUF the way transformers'
// LlamaConverter builds it from tokenizer.model: every piece, and as merges every split of a
// piece into two pieces, ordered by the piece's SentencePiece score (highest first; ties in id
// order, splits by the ids of their parts) - SentencePieceExtractor.extract.
json tokenizer_json_from_spm(const GgufFile& f, const std::vector<json>& added) {
  const auto toks = f.get_string_array("tokenizer.ggml.tokens");
  const auto scores = f.get_float_array("tokenizer.ggml.scores");
  const auto types = f.get_int_array("tokenizer.ggml.token_type");
  std::unordered_map<std::string, int32_t> id;
  const size_t n_pieces = 32000;  // the SentencePiece model's pieces (Phi-3 appends added tokens)
  for (size_t i = 0; i < n_pieces; i++) id[toks[i]] = int32_t(i);
  struct M {
    float score;
    size_t order;
    std::string l, r;
  };
  std::vector<M> merges;
  for (size_t i = 0; i < n_pieces; i++) {
    const std::string& p = toks[i];
    std::vector<std::pair<std::pair<int32_t, int32_t>, std::pair<std::string, std::string>>> local;
    for (size_t k = 1; k < p.size(); k++) {
      if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;  // split at code points
      auto a = id.find(p.substr(0, k)), b = id.find(p.substr(k));
      if (a != id.end() && b != id.end()) local.push_back({{a->second, b->second}, {a->first, b->first}});
    }
    std::sort(local.begin(), local.end());
    for (auto& [ids, lr] : local) merges.push_back({scores[i], merges.size(), lr.first, lr.second});
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) { return a.score > b.score; });
  json vocab = json::object();
  for (size_t i = 0; i < n_pieces; i++) vocab[toks[i]] = i;
  json m = json::array();
  for (const M& x : merges) m.push_back(json::array({x.l, x.r}));
  json tj;
  tj["version"] = "1.0";
  tj["added_tokens"] = added;
  tj["normalizer"] = {{"type", "Sequence"},
                      {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                                                   {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}};
  tj["pre_tokenizer"] = nullptr;
  tj["post_processor"] = {{"type", "TemplateProcessing"},
                          {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                          {"pair", json::array()},
                          {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  tj["decoder"] = {{"type", "Sequence"},
                   {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                             {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                             {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  tj["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"fuse_unk", true},
                 {"byte_fallback", true}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", m}};
  (void)types;
  return tj;
}

json added_token(int id, const std::string& content, bool special, bool rstrip) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", rstrip},
          {"normalized", false}, {"special", special}};
}

}  // namespace

// lowrank's SentencePiece scores (from merge ranks) against the real ones: Llama-2's and Phi-3's
// tokenizer.json rebuilt from llama.cpp's GGUFs of their tokenizer.model (checked against the
// ids Hugging Face gave, the .out files), written by lowrank's writer, tokenize in llama.cpp
// exactly as the GGUFs with the real SentencePiece scores do.
TEST(TokenizerFamilies, SentencePieceScoresFromMerges) {
  for (const char* n : {"llama-spm", "phi-3"})
    if (!fs::exists(llamacpp_vocab_dir() + "/ggml-vocab-" + n + ".gguf"))
      GTEST_SKIP() << llamacpp_vocab_dir() << "/ggml-vocab-" << n << ".gguf is missing (scripts/fetch-tokenizers)";
  if (std::string m = missing_reference_tools(); !m.empty()) GTEST_SKIP() << m;
  const std::string work = temp_dir("families-spm-scores");
  std::vector<Text> texts;
  std::vector<Ids> unused;
  ASSERT_TRUE(read_inp_out(llamacpp_vocab_dir() + "/ggml-vocab-llama-spm.gguf", texts, unused));
  const size_t n_inp = texts.size();
  for (const Text& t : family_texts()) texts.push_back(t);
  texts.push_back({"phi3_chat", "<|system|>\nBe brief.<|end|>\n<|user|>\n  Hi there<|end|>\n<|assistant|>\n Hello!<|end|>"});

  json req;
  req["texts"] = json::array();
  for (const Text& t : texts) req["texts"].push_back(t.text);
  req["llama"] = json::array();
  struct Case {
    std::string name, model_type;
    std::vector<Ids> hf_out;
    std::string real, mine;
  };
  std::vector<Case> cases;
  for (const std::string n : {"llama-spm", "phi-3"}) {
    Case c;
    c.name = n;
    c.model_type = n == "phi-3" ? "phi3" : "llama";
    c.real = llamacpp_vocab_dir() + "/ggml-vocab-" + n + ".gguf";
    std::vector<Text> vt;
    ASSERT_TRUE(read_inp_out(c.real, vt, c.hf_out));
    GgufFile real = GgufFile::open(c.real);
    const auto toks = real.get_string_array("tokenizer.ggml.tokens");
    const auto types = real.get_int_array("tokenizer.ggml.token_type");
    // Added tokens as in the models' tokenizer.json: <unk> <s> </s>, and Phi-3's chat tokens,
    // which swallow the whitespace after them (rstrip), as llama.cpp's Phi-3 rule assumes.
    std::vector<json> added = {added_token(0, "<unk>", true, false), added_token(1, "<s>", true, false),
                               added_token(2, "</s>", c.name == "llama-spm", c.name == "phi-3")};
    for (size_t i = 32000; i < toks.size(); i++)
      if (toks[i].rfind("[PAD", 0) != 0)
        added.push_back(added_token(int(i), toks[i], types[i] == 3, toks[i] != "<|endoftext|>"));
    const std::string hf_dir = work + "/" + n;
    fs::create_directories(hf_dir);
    std::ofstream(hf_dir + "/tokenizer.json") << tokenizer_json_from_spm(real, added).dump();
    json tc = {{"bos_token", "<s>"}, {"eos_token", c.name == "phi-3" ? "<|endoftext|>" : "</s>"}, {"unk_token", "<unk>"},
               {"add_bos_token", true}, {"add_eos_token", false}};
    std::ofstream(hf_dir + "/tokenizer_config.json") << tc.dump();
    std::ofstream(hf_dir + "/config.json") << json({{"model_type", c.model_type}, {"vocab_size", toks.size()}}).dump();
    // The rebuilt tokenizer.json is Hugging Face's: same ids as HF gave for llama.cpp's texts.
    Tokenizer hf = Tokenizer::from_hf_dir(hf_dir);
    int same = 0;
    for (size_t i = 0; i < n_inp; i++) same += hf.encode(texts[i].text, false) == c.hf_out[i];
    EXPECT_EQ(same, int(n_inp)) << n << ": the rebuilt tokenizer.json does not tokenize as Hugging Face did";
    // lowrank's writer; general.name as llama.cpp's converter sets it for Phi-3 (its Phi-3 rule).
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_string("general.name", c.name == "phi-3" ? "Phi3" : "llama-spm");
    for (const auto& [k, v] : real.metadata())
      if (k.rfind("llama.", 0) == 0) w.set_raw(k, v);
    w.set_u32("llama.context_length", 4096);
    w.set_u32("llama.embedding_length", 64);
    w.set_u32("llama.block_count", 1);
    w.set_u32("llama.feed_forward_length", 128);
    w.set_u32("llama.attention.head_count", 1);
    w.set_u32("llama.attention.head_count_kv", 1);
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_write_tokenizer(w, hf_dir, c.model_type);
    c.mine = work + "/" + n + "-lowrank.gguf";
    w.write(c.mine);
    GgufFile mine = GgufFile::open(c.mine);
    EXPECT_EQ(mine.get_string_array("tokenizer.ggml.tokens"), toks);
    const auto my_types = mine.get_int_array("tokenizer.ggml.token_type");
    int type_diff = 0;
    for (size_t i = 0; i < toks.size(); i++) type_diff += my_types[i] != types[i];
    std::printf("[ %-9s ] lowrank's GGUF: %zu tokens as llama.cpp's converter, %d token types differ "
                "(<unk> control instead of unknown, padding unused instead of unknown); %d of %zu HF ids reproduced\n",
                n.c_str(), toks.size(), type_diff, same, n_inp);
    req["llama"].push_back({{"name", n + "-real"}, {"gguf", c.real}});
    req["llama"].push_back({{"name", n + "-lowrank"}, {"gguf", c.mine}});
    cases.push_back(c);
  }
  json ref = run_reference(req, work);
  if (ref.is_null()) return;
  for (const Case& c : cases) {
    const json& a = ref["llama"][c.name + "-real"];
    const json& b = ref["llama"][c.name + "-lowrank"];
    Tokenizer mine = gguf_tokenizer(c.mine);
    Tokenizer hf = Tokenizer::from_hf_dir(work + "/" + c.name);
    int same = 0, hf_same = 0;
    for (size_t i = 0; i < texts.size(); i++) {
      SCOPED_TRACE(c.name + " text " + texts[i].name);
      const Ids ra = ids_of(a["ids"][i]), rb = ids_of(b["ids"][i]);
      if (std::string d = diff(rb, ra); d.empty()) same++;
      else ADD_FAILURE() << "llama.cpp on lowrank's GGUF vs on the converter's: " << d;
      EXPECT_EQ(mine.encode(texts[i].text, false), rb) << "lowrank vs llama.cpp on lowrank's GGUF";
      if (std::string d = diff(hf.encode(texts[i].text, false), ra); d.empty()) hf_same++;
      else ADD_FAILURE() << "lowrank's HF tokenizer vs llama.cpp: " << d;
    }
    std::printf("[ %-9s ] %zu texts: llama.cpp tokenizes lowrank's GGUF (scores from merge ranks) as the converter's "
                "(real SentencePiece scores) on %d; lowrank's HF-dir tokenizer == llama.cpp on %d\n", c.name.c_str(),
                texts.size(), same, hf_same);
  }
}
