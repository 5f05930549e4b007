// Merging adapters into stored weights (files), as opposed to Model::merge_adapter (memory).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "lora/adapter.h"

namespace lowrank {

struct MergeTerm { const Adapter* adapter; float scale; };

// Δ (out, in) = Σ scale · s_t · B·A over every term that targets `module`; returns false if none.
bool lora_delta(const std::vector<MergeTerm>& terms, const std::string& module, int64_t out, int64_t in,
                std::vector<float>& delta);

// Writes a HF model dir: every tensor of src_dir's safetensors files copied with the same
// name, dtype and layout; tensors named "<module>.weight" of adapted modules replaced by
// W0 + Δ (GPT-2 Conv1D layout handled); replace(name, values) may substitute any tensor
// (full fine-tuning). Non-weight files (config, tokenizer...) are copied. Written into
// out_dir + ".tmp" then renamed.
void write_hf_model(const std::string& src_dir, const std::string& out_dir, const std::vector<MergeTerm>& terms,
                    const std::function<const float*(const std::string& name, bool& transposed)>& replace);

// Writes a GGUF model with adapted llama tensors as F16 W0 + Δ (q/k rows in GGUF order), all
// other tensors and metadata copied unchanged.
void write_gguf_merged(const std::string& src, const std::string& out, const std::vector<MergeTerm>& terms);

// Writes a GGUF LoRA adapter llama.cpp loads (tensors <base>.lora_a/.lora_b, q/k rows of B in
// GGUF order; per-target scale differences folded into B so one adapter.lora.alpha fits).
void write_gguf_adapter(const std::string& base_gguf, const Adapter& a, const std::string& out, bool f16);

}  // namespace lowrank
