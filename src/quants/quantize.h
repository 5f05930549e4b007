// Block encoders (f32 -> GGUF block encodings), following llama.cpp's reference quantizers
// without an importance matrix (what `llama-quantize` runs when given none): per-block scale
// search as in ggml-quants.c (make_qx_quants, make_q3_quants, make_qkx2_quants, the IQ4_NL
// level search). Notes on each algorithm are in quantize.cpp.
#pragma once
#include <cstdint>

#include "quants/types.h"

namespace lowrank::quants {

// True when t has an encoder: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4. (The IQ1/IQ2/IQ3 codebook types
// need an importance matrix in llama.cpp and have none here.)
bool can_quantize(DType t);

// Encodes n floats at src (n a multiple of dtype_block_elems(t)) into dtype_bytes(t, n) bytes
// at dst. Blocks are independent, so a whole tensor of rows can be passed at once. Returns
// false (writing nothing) when t has no encoder or n is negative or not a multiple of the
// block size.
bool quantize_row(DType t, const float* src, void* dst, int64_t n);

// The same for nrows rows of n_per_row values with an importance matrix (llama.cpp's
// `--imatrix`: one weight per column, imatrix[n_per_row], the same for every row), by
// llama.cpp's importance-matrix quantizers (quantize_row_*_impl: weighted least squares with
// make_qkx3_quants / make_qp_quants for the K-quant block scales). imatrix null: quantize_row.
// The importance changes Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K, IQ4_NL, IQ4_XS; other types ignore it.
bool quantize_rows(DType t, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* imatrix);

}  // namespace lowrank::quants
