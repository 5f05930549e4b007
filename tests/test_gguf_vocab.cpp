// GGUF tokenizers without downloads: tokenizer.ggml.add_space_prefix = false is honoured (it was
// silently ignored), and everything lowrank does not tokenize as llama.cpp does is refused with
// one line naming the file and the key (the CLI exits 2). The real vocabularies are checked
// against llama.cpp in test_tokenizer_families.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "fixture_util.h"
#include "proc_util.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

using json = nlohmann::json;
using namespace lowrank;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// The tiny-llama fixture's tokenizer (Mistral-7B's SentencePiece vocabulary) as a GGUF.
std::string mistral_dir() { return fixtures_dir() + "/tiny-llama/model"; }

GgufWriter mistral_vocab() {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  gguf_write_tokenizer(w, mistral_dir(), "mistral");
  return w;
}

Tokenizer load(const GgufWriter& w, const std::string& name) {
  std::vector<uint8_t> b = w.to_bytes();
  return gguf_tokenizer(GgufFile::from_memory(b.data(), b.size(), name));
}

// The error of loading `w` as a tokenizer ("" when it loads).
std::string load_error(const GgufWriter& w, const std::string& name) {
  try {
    load(w, name);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Byte-level vocabulary: the 256 GPT-2 byte characters, "ab" and "abc".
GgufWriter small_bpe(const std::string& pre) {
  GgufWriter w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
  std::vector<std::string> toks;
  for (int b = 0; b < 256; b++) {
    // GPT-2 bytes_to_unicode.
    int cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
      int n = 0;
      for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
      cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) s.push_back(char(cp));
    else {
      s.push_back(char(0xC0 | (cp >> 6)));
      s.push_back(char(0x80 | (cp & 0x3F)));
    }
    toks.push_back(s);
  }
  toks.push_back("ab");
  toks.push_back("abc");
  w.set_string_array("tokenizer.ggml.tokens", toks);
  w.set_i32_array("tokenizer.ggml.token_type", std::vector<int32_t>(toks.size(), 1));
  w.set_string_array("tokenizer.ggml.merges", {"a b", "ab c"});
  w.set_u32("tokenizer.ggml.bos_token_id", 0);
  w.set_u32("tokenizer.ggml.eos_token_id", 0);
  return w;
}

}  // namespace

