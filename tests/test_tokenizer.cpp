#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/mmap_file.h"
#include "tokenizer/tok_unicode.h"
#include "tokenizer/tokenizer.h"

using namespace lowrank;
using json = nlohmann::json;

namespace {

std::string fixture_dir(const std::string& model) {
  return std::string(LOWRANK_SOURCE_DIR) + "/../shared/fixtures/hf/" + model + "/";
}

json load_expected(const std::string& model) {
  std::ifstream f(fixture_dir(model) + "expected.json");
  EXPECT_TRUE(f.good()) << "missing fixture for " << model;
  return json::parse(f);
}

const Tokenizer& gpt2() {
  static const Tokenizer t = Tokenizer::from_hf_dir(fixture_dir("tiny-gpt2") + "model");
  return t;
}

const Tokenizer& llama() {
  static const Tokenizer t = Tokenizer::from_hf_dir(fixture_dir("tiny-llama") + "model");
  return t;
}

std::vector<int32_t> ids_of(const json& a) { return a.get<std::vector<int32_t>>(); }

// Ids of the given token strings (each must exist).
std::vector<int32_t> tids(const Tokenizer& t, std::initializer_list<const char*> toks) {
  std::vector<int32_t> out;
  for (const char* s : toks) {
    int32_t id = t.token_to_id(s);
    EXPECT_GE(id, 0) << "token not in vocab: " << s;
    out.push_back(id);
  }
  return out;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// GPT-2 byte-level image of a UTF-8 string (printable bytes map to themselves, others to 256+n).
std::string byte_level(const std::string& s) {
  std::string out;
  int table[256];
  int n = 0;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? b : 256 + n++;
  }
  for (unsigned char c : s) {
    int cp = table[c];
    if (cp < 0x80) {
      out.push_back(char(cp));
    } else {
      out.push_back(char(0xC0 | (cp >> 6)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

void expect_error_mentions(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected lowrank::Error mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lowrank::Error, got another exception: " << e.what();
  }
}

}  // namespace

// ---------------------------------------------------------------- fixtures (HF reference output)

TEST(TokenizerFixtures, Gpt2MatchesHF) {
  json e = load_expected("tiny-gpt2");
  const Tokenizer& t = gpt2();
  for (const auto& item : e["base"]["texts"]) {
    std::string text = item["text"];
    EXPECT_EQ(t.encode(text), ids_of(item["ids"])) << text;
    EXPECT_EQ(t.decode(t.encode(text)), text);
    EXPECT_EQ(t.decode(t.encode(text), true), text);
  }
  const json& g = e["base"]["greedy"];
  EXPECT_EQ(t.encode(g["prompt"].get<std::string>()), ids_of(g["prompt_ids"]));
}

TEST(TokenizerFixtures, LlamaMatchesHF) {
  json e = load_expected("tiny-llama");
  const Tokenizer& t = llama();
  for (const auto& item : e["base"]["texts"]) {
    std::string text = item["text"];
    std::vector<int32_t> ids = t.encode(text);
    EXPECT_EQ(ids, ids_of(item["ids"])) << text;
    EXPECT_EQ(t.decode(ids, true), text);
    EXPECT_EQ(t.decode(ids, false), "<s> " + text);  // HF: "<s>" + " The..." (Strip only cuts a leading space)
    std::vector<int32_t> no_bos(ids.begin() + 1, ids.end());
    EXPECT_EQ(t.encode(text, false), no_bos);
    EXPECT_EQ(t.decode(no_bos), text);
  }
  const json& g = e["base"]["greedy"];
  EXPECT_EQ(t.encode(g["prompt"].get<std::string>()), ids_of(g["prompt_ids"]));
}

TEST(TokenizerFixtures, SpecialIdsAndConfig) {
  const Tokenizer& g = gpt2();
  EXPECT_EQ(g.vocab_size(), 50257);
  EXPECT_EQ(g.bos_id(), 50256);
  EXPECT_EQ(g.eos_id(), 50256);
  EXPECT_EQ(g.pad_id(), -1);
  EXPECT_EQ(g.bos_token(), "<|endoftext|>");
  EXPECT_EQ(g.token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(g.id_to_token(50256), "<|endoftext|>");
  EXPECT_EQ(g.id_to_token(15496), "Hello");
  EXPECT_EQ(g.id_to_token(-5), "");
  EXPECT_EQ(g.id_to_token(1 << 30), "");
  EXPECT_EQ(g.token_to_id("definitely not a token"), -1);
  EXPECT_EQ(g.chat_template(), "");
  EXPECT_TRUE(g.is_special(50256));
  EXPECT_FALSE(g.is_special(15496));

  const Tokenizer& l = llama();
  EXPECT_EQ(l.vocab_size(), 32000);
  EXPECT_EQ(l.bos_id(), 1);
  EXPECT_EQ(l.eos_id(), 2);
  EXPECT_EQ(l.bos_token(), "<s>");
  EXPECT_EQ(l.eos_token(), "</s>");
  EXPECT_EQ(l.id_to_token(13), "<0x0A>");
  EXPECT_TRUE(l.is_special(0));
  EXPECT_TRUE(l.is_special(2));

  // Moves and copies are cheap handles to the same state.
  Tokenizer a = gpt2();
  Tokenizer b = std::move(a);
  EXPECT_EQ(b.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
}

// ---------------------------------------------------------------- hand cases, GPT-2 (byte-level BPE)

TEST(TokenizerGpt2, HandCases) {
  const Tokenizer& t = gpt2();
  EXPECT_EQ(t.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(t.decode({}), "");
  EXPECT_EQ(t.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(t.encode(" Hello"), tids(t, {"ĠHello"}));
  EXPECT_EQ(t.encode("\n"), (std::vector<int32_t>{198}));
  EXPECT_EQ(t.encode("\n\n"), (std::vector<int32_t>{628}));
  // `\s+(?!\S)` leaves the last space to the next word.
  EXPECT_EQ(t.encode("a  b"), tids(t, {"a", "Ġ", "Ġb"}));
  EXPECT_EQ(t.encode("a   b"), cat({t.encode("a"), t.encode("  "), tids(t, {"Ġb"})}));
  EXPECT_EQ(t.encode("hi \n"), cat({tids(t, {"hi"}), t.encode(" \n")}));
  // Contractions are split off.
  EXPECT_EQ(t.encode("don't"), tids(t, {"don", "'t"}));
  // Added special token inside text.
  EXPECT_EQ(t.encode("<|endoftext|>"), (std::vector<int32_t>{50256}));
  EXPECT_EQ(t.encode("hello<|endoftext|>world"), (std::vector<int32_t>{31373, 50256, 6894}));
  EXPECT_EQ(t.encode("Hello <|endoftext|> world"), cat({t.encode("Hello "), {50256}, t.encode(" world")}));
  EXPECT_EQ(t.decode({31373, 50256, 6894}), "hello<|endoftext|>world");
  EXPECT_EQ(t.decode({31373, 50256, 6894}, true), "helloworld");
  // add_special_tokens has no effect: the template only holds $A.
  EXPECT_EQ(t.encode("Hello world", false), t.encode("Hello world"));
}

TEST(TokenizerGpt2, NonAsciiIsByteLevel) {
  const Tokenizer& t = gpt2();
  for (std::string s : {"🦀 crabs", "你好，世界", "naïve café", "emoji 😀😀 and 𝔘", "tab\tand\r\nCRLF  ",
                        "Ünïcödé   spaces\n\n\nend"}) {
    std::vector<int32_t> ids = t.encode(s);
    std::string joined;
    for (int32_t id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, t.vocab_size());
      joined += t.id_to_token(id);
    }
    EXPECT_EQ(joined, byte_level(s)) << s;
    EXPECT_EQ(t.decode(ids), s);
  }
  // Invalid UTF-8 is replaced by U+FFFD before tokenizing (HF only sees valid strings).
  EXPECT_EQ(t.decode(t.encode("a\xff" "b")), "a\xEF\xBF\xBD" "b");
  // Decoding a lone byte of a multi-byte character gives U+FFFD like from_utf8_lossy.
  std::vector<int32_t> crab = t.encode("🦀");
  ASSERT_GE(crab.size(), 2u);
  EXPECT_EQ(t.decode({crab[0]}).substr(0, 3), "\xEF\xBF\xBD");
}

// ---------------------------------------------------------------- hand cases, Llama (SPM-style BPE)

TEST(TokenizerLlama, HandCases) {
  const Tokenizer& t = llama();
  EXPECT_EQ(t.encode(""), (std::vector<int32_t>{1}));
  EXPECT_EQ(t.encode("", false), std::vector<int32_t>{});
  // Byte fallback for a character missing from the vocabulary.
  ASSERT_EQ(t.token_to_id("🦀"), -1);
  EXPECT_EQ(t.encode("🦀"), cat({{1}, tids(t, {"▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"})}));
  EXPECT_EQ(t.decode(t.encode("🦀"), true), "🦀");
  // Characters that are in the vocabulary stay whole.
  EXPECT_EQ(t.encode("😀", false), tids(t, {"▁", "😀"}));
  EXPECT_EQ(t.encode("\n", false), tids(t, {"▁", "<0x0A>"}));
  EXPECT_EQ(t.encode("a b", false), tids(t, {"▁a", "▁b"}));
  for (std::string s : {"Hello  world", "a   b", "line one\nline two\n\n", "你好，世界 漢字", "🦀 and 🫠 emoji",
                        "  leading", "trailing  ", "tabs\there", "naïve café ñ"}) {
    std::vector<int32_t> ids = t.encode(s);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 1);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < t.vocab_size());
    EXPECT_EQ(t.decode(ids, true), s) << s;
  }
  // Special tokens inside the text; each text piece gets its own "▁" prefix (Prepend normalizer).
  EXPECT_EQ(t.encode("Hi<s>there"), cat({{1}, tids(t, {"▁Hi"}), {1}, tids(t, {"▁there"})}));
  EXPECT_EQ(t.encode("Hi</s>"), cat({{1}, tids(t, {"▁Hi"}), {2}}));
  EXPECT_EQ(t.decode(t.encode("Hi</s>"), true), "Hi");
  // Unknown ids are skipped when decoding.
  EXPECT_EQ(t.decode({-1, 99999999, 15359}), "Hi");
}

// ---------------------------------------------------------------- synthetic tokenizer.json files

namespace {

// Metaspace-style BPE with string merges, unk fusing, added tokens with lstrip, NFC, digits.
const char* kMetaspaceJson = R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 0, "content": "<unk>", "special": true, "normalized": false},
    {"id": 1, "content": "<s>", "special": true, "normalized": false},
    {"id": 2, "content": "</s>", "special": true, "normalized": false},
    {"id": 3, "content": "<mask>", "special": true, "normalized": false, "lstrip": true},
    {"id": 23, "content": "<sep>", "special": false, "normalized": false}
  ],
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}]},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
    {"type": "Digits", "individual_digits": true}]},
  "post_processor": {"type": "TemplateProcessing", "single": "$A </s>",
    "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
  "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
  "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<mask>": 3, "▁": 4, "h": 5, "e": 6, "l": 7, "o": 8,
              "w": 9, "r": 10, "d": 11, "ll": 12, "▁h": 13, "▁he": 14, "llo": 15, "▁hello": 16,
              "he": 17, "▁w": 18, "or": 19, "é": 20, "1": 21, "2": 22},
    "merges": ["l l", "▁ h", "▁h e", "ll o", "▁he llo", "h e", "▁ w", "o r"]}
})";

