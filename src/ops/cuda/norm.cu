// LayerNorm (GPT-2) and RMSNorm (Llama), forward and backward: one warp per row, row
// statistics accumulated in f64 like the CPU reference (the kernels are bound by memory, so
// the f64 adds cost nothing measurable). Weight/bias gradients (full fine-tuning only; LoRA
// passes null) are reduced with f32 atomics.
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;
using detail::warp_sum;

constexpr int kWarps = 8;  // rows per block

template <typename T>
__global__ void layernorm_fwd_kernel(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                                     int64_t N, int64_t C, float eps) {
  const int64_t n = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const T* xr = x + n * C;
  double s = 0.0;
  for (int64_t i = lane; i < C; i += 32) s += double(to_f(xr[i]));
  s = warp_sum(s);
  const float m = float(s / double(C));
  double v = 0.0;
  for (int64_t i = lane; i < C; i += 32) {
    const double d = double(to_f(xr[i]) - m);
    v += d * d;
  }
  v = warp_sum(v);
  const float rs = float(1.0 / sqrt(v / double(C) + double(eps)));
  T* o = out + n * C;
  for (int64_t i = lane; i < C; i += 32) {
    float y = (to_f(xr[i]) - m) * rs * to_f(w[i]);
    if (b) y += to_f(b[i]);
    o[i] = from_f<T>(y);
  }
  if (lane == 0) {
    if (mean) mean[n] = m;
    if (rstd) rstd[n] = rs;
  }
}

template <typename T>
__global__ void layernorm_bwd_kernel(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w,
                                     const float* mean, const float* rstd, int64_t N, int64_t C) {
  const int64_t n = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const T* xr = x + n * C;
  const T* g = dout + n * C;
  const float m = mean[n], rs = rstd[n];
  double s1 = 0.0, s2 = 0.0;
  for (int64_t i = lane; i < C; i += 32) {
    const float norm = (to_f(xr[i]) - m) * rs;
    const float dn = to_f(g[i]) * to_f(w[i]);
    s1 += dn;
    s2 += double(dn) * norm;
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  const float dn_mean = float(s1 / double(C)), dnn_mean = float(s2 / double(C));
  T* d = dx + n * C;
  for (int64_t i = lane; i < C; i += 32) {
    const float gi = to_f(g[i]);
    const float norm = (to_f(xr[i]) - m) * rs;
    d[i] = from_f<T>(to_f(d[i]) + (gi * to_f(w[i]) - dn_mean - norm * dnn_mean) * rs);
    if (dw) atomicAdd(dw + i, gi * norm);
    if (db) atomicAdd(db + i, gi);
  }
}

template <typename T>
__global__ void rmsnorm_fwd_kernel(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps) {
  const int64_t n = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const T* xr = x + n * C;
  double ss = 0.0;
  for (int64_t i = lane; i < C; i += 32) {
    const double v = double(to_f(xr[i]));
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float rs = float(1.0 / sqrt(ss / double(C) + double(eps)));
  T* o = out + n * C;
  for (int64_t i = lane; i < C; i += 32) o[i] = from_f<T>((to_f(xr[i]) * rs) * to_f(w[i]));  // HF order
  if (lane == 0 && rstd) rstd[n] = rs;
}

template <typename T>
__global__ void rmsnorm_bwd_kernel(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                                   int64_t N, int64_t C) {
  const int64_t n = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const T* xr = x + n * C;
  const T* g = dout + n * C;
  const float rs = rstd[n];
  double s = 0.0;
  for (int64_t i = lane; i < C; i += 32) s += double(to_f(g[i]) * to_f(w[i])) * double(to_f(xr[i]));
  s = warp_sum(s);
  // dx = rs * (g*w) - x * rs³ * mean(g*w*x)
  const float k = float(s / double(C)) * rs * rs * rs;
  T* d = dx + n * C;
  for (int64_t i = lane; i < C; i += 32) {
    const float gi = to_f(g[i]), xi = to_f(xr[i]);
    d[i] = from_f<T>(to_f(d[i]) + rs * gi * to_f(w[i]) - xi * k);
    if (dw) atomicAdd(dw + i, gi * (xi * rs));
  }
}

unsigned blocks(int64_t N) { return unsigned((N + kWarps - 1) / kWarps); }

}  // namespace

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, float eps) {
  if (N <= 0) return;
  layernorm_fwd_kernel<T><<<blocks(N), 32 * kWarps, 0, stream()>>>(out, mean, rstd, x, w, b, N, C, eps);
  detail::check_launch("layernorm_forward");
}

template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C) {
  if (N <= 0) return;
  layernorm_bwd_kernel<T><<<blocks(N), 32 * kWarps, 0, stream()>>>(dx, dw, db, dout, x, w, mean, rstd, N, C);
  detail::check_launch("layernorm_backward");
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps) {
  if (N <= 0) return;
  rmsnorm_fwd_kernel<T><<<blocks(N), 32 * kWarps, 0, stream()>>>(out, rstd, x, w, N, C, eps);
  detail::check_launch("rmsnorm_forward");
}

template <typename T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd, int64_t N,
                      int64_t C) {
  if (N <= 0) return;
  rmsnorm_bwd_kernel<T><<<blocks(N), 32 * kWarps, 0, stream()>>>(dx, dw, dout, x, w, rstd, N, C);
  detail::check_launch("rmsnorm_backward");
}

#define LOWRANK_INSTANTIATE(T)                                                                              \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t, float); \
  template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*, const float*,         \
                                      const float*, int64_t, int64_t);                                        \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int64_t, int64_t, float);                 \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int64_t, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
