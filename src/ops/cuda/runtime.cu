// CUDA runtime glue for the op files: the stream, error checks, scratch buffers and
// host/device conversions.
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

cudaStream_t g_stream = nullptr;

struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
};
Scratch g_scratch[8];

std::mutex g_alloc_mutex;
std::unordered_map<void*, size_t> g_sizes;
size_t g_in_use = 0, g_peak = 0;

template <typename TD, typename TS>
__global__ void convert_kernel(TD* dst, const TS* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = detail::from_f<TD>(detail::to_f(src[i]));
}

}  // namespace

bool device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later checks are not confused
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

void set_stream(cudaStream_t s) { g_stream = s; }
cudaStream_t stream() { return g_stream; }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

void synchronize() { check(cudaStreamSynchronize(g_stream), "stream synchronize"); }

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess)
    fail("CUDA out of memory: allocating ", bytes, " bytes with ", g_in_use, " bytes in use (",
         cudaGetErrorString(e), ")");
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  g_sizes[p] = bytes;
  g_in_use += bytes;
  if (g_in_use > g_peak) g_peak = g_in_use;
  return p;
}

void device_free(void* p) {
  if (!p) return;
  {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    auto it = g_sizes.find(p);
    if (it != g_sizes.end()) {
      g_in_use -= it->second;
      g_sizes.erase(it);
    }
  }
  check(cudaFree(p), "device_free");
}

size_t device_bytes_in_use() { return g_in_use; }
size_t device_bytes_peak() { return g_peak; }
void reset_peak() { g_peak = g_in_use; }

void scratch_release(int slot) {
  if (slot < 0 || slot >= 8) return;
  Scratch& s = g_scratch[slot];
  if (!s.p) return;
  check(cudaStreamSynchronize(g_stream), "scratch release (sync)");
  device_free(s.p);
  s = Scratch{};
}

void* scratch(int slot, size_t bytes) {
  if (slot < 0 || slot >= 8) fail("cuda scratch: slot ", slot, " is outside 0..7");
  Scratch& s = g_scratch[slot];
  if (s.bytes < bytes) {
    if (s.p) {
      // The old buffer may still be in use by queued work.
      check(cudaStreamSynchronize(g_stream), "scratch grow (sync)");
      device_free(s.p);
      s.p = nullptr;
      s.bytes = 0;
    }
    const size_t rounded = (bytes + (size_t(1) << 20) - 1) & ~((size_t(1) << 20) - 1);
    s.p = device_alloc(rounded);
    s.bytes = rounded;
  }
  return s.p;
}

void zero(void* x, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(x, 0, bytes, g_stream), "zero");
}

template <typename TD, typename TS>
void convert(TD* dst, const TS* src, int64_t n) {
  if (n <= 0) return;
  const unsigned blocks = detail::blocks_for(n, 256);
  convert_kernel<TD, TS><<<blocks < 65536 ? blocks : 65536, 256, 0, g_stream>>>(dst, src, n);
  detail::check_launch("convert");
}

// Conversions are staged through f32 scratch (slot 3) in chunks of at most kStage elements,
// so loading a large matrix does not briefly need an f32 copy of it on the device.
constexpr int64_t kStage = int64_t(8) << 20;

template <typename T>
void upload(T* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    check(cudaMemcpyAsync(dst, src, size_t(n) * 4, cudaMemcpyHostToDevice, g_stream), "upload");
  } else {
    float* tmp = static_cast<float*>(scratch(3, size_t(std::min(n, kStage)) * 4));
    for (int64_t i = 0; i < n; i += kStage) {
      const int64_t m = std::min(kStage, n - i);
      check(cudaMemcpyAsync(tmp, src + i, size_t(m) * 4, cudaMemcpyHostToDevice, g_stream), "upload");
      convert<T, float>(dst + i, tmp, m);
    }
  }
  check(cudaStreamSynchronize(g_stream), "upload (sync)");
}

template <typename T>
void download(float* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    check(cudaMemcpyAsync(dst, src, size_t(n) * 4, cudaMemcpyDeviceToHost, g_stream), "download");
  } else {
    float* tmp = static_cast<float*>(scratch(3, size_t(std::min(n, kStage)) * 4));
    for (int64_t i = 0; i < n; i += kStage) {
      const int64_t m = std::min(kStage, n - i);
      convert<float, T>(tmp, src + i, m);
      check(cudaMemcpyAsync(dst + i, tmp, size_t(m) * 4, cudaMemcpyDeviceToHost, g_stream), "download");
    }
  }
  check(cudaStreamSynchronize(g_stream), "download (sync)");
}

template void upload<float>(float*, const float*, int64_t);
template void upload<bf16>(bf16*, const float*, int64_t);
template void download<float>(float*, const float*, int64_t);
template void download<bf16>(float*, const bf16*, int64_t);
template void convert<float, float>(float*, const float*, int64_t);
template void convert<bf16, float>(bf16*, const float*, int64_t);
template void convert<float, bf16>(float*, const bf16*, int64_t);
template void convert<bf16, bf16>(bf16*, const bf16*, int64_t);

}  // namespace lowrank::ops::cuda
