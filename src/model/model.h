// One decoder model with an explicit forward and backward (llm.c style) for GPT-2 and the
// llama family (llama, mistral, qwen2). Frozen weights never get gradients; LoRA adapters
// live outside in a registry and each batch row picks its own list of (adapter, scale).
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "lora/adapter.h"
#include "model/config.h"

namespace lowrank {

// A linear layer y = x·Wᵀ + b with HF module name; LoRA targets attached per adapter.
struct Linear {
  std::string module;            // e.g. "model.layers.0.self_attn.q_proj"
  int64_t layer = -1;            // decoder layer index, -1 for lm_head
  Matrix W;                      // (out, in), any dtype, frozen unless full fine-tuning
  FloatBuffer bias;              // (out) or empty
  int64_t in = 0, out = 0;
  bool conv1d = false;           // stored (in, out) in the source file (GPT-2)
  std::vector<LoraTarget*> lora; // indexed by adapter slot; nullptr where not targeted
  // Full fine-tuning only: owned copy of W and its gradients.
  FloatBuffer W_owned;           // (out, in)
  FloatBuffer dW;                // (out, in)
  FloatBuffer dbias;             // (out)
  // Merge bookkeeping: the stored matrix before the first merge (restored by unmerge_all).
  bool merged = false;
  Matrix unmerged;
};

// Norm parameters (LayerNorm has b; RMSNorm has none).
struct Norm {
  std::string name;   // tensor prefix, e.g. "model.layers.0.input_layernorm"
  FloatBuffer w, b;   // (C)
  FloatBuffer dw, db; // full fine-tuning only
};

struct Layer {
  Norm norm1, norm2;
  // GPT-2: qkv = c_attn (3C), o = attn.c_proj, fc = mlp.c_fc, down = mlp.c_proj.
  // Llama: q, k, v, o, gate (fc), up, down.
  Linear q, k, v, qkv, o, fc, up, down;
};

struct AdapterUse {
  int adapter;   // slot in Model::adapters
  float scale;   // multiplies the adapter's own α/r
};

// Token batch (B, T): ids, next-token targets (-1 = no loss) and the adapters each row uses.
struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> ids;       // (B, T)
  std::vector<int32_t> targets;   // (B, T)
  std::vector<std::vector<AdapterUse>> row_adapters;  // (B) lists; empty list = base only
};

struct KVCache {
  int64_t capacity = 0, len = 0;
  std::vector<std::vector<float>> k, v;  // per layer (capacity, KVH*D)
};

class Model {
 public:
  ModelConfig cfg;
  std::string source;  // path it was loaded from
  Matrix wte;          // (V, C)
  FloatBuffer wpe;     // (P, C) GPT-2 learned positions
  std::vector<Layer> layers;
  Norm norm_f;
  Linear lm_head;      // W = wte when tied
  std::vector<std::shared_ptr<Adapter>> adapters;  // registry; slot = index (nullptr = free)
  int trainable_adapter = -1;   // slot whose A/B get gradients, -1 = none
  bool full_finetune = false;   // all weights trainable (f32 owned copies)
  FloatBuffer dwte, dwpe;       // full fine-tuning
  uint64_t dropout_seed = 0;
  uint64_t dropout_step_ = 0;   // counter of dropout masks drawn (saved in checkpoints)

  // ---- adapters -------------------------------------------------------------------
  // Attaches an adapter (checks every target's shape against its linear); returns its slot.
  int add_adapter(std::shared_ptr<Adapter> a);
  void remove_adapter(int slot);
  // Creates a fresh adapter for cfg on this model (initialized as cfg.init_lora_weights says).
  std::shared_ptr<Adapter> create_adapter(const LoraConfig& cfg, uint64_t seed);
  // W = W0 + scale·s·B·A in place (weights become owned f32); unmerge restores W0 exactly.
  void merge_adapter(int slot, float scale);
  void unmerge_all();

  // ---- compute --------------------------------------------------------------------
  // Forward over the batch; returns Σ loss over target positions and sets losses_ (B*T).
  // Keeps activations for backward when training.
  double forward(const Batch& batch, bool training);
  // Per-position losses of the last forward (B*T), 0 where target < 0.
  const std::vector<float>& losses() const { return losses_; }
  const std::vector<float>& logits() const { return logits_; }  // (B*T, V) after forward
  // Backward of loss_scale · Σ losses: accumulates into LoRA dA/dB of the trainable
  // adapter (and all weight grads when full_finetune).
  void backward(float loss_scale);

