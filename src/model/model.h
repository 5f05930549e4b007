// The decoder model: weights of every family as one set of layers (ModelConfig says which
// parts a family has) and one transformer block, forward and backward (block.cpp), that
// training, evaluation, cached prefill/decode and batched multi-sequence serving all drive.
// Frozen weights never get gradients; LoRA adapters live outside in a registry and each
// batch row (or sequence) picks its own list of (adapter, scale).
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
  int id = 0;                    // position in Model::linears() (keys dropout masks)
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

  bool present() const { return !module.empty(); }
};

// Norm parameters: LayerNorm has b; RMSNorm multiplies by (offset + w) (offset 1: Gemma).
struct Norm {
  std::string name;   // tensor prefix, e.g. "model.layers.0.input_layernorm"
  FloatBuffer w, b;   // (C) (q/k norms: (head_dim))
  float offset = 0.f;
  FloatBuffer dw, db; // full fine-tuning only
  bool present() const { return w.n > 0; }
};

struct Layer {
  Norm attn_norm;                 // before attention (input_layernorm, ln_1)
  Norm post_attn_norm;            // Gemma: on the attention output, before the residual add
  Norm ffn_norm;                  // before the MLP (post_attention_layernorm / pre_feedforward_layernorm, ln_2)
  Norm post_ffn_norm;             // Gemma: on the MLP output
  Norm q_norm, k_norm;            // Qwen3 / Gemma 3: per head, before RoPE
  Linear q, k, v, qkv;            // separate, or fused qkv (q | k | v rows)
  Linear o;
  Linear gate, up, gate_up, down; // gated: act(gate)·up; plain (GPT-2): act(up); Phi-3: fused gate_up
  std::vector<Linear*> linears();
  std::vector<Norm*> norms();
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

// One sequence of a cached forward step: n new tokens appended at position cache->len.
struct SeqStep {
  const int32_t* ids = nullptr;                      // (n)
  int64_t n = 0;
  KVCache* cache = nullptr;
  const std::vector<AdapterUse>* adapters = nullptr; // null = base only
};

// Rows [row0, row0+rows) of a forward that share one adapter list.
struct RowGroup {
  int64_t row0 = 0, rows = 0;
  const std::vector<AdapterUse>* uses = nullptr;
};

class Model {
 public:
  Model();
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
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
  uint64_t dropout_step_ = 0;   // forwards run in training mode (keys dropout masks; saved in checkpoints)
  // Training memory: keep only each block's input and recompute the block in the backward.
  bool checkpoint_activations = false;
  // forward() keeps the full (B·T, V) logits for logits() (eval --top1, tests); otherwise the
  // head runs in chunks of rows and only per-position losses are kept.
  bool keep_logits = false;

  // ---- adapters -------------------------------------------------------------------
  // Attaches an adapter (checks every target's shape against its linear); returns its slot.
  int add_adapter(std::shared_ptr<Adapter> a);
  void remove_adapter(int slot);
  // Throws lowrank::Error (naming the adapter and module) unless every target of a exists in
  // this model with matching shapes; does not attach it.
  void check_adapter(const Adapter& a) const;
  // Creates a fresh adapter for cfg on this model (initialized as cfg.init_lora_weights says).
  std::shared_ptr<Adapter> create_adapter(const LoraConfig& cfg, uint64_t seed);
  // W = W0 + scale·s·B·A in place (weights become owned f32); unmerge restores W0 exactly.
  void merge_adapter(int slot, float scale);
  void unmerge_all();

  // ---- training and evaluation ------------------------------------------------------
  // Forward over the batch; returns Σ loss over target positions and sets losses_ (B*T).
  // Keeps activations for backward when training.
  double forward(const Batch& batch, bool training);
  // Per-position losses of the last forward (B*T), 0 where target < 0.
  const std::vector<float>& losses() const { return losses_; }
  // (B*T, V) logits of the last forward; throws unless it ran with keep_logits.
  const std::vector<float>& logits() const;
  // Backward of loss_scale · Σ losses after forward(batch, true): accumulates into LoRA
  // dA/dB of the trainable adapter (and all weight grads when full_finetune).
  void backward(float loss_scale);
  // forward(batch, true) + backward(loss_scale) in one pass: the head's logits are turned
  // into gradients chunk by chunk as they are computed (never all (B·T, V) at once).
  double forward_backward(const Batch& batch, float loss_scale);

  // ---- inference with KV caches -------------------------------------------------------
  KVCache new_cache(int64_t capacity) const;
  // One step over S sequences: each appends its n_s new tokens to its own cache and uses its
  // own adapters; all rows go through the linears together. Returns the logits of each
  // sequence's last new token (S, V).
  std::vector<float> forward_step(const std::vector<SeqStep>& seqs);
  // One sequence: processes ids at positions cache.len.., returns the last position's logits (V).
  std::vector<float> forward_cached(const std::vector<int32_t>& ids, KVCache& cache,
                                    const std::vector<AdapterUse>& adapters);
  // One decode step for S sequences of one token each (serving). Returns logits (S, V).
  std::vector<float> forward_decode_batch(const std::vector<int32_t>& ids, const std::vector<KVCache*>& caches,
                                          const std::vector<std::vector<AdapterUse>>& rows);

