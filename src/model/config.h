// Model description: what differs between model families is data here, not branches in the
// decoder. ModelConfig is read from a Hugging Face config.json (config.cpp) or from GGUF
// metadata (gguf_model.cpp); the one transformer block (block.cpp) reads only this.
//
// Block, for every family (optional parts in brackets):
//   a = attn_norm(x)
//   q, k, v = split(qkv(a)) or q(a), k(a), v(a)     (+ biases)
//   [q, k = q_norm(q), k_norm(k)]                     per head, before RoPE (Qwen3, Gemma 3)
//   q, k = rope(q, k)                                 half rotation (HF order) on rope.dim dims
//   o = o_proj(attention(q, k, v))                    scale, [softcap], [sliding window]
//   [o = post_attn_norm(o)]                           Gemma 2/3
//   h = x + o
//   f = down(act(gate(b)) · up(b)) or down(act(up(b))), b = ffn_norm(h)   [fused gate_up]
//   [f = post_ffn_norm(f)]                            Gemma 2/3
//   out = h + f
// Embedding: wte[ids] · embed_scale (+ wpe for GPT-2); head: final norm, lm_head (tied or
// not), [final softcap].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lowrank {

// GPT2: learned positions, LayerNorm, Conv1D weights; LLAMA: everything with RoPE (llama,
// mistral, qwen2, qwen3, gemma2, gemma3, phi3), the differences being the fields below.
enum class Arch { GPT2, LLAMA };

enum class Family { GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3 };
const char* family_name(Family f);  // "llama", "gemma3", ...

enum class NormKind : uint8_t { LAYER, RMS };
enum class Activation : uint8_t { GELU_TANH, SILU };
enum class RopeScaling : uint8_t { NONE, LINEAR, LLAMA3, YARN };

// Rotary embedding of one kind of layer: inverse frequencies of the dim/2 rotated pairs
// (pairs (i, i + dim/2), the HF rotate_half convention; dim = head_dim unless partial) and a
// factor on cos/sin (YaRN's attention scaling).
struct RopeConfig {
  float theta = 10000.f;
  int64_t dim = 0;                   // rotated dimensions, even, <= head_dim
  RopeScaling scaling = RopeScaling::NONE;
  float factor = 1.f;                // linear / llama3 / yarn
  float low_freq_factor = 1.f;       // llama3
  float high_freq_factor = 4.f;      // llama3
  int64_t original_max_pos = 0;      // llama3 / yarn: original context length
  float beta_fast = 32.f, beta_slow = 1.f;  // yarn
  float attn_factor = 1.f;           // multiplies cos and sin (yarn mscale)
  std::vector<float> freq_factors;   // GGUF rope_freqs.weight: inv_freq[i] / freq_factors[i]
  // inv_freq (dim/2), float32 as HF computes it, with the scaling applied.
  std::vector<float> inv_freq() const;
};

struct LayerSpec {
  int64_t window = 0;  // sliding window: a query at p sees keys k with p - window < k <= p; 0 = all
  int rope = 0;        // index into ModelConfig::ropes
};

struct ModelConfig {
  Arch arch = Arch::LLAMA;
  Family family = Family::LLAMA;
  std::string model_type;     // "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"
  std::string architecture;   // e.g. "LlamaForCausalLM"
  int64_t vocab = 0;
  int64_t dim = 0;            // C, hidden size
  int64_t n_layer = 0;
  int64_t n_head = 0;         // H
  int64_t n_kv_head = 0;      // KVH (H for GPT-2)
  int64_t head_dim = 0;       // D (may differ from C/H: Qwen3, Gemma)
  int64_t ffn = 0;            // F, intermediate size
  int64_t max_pos = 0;        // learned positions (GPT-2) / context length
  float norm_eps = 1e-5f;
  NormKind norm = NormKind::RMS;
  float norm_offset = 0.f;    // RMSNorm multiplies by (offset + w): 1 for Gemma
  bool post_norms = false;    // post_attn_norm and post_ffn_norm (Gemma 2/3)
  bool qk_norm = false;       // RMSNorm over head_dim of q and k (Qwen3, Gemma 3)
  bool gated_ffn = true;      // act(gate)·up (false: act(fc), GPT-2)
  Activation act = Activation::SILU;
  bool fused_qkv = false;     // one qkv projection (GPT-2 c_attn, Phi-3 qkv_proj): q | k | v rows
  bool fused_gate_up = false; // Phi-3 gate_up_proj: gate | up rows
  bool conv1d = false;        // GPT-2 Conv1D weights stored (in, out)
  bool learned_pos = false;   // GPT-2 wpe
  bool qkv_bias = false;      // q/k/v projections have biases (Qwen2, attention_bias)
  bool o_bias = false;        // o_proj bias (attention_bias)
  bool mlp_bias = false;
  bool tied = false;          // lm_head shares the embedding
  float embed_scale = 1.f;    // embeddings multiplied by this (Gemma: √C)
  float attn_scale = 0.f;     // multiplier of q·k (1/√head_dim, or query_pre_attn_scalar^-½)
  float attn_softcap = 0.f;   // scores → cap·tanh(scores/cap); 0 = none (Gemma 2)
  float final_softcap = 0.f;  // logits → cap·tanh(logits/cap); 0 = none (Gemma 2)
  std::vector<RopeConfig> ropes;   // one per kind of layer (Gemma 3: local, global)
  std::vector<LayerSpec> layers;   // (n_layer)
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;

  int64_t q_dim() const { return n_head * head_dim; }     // H·D
  int64_t kv_dim() const { return n_kv_head * head_dim; } // KVH·D
  bool any_window() const;
  // Checks the invariants every loader must establish (throws lowrank::Error naming source).
  void validate(const std::string& source) const;
};

// Parses config.json (path for messages). Anything that changes the math and is not
// implemented is refused (lowrank::Error naming the file and the key).
ModelConfig config_from_hf_json(const std::string& json_text, const std::string& path);

}  // namespace lowrank
