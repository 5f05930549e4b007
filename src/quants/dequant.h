// Block decoders for every GGUF weight encoding (layouts: ggml-common.h; per-type notes in
// dequant.cpp).
#pragma once
#include <cstdint>

#include "quants/types.h"

namespace lowrank::quants {

// Decodes n elements of type t at src into dst (n floats). Quantized types: src points at
// the first block and n is a multiple of dtype_block_elems(t). Returns false (writing
// nothing) when t is not a weight type or n is negative or not a multiple of the block size.
bool dequantize_row(DType t, const void* src, float* dst, int64_t n);

}  // namespace lowrank::quants
