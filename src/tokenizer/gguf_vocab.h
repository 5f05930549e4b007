// Tokenizers stored in GGUF files (tokenizer.ggml.* metadata), read the way llama.cpp reads them.
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace lowrank {

// The tokenizer of a GGUF file (vocabulary, special ids, add_bos/add_eos, chat template).
Tokenizer gguf_tokenizer(const std::string& path);
// The chat template stored in the GGUF file ("" if none).
std::string gguf_chat_template(const std::string& path);

}  // namespace lowrank
