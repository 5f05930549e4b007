// LoRA shrink/expand with a per-row adapter index (gathered, Punica BGMV / S-LoRA style):
// one launch serves a batch whose rows use any mix of resident adapters, and the
// single-adapter case is just idx[n] = 0 everywhere. Adapters are stacked per target
// (S, r, in) / (S, out, r); ranks up to 64, compiled for rank buckets 8/16/32/64 (a smaller
// rank runs in the next bucket with predicated-off lanes).
//
// shrink: one warp per row; lanes stride over K (coalesced reads of x and of the adapter
//   rows), keep r partial dot products in registers, then reduce them across the warp.
//   The adapter matrix (r·K values) stays in L1/L2, so the kernel streams x once.
// expand: one thread per output column, 8 rows per block; the rows' h vectors sit in shared
//   memory, the thread's r adapter values in registers (reloaded only when the adapter
//   changes from one row to the next); y is read and written once.
#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

constexpr int kShrinkWarps = 8;  // rows per shrink block
constexpr int kExpandRows = 8;   // rows per expand block
constexpr int kExpandThreads = 256;

template <typename T, int R, bool kWkr>
__global__ void __launch_bounds__(32 * kShrinkWarps)
    shrink_kernel(T* h, const T* x, const T* W, const int32_t* idx, const float* slot_scale, const float* tok_scale,
                  int64_t N, int64_t K, int r) {
  const int64_t n = blockIdx.x * int64_t(kShrinkWarps) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const int slot = idx ? idx[n] : 0;
  T* hr = h + n * r;
  if (slot < 0) {
    for (int j = lane; j < r; j += 32) hr[j] = from_f<T>(0.f);
    return;
  }
  const T* w = W + int64_t(slot) * r * K;
  const T* xr = x + n * K;
  float acc[R];
#pragma unroll
  for (int j = 0; j < R; j++) acc[j] = 0.f;
  for (int64_t kk = lane; kk < K; kk += 32) {
    const float xv = to_f(xr[kk]);
#pragma unroll
    for (int j = 0; j < R; j++)
      if (j < r) acc[j] += xv * to_f(kWkr ? w[kk * r + j] : w[int64_t(j) * K + kk]);
  }
  const float sc = (slot_scale ? slot_scale[slot] : 1.f) * (tok_scale ? tok_scale[n] : 1.f);
  float mine0 = 0.f, mine1 = 0.f;  // lane j keeps sums j and j + 32
#pragma unroll
  for (int j = 0; j < R; j++) {
    if (j >= r) break;
    const float s = detail::warp_sum(acc[j]);
    if ((j & 31) == lane) {
      if (j < 32) mine0 = s; else mine1 = s;
    }
  }
  if (lane < r) hr[lane] = from_f<T>(mine0 * sc);
  if (lane + 32 < r) hr[lane + 32] = from_f<T>(mine1 * sc);
}

template <typename T, int R, bool kWrm>
__global__ void __launch_bounds__(kExpandThreads)
    expand_kernel(T* y, const T* h, const T* W, const int32_t* idx, const float* slot_scale, const float* tok_scale,
                  int64_t N, int64_t M, int r) {
  __shared__ float hs[kExpandRows][R];
  __shared__ int slots[kExpandRows];
  __shared__ float scales[kExpandRows];
  const int64_t n0 = int64_t(blockIdx.y) * kExpandRows;
  for (int e = threadIdx.x; e < kExpandRows * R; e += blockDim.x) {
    const int t = e / R, j = e % R;
    const int64_t n = n0 + t;
    hs[t][j] = (n < N && j < r) ? to_f(h[n * r + j]) : 0.f;
  }
  if (threadIdx.x < kExpandRows) {
    const int64_t n = n0 + threadIdx.x;
    const int s = n < N ? (idx ? idx[n] : 0) : -1;
    slots[threadIdx.x] = s;
    scales[threadIdx.x] = s < 0 ? 0.f : (slot_scale ? slot_scale[s] : 1.f) * (tok_scale ? tok_scale[n] : 1.f);
  }
  __syncthreads();
  const int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (m >= M) return;
  float w[R];
  int cur = -1;
  for (int t = 0; t < kExpandRows; t++) {
    const int s = slots[t];
    if (s < 0) continue;
    if (s != cur) {
      const T* ws = W + int64_t(s) * M * r;
#pragma unroll
      for (int j = 0; j < R; j++) w[j] = j < r ? to_f(kWrm ? ws[int64_t(j) * M + m] : ws[m * r + j]) : 0.f;
      cur = s;
    }
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < R; j++) acc += hs[t][j] * w[j];
    T* yp = y + (n0 + t) * M + m;
    *yp = from_f<T>(to_f(*yp) + acc * scales[t]);
  }
}