// Llama-3 style: Split regex + ByteLevel without regex, ignore_merges, object template pieces.
std::string byte_level_json(bool ignore_merges) {
  return std::string(R"({
  "added_tokens": [{"id": 17, "content": "<|bos|>", "special": true, "normalized": false}],
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
  "post_processor": {"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
    {"type": "TemplateProcessing",
     "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
     "pair": [], "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [17], "tokens": ["<|bos|>"]}}}]},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "ignore_merges": )") +
         (ignore_merges ? "true" : "false") + R"(,
    "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "1": 5, "2": 6, "3": 7, "4": 8, "5": 9,
              "ll": 10, "llo": 11, "he": 12, "hello": 13, "Ġhello": 14, "12": 15, "123": 16},
    "merges": [["l", "l"], ["ll", "o"], ["h", "e"], ["he", "llo"], ["1", "2"], ["12", "3"]]}
})";
}

}  // namespace

TEST(TokenizerSynthetic, MetaspaceDigitsAddedTokens) {
  Tokenizer t = Tokenizer::from_json(kMetaspaceJson, "", "meta/tokenizer.json");
  using V = std::vector<int32_t>;
  EXPECT_EQ(t.encode("hello hello", false), (V{16, 16}));
  EXPECT_EQ(t.encode("hello hello"), (V{16, 16, 2}));
  EXPECT_EQ(t.encode("world", false), (V{18, 19, 7, 11}));
  // Text after an added token is not at the start: prepend_scheme "first" adds no "▁".
  EXPECT_EQ(t.encode("<mask>hello", false), (V{3, 17, 15}));
  // lstrip swallows the space before <mask>; the space after stays with "world".
  EXPECT_EQ(t.encode("hello <mask> world", false), (V{16, 3, 18, 19, 7, 11}));
  // Without lstrip the space stays as a lone "▁".
  EXPECT_EQ(t.encode("hello <sep> world", false), (V{16, 4, 23, 18, 19, 7, 11}));
  // Unknown characters are fused into one <unk>.
  EXPECT_EQ(t.encode("hello xyz", false), (V{16, 4, 0}));
  // Digits are isolated one by one (3 is unknown).
  EXPECT_EQ(t.encode("hello 123", false), (V{16, 4, 21, 22, 0}));
  // NFC composes e + U+0301 into é.
  EXPECT_EQ(t.encode("e\xCC\x81", false), (V{4, 20}));
  EXPECT_EQ(t.encode("\xC3\xA9", false), (V{4, 20}));
  EXPECT_EQ(t.decode({16, 18, 19, 7, 11}), "hello world");
  EXPECT_EQ(t.decode({16, 3, 18, 19, 7, 11, 2}, true), "hello world");
  EXPECT_EQ(t.token_to_id("<sep>"), 23);
  EXPECT_FALSE(t.is_special(23));
  EXPECT_EQ(t.vocab_size(), 24);
  EXPECT_EQ(t.bos_id(), -1);  // no tokenizer_config
}

