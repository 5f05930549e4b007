// Token embedding lookup (any stored dtype) and its scatter-add backward.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"

namespace lowrank::ops {

void embedding_forward(float* out, const int32_t* ids, const Matrix& table, int64_t N) {
  if (table.empty()) fail("embedding_forward: table has no data");
  const int64_t V = table.rows, C = table.cols;
  for (int64_t n = 0; n < N; n++)
    if (ids[n] < 0 || ids[n] >= V)
      fail("embedding_forward: token id ", ids[n], " at position ", n, " is outside [0, ", V, ")");
  const bool plain_f32 = table.dtype == DType::F32 && !table.transposed;
#pragma omp parallel for if (N * C >= 65536)
  for (int64_t n = 0; n < N; n++) {
    float* o = out + n * C;  // (C)
    if (plain_f32)
      std::memcpy(o, static_cast<const float*>(table.data) + int64_t(ids[n]) * C, size_t(C) * 4);
    else
      table.row_f32(ids[n], o);
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C) {
  // Threads own disjoint channel slices, so repeated ids never race.
  constexpr int64_t kChunk = 128;
  const int64_t nchunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for if (N * C >= 65536)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t c0 = c * kChunk, c1 = std::min(C, c0 + kChunk);
    for (int64_t n = 0; n < N; n++) {
      if (ids[n] < 0) continue;
      float* d = dtable + int64_t(ids[n]) * C;  // (C)
      const float* g = dout + n * C;            // (C)
      for (int64_t i = c0; i < c1; i++) d[i] += g[i];
    }
  }
}

}  // namespace lowrank::ops
