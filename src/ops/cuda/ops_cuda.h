// CUDA op declarations, mirroring src/ops/ops.h op for op (same names, same shapes, same
// accumulate (+=) contract for backward outputs), on DEVICE pointers.
//
// Element types: every activation/gradient buffer is `T`, either float (f32 mode: exact
// checks against the CPU ops) or __nv_bfloat16 (bf16 mode: training/inference speed).
// Whatever T is, arithmetic inside a kernel is f32 (reductions of norm statistics in f64,
// as the CPU reference does). Statistics saved for backward (norm mean/rstd, attention
// log-sum-exp, per-position losses) are always f32, and so are the LoRA master weights,
// their gradients and the AdamW state.
//
// All work is queued on one stream (set_stream; default: the legacy default stream).
// Functions that return a host value (sum, sum_squares) synchronize that stream.
// Errors (CUDA/cuBLASLt failures, unsupported shapes) throw lowrank::Error.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowrank::ops::cuda {

using bf16 = __nv_bfloat16;

// ---- runtime -------------------------------------------------------------------------
// True when a CUDA device can be used; otherwise false and *why (if given) says why
// (no driver, no device, ...). Never throws.
bool device_available(std::string* why = nullptr);
void set_stream(cudaStream_t s);
cudaStream_t stream();
void synchronize();  // waits for the stream; throws on an asynchronous kernel error
// Throws lowrank::Error("CUDA error in <what>: <message>") unless e == cudaSuccess.
void check(cudaError_t e, const char* what);
// A device scratch buffer per slot (0..7), grown (never shrunk) to at least `bytes`.
// Valid until the next call with the same slot and a larger size. Ops use slots 0..3;
// callers may use 4..7.
void* scratch(int slot, size_t bytes);

// Device memory through one accounting point (everything the ops and the CUDA model
// allocate, scratch included): bytes in use now and the peak since reset_peak(). This is
// the figure comparable with torch.cuda.max_memory_allocated (the CUDA context and
// library handles are excluded on both sides).
void* device_alloc(size_t bytes);
void device_free(void* p);
size_t device_bytes_in_use();
size_t device_bytes_peak();
void reset_peak();
// Frees one scratch slot (e.g. the large staging buffer after loading weights).
void scratch_release(int slot);

// Host <-> device copies of n elements, converting f32 <-> T (T = float or bf16).
template <typename T> void upload(T* dst, const float* src, int64_t n);
template <typename T> void download(float* dst, const T* src, int64_t n);
// dst (n) of type TD = src (n) of type TS, on the device (f32 <-> bf16 casts).
template <typename TD, typename TS> void convert(TD* dst, const TS* src, int64_t n);
// x (n) = 0 (any element type, by bytes).
void zero(void* x, size_t bytes);

// ---- matmul (cuBLASLt) ----------------------------------------------------------------
// Row-major C (M,N) = alpha * op(A) * op(B) + beta * C, exactly like ops::gemm: A is (M,K)
// or (K,M) when trans_a; B is (K,N) or (N,K) when trans_b; natural leading dims.
// Instantiated for (TI, TO) = (float, float), (bf16, bf16), (bf16, float); accumulation is
// f32. With float inputs the product is exact f32 (no TF32) unless set_allow_tf32(true).
template <typename TI, typename TO>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const TI* A,
          const TI* B, float beta, TO* C);
void set_allow_tf32(bool allow);
// y (N, out) = x (N, in) · Wᵀ + bias (out, may be null). W is (out, in) row-major. Overwrites y.
template <typename T>
void linear_forward(T* y, const T* x, const T* W, const T* bias, int64_t N, int64_t in, int64_t out);
// dx (N, in) += dy (N, out) · W. Frozen weights: this is the only backward needed.
template <typename T>
void linear_backward_input(T* dx, const T* dy, const T* W, int64_t N, int64_t in, int64_t out);
// dW (out, in) += dyᵀ · x ; dbias (out) += Σ_n dy (may be null). f32 gradients.
template <typename T>
void linear_backward_weight(float* dW, float* dbias, const T* dy, const T* x, int64_t N, int64_t in,
                            int64_t out);
// y (N, C) += bias (C) broadcast over rows.
template <typename T> void add_bias(T* y, const T* bias, int64_t N, int64_t C);

// ---- embedding -----------------------------------------------------------------------
// out (N, C) = table (V, C)[ids[n]]. Ids must be in [0, V) (callers validate on the host);
// an id outside gives a zero row.
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C);
// dtable (V, C) += scatter of dout (N, C) by ids (f32 atomics; ids < 0 skipped).
template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C);
// x (N, C) += wpe (P, C)[pos[n]] (GPT-2 learned positions).
template <typename T>
void position_add(T* x, const T* wpe, const int32_t* pos, int64_t N, int64_t C);

// ---- normalization -------------------------------------------------------------------
// As ops::layernorm_* / rmsnorm_*. mean, rstd (N) f32 (may be null in forward). Weight and
// bias gradients (C) are f32 and may be null (frozen); they are reduced with atomics.
template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                       int64_t N, int64_t C, float eps);
template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C);
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps);
template <typename T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t C);

