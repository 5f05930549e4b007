// Model hyper-parameters, from a Hugging Face config.json or GGUF metadata.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lowrank {

enum class Arch { GPT2, LLAMA };  // LLAMA covers llama, mistral and qwen2 (options below)

struct ModelConfig {
  Arch arch = Arch::LLAMA;
  std::string model_type;     // "gpt2", "llama", "mistral", "qwen2"
  std::string architecture;   // e.g. "LlamaForCausalLM"
  int64_t vocab = 0;
  int64_t dim = 0;            // C, hidden size
  int64_t n_layer = 0;
  int64_t n_head = 0;         // H
  int64_t n_kv_head = 0;      // KVH (H for GPT-2)
  int64_t head_dim = 0;       // D
  int64_t ffn = 0;            // F, intermediate size
  int64_t max_pos = 0;        // learned positions (GPT-2) / context length
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  bool rope_half = true;      // HF half rotation; false = adjacent pairs (GGUF row order)
  bool tied = false;          // lm_head shares the embedding
  bool qkv_bias = false;      // q/k/v projections have biases (Qwen2, attention_bias)
  bool o_bias = false;        // o_proj bias (attention_bias)
  bool mlp_bias = false;
  int64_t sliding_window = 0; // Mistral; 0 = none
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
};

// Parses config.json (path for messages). Throws lowrank::Error on unsupported/malformed.
ModelConfig config_from_hf_json(const std::string& json_text, const std::string& path);

}  // namespace lowrank
