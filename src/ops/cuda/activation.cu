// Element-wise ops: GELU (tanh approximation, GPT-2 "gelu_new"), SwiGLU and the residual
// add, forward and backward. Same formulas as src/ops/cpu/activation.cpp; f32 arithmetic
// whatever the storage type, backward outputs accumulate.
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
constexpr int kThreads = 256;

// Full-precision expf (no --use_fast_math): f32 mode is checked against the CPU at 1e-5.
__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <typename T>
__global__ void gelu_fwd_kernel(T* out, const T* x, int64_t n) {
  GRID_STRIDE(i, n) {
    const float xi = to_f(x[i]);
    const float u = kGeluK * (xi + kGeluC * xi * xi * xi);
    out[i] = from_f<T>(xi * sigmoid(2.0f * u));
  }
}

template <typename T>
__global__ void gelu_bwd_kernel(T* dx, const T* dout, const T* x, int64_t n) {
  GRID_STRIDE(i, n) {
    const float xi = to_f(x[i]);
    const float u = kGeluK * (xi + kGeluC * xi * xi * xi);
    const float du = kGeluK * (1.0f + 3.0f * kGeluC * xi * xi);
    const float s = sigmoid(2.0f * u);
    dx[i] = from_f<T>(to_f(dx[i]) + to_f(dout[i]) * (s + xi * s * (1.0f - s) * 2.0f * du));
  }
}

template <typename T>
__global__ void swiglu_fwd_kernel(T* out, const T* gate, const T* up, int64_t n) {
  GRID_STRIDE(i, n) {
    const float g = to_f(gate[i]);
    out[i] = from_f<T>(g * sigmoid(g) * to_f(up[i]));
  }
}

template <typename T>
__global__ void swiglu_bwd_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  GRID_STRIDE(i, n) {
    const float g = to_f(gate[i]), u = to_f(up[i]), d = to_f(dout[i]);
    const float s = sigmoid(g);
    dgate[i] = from_f<T>(to_f(dgate[i]) + d * u * (s * (1.0f + g * (1.0f - s))));
    dup[i] = from_f<T>(to_f(dup[i]) + d * g * s);
  }
}

template <typename T>
__global__ void residual_fwd_kernel(T* out, const T* a, const T* b, int64_t n) {
  GRID_STRIDE(i, n) out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

template <typename T>
__global__ void residual_bwd_kernel(T* da, T* db, const T* dout, int64_t n) {
  GRID_STRIDE(i, n) {
    const float d = to_f(dout[i]);
    if (da) da[i] = from_f<T>(to_f(da[i]) + d);
    if (db) db[i] = from_f<T>(to_f(db[i]) + d);
  }
}

#undef GRID_STRIDE

unsigned grid_for(int64_t n) {
  const unsigned b = detail::blocks_for(n, kThreads);
  return b < 8192u ? b : 8192u;  // grid-stride loops beyond this
}

}  // namespace

template <typename T> void gelu_forward(T* out, const T* x, int64_t n) {
  if (n <= 0) return;
  gelu_fwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(out, x, n);
  detail::check_launch("gelu_forward");
}
template <typename T> void gelu_backward(T* dx, const T* dout, const T* x, int64_t n) {
  if (n <= 0) return;
  gelu_bwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(dx, dout, x, n);
  detail::check_launch("gelu_backward");
}
template <typename T> void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  if (n <= 0) return;
  swiglu_fwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(out, gate, up, n);
  detail::check_launch("swiglu_forward");
}
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  if (n <= 0) return;
  swiglu_bwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(dgate, dup, dout, gate, up, n);
  detail::check_launch("swiglu_backward");
}
template <typename T> void residual_forward(T* out, const T* a, const T* b, int64_t n) {
  if (n <= 0) return;
  residual_fwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(out, a, b, n);
  detail::check_launch("residual_forward");
}
template <typename T> void residual_backward(T* da, T* db, const T* dout, int64_t n) {
  if (n <= 0 || (!da && !db)) return;
  residual_bwd_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(da, db, dout, n);
  detail::check_launch("residual_backward");
}

#define LOWRANK_INSTANTIATE(T)                                                          \
  template void gelu_forward<T>(T*, const T*, int64_t);                                 \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);                      \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                     \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);      \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                   \
  template void residual_backward<T>(T*, T*, const T*, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
