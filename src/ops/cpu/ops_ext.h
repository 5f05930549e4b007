// CPU-only variants of ops.h used by Model's forward/backward: overwriting (instead of
// accumulating) backward outputs, so callers need not zero-fill them first; attention on
// strided rows (GPT-2's fused qkv without splitting copies); and a cross-entropy that keeps
// per-row softmax statistics from the forward so the backward is one pass over the logits.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lowrank::ops {

// dx (N, W.cols) = dy (N, W.rows) · W (accumulate = false overwrites dx, true adds to it).
void linear_backward_input_ex(float* dx, const float* dy, const Matrix& W, int64_t N, bool accumulate);

// gelu / swiglu backward that overwrite dx / dgate, dup.
void gelu_backward_set(float* dx, const float* dout, const float* x, int64_t n);
void swiglu_backward_set(float* dgate, float* dup, const float* dout, const float* gate,
                         const float* up, int64_t n);

// LayerNorm / RMSNorm backward with dx overwritten (accumulate = false) or added to.
void layernorm_backward_ex(float* dx, float* dw, float* db, const float* dout, const float* x,
                           const float* w, const float* mean, const float* rstd, int64_t N, int64_t C,
                           bool accumulate);
void rmsnorm_backward_ex(float* dx, float* dw, const float* dout, const float* x, const float* w,
                         const float* rstd, int64_t N, int64_t C, bool accumulate);

// Causal GQA attention like ops::attention_forward/backward, with explicit token row strides:
// q/dq rows every qs floats, k/v/dk/dv rows every ks floats, out/dout rows every H*D floats.
// att (B,H,T,T): row t holds probabilities in [0, t] and zeros up to the end of its 64-row
// block (entries further right are neither written nor read).
void attention_forward_ex(float* out, float* att, const float* q, const float* k, const float* v,
                          int64_t qs, int64_t ks, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D);
// accumulate = false overwrites dq/dk/dv (only their H*D / KVH*D columns of each row).
void attention_backward_ex(float* dq, float* dk, float* dv, const float* dout, const float* q,
                           const float* k, const float* v, const float* att, int64_t qs, int64_t ks,
                           int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, bool accumulate);

// Causal attention of T new queries at positions [start, start+T) against a KV cache whose rows
// [0, start+T) are filled (k/v cache rows of KVH*D floats): q (T, H*D) with row stride qs,
// out (T, H*D). Equal to attention_decode per query, in one blocked pass per head.
void attention_prefill(float* out, const float* q, int64_t qs, const float* kcache, const float* vcache,
                       int64_t start, int64_t T, int64_t H, int64_t KVH, int64_t D);

// Cross-entropy forward that also stores, per row, the max logit and the sum of exp(x - max)
// (one pass over each row: blockwise online max/sum). Returns Σ losses like
// cross_entropy_forward. Rows with target < 0 get loss 0 (stats are still written).
double cross_entropy_forward_stats(float* losses, float* row_max, double* row_sum,
                                   const float* logits, const int32_t* targets, int64_t N, int64_t V);
// In place: logits -> (softmax - onehot) · dloss[n] using the stats of the forward (one pass).
void cross_entropy_backward_stats(float* logits, const int32_t* targets, const float* dloss,
                                  const float* row_max, const double* row_sum, int64_t N, int64_t V);

// ---- the decoder block's ops (model/block.cpp) ---------------------------------------------

// Attention of one sequence's n new queries at positions [start, start+n) against keys and
// values at positions [0, start+n) (a KV cache, or the sequence's own fresh k/v when start=0).
struct AttnShape {
  int64_t H = 0, KVH = 0, D = 0;
  float scale = 1.f;    // multiplier of q·k
  float softcap = 0.f;  // scores → softcap·tanh(scores/softcap); 0 = none
  int64_t window = 0;   // query at p sees keys k with p - window < k <= p; 0 = all k <= p
};
struct AttnSeq {
  const float* q;        // (n, H·D) rows every qs
  float* out;            // (n, H·D) rows every os
  float* lse;            // (H, n, 2) per row: max score and 1/Σexp (for backward), or null
  const float* k;        // (start + n, KVH·D) rows every ks
  const float* v;        // (start + n, KVH·D) rows every ks
  int64_t start = 0, n = 0;
};
void attention_flash_forward(const AttnSeq* seqs, int64_t S, int64_t qs, int64_t os, int64_t ks, const AttnShape& a);
struct AttnSeqGrad {
  const float *q, *k, *v, *out, *dout, *lse;  // as in AttnSeq; dout like out (out is not read)
  float *dq, *dk, *dv;                        // overwritten: dq (n rows), dk/dv (start + n rows)
  int64_t start = 0, n = 0;
};
void attention_flash_backward(const AttnSeqGrad* seqs, int64_t S, int64_t qs, int64_t os, int64_t ks,
                              const AttnShape& a);

// RMSNorm with the weight offset of Gemma: out = x·rstd·(offset + w). rstd (N) saved.
void rmsnorm_forward_off(float* out, float* rstd, const float* x, const float* w, float offset, int64_t N,
                         int64_t C, float eps);
// dx (N, C) overwritten (accumulate = false) or added to; dw (C) += (may be null).
void rmsnorm_backward_off(float* dx, float* dw, const float* dout, const float* x, const float* w, float offset,
                          const float* rstd, int64_t N, int64_t C, bool accumulate);

// RoPE with precomputed tables: cos/sin (N, rot/2) for the N rows' positions (already
// multiplied by the rope's attention factor). x (N, H, D): the first rot dims of every head
// rotate in pairs (i, i + rot/2) (HF rotate_half). inverse: apply Rᵀ (the backward).
void rope_tables(float* cos, float* sin, const int32_t* pos, int64_t N, const float* inv_freq, int64_t half,
                 float attn_factor);
void rope_apply(float* x, int64_t N, int64_t H, int64_t D, int64_t rot, const float* cos, const float* sin,
                bool inverse);

// Gated activations: out (n) = act(gate)·up with act SiLU (SwiGLU) or GELU-tanh (GeGLU);
// backward overwrites dgate, dup (n).
void geglu_forward(float* out, const float* gate, const float* up, int64_t n);
void geglu_backward_set(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

// x (n) → cap·tanh(x/cap) in place; backward from the capped values y: dx = dy·(1 - (y/cap)²),
// in place on d.
void softcap_forward(float* x, int64_t n, float cap);
void softcap_backward(float* d, const float* y, int64_t n, float cap);

}  // namespace lowrank::ops
