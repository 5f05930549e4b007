// Tokenizer compatible with Hugging Face `tokenizers` (tokenizer.json) and with llama.cpp's
// SentencePiece (SPM) tokenizer for GGUF vocabularies.
//
// HF mode reproduces `tokenizers` encode/decode: added-token splitting, normalizers,
// pre-tokenizers, BPE (rank merges, byte fallback, unk fusing), post-processors and decoders.
// Components the implementation does not know raise lowrank::Error at load time instead of
// silently tokenizing differently.
//
// The object is immutable after construction (the BPE word cache is internally locked), so
// encode/decode may be called from several threads. Copies share the same state.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowrank {

namespace tok { struct Impl; }

// A vocabulary as llama.cpp holds it (GGUF tokenizer.ggml.*), already resolved: the defaults
// llama.cpp applies for missing keys are filled in by the reader (tokenizer/gguf_vocab.h).
struct LlamaVocab {
  enum class Kind { Spm, Bpe };  // tokenizer.ggml.model "llama" / "gpt2"
  Kind kind = Kind::Spm;
  std::string source = "llama vocabulary";  // names the file in errors
  std::vector<std::string> tokens;  // id -> text
  std::vector<float> scores;        // SPM merge priority per id (empty: all 0)
  // Per id: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte (empty: all normal).
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // BPE: "left right" in rank order
  // BPE pre-tokenizer as llama.cpp names it (tokenizer.ggml.pre): llama-bpe/llama3/llama-v3,
  // smaug-bpe/dbrx, qwen2/deepseek-r1-qwen, smollm, gpt-2/phi-2, default,
  // gemma4/granite-embed-multi-311m. Others are refused.
  std::string pre;
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;  // SPM: "▁" before the text and after every special token
  // Special tokens with llama.cpp's LSTRIP / RSTRIP attribute: they swallow the ASCII
  // whitespace before / after them in the input (llama.cpp sets these by model name).
  std::vector<int32_t> lstrip_ids, rstrip_ids;
};

class Tokenizer {
 public:
  // Loads dir/tokenizer.json and, if present, dir/tokenizer_config.json (bos/eos/pad token
  // names, add_bos_token/add_eos_token, chat_template) and dir/chat_template.jinja.
  static Tokenizer from_hf_dir(const std::string& dir);
  // Same from strings. `tokenizer_config_json` may be empty. `source` names the file in errors.
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json,
                             const std::string& source);
  // SentencePiece vocabulary as stored in GGUF (tokenizer.ggml.model == "llama"). Token types:
  // 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte. Encoding follows llama.cpp
  // (highest-scoring adjacent pair merged first, <0xXX> byte fallback, "▁" prefix and spaces).
  // Control/unknown/user-defined token texts inside the input are recognised as those tokens.
  static Tokenizer from_sentencepiece_vocab(std::vector<std::string> tokens, std::vector<float> scores,
                                            std::vector<int32_t> types, int32_t bos, int32_t eos, int32_t unk,
                                            bool add_bos, bool add_eos);
  // Any llama.cpp vocabulary (SentencePiece or BPE), encoding as llama.cpp's
  // llama_vocab::tokenize(text, add_special, parse_special = true) does: control, unknown and
  // user-defined token texts in the input are those tokens (longest first), then SPM or BPE
  // (with the named pre-tokenizer's regexes and GPT-2 byte mapping) on the text between them.
  // Decoding follows the matching HF decoder (byte-level, or "▁" -> " " with byte fallback).
  static Tokenizer from_llama_vocab(LlamaVocab vocab);

  Tokenizer(const Tokenizer&) = default;
  Tokenizer(Tokenizer&&) noexcept = default;
  Tokenizer& operator=(const Tokenizer&) = default;
  Tokenizer& operator=(Tokenizer&&) noexcept = default;
  ~Tokenizer();

  // == HF tok(text).input_ids (with add_special_tokens). Invalid UTF-8 in `text` is replaced by
  // U+FFFD first (HF mode) since HF only ever sees valid strings.
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const;
  // encode() for untrusted input with a budget: throws lowrank::Error when the text has more
  // than max_tokens ids. A text longer than max_tokens × max_token_bytes() bytes is refused
  // before tokenization starts, so the work is bounded by the budget, not by the input size.
  std::vector<int32_t> encode_bounded(const std::string& text, int64_t max_tokens, bool add_special_tokens = true) const;
  int64_t max_token_bytes() const { return max_token_bytes_; }
  // == HF tokenizer.decode(ids, skip_special_tokens). Unknown ids are skipped.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t token_to_id(const std::string& tok) const;  // -1 if absent
  const std::string& id_to_token(int32_t id) const;   // "" if absent
  int32_t vocab_size() const;                         // highest id + 1 (model vocab and added tokens)
  bool is_special(int32_t id) const;                  // special added token / control token

  int32_t bos_id() const;  // -1 when none
  int32_t eos_id() const;
  int32_t pad_id() const;
  const std::string& chat_template() const;  // "" if none
  // A copy using `tmpl` as its chat template (GGUF keeps the template beside the vocabulary).
  Tokenizer with_chat_template(std::string tmpl) const;
  const std::string& bos_token() const;      // "" if none
  const std::string& eos_token() const;
  const std::string& pad_token() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tok::Impl> impl);
  std::shared_ptr<const tok::Impl> impl_;
  std::shared_ptr<const std::string> chat_template_;  // set by with_chat_template
  int64_t max_token_bytes_ = 1;                       // longest token, in UTF-8 bytes
};

}  // namespace lowrank
