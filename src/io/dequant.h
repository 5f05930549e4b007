// Dequantizers for GGUF block encodings (layouts in the GGUF notes of this project).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace lowrank {

// Decodes n elements (a multiple of dtype_block_elems(t)) of block data at src into dst.
void dequantize(DType t, const void* src, float* dst, int64_t n);

}  // namespace lowrank