TEST(GgufVocab, SentencePieceWithoutSpacePrefix) {
  if (!fs::exists(mistral_dir() + "/tokenizer.json")) GTEST_SKIP() << mistral_dir() << " is missing";
  GgufWriter w = mistral_vocab();
  Tokenizer with = load(w, "with-prefix.gguf");
  w.set_bool("tokenizer.ggml.add_space_prefix", false);
  Tokenizer without = load(w, "without-prefix.gguf");
  const std::string text = "Hello world";
  const std::vector<int32_t> a = with.encode(text, false), b = without.encode(text, false);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  // With the prefix the first piece is "▁Hello"; without it no piece may start with "▁".
  EXPECT_EQ(with.id_to_token(a[0]).rfind("\xE2\x96\x81", 0), 0u) << with.id_to_token(a[0]);
  EXPECT_NE(without.id_to_token(b[0]).rfind("\xE2\x96\x81", 0), 0u) << without.id_to_token(b[0]);
  EXPECT_EQ(without.id_to_token(b[0]), "Hello");
  // Same as HF's tokenizer for this vocabulary without the Prepend("▁") normalizer (Gemma's form).
  json tj = json::parse(read_file(mistral_dir() + "/tokenizer.json"));
  tj["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}};
  Tokenizer hf = Tokenizer::from_json(tj.dump(), "", "no-prefix/tokenizer.json");
  for (const std::string& t : {std::string("Hello world"), std::string(" leading space"), std::string("a</s>b c")})
    EXPECT_EQ(without.encode(t, false), hf.encode(t, false)) << t;
  // Decoding keeps the text as it was (no leading space stripped).
  EXPECT_EQ(without.decode(without.encode(" leading space", false)), " leading space");
  EXPECT_EQ(with.decode(with.encode(" leading space", false)), " leading space");
  // The writer records the prefix explicitly, and off for Gemma-style tokenizer.json files.
  const std::vector<uint8_t> bytes = mistral_vocab().to_bytes();
  GgufFile f = GgufFile::from_memory(bytes.data(), bytes.size(), "mistral.gguf");
  ASSERT_NE(f.find("tokenizer.ggml.add_space_prefix"), nullptr);
  EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_space_prefix", false));
}

TEST(GgufVocab, SmallBpe) {
  Tokenizer t = load(small_bpe("gpt-2"), "small.gguf");
  // "abc" merges to one token; " ab" is "Ġ" + "ab".
  std::vector<int32_t> ids = t.encode("abc ab", false);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(t.id_to_token(ids[0]), "abc");
  EXPECT_EQ(t.id_to_token(ids[1]), "\xC4\xA0");
  EXPECT_EQ(t.id_to_token(ids[2]), "ab");
  EXPECT_EQ(t.decode(ids), "abc ab");
  // gpt-2: no BOS by default.
  EXPECT_EQ(t.encode("ab", true), (std::vector<int32_t>{256}));
  // llama-bpe: BOS by default (llama.cpp's default for the Llama-3 pre-tokenizer).
  Tokenizer l = load(small_bpe("llama-bpe"), "small-llama3.gguf");
  EXPECT_EQ(l.encode("ab", true), (std::vector<int32_t>{0, 256}));
}

TEST(GgufVocab, RefusesWhatItCannotTokenize) {
  auto expect_refused = [](const GgufWriter& w, const std::string& name, const std::string& key) {
    std::string e = load_error(w, name);
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find(key), std::string::npos) << e;
  };
  {
    GgufWriter w = small_bpe("gpt-2");
    w.set_string("tokenizer.ggml.model", "t5");
    expect_refused(w, "t5.gguf", "tokenizer.ggml.model");
  }
  {
    GgufWriter w = small_bpe("gpt-2");
    w.set_string("tokenizer.ggml.model", "bert");
    expect_refused(w, "bert.gguf", "tokenizer.ggml.model");
  }
  expect_refused(small_bpe("tekken"), "tekken.gguf", "tokenizer.ggml.pre");
  expect_refused(small_bpe("made-up"), "made-up.gguf", "tokenizer.ggml.pre");
  expect_refused(small_bpe(""), "no-pre.gguf", "tokenizer.ggml.pre");
  {
    GgufWriter w = small_bpe("gpt-2");
    w.remove("tokenizer.ggml.merges");
    expect_refused(w, "no-merges.gguf", "tokenizer.ggml.merges");
  }
  {
    GgufWriter w = small_bpe("gpt-2");
    w.set_i32_array("tokenizer.ggml.token_type", {1, 1, 1});
    expect_refused(w, "types.gguf", "tokenizer.ggml.token_type");
  }
  {
    GgufWriter w = small_bpe("gpt-2");
    w.set_u32("tokenizer.ggml.bos_token_id", 100000);
    expect_refused(w, "bos.gguf", "tokenizer.ggml.bos_token_id");
  }
  {
    GgufWriter w = small_bpe("gpt-2");
    w.remove("tokenizer.ggml.model");
    expect_refused(w, "none.gguf", "tokenizer.ggml.model");
  }
  {
    GgufWriter w = small_bpe("gpt-2");
    const std::vector<uint8_t> b = w.to_bytes();
    std::vector<std::string> toks = GgufFile::from_memory(b.data(), b.size(), "x").get_string_array("tokenizer.ggml.tokens");
    toks.back() = toks[0];  // a repeated token text: llama.cpp asserts on it
    w.set_string_array("tokenizer.ggml.tokens", toks);
    expect_refused(w, "dup.gguf", "repeats");
  }
}

// The CLI reports a refused tokenizer on one line naming the file and the key, exit code 2.
TEST(GgufVocab, CliRefusesUnknownPreTokenizer) {
  const std::string dir = temp_dir("gguf-vocab-cli");
  const std::string p = dir + "/unknown-pre.gguf";
  GgufWriter w = small_bpe("made-up");
  w.set_string("general.architecture", "llama");
  w.write(p);
  const std::string err = dir + "/stderr";
  const ProcResult r =
      run_process({std::string(LOWRANK_BINARY_DIR) + "/lowrank", "tokenize", "--model", p, "hello"}, "", err, "", 60);
  EXPECT_EQ(r.rc, 2);
  std::string e = read_file(err);
  EXPECT_EQ(std::count(e.begin(), e.end(), '\n'), 1) << e;
  EXPECT_EQ(e.rfind("lowrank: error: ", 0), 0u) << e;
  EXPECT_NE(e.find(p), std::string::npos) << e;
  EXPECT_NE(e.find("tokenizer.ggml.pre"), std::string::npos) << e;
}

TEST(GgufVocab, WriterRefusesUnknownPreTokenizers) {
  const std::string src = fixtures_dir() + "/tiny-gpt2/model";
  if (!fs::exists(src + "/tokenizer.json")) GTEST_SKIP() << src << " is missing";
  const std::string dir = temp_dir("gguf-vocab-writer");
  json tj = json::parse(read_file(src + "/tokenizer.json"));
  // A Split regex llama.cpp has no pre-tokenizer for.
  tj["pre_tokenizer"] = {{"type", "Sequence"},
                         {"pretokenizers",
                          json::array({{{"type", "Split"}, {"pattern", {{"Regex", "\\p{L}+|\\s+|."}}}, {"behavior", "Isolated"}, {"invert", false}},
                                       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  std::ofstream(dir + "/tokenizer.json") << tj.dump();
  GgufWriter w;
  try {
    gguf_write_tokenizer(w, dir, "llama");
    ADD_FAILURE() << "an unknown pre-tokenizer was converted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/tokenizer.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.pre"), std::string::npos) << e.what();
  }
  try {
    gguf_write_tokenizer(w, src, "mamba");
    ADD_FAILURE() << "model_type mamba was converted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos) << e.what();
  }
}
