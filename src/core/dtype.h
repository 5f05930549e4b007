// Element types of stored weights: plain floats and the GGUF block-quantized encodings. The
// type table, the half/bfloat16 conversions and the block codecs live in the quants layer
// (src/quants, below core); this header re-exports them into namespace lowrank and adds the
// throwing conversions the rest of the engine uses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "quants/half.h"
#include "quants/types.h"

namespace lowrank {

using quants::DType;
using quants::dtype_block_bytes;
using quants::dtype_block_elems;
using quants::dtype_bytes;
using quants::dtype_is_quantized;
using quants::dtype_is_weight;
using quants::dtype_name;

using quants::bf16_to_f32;
using quants::f16_to_f32;
using quants::f32_to_bf16;
using quants::f32_to_f16;

// Converts n elements of any weight type at src into f32 at dst. Quantized types: src points
// at the first block; n is a multiple of the block size. Throws lowrank::Error otherwise.
void to_f32(DType t, const void* src, float* dst, int64_t n);
// The same as to_f32 (kept for the callers of the former io/dequant.h).
void dequantize(DType t, const void* src, float* dst, int64_t n);

}  // namespace lowrank