TEST(TokenizerSynthetic, SplitByteLevelIgnoreMerges) {
  using V = std::vector<int32_t>;
  Tokenizer t = Tokenizer::from_json(byte_level_json(true), R"({"bos_token": {"content": "<|bos|>"},
      "eos_token": "<|bos|>", "chat_template": [{"name": "default", "template": "{{ x }}"}]})", "l3/tokenizer.json");
  EXPECT_EQ(t.encode("hello hello 12345"), (V{17, 13, 14, 4, 16, 8, 9}));
  EXPECT_EQ(t.encode("hello hello 12345", false), (V{13, 14, 4, 16, 8, 9}));
  EXPECT_EQ(t.decode(t.encode("hello hello 12345")), "<|bos|>hello hello 12345");
  EXPECT_EQ(t.decode(t.encode("hello hello 12345"), true), "hello hello 12345");
  EXPECT_EQ(t.bos_id(), 17);
  EXPECT_EQ(t.eos_id(), 17);
  EXPECT_EQ(t.chat_template(), "{{ x }}");

  Tokenizer u = Tokenizer::from_json(byte_level_json(false), "", "l3/tokenizer.json");
  // Without ignore_merges "Ġhello" cannot be built from merges.
  EXPECT_EQ(u.encode("hello hello", false), (V{13, 4, 13}));
}

