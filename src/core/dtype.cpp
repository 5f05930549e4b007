#include "core/dtype.h"

#include "core/error.h"
#include "quants/dequant.h"

namespace lowrank {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void to_f32(DType t, const void* src, float* dst, int64_t n) {
  if (!dtype_is_weight(t)) fail("cannot convert dtype ", dtype_name(t), " to f32");
  const int64_t be = dtype_block_elems(t);
  if (n < 0 || n % be != 0) {
    fail("dequantize: ", n, " elements is not a multiple of the ", dtype_name(t), " block size ", be);
  }
  if (!quants::dequantize_row(t, src, dst, n)) fail("dequantize: no decoder for ", dtype_name(t));
}

void dequantize(DType t, const void* src, float* dst, int64_t n) { to_f32(t, src, dst, n); }

}  // namespace lowrank
