// Models from GGUF files of the llama, qwen2, qwen3, gemma2, gemma3 and phi3 architectures
// (quantized weights stay quantized in memory).
#pragma once
#include <memory>
#include <string>

#include "model/model.h"
#include "model/names.h"
#include "tokenizer/gguf_vocab.h"

namespace lowrank {

class GgufFile;

std::unique_ptr<Model> load_gguf_model(const std::string& path);
// The model description of a GGUF file (metadata and tensor list only; no weights read).
ModelConfig config_from_gguf(const GgufFile& f);

}  // namespace lowrank