TEST(TokenizerSynthetic, ConfigAddsBosWithoutPostProcessor) {
  std::string js = R"({"model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]},
                      "added_tokens": [{"id": 0, "content": "<s>", "special": true, "normalized": false}]})";
  Tokenizer t = Tokenizer::from_json(js, R"({"bos_token": "<s>", "add_bos_token": true})", "x/tokenizer.json");
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{0, 3, 3}));
  EXPECT_EQ(t.encode("abab", false), (std::vector<int32_t>{3, 3}));
  EXPECT_EQ(t.decode({0, 3, 3}), "<s> ab ab");  // no decoder: tokens joined by spaces
}

TEST(TokenizerSynthetic, ConfigFlagsRebuildPostProcessor) {
  // transformers v5: add_bos_token/add_eos_token in tokenizer_config.json replace the
  // tokenizer.json post-processor by "[bos] $A [eos]" (a missing flag counts as false).
  std::string js = read_text_file(fixture_dir("tiny-llama") + "model/tokenizer.json");
  using V = std::vector<int32_t>;
  const std::string names = R"("bos_token": "<s>", "eos_token": "</s>")";
  Tokenizer eos_only = Tokenizer::from_json(js, "{" + names + R"(, "add_eos_token": true})", "l/tokenizer.json");
  EXPECT_EQ(eos_only.encode("Hi"), (V{15359, 2}));
  EXPECT_EQ(eos_only.encode("Hi", false), (V{15359}));
  Tokenizer both = Tokenizer::from_json(js, "{" + names + R"(, "add_bos_token": true, "add_eos_token": true})", "l/tokenizer.json");
  EXPECT_EQ(both.encode("Hi"), (V{1, 15359, 2}));
  Tokenizer none = Tokenizer::from_json(js, "{" + names + R"(, "add_bos_token": false})", "l/tokenizer.json");
  EXPECT_EQ(none.encode("Hi"), (V{15359}));
  Tokenizer plain = Tokenizer::from_json(js, "{" + names + "}", "l/tokenizer.json");
  EXPECT_EQ(plain.encode("Hi"), (V{1, 15359}));  // tokenizer.json's TemplateProcessing
  expect_error_mentions([&] { Tokenizer::from_json(js, R"({"add_bos_token": "yes"})", "l/tokenizer.json"); },
                        "l/tokenizer_config.json");
}

