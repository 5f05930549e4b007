// Hugging Face model dir -> GGUF, as llama.cpp's convert_hf_to_gguf.py writes it for each
// supported family: metadata, tokenizer and chat template, tensor names, q/k row order
// ("llama" architecture), Gemma's (1 + w) norm weights, rope_freqs for Llama-3 RoPE scaling.
#pragma once
#include <functional>
#include <string>

#include "core/dtype.h"
#include "model/model.h"

namespace lowrank {

struct ConvertOptions {
  // Type of each 2-D weight (1-D tensors stay F32). Given (GGUF tensor name, rows, cols),
  // returns the type; default: the same type for all.
  DType type = DType::F16;
  std::function<DType(const std::string& name, int64_t rows, int64_t cols)> type_for;
  std::string name;  // general.name ("" = the directory's name)
};

// Writes out (atomically). Throws lowrank::Error naming what llama.cpp cannot express
// (e.g. a Gemma query_pre_attn_scalar other than the head size, YaRN scaling).
void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out, const ConvertOptions& opt);

}  // namespace lowrank
