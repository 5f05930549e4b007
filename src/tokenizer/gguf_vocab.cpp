#include "tokenizer/gguf_vocab.h"

#include "core/error.h"
#include "io/gguf.h"

namespace lowrank {

Tokenizer gguf_tokenizer(const std::string& path) {
  GgufFile f = GgufFile::open(path);
  std::string kind = f.get_string("tokenizer.ggml.model", "");
  if (kind != "llama") fail(path, ": tokenizer.ggml.model \"", kind, "\" is not supported (only llama/SentencePiece)");
  std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  std::vector<float> scores = f.get_float_array("tokenizer.ggml.scores");
  std::vector<int32_t> types = f.get_int_array("tokenizer.ggml.token_type");
  if (tokens.empty()) fail(path, ": tokenizer.ggml.tokens is missing or empty");
  if (scores.size() != tokens.size()) scores.assign(tokens.size(), 0.f);
  if (types.size() != tokens.size()) types.assign(tokens.size(), 1);
  return Tokenizer::from_sentencepiece_vocab(
      tokens, scores, types, int32_t(f.get_int("tokenizer.ggml.bos_token_id", -1)),
      int32_t(f.get_int("tokenizer.ggml.eos_token_id", -1)), int32_t(f.get_int("tokenizer.ggml.unknown_token_id", -1)),
      f.get_bool("tokenizer.ggml.add_bos_token", true), f.get_bool("tokenizer.ggml.add_eos_token", false))
      .with_chat_template(f.get_string("tokenizer.chat_template", ""));
}

std::string gguf_chat_template(const std::string& path) {
  GgufFile f = GgufFile::open(path);
  return f.get_string("tokenizer.chat_template", "");
}

}  // namespace lowrank
