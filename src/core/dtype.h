// Element types of stored weights: plain floats and the GGUF block-quantized encodings.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace lowrank {

enum class DType : uint8_t {
  F32, F16, BF16,
  Q8_0, Q4_0, Q2_K, Q4_K, Q5_K, Q6_K, IQ2_XXS,
  I32, I64, U8,  // only for non-weight tensors (ids) in safetensors files
};

const char* dtype_name(DType t);
// Elements per block (1 for plain types) and bytes per block.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
bool dtype_is_quantized(DType t);
// Bytes for n elements (n must be a multiple of the block size for quantized types).
size_t dtype_bytes(DType t, int64_t n);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of any supported weight type at src into f32 at dst.
// Quantized types: src points at the first block; n is a multiple of the block size.
void to_f32(DType t, const void* src, float* dst, int64_t n);

}  // namespace lowrank
