// Softmax cross-entropy over the vocabulary, one block per row. Pass 1 keeps an online
// (max, Σexp) per thread and merges them across the block (the merge in f64); pass 2, when
// a gradient is wanted, rewrites the row in place as (softmax - onehot) · dloss. The logits
// are read twice and written once; nothing of size (N, V) besides them is allocated, so a
// model can run the head and this kernel on row chunks and never hold the whole batch's
// logits (cross_entropy_fused).
#include <cmath>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

constexpr int kThreads = 512;

template <typename T, bool kLoss, bool kGrad>
__global__ void cross_entropy_kernel(float* losses, T* logits, const int32_t* targets, const float* dloss,
                                     float dloss_scale, int64_t V) {
  const int64_t n = blockIdx.x;
  T* x = logits + n * V;
  const int32_t target = targets[n];
  if (target < 0) {
    if (kLoss && threadIdx.x == 0) losses[n] = 0.f;
    if (kGrad)
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) x[i] = from_f<T>(0.f);
    return;
  }
  // Online max / sum of exponentials over this thread's elements.
  float m = -INFINITY, s = 0.f;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = to_f(x[i]);
    if (v == -INFINITY) continue;  // contributes exp(-inf) = 0
    if (v > m) {
      s = s * expf(m - v) + 1.f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  __shared__ float sm[32];
  __shared__ double ss[32];
  // Block max.
  float wm = detail::warp_max(m);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) sm[warp] = wm;
  __syncthreads();
  float M = lane < nw ? sm[lane] : -INFINITY;
  M = detail::warp_max(M);
  // Block Σ s·exp(m - M) in f64.
  const double part = (m == -INFINITY) ? 0.0 : double(s) * double(expf(m - M));
  const double S = detail::block_sum(part, ss);
  if (kLoss && threadIdx.x == 0)
    losses[n] = float(double(M) + log(S) - double(to_f(x[target])));
  if (kGrad) {
    __syncthreads();  // x[target] was read above before any thread overwrites it
    const float g = dloss ? dloss[n] : dloss_scale;
    const float k = float(double(g) / S);
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      float d = expf(to_f(x[i]) - M) * k;
      if (i == target) d -= g;
      x[i] = from_f<T>(d);
    }
  }
}

__global__ void sum_kernel(double* out, const float* x, int64_t n, bool squares) {
  __shared__ double buf[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = double(x[i]);
    s += squares ? v * v : v;
  }
  s = detail::block_sum(s, buf);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

}  // namespace

namespace detail {
// Σ x or Σ x² in f64 on the device; synchronizes and returns it.
double reduce_sum(const float* x, int64_t n, bool squares) {
  double* d = static_cast<double*>(scratch(2, sizeof(double)));
  check(cudaMemsetAsync(d, 0, sizeof(double), stream()), "sum (memset)");
  if (n > 0) {
    unsigned blocks = blocks_for(n, 256);
    if (blocks > 1024) blocks = 1024;
    sum_kernel<<<blocks, 256, 0, stream()>>>(d, x, n, squares);
    check_launch("sum");
  }
  double h = 0.0;
  check(cudaMemcpyAsync(&h, d, sizeof(double), cudaMemcpyDeviceToHost, stream()), "sum (copy)");
  check(cudaStreamSynchronize(stream()), "sum (sync)");
  return h;
}
}  // namespace detail

template <typename T>
void cross_entropy_forward(float* losses, const T* logits, const int32_t* targets, int64_t N, int64_t V) {
  if (N <= 0) return;
  cross_entropy_kernel<T, true, false><<<unsigned(N), kThreads, 0, stream()>>>(
      losses, const_cast<T*>(logits), targets, nullptr, 0.f, V);
  detail::check_launch("cross_entropy_forward");
}

template <typename T>
void cross_entropy_backward_inplace(T* logits, const int32_t* targets, const float* dloss, int64_t N, int64_t V) {
  if (N <= 0) return;
  cross_entropy_kernel<T, false, true><<<unsigned(N), kThreads, 0, stream()>>>(nullptr, logits, targets, dloss,
                                                                               0.f, V);
  detail::check_launch("cross_entropy_backward_inplace");
}

template <typename T>
void cross_entropy_fused(float* losses, T* logits, const int32_t* targets, float dloss_scale, int64_t N,
                         int64_t V) {
  if (N <= 0) return;
  cross_entropy_kernel<T, true, true><<<unsigned(N), kThreads, 0, stream()>>>(losses, logits, targets, nullptr,
                                                                              dloss_scale, V);
  detail::check_launch("cross_entropy_fused");
}

double sum(const float* x, int64_t n) { return detail::reduce_sum(x, n, false); }
double sum_squares(const float* x, int64_t n) { return detail::reduce_sum(x, n, true); }

#define LOWRANK_INSTANTIATE(T)                                                                         \
  template void cross_entropy_forward<T>(float*, const T*, const int32_t*, int64_t, int64_t);          \
  template void cross_entropy_backward_inplace<T>(T*, const int32_t*, const float*, int64_t, int64_t); \
  template void cross_entropy_fused<T>(float*, T*, const int32_t*, float, int64_t, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
