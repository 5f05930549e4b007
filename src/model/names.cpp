#include "model/names.h"

#include <regex>

namespace lowrank {

namespace {

bool gemma(const ModelConfig& c) { return c.family == Family::GEMMA2 || c.family == Family::GEMMA3; }

// HF name of a layer part below "model.layers.N." (llama family) or "transformer.h.N." (GPT-2).
const char* hf_suffix(const ModelConfig& c, Role r) {
  if (c.family == Family::GPT2) {
    switch (r) {
      case Role::ATTN_NORM: return "ln_1";
      case Role::FFN_NORM: return "ln_2";
      case Role::QKV: return "attn.c_attn";
      case Role::O: return "attn.c_proj";
      case Role::UP: return "mlp.c_fc";
      case Role::DOWN: return "mlp.c_proj";
      default: return "";
    }
  }
  switch (r) {
    case Role::ATTN_NORM: return "input_layernorm";
    case Role::POST_ATTN_NORM: return "post_attention_layernorm";  // Gemma
    case Role::FFN_NORM: return gemma(c) ? "pre_feedforward_layernorm" : "post_attention_layernorm";
    case Role::POST_FFN_NORM: return "post_feedforward_layernorm";
    case Role::Q_NORM: return "self_attn.q_norm";
    case Role::K_NORM: return "self_attn.k_norm";
    case Role::Q: return "self_attn.q_proj";
    case Role::K: return "self_attn.k_proj";
    case Role::V: return "self_attn.v_proj";
    case Role::QKV: return "self_attn.qkv_proj";
    case Role::O: return "self_attn.o_proj";
    case Role::GATE: return "mlp.gate_proj";
    case Role::UP: return "mlp.up_proj";
    case Role::GATE_UP: return "mlp.gate_up_proj";
    case Role::DOWN: return "mlp.down_proj";
  }
  return "";
}

const char* gguf_suffix(Role r) {
  switch (r) {
    case Role::ATTN_NORM: return "attn_norm";
    case Role::POST_ATTN_NORM: return "post_attention_norm";
    case Role::FFN_NORM: return "ffn_norm";
    case Role::POST_FFN_NORM: return "post_ffw_norm";
    case Role::Q_NORM: return "attn_q_norm";
    case Role::K_NORM: return "attn_k_norm";
    case Role::Q: return "attn_q";
    case Role::K: return "attn_k";
    case Role::V: return "attn_v";
    case Role::QKV: return "attn_qkv";
    case Role::O: return "attn_output";
    case Role::GATE: return "ffn_gate";
    case Role::UP: return "ffn_up";
    case Role::GATE_UP: return "ffn_up";  // Phi-3 stores the fused gate|up projection as ffn_up
    case Role::DOWN: return "ffn_down";
  }
  return "";
}

}  // namespace

bool role_is_norm(Role r) {
  return r == Role::ATTN_NORM || r == Role::POST_ATTN_NORM || r == Role::FFN_NORM || r == Role::POST_FFN_NORM ||
         r == Role::Q_NORM || r == Role::K_NORM;
}

bool has_role(const ModelConfig& c, Role r) {
  switch (r) {
    case Role::ATTN_NORM: case Role::FFN_NORM: case Role::O: case Role::DOWN: return true;
    case Role::POST_ATTN_NORM: case Role::POST_FFN_NORM: return c.post_norms;
    case Role::Q_NORM: case Role::K_NORM: return c.qk_norm;
    case Role::Q: case Role::K: case Role::V: return !c.fused_qkv;
    case Role::QKV: return c.fused_qkv;
    case Role::GATE: return c.gated_ffn && !c.fused_gate_up;
    case Role::UP: return !c.fused_gate_up;
    case Role::GATE_UP: return c.fused_gate_up;
  }
  return false;
}

std::string hf_layer_module(const ModelConfig& c, int64_t layer, Role r) {
  const std::string prefix = c.family == Family::GPT2 ? "transformer.h." : "model.layers.";
  return prefix + std::to_string(layer) + "." + hf_suffix(c, r);
}

std::string hf_embed_module(const ModelConfig& c) {
  return c.family == Family::GPT2 ? "transformer.wte" : "model.embed_tokens";
}

std::string hf_final_norm_module(const ModelConfig& c) {
  return c.family == Family::GPT2 ? "transformer.ln_f" : "model.norm";
}

std::string gguf_layer_tensor(int64_t layer, Role r) { return "blk." + std::to_string(layer) + "." + gguf_suffix(r); }

std::string gguf_arch_name(const ModelConfig& c) {
  switch (c.family) {
    case Family::GPT2: return "gpt2";
    case Family::LLAMA: case Family::MISTRAL: return "llama";
    case Family::QWEN2: return "qwen2";
    case Family::QWEN3: return "qwen3";
    case Family::GEMMA2: return "gemma2";
    case Family::GEMMA3: return "gemma3";
    case Family::PHI3: return "phi3";
  }
  return "";
}

bool gguf_permutes_qk(const ModelConfig& c) { return c.family == Family::LLAMA || c.family == Family::MISTRAL; }

int64_t gguf_qk_row(int64_t j, int64_t head_dim) {
  int64_t head = j / head_dim, i = j % head_dim, half = head_dim / 2;
  return head * head_dim + (i < half ? 2 * i : 2 * (i - half) + 1);
}

std::string hf_to_gguf_tensor(const ModelConfig& c, const std::string& hf) {
  if (hf == "lm_head") return "output";
  static const std::regex re(R"((?:model\.layers|transformer\.h)\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return "";
  const int64_t layer = std::stoll(m[1].str());
  for (Role r : kAllRoles)
    if (has_role(c, r) && !role_is_norm(r) && m[2].str() == hf_suffix(c, r)) return gguf_layer_tensor(layer, r);
  return "";
}

std::string gguf_to_hf_module(const ModelConfig& c, const std::string& g) {
  if (g == "output") return "lm_head";
  static const std::regex re(R"(blk\.(\d+)\.([a-z_]+))");
  std::smatch m;
  if (!std::regex_match(g, m, re)) return "";
  const int64_t layer = std::stoll(m[1].str());
  for (Role r : kAllRoles)
    if (has_role(c, r) && !role_is_norm(r) && m[2].str() == gguf_suffix(r)) return hf_layer_module(c, layer, r);
  return "";
}

}  // namespace lowrank
