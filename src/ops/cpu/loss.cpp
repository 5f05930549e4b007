// Softmax cross-entropy over the vocabulary. Each row: max-subtracted exponentials summed in
// double, loss = max + log Σ exp(x - max) - x[target]. Rows are independent (parallel).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

// exp(x), ~1 ulp on [-87, 88] (Cephes polynomial); 0 below -87. Branch-free, vectorizes.
inline float exp_approx(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float fx = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>(uint32_t(int32_t(fx) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

float row_max(const float* x, int64_t V) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < V; i++) mx = std::max(mx, x[i]);
  return mx;
}

void check_targets(const int32_t* targets, int64_t N, int64_t V, const char* what) {
  for (int64_t n = 0; n < N; n++)
    if (targets[n] >= V) fail(what, ": target ", targets[n], " at row ", n, " is >= vocab size ", V);
}

}  // namespace

double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                             int64_t N, int64_t V) {
  check_targets(targets, N, V, "cross_entropy_forward");
#pragma omp parallel for schedule(static) if (N * V >= 65536)
  for (int64_t n = 0; n < N; n++) {
    if (targets[n] < 0) {
      losses[n] = 0.0f;
      continue;
    }
    const float* x = logits + n * V;  // (V)
    const float mx = row_max(x, V);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < V; i++) sum += double(exp_approx(x[i] - mx));
    losses[n] = float(double(mx) + std::log(sum) - double(x[targets[n]]));
  }
  double total = 0.0;  // summed in row order: deterministic
  for (int64_t n = 0; n < N; n++) total += losses[n];
  return total;
}

void cross_entropy_backward_inplace(float* logits, const int32_t* targets, const float* dloss,
                                    int64_t N, int64_t V) {
  check_targets(targets, N, V, "cross_entropy_backward_inplace");
#pragma omp parallel for schedule(static) if (N * V >= 65536)
  for (int64_t n = 0; n < N; n++) {
    float* x = logits + n * V;  // (V) logits in, dlogits out
    if (targets[n] < 0) {
      std::fill(x, x + V, 0.0f);
      continue;
    }
    const float mx = row_max(x, V);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < V; i++) {
      const float e = exp_approx(x[i] - mx);
      x[i] = e;
      sum += double(e);
    }
    const float k = float(double(dloss[n]) / sum);
#pragma omp simd
    for (int64_t i = 0; i < V; i++) x[i] *= k;
    x[targets[n]] -= dloss[n];
  }
}

}  // namespace lowrank::ops
