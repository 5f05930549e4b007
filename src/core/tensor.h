// Tensors and weight matrices. Compute in this engine is f32 on raw pointers (llm.c style);
// these types hold stored data (any dtype, possibly memory-mapped) with shape and ownership.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lowrank {

struct Tensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;          // outermost first (PyTorch order)
  const void* data = nullptr;          // points into owner (mmap or heap)
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;   // keeps data alive

  int64_t numel() const;
  const float* f32() const { return static_cast<const float*>(data); }
  // A copy of the values as f32 (converting/dequantizing when needed).
  std::vector<float> to_f32_vector() const;
};

// A 2-D weight used as y = x · Wᵀ (nn.Linear convention): logical shape (rows=out, cols=in).
// transposed: storage is (in, out) row-major (GPT-2 Conv1D); only allowed for F32/F16/BF16.
struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0;   // out features
  int64_t cols = 0;   // in features
  bool transposed = false;
  const void* data = nullptr;
  std::shared_ptr<const void> owner;

  bool empty() const { return data == nullptr; }
  // Writes logical row r (cols floats) to out.
  void row_f32(int64_t r, float* out) const;
  // Writes logical rows [r0, r0+n) to out (n, cols), dequantizing as needed.
  void rows_f32(int64_t r0, int64_t n, float* out) const;
  // A full f32 copy (rows, cols), row-major, un-transposed.
  std::vector<float> to_f32() const;
};

// A heap buffer of f32 with shape, for owned weights (converted, merged, trainable).
struct FloatBuffer {
  std::vector<int64_t> shape;
  std::shared_ptr<float[]> data;
  int64_t n = 0;
  static FloatBuffer zeros(std::vector<int64_t> shape);
  float* ptr() const { return data.get(); }
};

// Wraps an owned f32 buffer as a Matrix (rows, cols), not transposed.
Matrix matrix_from_buffer(const FloatBuffer& b);

}  // namespace lowrank
