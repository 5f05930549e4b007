// Token embedding gather, its scatter-add backward (f32 atomics) and the GPT-2 learned
// position add.
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

// One block row per token (blockIdx.y), threads over channels.
template <typename T>
__global__ void embedding_fwd_kernel(T* out, const int32_t* ids, const T* table, int64_t V, int64_t C) {
  const int64_t n = blockIdx.y;
  const int32_t id = ids[n];
  T* o = out + n * C;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x)
    o[c] = (id >= 0 && id < V) ? table[int64_t(id) * C + c] : from_f<T>(0.f);
}

template <typename T>
__global__ void embedding_bwd_kernel(float* dtable, const T* dout, const int32_t* ids, int64_t C) {
  const int64_t n = blockIdx.y;
  const int32_t id = ids[n];
  if (id < 0) return;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(dtable + int64_t(id) * C + c, to_f(dout[n * C + c]));
}

template <typename T>
__global__ void position_add_kernel(T* x, const T* wpe, const int32_t* pos, int64_t C) {
  const int64_t n = blockIdx.y;
  const T* p = wpe + int64_t(pos[n]) * C;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x)
    x[n * C + c] = from_f<T>(to_f(x[n * C + c]) + to_f(p[c]));
}

dim3 grid_rows(int64_t N, int64_t C) {
  const unsigned gx = unsigned(std::min<int64_t>((C + 255) / 256, 64));
  return dim3(gx, unsigned(N));
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C) {
  if (N <= 0 || C <= 0) return;
  embedding_fwd_kernel<T><<<grid_rows(N, C), 256, 0, stream()>>>(out, ids, table, V, C);
  detail::check_launch("embedding_forward");
}

template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C) {
  if (N <= 0 || C <= 0) return;
  embedding_bwd_kernel<T><<<grid_rows(N, C), 256, 0, stream()>>>(dtable, dout, ids, C);
  detail::check_launch("embedding_backward");
}

template <typename T>
void position_add(T* x, const T* wpe, const int32_t* pos, int64_t N, int64_t C) {
  if (N <= 0 || C <= 0) return;
  position_add_kernel<T><<<grid_rows(N, C), 256, 0, stream()>>>(x, wpe, pos, C);
  detail::check_launch("position_add");
}

#define LOWRANK_INSTANTIATE(T)                                                                 \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t); \
  template void embedding_backward<T>(float*, const T*, const int32_t*, int64_t, int64_t);     \
  template void position_add<T>(T*, const T*, const int32_t*, int64_t, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