TEST(TokenizerSynthetic, ConfigSpecialTokens) {
  std::string js = read_text_file(fixture_dir("tiny-gpt2") + "model/tokenizer.json");
  // split_special_tokens: special tokens in the text are plain text.
  Tokenizer split = Tokenizer::from_json(js, R"({"split_special_tokens": true})", "g/tokenizer.json");
  std::vector<int32_t> ids = split.encode("<|endoftext|>");
  EXPECT_GT(ids.size(), 1u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256), 0);
  EXPECT_EQ(split.decode(ids), "<|endoftext|>");
  // A special token only named in the config is added after the vocabulary, like transformers.
  Tokenizer pad = Tokenizer::from_json(js, R"({"pad_token": {"content": "<pad>", "special": true}, "eos_token": "<|endoftext|>"})",
                                       "g/tokenizer.json");
  EXPECT_EQ(pad.token_to_id("<pad>"), 50257);
  EXPECT_EQ(pad.pad_id(), 50257);
  EXPECT_EQ(pad.pad_token(), "<pad>");
  EXPECT_EQ(pad.vocab_size(), 50258);
  EXPECT_EQ(pad.encode("hello<pad>"), (std::vector<int32_t>{31373, 50257}));
  EXPECT_EQ(pad.decode({31373, 50257}, true), "hello");
  EXPECT_EQ(pad.bos_id(), -1);
  EXPECT_EQ(pad.eos_id(), 50256);
}

// ---------------------------------------------------------------- GGUF SentencePiece (llama.cpp)

namespace {
Tokenizer small_spm(bool add_bos = true, bool add_eos = false) {
  std::vector<std::string> toks = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores = {0, 0, 0};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof(name), "<0x%02X>", b);
    toks.push_back(name);
    scores.push_back(0);
    types.push_back(6);
  }
  // ids 259.. : normal pieces with scores
  auto add = [&](const char* s, float sc) {
    toks.push_back(s);
    scores.push_back(sc);
    types.push_back(1);
  };
  add("▁", -1);     // 259
  add("a", -2);     // 260
  add("b", -3);     // 261
  add("c", -4);     // 262
  add("ab", -10);   // 263  (lower score than bc: bc merges first)
  add("bc", -1.5);  // 264
  add("▁a", -5);    // 265
  add("▁abc", -20); // 266  (reached as "▁a" + "bc")
  return Tokenizer::from_sentencepiece_vocab(toks, scores, types, 1, 2, 0, add_bos, add_eos);
}
}  // namespace

TEST(TokenizerSentencePiece, MergesByScoreBytesAndBos) {
  Tokenizer t = small_spm();
  using V = std::vector<int32_t>;
  // "▁abc": bc (-1.5) beats ▁a (-5) and ab (-10); then "▁a"+"bc" = "▁abc" is a token (-20).
  EXPECT_EQ(t.encode("abc"), (V{1, 266}));
  // "▁ab": ▁a (-5) beats ab (-10) -> "▁a", "b".
  EXPECT_EQ(t.encode("ab"), (V{1, 265, 261}));
  EXPECT_EQ(t.encode("ab", false), (V{265, 261}));
  // "▁b▁a": no "▁b" piece.
  EXPECT_EQ(t.encode("b a", false), (V{259, 261, 265}));
  // Byte fallback: é = C3 A9.
  EXPECT_EQ(t.encode("é", false), (V{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode(t.encode("é a"), true), "é a");
  EXPECT_EQ(t.decode({1, 265, 261}), "<s> ab");
  EXPECT_EQ(t.decode({1, 265, 261}, true), "ab");
  // Control tokens in text; text after a special token gets its own "▁".
  EXPECT_EQ(t.encode("a</s>a", false), (V{265, 2, 265}));
  EXPECT_EQ(t.encode(""), (V{1}));
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.vocab_size(), 267);
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(265));

  Tokenizer e = small_spm(false, true);
  EXPECT_EQ(e.encode("ab"), (V{265, 261, 2}));

  EXPECT_THROW(Tokenizer::from_sentencepiece_vocab({"a"}, {0, 1}, {1}, -1, -1, -1, false, false), Error);
  EXPECT_THROW(Tokenizer::from_sentencepiece_vocab({"a"}, {0}, {1}, 5, -1, -1, false, false), Error);
  EXPECT_THROW(Tokenizer::from_sentencepiece_vocab({}, {}, {}, -1, -1, -1, false, false), Error);
}

