// Llama-architecture models from GGUF files (quantized weights stay quantized in memory).
#pragma once
#include <memory>
#include <string>

#include "model/model.h"
#include "tokenizer/gguf_vocab.h"

namespace lowrank {

std::unique_ptr<Model> load_gguf_model(const std::string& path);
// HF module name of a GGUF llama tensor base name ("blk.3.attn_q" -> "model.layers.3.self_attn.q_proj"),
// and back. Empty string when there is none.
std::string gguf_to_hf_module(const std::string& gguf_name);
std::string hf_to_gguf_tensor(const std::string& hf_module);
// Row index in GGUF order of HF row j of a q/k projection with heads of size head_dim.
int64_t gguf_qk_row(int64_t j, int64_t head_dim);

}  // namespace lowrank
