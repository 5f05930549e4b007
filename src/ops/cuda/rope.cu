// Rotary position embedding on the device, with the CPU op's exact angles: inv_freq[i] =
// 1 / float(theta^(float(2i)/D)) computed on the host like src/ops/cpu/rope.cpp (cached per
// (theta, D) in device memory), angle = float(pos) * inv_freq[i] in f32, cos/sin evaluated in
// f64 and rounded to f32. One thread per (token, frequency) rotates that pair in every head.
#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

const float* inv_freq_table(float theta, int64_t D) {
  static std::map<std::pair<float, int64_t>, float*> cache;
  auto it = cache.find({theta, D});
  if (it != cache.end()) return it->second;
  const int64_t half = D / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; i++) {
    const float e = float(2 * i) / float(D);
    const float p = float(std::pow(double(theta), double(e)));
    inv[size_t(i)] = 1.0f / p;
  }
  float* d = static_cast<float*>(device_alloc(size_t(half) * 4));
  check(cudaMemcpy(d, inv.data(), size_t(half) * 4, cudaMemcpyHostToDevice), "rope table upload");
  cache[{theta, D}] = d;
  return d;
}

template <typename T>
__global__ void rope_kernel(T* x, const int32_t* pos, const float* inv_freq, int64_t N, int64_t H, int64_t D,
                            bool half_rotation, float sign) {
  const int64_t half = D / 2;
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= N * half) return;
  const int64_t n = t / half, i = t % half;
  const float a = float(pos[n]) * inv_freq[i];
  const float c = float(cos(double(a)));
  const float s = sign * float(sin(double(a)));
  for (int64_t h = 0; h < H; h++) {
    T* v = x + (n * H + h) * D;
    const int64_t i1 = half_rotation ? i : 2 * i;
    const int64_t i2 = half_rotation ? i + half : 2 * i + 1;
    const float p = to_f(v[i1]), q = to_f(v[i2]);
    v[i1] = from_f<T>(p * c - q * s);
    v[i2] = from_f<T>(q * c + p * s);
  }
}

template <typename T>
void rope_apply(T* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta, bool half_rotation,
                float sign) {
  if (D % 2 != 0) fail("rope: head dim ", D, " is odd");
  if (N <= 0) return;
  const float* inv = inv_freq_table(theta, D);
  const int64_t total = N * (D / 2);
  rope_kernel<T><<<detail::blocks_for(total, 256), 256, 0, stream()>>>(x, pos, inv, N, H, D, half_rotation, sign);
  detail::check_launch("rope");
}

}  // namespace

template <typename T>
void rope_forward(T* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta, bool half_rotation) {
  rope_apply(x, pos, N, H, D, theta, half_rotation, 1.0f);
}

template <typename T>
void rope_backward(T* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta, bool half_rotation) {
  rope_apply(dx, pos, N, H, D, theta, half_rotation, -1.0f);
}

template void rope_forward<float>(float*, const int32_t*, int64_t, int64_t, int64_t, float, bool);
template void rope_forward<bf16>(bf16*, const int32_t*, int64_t, int64_t, int64_t, float, bool);
template void rope_backward<float>(float*, const int32_t*, int64_t, int64_t, int64_t, float, bool);
template void rope_backward<bf16>(bf16*, const int32_t*, int64_t, int64_t, int64_t, float, bool);

}  // namespace lowrank::ops::cuda