// ---------------------------------------------------------------- malformed input

TEST(TokenizerErrors, MalformedJsonThrows) {
  const std::string src = "bad/tokenizer.json";
  auto load = [&](const std::string& js) { return [js, src] { Tokenizer::from_json(js, "", src); }; };
  expect_error_mentions(load("not json at all"), src);
  expect_error_mentions(load(""), src);
  expect_error_mentions(load("[1, 2]"), src);
  expect_error_mentions(load("{}"), "model");
  expect_error_mentions(load(R"({"model": null})"), "model");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": [], "merges": []}})"), "vocab");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"), "vocab");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})"), "out of range");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"]]}})"),
                        "not in the vocabulary");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})"),
                        "merged token");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})"), "merges[0]");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}})"), "merges[0]");
  expect_error_mentions(load(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})"), "unsupported model");
  expect_error_mentions(load(R"({"model": {"type": "BPE", "vocab": {"a": 100000000}, "merges": []}})"), src);
  expect_error_mentions(load(R"({"version": "2.0", "model": {"type": "BPE", "vocab": {}, "merges": []}})"),
                        "version");
  const std::string ok_model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  expect_error_mentions(load("{" + ok_model + R"(, "pre_tokenizer": {"type": "Nope"}})"), "Nope");
  expect_error_mentions(load("{" + ok_model + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}})"),
                        "invalid regex");
  expect_error_mentions(load("{" + ok_model + R"(, "normalizer": {"type": "Precompiled"}})"), "Precompiled");
  expect_error_mentions(load("{" + ok_model + R"(, "decoder": {"type": "Strip", "content": "ab"}})"), "single character");
  expect_error_mentions(load("{" + ok_model + R"(, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {}}})"),
                        "<s>");
  expect_error_mentions(load("{" + ok_model + R"(, "added_tokens": {"a": 1}})"), "added_tokens");
  expect_error_mentions(load("{" + ok_model + R"(, "added_tokens": [{"id": 5}]})"), "content");
  expect_error_mentions(load("{" + ok_model + R"(, "normalizer": {"type": "Sequence", "normalizers": 3}})"), "normalizers");
  expect_error_mentions(load(std::string(100000, '[')), "deeply");
  // Unknown token as unk_token surfaces at encode time, still as lowrank::Error.
  Tokenizer t = Tokenizer::from_json(R"({"model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"a": 0}, "merges": []}})",
                                     "", src);
  expect_error_mentions([&] { t.encode("b"); }, "unk_token");
  // Bad tokenizer_config.json names that file.
  expect_error_mentions([&] { Tokenizer::from_json("{" + ok_model + "}", "{oops", src); }, "tokenizer_config.json");
  expect_error_mentions([] { Tokenizer::from_hf_dir("/nonexistent/dir"); }, "/nonexistent/dir");
}

