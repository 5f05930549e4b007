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
  // Type of each 2-D weight: F32, F16 or BF16 (1-D tensors stay F32). Quantized files are
  // made from this one by quantize_gguf (io/gguf_quantize.h), as llama.cpp converts, then quantizes.
  DType type = DType::F16;
  // Write each 2-D weight in its stored dtype instead (F32, F16 or BF16: lossless), e.g. as the
  // intermediate of a quantized conversion.
  bool source_type = false;
  std::string name;  // general.name ("" = the directory's name)
};

// Writes out (atomically). Throws lowrank::Error naming what llama.cpp cannot express
// (e.g. a Gemma query_pre_attn_scalar other than the head size, YaRN scaling).
void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out, const ConvertOptions& opt);

}  // namespace lowrank
