// Tokenizers stored in GGUF files (tokenizer.ggml.* metadata), read the way llama.cpp reads them
// (llama_vocab::impl::load), and the other direction: the tokenizer.ggml.* metadata of a
// Hugging Face model dir, written as llama.cpp's convert_hf_to_gguf.py writes it.
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace lowrank {

class GgufFile;
class GgufWriter;

// The tokenizer of a GGUF file (vocabulary, special ids, add_bos/add_eos, chat template).
//   tokenizer.ggml.model "llama": SentencePiece (scores, <0xXX> bytes, add_space_prefix);
//   tokenizer.ggml.model "gpt2": BPE (merges) with the pre-tokenizer tokenizer.ggml.pre names.
// Anything else (another model, an unknown or missing pre-tokenizer, malformed arrays) is
// refused with an error naming the file and the key.
Tokenizer gguf_tokenizer(const std::string& path);
Tokenizer gguf_tokenizer(const GgufFile& file);
// The chat template stored in the GGUF file ("" if none).
std::string gguf_chat_template(const std::string& path);

// Writes tokenizer.ggml.* and tokenizer.chat_template for the HF model dir `hf_dir`
// (tokenizer.json, tokenizer_config.json, config.json, chat_template.jinja) of architecture
// `model_type` (config.json's model_type: llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3).
//   Byte-level BPE (Llama-3, SmolLM2, Qwen2/3, GPT-2 style): tokenizer.ggml.model "gpt2",
//     tokens, token types, merges, and tokenizer.ggml.pre chosen from the pre-tokenizer in
//     tokenizer.json (llama-bpe, smaug-bpe, qwen2, smollm, gpt-2); anything else is refused.
//   SentencePiece-style BPE (Llama-2, Mistral, Phi-3, Gemma): tokenizer.ggml.model "llama",
//     tokens, scores, token types, add_space_prefix.
// Special token ids, add_bos_token/add_eos_token and the chat template follow gguf-py's
// SpecialVocab. Throws lowrank::Error naming the file and what is not supported.
void gguf_write_tokenizer(GgufWriter& w, const std::string& hf_dir, const std::string& model_type);

}  // namespace lowrank
