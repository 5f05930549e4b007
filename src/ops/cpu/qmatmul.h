// Quantized matrix-vector / matrix-small-matrix products on packed GGUF blocks.
//
// The activation rows x (N, K) are quantized once per call to 8-bit blocks (one f32 scale
// per block of 256, or of 32 for Q8_0/Q4_0, int8 values, and int16 sums of every 16 values
// for the formats whose offsets/mins need them). Each output is then
//   y[n][r] = Σ_blocks  f(d_w, d_x) · (integer dot of the packed weight codes with the
//             int8 activations, weighted by the block's integer sub-scales)
// computed with integer SIMD on the packed weight bits; f32 weights are never formed.
// The only approximation is the 8-bit rounding of x: per element |Δx| ≤ max|x_block|/254.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace lowrank::ops {

// y (N, W.rows) = x (N, W.cols) · Wᵀ + bias (W.rows, may be null) for quantized W
// (Q8_0, Q4_0, Q2_K, Q4_K, Q5_K, Q6_K, IQ2_XXS), untransposed. Overwrites y.
// Returns false (doing nothing) when the dtype or shape is not handled, so callers fall back.
// Parallel over output rows with OpenMP (serial when called inside a parallel region).
bool quant_linear_forward(float* y, const float* x, const Matrix& W, const float* bias, int64_t N);

namespace qmm_detail {
// quant_linear_forward with a choice of kernels: simd = false runs the portable scalar
// kernels, which compute the same integer block sums (bit-exact) and differ from the SIMD
// kernels only in the order of the f32 accumulation. For tests and benchmarks.
bool quant_linear_forward_impl(float* y, const float* x, const Matrix& W, const float* bias,
                               int64_t N, bool simd);
// Activation block size used for a weight dtype (256, or 32 for Q8_0/Q4_0); 0 if unhandled.
int64_t activation_block(DType t);
// The activation quantizer: x (N, K) → q (N, K) int8 in [-127, 127], d (N, K/bs) with
// x ≈ d·q per block of bs values (d = max|x|/127), s (N, K/16) sums of 16 consecutive q.
void quantize_activations(const float* x, int64_t N, int64_t K, int64_t bs, int8_t* q,
                          float* d, int16_t* s);
// The SIMD kernel family compiled in: "avx512-vnni", "avx2-vnni", "avx2" or "scalar".
const char* simd_name();
}  // namespace qmm_detail

}  // namespace lowrank::ops
