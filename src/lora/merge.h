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

// Writes a GGUF model with every adapted tensor replaced by W0 + Δ (rows in the architecture's
// GGUF order), all other tensors and metadata copied unchanged. dtype "keep" (default): each
// adapted tensor in the base's own type (dequantized, Δ added, requantized; types without an
// encoder, the IQ codebook ones, go to the nearest K-quant with as many bits, and this is
// printed); or one type for every adapted tensor: "f16" (llama.cpp's llama-export-lora), "f32",
// "bf16", "q8_0", "q4_k", ...
void write_gguf_merged(const std::string& src, const std::string& out, const std::vector<MergeTerm>& terms,
                       const std::string& dtype = "keep");

// Writes a GGUF LoRA adapter llama.cpp loads (tensors <base>.lora_a/.lora_b, q/k rows of B in
// GGUF order; per-target scale differences folded into B so one adapter.lora.alpha fits).
void write_gguf_adapter(const std::string& base_gguf, const Adapter& a, const std::string& out, bool f16);

}  // namespace lowrank