template <typename T, int R>
void shrink_launch(T* h, const T* x, const T* W, bool w_kr, const int32_t* idx, const float* ss, const float* ts,
                   int64_t N, int64_t K, int r) {
  const unsigned blocks = unsigned((N + kShrinkWarps - 1) / kShrinkWarps);
  if (w_kr)
    shrink_kernel<T, R, true><<<blocks, 32 * kShrinkWarps, 0, stream()>>>(h, x, W, idx, ss, ts, N, K, r);
  else
    shrink_kernel<T, R, false><<<blocks, 32 * kShrinkWarps, 0, stream()>>>(h, x, W, idx, ss, ts, N, K, r);
  detail::check_launch("lora_shrink");
}

template <typename T, int R>
void expand_launch(T* y, const T* h, const T* W, bool w_rm, const int32_t* idx, const float* ss, const float* ts,
                   int64_t N, int64_t M, int r) {
  dim3 grid(unsigned((M + kExpandThreads - 1) / kExpandThreads), unsigned((N + kExpandRows - 1) / kExpandRows));
  if (grid.y > 65535) fail("lora_expand: ", N, " rows is more than this kernel's grid allows");
  if (w_rm)
    expand_kernel<T, R, true><<<grid, kExpandThreads, 0, stream()>>>(y, h, W, idx, ss, ts, N, M, r);
  else
    expand_kernel<T, R, false><<<grid, kExpandThreads, 0, stream()>>>(y, h, W, idx, ss, ts, N, M, r);
  detail::check_launch("lora_expand");
}

void check_rank(int64_t r, const char* what) {
  if (r < 1 || r > 64) fail(what, ": rank ", r, " is outside 1..64");
}

}  // namespace

template <typename T>
void lora_shrink(T* h, const T* x, const T* W, bool w_kr, const int32_t* idx, const float* slot_scale,
                 const float* tok_scale, int64_t N, int64_t K, int64_t r) {
  check_rank(r, "lora_shrink");
  if (N <= 0) return;
  if (r <= 8) shrink_launch<T, 8>(h, x, W, w_kr, idx, slot_scale, tok_scale, N, K, int(r));
  else if (r <= 16) shrink_launch<T, 16>(h, x, W, w_kr, idx, slot_scale, tok_scale, N, K, int(r));
  else if (r <= 32) shrink_launch<T, 32>(h, x, W, w_kr, idx, slot_scale, tok_scale, N, K, int(r));
  else shrink_launch<T, 64>(h, x, W, w_kr, idx, slot_scale, tok_scale, N, K, int(r));
}

template <typename T>
void lora_expand(T* y, const T* h, const T* W, bool w_rm, const int32_t* idx, const float* slot_scale,
                 const float* tok_scale, int64_t N, int64_t M, int64_t r) {
  check_rank(r, "lora_expand");
  if (N <= 0 || M <= 0) return;
  if (r <= 8) expand_launch<T, 8>(y, h, W, w_rm, idx, slot_scale, tok_scale, N, M, int(r));
  else if (r <= 16) expand_launch<T, 16>(y, h, W, w_rm, idx, slot_scale, tok_scale, N, M, int(r));
  else if (r <= 32) expand_launch<T, 32>(y, h, W, w_rm, idx, slot_scale, tok_scale, N, M, int(r));
  else expand_launch<T, 64>(y, h, W, w_rm, idx, slot_scale, tok_scale, N, M, int(r));
}

#define LOWRANK_INSTANTIATE(T)                                                                                \
  template void lora_shrink<T>(T*, const T*, const T*, bool, const int32_t*, const float*, const float*, int64_t, \
                               int64_t, int64_t);                                                              \
  template void lora_expand<T>(T*, const T*, const T*, bool, const int32_t*, const float*, const float*, int64_t, \
                               int64_t, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