TEST(TokenizerThreads, ConcurrentEncodeIsConsistent) {
  // The BPE word cache is shared; concurrent encodes must agree with a serial one.
  Tokenizer t = Tokenizer::from_hf_dir(fixture_dir("tiny-gpt2") + "model");
  std::vector<std::string> texts;
  for (int i = 0; i < 200; i++) texts.push_back("word" + std::to_string(i * 7919) + " and more text " + std::to_string(i));
  std::vector<std::vector<int32_t>> expect;
  {
    Tokenizer fresh = Tokenizer::from_hf_dir(fixture_dir("tiny-gpt2") + "model");
    for (const auto& s : texts) expect.push_back(fresh.encode(s));
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> pool;
  for (int k = 0; k < 4; k++)
    pool.emplace_back([&, k] {
      for (int rep = 0; rep < 5; rep++)
        for (size_t i = 0; i < texts.size(); i++) {
          size_t j = (i * (k + 1) + rep) % texts.size();
          if (t.encode(texts[j]) != expect[j]) bad++;
        }
    });
  for (auto& th : pool) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(TokenizerUnicode, NormalizationAndLossyUtf8) {
  using namespace lowrank::tok;
  EXPECT_EQ(normalize("e\xCC\x81", NormForm::NFC), "\xC3\xA9");                  // e + acute -> é
  EXPECT_EQ(normalize("\xC3\xA9", NormForm::NFD), "e\xCC\x81");
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormForm::NFKC), "fi");                      // ﬁ ligature
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormForm::NFC), "\xEF\xAC\x81");
  EXPECT_EQ(normalize("\xE2\x91\xA0", NormForm::NFKD), "1");                       // circled one
  EXPECT_EQ(normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", NormForm::NFC), "\xEA\xB0\x81");  // jamo -> 각
  EXPECT_EQ(normalize("\xEA\xB0\x81", NormForm::NFD), "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8");
  // Canonical ordering: dot below (ccc 220) sorts before dot above (ccc 230).
  EXPECT_EQ(normalize("\xE1\xB8\x8B\xCC\xA3", NormForm::NFD), "d\xCC\xA3\xCC\x87");
  EXPECT_EQ(normalize("\xE1\xB8\x8B\xCC\xA3", NormForm::NFC), "\xE1\xB8\x8D\xCC\x87");
  EXPECT_EQ(lowercase("A\xC3\x80\xCE\xA3"), "a\xC3\xA0\xCF\x83");           // AÀΣ -> aàσ
  EXPECT_EQ(lowercase("\xC4\xB0"), "i\xCC\x87");                                  // İ -> i + dot
  EXPECT_EQ(utf8_lossy("a\xF0\x9F\x98"), "a\xEF\xBF\xBD");                     // truncated 4-byte
  EXPECT_EQ(utf8_lossy("\xC3\x28"), "\xEF\xBF\xBD(");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_TRUE(is_valid_utf8("h\xC3\xA9\xF0\x9F\xA6\x80"));
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));                               // > U+10FFFF
  EXPECT_EQ(unicode_to_byte(0x120), 0x20);    // 'Ġ' stands for the space byte
  EXPECT_EQ(unicode_to_byte(0x100), 0x00);
  EXPECT_EQ(unicode_to_byte(0x7F), -1);       // not printable: byte 0x7F maps elsewhere
  EXPECT_EQ(byte_to_unicode(' '), "\xC4\xA0");  // ' ' -> 'Ġ'
  EXPECT_EQ(byte_to_unicode('\n'), "\xC4\x8A");  // '\n' -> 'Ċ'
  EXPECT_EQ(byte_to_unicode('a'), "a");
}

// ---------------------------------------------------------------- speed

TEST(TokenizerPerf, OneMegabyte) {
  json e = load_expected("tiny-gpt2");
  std::string base;
  for (const auto& item : e["base"]["texts"]) base += item["text"].get<std::string>() + "\n";
  std::string text;
  int k = 0;
  while (text.size() < (1u << 20)) text += base + std::to_string(k++) + " naïve 🦀 你好 ";
  for (const char* name : {"tiny-gpt2", "tiny-llama"}) {
    auto t0 = std::chrono::steady_clock::now();
    Tokenizer t = Tokenizer::from_hf_dir(fixture_dir(name) + "model");
    auto t1 = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = t.encode(text);
    auto t2 = std::chrono::steady_clock::now();
    std::string back = t.decode(ids, true);
    auto t3 = std::chrono::steady_clock::now();
    double load_s = std::chrono::duration<double>(t1 - t0).count();
    double enc_s = std::chrono::duration<double>(t2 - t1).count();
    double dec_s = std::chrono::duration<double>(t3 - t2).count();
    std::printf("%s: load %.3fs, encode 1 MiB %.3fs (%zu ids), decode %.3fs\n", name, load_s, enc_s, ids.size(), dec_s);
    EXPECT_EQ(back, text);
    // Generous bounds so sanitizer/debug builds pass; release builds are far below.
    EXPECT_LT(load_s, 10.0);
    EXPECT_LT(enc_s, 10.0);
  }
}
