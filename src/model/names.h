// Tensor and module names of every family, in one place: Hugging Face (safetensors tensor
// names = PEFT module names + ".weight"/".bias") and GGUF (llama.cpp's converter names).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace lowrank {

// Parts of a decoder layer that hold weights.
enum class Role {
  ATTN_NORM, POST_ATTN_NORM, FFN_NORM, POST_FFN_NORM, Q_NORM, K_NORM,
  Q, K, V, QKV, O, GATE, UP, GATE_UP, DOWN,
};
constexpr Role kAllRoles[] = {Role::ATTN_NORM, Role::POST_ATTN_NORM, Role::FFN_NORM, Role::POST_FFN_NORM,
                              Role::Q_NORM,    Role::K_NORM,         Role::Q,        Role::K,
                              Role::V,         Role::QKV,            Role::O,        Role::GATE,
                              Role::UP,        Role::GATE_UP,        Role::DOWN};

// Whether a model of this configuration has the part.
bool has_role(const ModelConfig& c, Role r);
bool role_is_norm(Role r);

// HF module path of a layer part ("model.layers.3.self_attn.q_proj", "transformer.h.3.ln_1").
std::string hf_layer_module(const ModelConfig& c, int64_t layer, Role r);
// HF names of the embedding, positions (GPT-2), final norm and head modules.
std::string hf_embed_module(const ModelConfig& c);      // "model.embed_tokens" / "transformer.wte"
std::string hf_final_norm_module(const ModelConfig& c); // "model.norm" / "transformer.ln_f"

// GGUF tensor base name of a layer part ("blk.3.attn_q").
std::string gguf_layer_tensor(int64_t layer, Role r);
// general.architecture of the family in llama.cpp ("llama" for llama and mistral).
std::string gguf_arch_name(const ModelConfig& c);
// llama.cpp's converter permutes the rows of q/k (and LoRA B of q/k) for the "llama"
// architecture so that its interleaved RoPE applies; other architectures use NEOX RoPE on
// rows in HF order.
bool gguf_permutes_qk(const ModelConfig& c);
// Row index in GGUF order of HF row j of a permuted q/k projection (heads of size head_dim).
int64_t gguf_qk_row(int64_t j, int64_t head_dim);

// PEFT module <-> GGUF base tensor (for LoRA export and merges): "" when there is none.
std::string hf_to_gguf_tensor(const ModelConfig& c, const std::string& hf_module);
std::string gguf_to_hf_module(const ModelConfig& c, const std::string& gguf_base);

}  // namespace lowrank
