// LayerNorm (GPT-2) and RMSNorm (Llama), forward and backward. Row statistics are
// accumulated in double; weight/bias gradients are summed per thread and reduced in thread
// order so results do not depend on scheduling.
#include <omp.h>

#include <cmath>
#include <vector>

#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which a loop stays single-threaded

int threads_for(int64_t work) { return work >= kParallelMin ? omp_get_max_threads() : 1; }

// Adds the per-thread partials (nthr, C) into g (C) in thread order.
void reduce_partials(float* g, const std::vector<float>& partials, int nthr, int64_t C) {
  for (int t = 0; t < nthr; t++) {
    const float* p = partials.data() + size_t(t) * size_t(C);  // (C)
    for (int64_t i = 0; i < C; i++) g[i] += p[i];
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps) {
#pragma omp parallel for num_threads(threads_for(N * C))
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x + n * C;  // (C)
    float* o = out + n * C;       // (C)
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < C; i++) s += xr[i];
    const float m = float(s / double(C));
    double v = 0.0;
#pragma omp simd reduction(+ : v)
    for (int64_t i = 0; i < C; i++) {
      const double d = double(xr[i] - m);
      v += d * d;
    }
    const float rs = float(1.0 / std::sqrt(v / double(C) + double(eps)));
    if (b) {
#pragma omp simd
      for (int64_t i = 0; i < C; i++) o[i] = (xr[i] - m) * rs * w[i] + b[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < C; i++) o[i] = (xr[i] - m) * rs * w[i];
    }
    if (mean) mean[n] = m;
    if (rstd) rstd[n] = rs;
  }
}

void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N, int64_t C) {
  layernorm_backward_ex(dx, dw, db, dout, x, w, mean, rstd, N, C, true);
}

void layernorm_backward_ex(float* dx, float* dw, float* db, const float* dout, const float* x,
                           const float* w, const float* mean, const float* rstd, int64_t N, int64_t C,
                           bool accumulate) {
  const int nthr = threads_for(N * C);
  std::vector<float> pdw(dw ? size_t(nthr) * size_t(C) : 0, 0.0f);  // (nthr, C)
  std::vector<float> pdb(db ? size_t(nthr) * size_t(C) : 0, 0.0f);  // (nthr, C)
#pragma omp parallel num_threads(nthr)
  {
    const int tid = omp_get_thread_num();
    float* ldw = dw ? pdw.data() + size_t(tid) * size_t(C) : nullptr;  // (C)
    float* ldb = db ? pdb.data() + size_t(tid) * size_t(C) : nullptr;  // (C)
#pragma omp for
    for (int64_t n = 0; n < N; n++) {
      const float* xr = x + n * C;     // (C)
      const float* g = dout + n * C;   // (C)
      float* d = dx + n * C;           // (C)
      const float m = mean[n], rs = rstd[n];
      double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t i = 0; i < C; i++) {
        const float norm = (xr[i] - m) * rs;
        const float dn = g[i] * w[i];
        s1 += dn;
        s2 += double(dn) * norm;
      }
      const float dn_mean = float(s1 / double(C));
      const float dnn_mean = float(s2 / double(C));
      if (accumulate) {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) {
          const float norm = (xr[i] - m) * rs;
          d[i] += (g[i] * w[i] - dn_mean - norm * dnn_mean) * rs;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) {
          const float norm = (xr[i] - m) * rs;
          d[i] = (g[i] * w[i] - dn_mean - norm * dnn_mean) * rs;
        }
      }
      if (ldw) {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) ldw[i] += g[i] * ((xr[i] - m) * rs);
      }
      if (ldb) {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) ldb[i] += g[i];
      }
    }
  }
  if (dw) reduce_partials(dw, pdw, nthr, C);
  if (db) reduce_partials(db, pdb, nthr, C);
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                     int64_t C, float eps) {
  rmsnorm_forward_off(out, rstd, x, w, 0.0f, N, C, eps);
}

void rmsnorm_forward_off(float* out, float* rstd, const float* x, const float* w, float offset, int64_t N,
                         int64_t C, float eps) {
#pragma omp parallel for num_threads(threads_for(N * C))
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x + n * C;  // (C)
    float* o = out + n * C;       // (C)
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < C; i++) ss += double(xr[i]) * double(xr[i]);
    const float rs = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    // HF order: normalize, then scale (by 1 + w for Gemma, whose (1 + w) is formed in float32)
    if (offset != 0.0f) {
#pragma omp simd
      for (int64_t i = 0; i < C; i++) o[i] = (xr[i] * rs) * (offset + w[i]);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < C; i++) o[i] = (xr[i] * rs) * w[i];
    }
    if (rstd) rstd[n] = rs;
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C) {
  rmsnorm_backward_ex(dx, dw, dout, x, w, rstd, N, C, true);
}

void rmsnorm_backward_ex(float* dx, float* dw, const float* dout, const float* x, const float* w,
                         const float* rstd, int64_t N, int64_t C, bool accumulate) {
  rmsnorm_backward_off(dx, dw, dout, x, w, 0.0f, rstd, N, C, accumulate);
}

void rmsnorm_backward_off(float* dx, float* dw, const float* dout, const float* x, const float* w, float offset,
                          const float* rstd, int64_t N, int64_t C, bool accumulate) {
  const int nthr = threads_for(N * C);
  std::vector<float> pdw(dw ? size_t(nthr) * size_t(C) : 0, 0.0f);  // (nthr, C)
#pragma omp parallel num_threads(nthr)
  {
    const int tid = omp_get_thread_num();
    float* ldw = dw ? pdw.data() + size_t(tid) * size_t(C) : nullptr;  // (C)
#pragma omp for
    for (int64_t n = 0; n < N; n++) {
      const float* xr = x + n * C;    // (C)
      const float* g = dout + n * C;  // (C)
      float* d = dx + n * C;          // (C)
      const float rs = rstd[n];
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < C; i++) s += double(g[i] * (offset + w[i])) * double(xr[i]);
      // dx = rs * (g*w') - x * rs³ * mean(g*w'*x), w' = offset + w
      const float k = float(s / double(C)) * rs * rs * rs;
      if (accumulate) {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) d[i] += rs * g[i] * (offset + w[i]) - xr[i] * k;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) d[i] = rs * g[i] * (offset + w[i]) - xr[i] * k;
      }
      if (ldw) {
#pragma omp simd
        for (int64_t i = 0; i < C; i++) ldw[i] += g[i] * (xr[i] * rs);
      }
    }
  }
  if (dw) reduce_partials(dw, pdw, nthr, C);
}

}  // namespace lowrank::ops
