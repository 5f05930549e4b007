// The decoder of model.h on a CUDA device: the same forward/backward composition (GPT-2 and
// the llama family, LoRA on any linears), built from the ops in src/ops/cuda.
//
// - Base weights are uploaded once (bf16 or f32), frozen: they never get gradients.
// - Every adapter resident in the host model is uploaded into per-target stacks
//   (S, r, in) / (S, out, r), so a batch may mix adapters row by row (one launch of the
//   gathered shrink/expand per linear). Rows may carry at most one adapter on this path.
// - One adapter may be trainable: f32 master A/B, f32 gradients and f32 AdamW state; in
//   bf16 mode the stacked compute copy is rewritten by the AdamW kernel itself.
// - The LM head and the loss run on row chunks (logits of at most loss_chunk rows exist at
//   a time), and in training the head's backward follows each chunk immediately.
// - recompute: only each block's input is kept; the block's activations are recomputed
//   during the backward (one block's worth of activation memory instead of n_layer).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/model.h"

namespace lowrank {

struct CudaModelOptions {
  bool bf16 = true;          // compute/storage dtype of weights and activations (else f32)
  bool recompute = false;    // per-block activation recomputation
  int64_t loss_chunk = 0;    // rows of logits per chunk; 0 = about 128 MiB of logits
};

class CudaModel {
 public:
  // Uploads the host model's weights and resident adapters. The host model must outlive
  // nothing: everything needed is copied. Throws lowrank::Error on unsupported models
  // (quantized weights are dequantized to the compute dtype; LoRA dropout > 0 in training
  // and ranks > 64 are refused).
  CudaModel(const Model& host, const CudaModelOptions& opt);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // Makes adapter slot `slot` of the host model trainable (f32 masters from the host values,
  // zero gradients and AdamW state); -1 = none.
  void set_trainable(int slot);
  // Forward + backward of loss_scale · Σ losses; gradients ACCUMULATE into the trainable
  // adapter's dA/dB (call zero_grads first). Returns Σ losses (synchronizes).
  double forward_backward(const Batch& batch, float loss_scale);
  // Inference forward: per-position losses (when the batch has targets). Returns Σ losses.
  double forward(const Batch& batch);
  // Per-position losses of the last forward (B*T), downloaded.
  std::vector<float> losses() const;

  void zero_grads();
  double grad_norm() const;            // ‖(dA, dB)‖₂ over all targets
  void scale_grads(float s);
  // One AdamW step over the trainable adapter (step counter kept here).
  void adamw_step(double lr, double beta1, double beta2, double eps, double weight_decay);
  // Copies the trainable adapter's gradients (dA, dB) / weights (A, B) into the host
  // adapter's buffers (dA/dB are allocated there when missing).
  void download_grads(Model& host) const;
  void download_adapter(Model& host) const;

  // Device memory (bytes) allocated through ops::cuda::device_alloc: now and peak.
  static size_t bytes_in_use();
  static size_t bytes_peak();
  static void reset_peak();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowrank
