// Element-wise ops: GELU (tanh approximation), SwiGLU and the residual add.
// GELU uses the identity 0.5·x·(1 + tanh(u)) = x · sigmoid(2u), and both activations use a
// branch-free exp so the loops vectorize (libm's expf/tanhf calls would not).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "ops/cpu/fast_math.h"
#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

constexpr int64_t kParallelMin = 32768;  // elements below which a loop stays single-threaded
constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;


inline float sigmoid(float z) { return sigmoid_approx(z); }

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float xi = x[i];
    const float u = kGeluK * (xi + kGeluC * xi * xi * xi);
    out[i] = xi * sigmoid(2.0f * u);
  }
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float xi = x[i];
    const float u = kGeluK * (xi + kGeluC * xi * xi * xi);
    const float du = kGeluK * (1.0f + 3.0f * kGeluC * xi * xi);
    const float s = sigmoid(2.0f * u);
    // d/dx [x·σ(2u)] = σ(2u) + x·σ(2u)(1-σ(2u))·2u'
    dx[i] += dout[i] * (s + xi * s * (1.0f - s) * 2.0f * du);
  }
}

void gelu_backward_set(float* dx, const float* dout, const float* x, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float xi = x[i];
    const float u = kGeluK * (xi + kGeluC * xi * xi * xi);
    const float du = kGeluK * (1.0f + 3.0f * kGeluC * xi * xi);
    const float s = sigmoid(2.0f * u);
    dx[i] = dout[i] * (s + xi * s * (1.0f - s) * 2.0f * du);
  }
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    const float s = sigmoid(g);
    const float silu = g * s;
    dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
    dup[i] += dout[i] * silu;
  }
}

void swiglu_backward_set(float* dgate, float* dup, const float* dout, const float* gate,
                         const float* up, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    const float s = sigmoid(g);
    const float silu = g * s;
    dgate[i] = dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
    dup[i] = dout[i] * silu;
  }
}

// GELU-tanh(gate) · up (GeGLU, Gemma).
void geglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    const float u = kGeluK * (g + kGeluC * g * g * g);
    out[i] = g * sigmoid(2.0f * u) * up[i];
  }
}

void geglu_backward_set(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    const float u = kGeluK * (g + kGeluC * g * g * g);
    const float du = kGeluK * (1.0f + 3.0f * kGeluC * g * g);
    const float s = sigmoid(2.0f * u);
    dgate[i] = dout[i] * up[i] * (s + g * s * (1.0f - s) * 2.0f * du);
    dup[i] = dout[i] * g * s;
  }
}

void softcap_forward(float* x, int64_t n, float cap) {
  const float inv = 1.0f / cap;
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) x[i] = cap * tanh_approx(x[i] * inv);
}

void softcap_backward(float* d, const float* y, int64_t n, float cap) {
  const float inv = 1.0f / cap;
#pragma omp parallel for simd if (parallel : n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float t = y[i] * inv;
    d[i] *= 1.0f - t * t;
  }
}

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd if (parallel : n >= 4 * kParallelMin)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void residual_backward(float* da, float* db, const float* dout, int64_t n) {
  // da or db may be null when that branch needs no gradient.
  if (da && db) {
#pragma omp parallel for simd if (parallel : n >= 4 * kParallelMin)
    for (int64_t i = 0; i < n; i++) {
      da[i] += dout[i];
      db[i] += dout[i];
    }
    return;
  }
  float* d = da ? da : db;
  if (!d) return;
#pragma omp parallel for simd if (parallel : n >= 4 * kParallelMin)
  for (int64_t i = 0; i < n; i++) d[i] += dout[i];
}

}  // namespace lowrank::ops
