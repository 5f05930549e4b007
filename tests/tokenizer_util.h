// Hugging Face tokenizer dirs rebuilt from llama.cpp's SentencePiece vocabulary GGUFs (the
// Llama-2 and Phi-3 tokenizer.model pieces and scores), as transformers' LlamaConverter builds
// tokenizer.json from tokenizer.model. Used where a test needs a real Llama-2/Phi-3 tokenizer.
#pragma once
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/gguf.h"

namespace tokenizer_test {

using json = nlohmann::json;
using lowrank::GgufFile;

// A Llama-style tokenizer.json built from a SentencePiece GGUF the way transformers'
// LlamaConverter builds it from tokenizer.model: every piece, and as merges every split of a
// piece into two pieces, ordered by the piece's SentencePiece score (highest first; ties in id
// order, splits by the ids of their parts) - SentencePieceExtractor.extract.
inline json tokenizer_json_from_spm(const GgufFile& f, const std::vector<json>& added) {
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

inline json added_token(int id, const std::string& content, bool special, bool rstrip) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", rstrip},
          {"normalized", false}, {"special", special}};
}


// tokenizer.json + tokenizer_config.json of Llama-2 (phi3 = false) or Phi-3 in dir: added tokens
// as in the models' tokenizer.json (<unk> <s> </s>, and Phi-3's chat tokens, which swallow the
// whitespace after them (rstrip), as llama.cpp's Phi-3 rule assumes).
inline void write_spm_tokenizer_dir(const GgufFile& real, bool phi3, const std::string& dir) {
  const auto toks = real.get_string_array("tokenizer.ggml.tokens");
  const auto types = real.get_int_array("tokenizer.ggml.token_type");
  std::vector<json> added = {added_token(0, "<unk>", true, false), added_token(1, "<s>", true, false),
                             added_token(2, "</s>", !phi3, phi3)};
  for (size_t i = 32000; i < toks.size(); i++)
    if (toks[i].rfind("[PAD", 0) != 0) added.push_back(added_token(int(i), toks[i], types[i] == 3, toks[i] != "<|endoftext|>"));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << tokenizer_json_from_spm(real, added).dump();
  json tc = {{"bos_token", "<s>"}, {"eos_token", phi3 ? "<|endoftext|>" : "</s>"}, {"unk_token", "<unk>"},
             {"add_bos_token", true}, {"add_eos_token", false}};
  std::ofstream(dir + "/tokenizer_config.json") << tc.dump();
}

}  // namespace tokenizer_test
