// Softmax cross-entropy over the vocabulary. Each row: max-subtracted exponentials summed
// blockwise (float lanes, double across blocks); loss = max + log Σ exp(x - max) - x[target].
// Rows are independent (parallel).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "ops/cpu/fast_math.h"
#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {


// Row kernels are kept out of line: inlined into the OpenMP-outlined loop bodies, GCC 12
// emits scalar code for them.
[[gnu::noinline]] float row_max(const float* x, int64_t V) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
  return mx;
}

// Σ exp(x - mx) over x (V): float lanes within blocks of kSumBlock, blocks summed in double.
// (GCC 12 does not vectorize a float->double reduction around the exp polynomial.)
constexpr int64_t kSumBlock = 1024;

[[gnu::noinline]] double row_sum_exp(const float* x, int64_t V, float mx) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < V; b0 += kSumBlock) {
    const int64_t b1 = std::min(V, b0 + kSumBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b0; i < b1; i++) s += exp_approx(x[i] - mx);
    total += double(s);
  }
  return total;
}

// x (V) <- exp(x - mx) in place; returns the sum (blocked like row_sum_exp).
[[gnu::noinline]] double row_exp_inplace(float* x, int64_t V, float mx) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < V; b0 += kSumBlock) {
    const int64_t b1 = std::min(V, b0 + kSumBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b0; i < b1; i++) {
      const float e = exp_approx(x[i] - mx);
      x[i] = e;
      s += e;
    }
    total += double(s);
  }
  return total;
}

[[gnu::noinline]] void row_scale(float* x, int64_t V, float k) {
#pragma omp simd
  for (int64_t i = 0; i < V; i++) x[i] *= k;
}

// One pass over x (V): the max m and Σ exp(x - m) (double), combining per-block maxima and
// sums (each block of kSumBlock is read twice, the second time from L1).
[[gnu::noinline]] void row_max_sum_exp(const float* x, int64_t V, float* out_max, double* out_sum) {
  float m = -INFINITY;
  double total = 0.0;
  for (int64_t b0 = 0; b0 < V; b0 += kSumBlock) {
    const int64_t b1 = std::min(V, b0 + kSumBlock);
    float bm = x[b0];
#pragma omp simd reduction(max : bm)
    for (int64_t i = b0; i < b1; i++) bm = x[i] > bm ? x[i] : bm;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b0; i < b1; i++) s += exp_approx(x[i] - bm);
    if (bm > m) {
      total = total * std::exp(double(m) - double(bm)) + double(s);
      m = bm;
    } else {
      total += double(s) * std::exp(double(bm) - double(m));
    }
  }
  *out_max = m;
  *out_sum = total;
}

// x (V) <- exp(x - mx) · k in place.
[[gnu::noinline]] void row_exp_scale(float* x, int64_t V, float mx, float k) {
#pragma omp simd
  for (int64_t i = 0; i < V; i++) x[i] = exp_approx(x[i] - mx) * k;
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
    const double sum = row_sum_exp(x, V, mx);
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
    const double sum = row_exp_inplace(x, V, mx);
    row_scale(x, V, float(double(dloss[n]) / sum));
    x[targets[n]] -= dloss[n];
  }
}

}  // namespace lowrank::ops

namespace lowrank::ops {

double cross_entropy_forward_stats(float* losses, float* row_max, double* row_sum,
                                   const float* logits, const int32_t* targets, int64_t N, int64_t V) {
  check_targets(targets, N, V, "cross_entropy_forward");
#pragma omp parallel for schedule(static) if (N * V >= 65536)
  for (int64_t n = 0; n < N; n++) {
    const float* x = logits + n * V;  // (V)
    row_max_sum_exp(x, V, &row_max[n], &row_sum[n]);
    losses[n] = targets[n] < 0 ? 0.0f
                               : float(double(row_max[n]) + std::log(row_sum[n]) - double(x[targets[n]]));
  }
  double total = 0.0;  // summed in row order: deterministic
  for (int64_t n = 0; n < N; n++) total += losses[n];
  return total;
}

void cross_entropy_backward_stats(float* logits, const int32_t* targets, const float* dloss,
                                  const float* row_max, const double* row_sum, int64_t N, int64_t V) {
  check_targets(targets, N, V, "cross_entropy_backward_inplace");
#pragma omp parallel for schedule(static) if (N * V >= 65536)
  for (int64_t n = 0; n < N; n++) {
    float* x = logits + n * V;  // (V) logits in, dlogits out
    if (targets[n] < 0) {
      std::fill(x, x + V, 0.0f);
      continue;
    }
    row_exp_scale(x, V, row_max[n], float(double(dloss[n]) / row_sum[n]));
    x[targets[n]] -= dloss[n];
  }
}

}  // namespace lowrank::ops