// ---- rotary embedding ----------------------------------------------------------------
// In place on x (N, H, D), positions pos (N) on the device; same angles as ops::rope_* (f32
// inv_freq and angle, cos/sin evaluated in f64 and rounded to f32).
template <typename T>
void rope_forward(T* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                  bool half_rotation);
template <typename T>
void rope_backward(T* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                   bool half_rotation);

// ---- causal attention with grouped-query heads (flash-style, tiled, online softmax) ----
// q (B,T,H,D), k/v (B,T,KVH,D), out (B,T,H,D). Instead of the CPU op's probabilities
// (B,H,T,T) the forward saves lse (B,H,T) f32 = log Σ_j exp(q·k_j/√D) (natural log), and
// the backward recomputes the probabilities tile by tile. D ∈ {32, 64, 128}.
template <typename T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, int64_t B,
                       int64_t T_, int64_t H, int64_t KVH, int64_t D);
// dq (B,T,H,D), dk/dv (B,T,KVH,D) +=. Needs the forward's out and lse. Deterministic (no
// atomics): one pass owns dk/dv per kv tile and kv head, another owns dq per query tile.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, int64_t B, int64_t T_, int64_t H,
                        int64_t KVH, int64_t D);

// ---- activations and residual ----------------------------------------------------------
template <typename T> void gelu_forward(T* out, const T* x, int64_t n);
template <typename T> void gelu_backward(T* dx, const T* dout, const T* x, int64_t n);
template <typename T> void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);
template <typename T> void residual_forward(T* out, const T* a, const T* b, int64_t n);
// da, db (n) += dout; either may be null.
template <typename T> void residual_backward(T* da, T* db, const T* dout, int64_t n);

// ---- loss ----------------------------------------------------------------------------
// losses (N) f32 = -log softmax(logits (N, V))[target]; 0 where target < 0. Targets must be
// < V (callers validate). Does not synchronize; use sum() for Σ losses.
template <typename T>
void cross_entropy_forward(float* losses, const T* logits, const int32_t* targets, int64_t N, int64_t V);
// In place: logits (N, V) -> (softmax - onehot) * dloss[n]; ignored rows become 0.
template <typename T>
void cross_entropy_backward_inplace(T* logits, const int32_t* targets, const float* dloss, int64_t N,
                                    int64_t V);
// Both at once (one kernel, two reads and one write of each row): losses (N) as the forward,
// then logits become dlogits with a uniform upstream gradient dloss_scale. A model calls it
// on chunks of rows so the logits of the whole batch never exist at once.
template <typename T>
void cross_entropy_fused(float* losses, T* logits, const int32_t* targets, float dloss_scale,
                         int64_t N, int64_t V);
// Σ x (n) in f64 (synchronizes).
double sum(const float* x, int64_t n);

// ---- AdamW (f32 master weights and state) ---------------------------------------------
// One torch.optim.AdamW update of p (n) with gradient g, moments m, v (all f32), step t
// (1-based, already incremented). Same arithmetic as lowrank::AdamW::step. When p_copy is
// not null it receives bf16(p) (the compute copy used by bf16 GEMMs).
void adamw_step(float* p, const float* g, float* m, float* v, bf16* p_copy, int64_t n, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t t);
// Σ x² (n) in f64 (synchronizes); x (n) *= s.
double sum_squares(const float* x, int64_t n);
void scale_inplace(float* x, int64_t n, float s);

// ---- LoRA: gathered (per-row adapter) shrink and expand, Punica/S-LoRA style ----------
// S resident adapters are stacked per target: A (S, r, in), B (S, out, r); rank r ≤ 64
// (smaller ranks can be zero-padded to a common r exactly). idx (N) picks each row's slot
// (< 0: no adapter). slot_scale (S) and tok_scale (N) multiply the result; either may be null
// (= 1). One launch handles any mix of adapters in the batch.
//
// shrink: h (N, r) = scale · x (N, K) · W[idx]ᵀ, with W (S, r, K) row-major, or (S, K, r)
//         when w_kr. Overwrites h (rows with idx < 0 become 0).
//   forward  h = x·Aᵀ          : W = A, w_kr = false
//   backward g = s·dy·B        : W = B, w_kr = true, K = out
template <typename T>
void lora_shrink(T* h, const T* x, const T* W, bool w_kr, const int32_t* idx, const float* slot_scale,
                 const float* tok_scale, int64_t N, int64_t K, int64_t r);
// expand: y (N, M) += scale · h (N, r) · W[idx]ᵀ, with W (S, M, r) row-major, or (S, r, M)
//         when w_rm.
//   forward  y += s·h·Bᵀ       : W = B, w_rm = false, M = out
//   backward dx += g·A         : W = A, w_rm = true,  M = in
template <typename T>
void lora_expand(T* y, const T* h, const T* W, bool w_rm, const int32_t* idx, const float* slot_scale,
                 const float* tok_scale, int64_t N, int64_t M, int64_t r);

}  // namespace lowrank::ops::cuda
