#include "core/tensor.h"

#include <cstring>

#include "core/error.h"

namespace lowrank {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> Tensor::to_f32_vector() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  to_f32(dtype, data, out.data(), numel());
  return out;
}

void Matrix::rows_f32(int64_t r0, int64_t n, float* out) const {
  if (!transposed) {
    const char* base = static_cast<const char*>(data) + dtype_bytes(dtype, r0 * cols);
    lowrank::to_f32(dtype, base, out, n * cols);
    return;
  }
  // Storage is (cols, rows): gather column entries.
  for (int64_t c = 0; c < cols; c++) {
    for (int64_t i = 0; i < n; i++) {
      int64_t idx = c * rows + r0 + i;
      float v;
      switch (dtype) {
        case DType::F32: v = static_cast<const float*>(data)[idx]; break;
        case DType::F16: v = f16_to_f32(static_cast<const uint16_t*>(data)[idx]); break;
        case DType::BF16: v = bf16_to_f32(static_cast<const uint16_t*>(data)[idx]); break;
        default: fail("transposed matrix of dtype ", dtype_name(dtype), " is not supported");
      }
      out[i * cols + c] = v;
    }
  }
}

void Matrix::row_f32(int64_t r, float* out) const { rows_f32(r, 1, out); }

std::vector<float> Matrix::to_f32() const {
  std::vector<float> out(size_t(rows * cols));
  rows_f32(0, rows, out.data());
  return out;
}

FloatBuffer FloatBuffer::zeros(std::vector<int64_t> shape) {
  FloatBuffer b;
  b.shape = std::move(shape);
  b.n = 1;
  for (int64_t d : b.shape) b.n *= d;
  b.data = std::shared_ptr<float[]>(new float[size_t(b.n)]());
  return b;
}

Matrix matrix_from_buffer(const FloatBuffer& b) {
  if (b.shape.size() != 2) fail("matrix_from_buffer: expected 2-D buffer, got ", shape_str(b.shape));
  Matrix m;
  m.dtype = DType::F32;
  m.rows = b.shape[0];
  m.cols = b.shape[1];
  m.data = b.ptr();
  m.owner = std::shared_ptr<const void>(b.data, b.data.get());
  return m;
}

}  // namespace lowrank