  // Inference with a KV cache: processes ids at positions cache.len.., returns logits of
  // the last position (V). adapters: the list every position uses.
  std::vector<float> forward_cached(const std::vector<int32_t>& ids, KVCache& cache,
                                    const std::vector<AdapterUse>& adapters);
  KVCache new_cache(int64_t capacity) const;
  // One decode step for S independent sequences (serving): ids (S) are the next token of
  // each sequence, appended at position caches[s]->len of its own cache; rows (S) are each
  // sequence's adapter list, so one batch mixes adapters. Returns logits (S, V).
  std::vector<float> forward_decode_batch(const std::vector<int32_t>& ids, const std::vector<KVCache*>& caches,
                                          const std::vector<std::vector<AdapterUse>>& rows);

  std::vector<Linear*> linears();           // all decoder linears + lm_head
  int64_t num_parameters() const;
  void enable_full_finetune();              // owned f32 weights + gradient buffers
  void zero_grads();
  // Full fine-tuning parameter list: (name, value, grad, count).
  struct ParamRef { std::string name; float* value; float* grad; int64_t n; };
  std::vector<ParamRef> full_params();

 private:
  struct LoraSaved {
    LoraTarget* t = nullptr;
    int64_t row0 = 0, rows = 0;
    float s = 0;                 // use scale × target scale
    std::vector<float> h;        // (rows, r) = x_d·Aᵀ
    std::vector<float> mask;     // (rows, in) dropout keep-scale (empty = no dropout)
  };
  struct LinearSaved { std::vector<LoraSaved> uses; };
  struct LayerActs {
    std::vector<float> ln1, ln1_mean, ln1_rstd;  // (N,C), (N), (N)
    std::vector<float> qkv;                      // GPT-2 (N, 3C): q, k, v read in place (strided)
    std::vector<float> q, k, v;                  // llama (N, H*D), (N, KVH*D) x2, after RoPE
    std::vector<float> att;                      // (B, H, T, T)
    std::vector<float> atty;                     // (N, H*D)
    std::vector<float> resid_mid;                // (N, C)
    std::vector<float> ln2, ln2_mean, ln2_rstd;  // (N,C), (N), (N)
    std::vector<float> fc, up, act;              // (N, F)
    LinearSaved s_q, s_k, s_v, s_qkv, s_o, s_fc, s_up, s_down;
  };
  void linear_forward(Linear& L, const float* x, float* y, int64_t B, int64_t T,
                      const std::vector<std::vector<AdapterUse>>& row_adapters, bool training,
                      LinearSaved* saved);
  // dx: (N, in) input gradient, overwritten (accumulate = false) or added to; null = not needed.
  void linear_backward(Linear& L, const float* x, const float* dy, float* dx, int64_t N,
                       LinearSaved& saved, bool accumulate);
  // Whether a linear / its saved LoRA uses have parameters that receive gradients.
  bool linear_trainable(const Linear& L, const LinearSaved& saved) const;
  void norm_forward(const Norm& n, float* out, float* mean, float* rstd, const float* x, int64_t N);
  void norm_backward(Norm& n, float* dx, const float* dout, const float* x, const float* mean,
                     const float* rstd, int64_t N, bool accumulate);
  void rebuild_lora_links();

  Batch batch_;                  // copy of the last forward's batch (for backward)
  bool have_batch_ = false;
  std::vector<std::vector<float>> resid_;   // L+1 of (N, C)
  std::vector<LayerActs> acts_;
  std::vector<float> lnf_, lnf_mean_, lnf_rstd_;  // (N,C), (N), (N)
  std::vector<float> logits_;                      // (N, V)
  std::vector<float> losses_;                      // (N)
  LinearSaved s_head_;
  std::vector<int32_t> pos_;                        // (N)
  // Softmax statistics of the last forward with targets (per row max and Σ exp(x - max)),
  // so backward turns logits into dlogits in one pass.
  std::vector<float> ce_max_;                       // (N)
  std::vector<double> ce_sum_;                      // (N)
  bool ce_stats_ = false;
  // Scratch reused across steps (sized on first use; contents never carried over).
  std::vector<float> fwd_tmp_;                      // (N, C) projection outputs
  struct BackwardScratch {
    std::vector<float> dloss, dlnf, dresid, dln;    // (N), (N,C) x3
    std::vector<float> dact, dfc, dup;              // (N, F)
    std::vector<float> datty, dq, dk, dv, dqkv;     // (N,H*D), (N,H*D), (N,KVH*D) x2, (N,3C)
    std::vector<float> g, gA, xd;                   // LoRA: (rows, r), (rows, in), (rows, in)
  } bw_;

};

// Loads a Hugging Face model directory (config.json + model.safetensors or sharded index).
std::unique_ptr<Model> load_hf_model(const std::string& dir);
// Loads a model from a HF directory or a .gguf file.
std::unique_ptr<Model> load_model(const std::string& path);

}  // namespace lowrank