  std::vector<Linear*> linears();           // all decoder linears + lm_head
  std::vector<Norm*> norms();               // all norms
  int64_t num_parameters() const;
  void enable_full_finetune();              // owned f32 weights + gradient buffers
  void zero_grads();
  // Full fine-tuning parameter list: (name, value, grad, count).
  struct ParamRef { std::string name; float* value; float* grad; int64_t n; };
  std::vector<ParamRef> full_params();
  // Assigns Linear::id and Norm offsets once the weights are in place (loaders call it).
  void finish_load();

  // The per-layer saved state of the block (block.cpp); public for the block functions only.
  struct LoraSaved {
    LoraTarget* t = nullptr;
    int64_t row0 = 0, rows = 0;
    float s = 0;                 // use scale × target scale
    std::vector<float> h;        // (rows, r) = x_d·Aᵀ
    std::vector<float> mask;     // (rows, in) dropout keep-scale (empty = no dropout)
  };
  struct LinearSaved { std::vector<LoraSaved> uses; };
  struct BlockActs;              // defined in block.h
  struct BlockCtx;

 private:
  // One transformer block (block.cpp): forward of x (N, C) into out (N, C) saving what the
  // backward needs in a; backward of dout (N, C) into dx (N, C) (null when nothing below
  // needs it), accumulating parameter gradients.
  void block_forward(int64_t l, const float* x, float* out, const BlockCtx& ctx, BlockActs& a);
  // Which of a block's activations its backward reads (the others go to shared scratch).
  struct Keep {
    bool a = true, qk = true, att = true, o = true, h = true, b = true, gate_up = true, act = true, f = true;
    static Keep all() { return Keep{}; }
  };
  Keep keep_for(int64_t l, const BlockCtx& ctx) const;
  BlockActs* shared_acts();
  void block_backward(int64_t l, const float* x, const float* dout, float* dx, const BlockCtx& ctx, BlockActs& a);
  void linear_forward(Linear& L, const float* x, float* y, int64_t N, const std::vector<RowGroup>& groups,
                      bool training, LinearSaved* saved);
  // dx: (N, in) input gradient, overwritten (accumulate = false) or added to; null = not needed.
  void linear_backward(Linear& L, const float* x, const float* dy, float* dx, int64_t N, LinearSaved& saved,
                       bool accumulate);
  bool linear_trainable(const Linear& L, const LinearSaved& saved) const;
  bool linear_trainable(const Linear& L) const;  // before a forward: could get gradients
  void norm_forward(const Norm& n, float* out, float* mean, float* rstd, const float* x, int64_t N, int64_t C);
  void norm_backward(Norm& n, float* dx, const float* dout, const float* x, const float* mean, const float* rstd,
                     int64_t N, int64_t C, bool accumulate);
  void rebuild_lora_links();
  void embed(const int32_t* ids, const int32_t* pos, int64_t N, float* x);  // x (N, C)
  double train_forward(const Batch& batch, bool training, bool fused, float loss_scale);
  // The head over rows [0, N) of lnf_ in chunks: losses (and logits_); with backward,
  // dlnf_ and the head's parameter gradients.
  double head_chunks(bool backward, float loss_scale);
  void backward_blocks();

  // State of the last training/eval forward.
  Batch batch_;
  bool have_batch_ = false;
  bool fused_head_ = false;                 // the last forward already ran the head backward
  std::vector<RowGroup> groups_;            // of batch_
  std::vector<int32_t> pos_;                // (N)
  std::vector<std::vector<float>> cos_, sin_;  // per rope: (N, rot/2)
  std::vector<std::vector<float>> resid_;   // L+1 of (N, C)
  std::unique_ptr<BlockCtx> ctx_;           // of the last training/eval forward
  std::vector<std::unique_ptr<BlockActs>> acts_;  // per layer (one when checkpointing)
  int64_t acts_layer_ = -1;                 // checkpointing: the layer acts_[0] holds
  std::unique_ptr<BlockActs> shared_acts_;  // activations no backward reads + gradient scratch
  std::vector<float> lnf_, lnf_rstd_, lnf_mean_;  // (N, C), (N), (N)
  std::vector<float> dlnf_;                 // (N, C) gradient of lnf_ from the head
  std::vector<float> logits_;               // (N, V) when keep_logits
  bool logits_kept_ = false;
  std::vector<float> losses_;               // (N)
  std::vector<float> ce_max_;               // (N)
  std::vector<double> ce_sum_;              // (N)
  std::vector<float> chunk_, chunk2_;       // head chunk scratch (rows, V)
  struct Scratch {
    std::vector<float> g, xd;               // LoRA backward: (rows, r), (rows, in)
    std::vector<float> d0, d1;              // (N, C) residual gradients
    std::vector<float> recompute;           // (N, C) output of a recomputed block (discarded)
  } bw_;
  // Inference (forward_step) state, separate from the training forward's.
  struct InferState {
    std::vector<int32_t> ids, pos;          // (N)
    std::vector<RowGroup> groups;
    std::vector<std::vector<float>> cos, sin;
    std::unique_ptr<BlockActs> acts;
    std::vector<float> x, y;                // (N, C)
  } infer_;
};

// Loads a Hugging Face model directory (config.json + model.safetensors or sharded index).
std::unique_ptr<Model> load_hf_model(const std::string& dir);
// Loads a model from a HF directory or a .gguf file.
std::unique_ptr<Model> load_model(const std::string& path);

// Rows grouped by adapter list: consecutive batch rows (T positions each) with equal lists
// form one group.
std::vector<RowGroup> group_batch_rows(const std::vector<std::vector<AdapterUse>>& row_adapters, int64_t B,
                                       int64_t T);

}  // namespace lowrank
