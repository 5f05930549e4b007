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

}  // namespace lowrank::ops
