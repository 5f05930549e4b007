#include "io/dequant.h"

#include "core/error.h"

namespace lowrank {

// Placeholder until the GGUF block decoders land: rejects every quantized type clearly.
void dequantize(DType t, const void* src, float* dst, int64_t n) {
  fail("dequantization of ", dtype_name(t), " is not implemented yet");
}

}  // namespace lowrank
