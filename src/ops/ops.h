// CPU op declarations: every op has a forward and a backward (llm.c style).
// All buffers are f32, row-major, contiguous; shapes are given in comments.
// N = number of token positions (B*T), C = channels. Backward functions ACCUMULATE (+=)
// into gradient outputs unless stated otherwise, so callers zero them first.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lowrank::ops {

// ---- matmul (BLAS) -------------------------------------------------------------------
// C (M,N) = alpha * op(A) * op(B) + beta * C, with op = transpose when the flag is set.
// A is (M,K) or (K,M) when trans_a; B is (K,N) or (N,K) when trans_b. Leading dims are
// the natural ones of the stored (untransposed) matrices.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, const float* B, float beta, float* C);

// y (N, W.rows) = x (N, W.cols) · Wᵀ + bias (W.rows, may be null). Overwrites y.
// Works for every Matrix dtype: f32 goes straight to BLAS (honouring W.transposed); other
// dtypes are converted/dequantized in row tiles into a scratch buffer, never in full.
void linear_forward(float* y, const float* x, const Matrix& W, const float* bias, int64_t N);
// dx (N, W.cols) += dy (N, W.rows) · W. Frozen weights: this is the only backward needed.
void linear_backward_input(float* dx, const float* dy, const Matrix& W, int64_t N);
// dW (out, in) += dyᵀ · x ; dbias (out) += Σ_n dy (dbias may be null). For full fine-tuning.
void linear_backward_weight(float* dW, float* dbias, const float* dy, const float* x,
                            int64_t N, int64_t in, int64_t out);

// ---- embedding -----------------------------------------------------------------------
// out (N, C) = table[ids[n]] ; table is (V, C) of any dtype.
void embedding_forward(float* out, const int32_t* ids, const Matrix& table, int64_t N);
// dtable (V, C) += scatter of dout (N, C) by ids.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C);

// ---- normalization -------------------------------------------------------------------
// out (N,C) = (x - mean) * rstd * w + b ; mean, rstd (N) saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps);
// dx (N,C) +=, dw (C) +=, db (C) += (dw/db may be null when frozen).
void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N, int64_t C);
// out (N,C) = x * rstd * w, rstd = 1/sqrt(mean(x²) + eps) (N) saved. HF LlamaRMSNorm.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                     int64_t C, float eps);
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C);

// ---- rotary embedding ----------------------------------------------------------------
// In place on x (N, H, D) where token n has position pos[n]. inv_freq[i] = theta^(-2i/D),
// i < D/2. half_rotation (HF convention): pairs (x[i], x[i+D/2]); otherwise adjacent pairs
// (x[2i], x[2i+1]) (GGUF/llama.cpp row order). Angle = pos * inv_freq[i].
void rope_forward(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                  bool half_rotation);
// In place: dx = Rᵀ · dx (the inverse rotation) on dx (N, H, D).
void rope_backward(float* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                   bool half_rotation);

// ---- causal attention with grouped-query heads ----------------------------------------
// q (B,T,H,D), k/v (B,T,KVH,D), H % KVH == 0 (query head h uses kv head h / (H/KVH)).
// out (B,T,H,D) = softmax(q·kᵀ / sqrt(D) + causal mask) · v ; att (B,H,T,T) stores the
// probabilities (upper triangle zero) for backward.
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D);
// dq (B,T,H,D), dk/dv (B,T,KVH,D) +=.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t B, int64_t T,
                        int64_t H, int64_t KVH, int64_t D);
// One query step against a KV cache (decode): q (H,D) attends to k/v cache rows
// [0, T) of (T, KVH, D) laid out with row stride KVH*D. out (H,D).
void attention_decode(float* out, const float* q, const float* kcache, const float* vcache,
                      int64_t T, int64_t H, int64_t KVH, int64_t D);

// ---- activations ---------------------------------------------------------------------
// GELU tanh approximation (GPT-2 "gelu_new"): out (n) ; backward dx (n) += dout*gelu'(x).
void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);
// SwiGLU: out (n) = silu(gate) * up ; backward dgate, dup (n) +=.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n);

// ---- residual ------------------------------------------------------------------------
// out (n) = a + b
void residual_forward(float* out, const float* a, const float* b, int64_t n);
// da (n) += dout, db (n) += dout
void residual_backward(float* da, float* db, const float* dout, int64_t n);

// ---- loss ----------------------------------------------------------------------------
// Softmax cross-entropy over logits (N, V) with targets (N); target < 0 = ignored.
// losses (N) = -log softmax(logits)[target] (0 for ignored). Returns Σ losses.
double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                             int64_t N, int64_t V);
// In place: logits (N, V) becomes dlogits = (softmax - onehot) * dloss[n]; rows with an
// ignored target become 0. dloss (N) is the upstream gradient of each position's loss.
void cross_entropy_backward_inplace(float* logits, const int32_t* targets, const float* dloss,
                                    int64_t N, int64_t V);

}  // namespace lowrank::ops
