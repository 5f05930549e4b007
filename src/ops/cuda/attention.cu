// Causal grouped-query attention, flash-style: the (T, T) score matrix is never stored.
//
// Forward: one thread per query row, 64 rows per block; key/value tiles of kBc rows are
// staged in shared memory (every thread reads the same key row: a broadcast) and folded
// into the row's output key by key with an online softmax (running max m and sum l; the
// output is rescaled only when the max grows; base-2 exponents with scale·log2(e) folded
// into q). Saves lse = log Σ exp(s) (natural log) per row.
//
// Backward (no atomics, deterministic), after delta_i = Σ_d dO_i·O_i:
//   dk/dv pass: one thread per key row, its k/v rows in shared memory and dk/dv in
//     registers; loops over the query tiles at or after it (causal) for every query head of
//     its kv head (GQA), recomputing p_ij = exp(s_ij - lse_i):
//       dv_j += p·dO_i ; ds = p·(dO_i·v_j - delta_i) ; dk_j += ds·q_i
//   dq pass: one thread per query row: dq_i += ds·k_j over the key tiles at or before it.
// Scores, softmax and accumulators are f32 whatever the storage type T.
//
// These are SIMT kernels (CUDA cores, not tensor cores): exact and simple, but slower than
// an mma-based flash attention; see bench/cuda/README.md.
#include <cmath>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

using detail::from_f;
using detail::to_f;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kBr = 64;   // forward: query rows (threads) per block
constexpr int kBc = 32;   // forward / dq: key rows per shared-memory tile
constexpr int kBkv = 64;  // dk/dv: key rows (threads) per block
constexpr int kBq = 32;   // dk/dv: query rows per shared-memory tile
constexpr int kBq2 = 64;  // dq: query rows (threads) per block

struct Dims {
  int64_t B, T, H, KVH, G;  // G = H / KVH
};

// Loads rows [r0, r0+rows) of a (T, stride) token-major tensor slice (D values at col) into
// smem (rows, ld) as f32; rows past T become 0.
template <typename T, int D>
__device__ __forceinline__ void load_tile(float* s, int ld, const T* base, int64_t stride, int64_t r0, int rows,
                                          int64_t Tn) {
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    const int64_t t = r0 + r;
    s[r * ld + d] = t < Tn ? to_f(base[t * stride + d]) : 0.f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kBr) attn_fwd_kernel(T* out, float* lse, const T* q, const T* k, const T* v,
                                                       Dims dm, float sl2) {
  __shared__ float Ks[kBc * D];
  __shared__ float Vs[kBc * D];
  const int64_t b = blockIdx.y / dm.H, h = blockIdx.y % dm.H, kh = h / dm.G;
  const int64_t qs = dm.H * D, ks = dm.KVH * D;
  const int64_t q0 = int64_t(blockIdx.x) * kBr, i = q0 + threadIdx.x;
  const bool active = i < dm.T;
  const T* kb = k + b * dm.T * ks + kh * D;
  const T* vb = v + b * dm.T * ks + kh * D;
  float qr[D], o[D];
#pragma unroll
  for (int d = 0; d < D; d++) {
    qr[d] = active ? to_f(q[(b * dm.T + i) * qs + h * D + d]) * sl2 : 0.f;
    o[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int64_t kv_end = min(dm.T, q0 + kBr);  // causal: keys up to the tile's last row
  for (int64_t kv0 = 0; kv0 < kv_end; kv0 += kBc) {
    __syncthreads();
    load_tile<T, D>(Ks, D, kb, ks, kv0, kBc, dm.T);
    load_tile<T, D>(Vs, D, vb, ks, kv0, kBc, dm.T);
    __syncthreads();
    if (!active || kv0 > i) continue;
    const int jn = int(min(int64_t(kBc), i - kv0 + 1));  // causal: keys kv0 .. i
    for (int j = 0; j < jn; j++) {
      float s = 0.f;
#pragma unroll
      for (int d = 0; d < D; d++) s += qr[d] * Ks[j * D + d];
      if (s > m) {  // new running max: rescale what was accumulated (rare after a few keys)
        const float corr = exp2f(m - s);
        l *= corr;
#pragma unroll
        for (int d = 0; d < D; d++) o[d] *= corr;
        m = s;
      }
      const float p = exp2f(s - m);
      l += p;
#pragma unroll
      for (int d = 0; d < D; d++) o[d] += p * Vs[j * D + d];
    }
  }
  if (!active) return;
  const float inv = 1.f / l;
  T* orow = out + (b * dm.T + i) * qs + h * D;
#pragma unroll
  for (int d = 0; d < D; d++) orow[d] = from_f<T>(o[d] * inv);
  lse[(b * dm.H + h) * dm.T + i] = (m + log2f(l)) * kLn2;
}

// delta (B,H,T) = Σ_d dout·out, one warp per (b, t, h).
template <typename T>
__global__ void attn_delta_kernel(float* delta, const T* dout, const T* out, Dims dm, int D) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);  // (b*T + t)*H + h
  const int lane = threadIdx.x & 31;
  if (row >= dm.B * dm.T * dm.H) return;
  const T* g = dout + row * D;
  const T* o = out + row * D;
  float s = 0.f;
  for (int d = lane; d < D; d += 32) s += to_f(g[d]) * to_f(o[d]);
  s = detail::warp_sum(s);
  if (lane == 0) {
    const int64_t h = row % dm.H, bt = row / dm.H, b = bt / dm.T, t = bt % dm.T;
    delta[(b * dm.H + h) * dm.T + t] = s;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kBkv) attn_dkdv_kernel(T* dk, T* dv, const T* dout, const T* q, const T* k,
                                                         const T* v, const float* lse, const float* delta, Dims dm,
                                                         float scale, float sl2) {
  extern __shared__ float sh[];
  constexpr int ldk = D + 1;  // padded: thread j reads its own row without bank conflicts
  float* Ks = sh;                       // (kBkv, D+1)
  float* Vs = Ks + kBkv * ldk;          // (kBkv, D+1)
  float* Qs = Vs + kBkv * ldk;          // (kBq, D)
  float* Gs = Qs + kBq * D;             // (kBq, D)  dO
  float* Ls = Gs + kBq * D;             // (kBq)     lse in log2 units
  float* Ds = Ls + kBq;                 // (kBq)     delta
  const int64_t b = blockIdx.y / dm.KVH, kh = blockIdx.y % dm.KVH;
  const int64_t qs = dm.H * D, ks = dm.KVH * D;
  const int64_t kv0 = int64_t(blockIdx.x) * kBkv, j = kv0 + threadIdx.x;
  const bool active = j < dm.T;
  load_tile<T, D>(Ks, ldk, k + b * dm.T * ks + kh * D, ks, kv0, kBkv, dm.T);
  load_tile<T, D>(Vs, ldk, v + b * dm.T * ks + kh * D, ks, kv0, kBkv, dm.T);
  float dkr[D], dvr[D];
#pragma unroll
  for (int d = 0; d < D; d++) dkr[d] = dvr[d] = 0.f;
  const float* kr = Ks + threadIdx.x * ldk;
  const float* vr = Vs + threadIdx.x * ldk;
  for (int64_t h = kh * dm.G; h < (kh + 1) * dm.G; h++) {
    const T* qb = q + b * dm.T * qs + h * D;
    const T* gb = dout + b * dm.T * qs + h * D;
    const float* lb = lse + (b * dm.H + h) * dm.T;
    const float* db = delta + (b * dm.H + h) * dm.T;
    for (int64_t q0 = (kv0 / kBq) * kBq; q0 < dm.T; q0 += kBq) {
      __syncthreads();
      load_tile<T, D>(Qs, D, qb, qs, q0, kBq, dm.T);
      load_tile<T, D>(Gs, D, gb, qs, q0, kBq, dm.T);
      for (int r = threadIdx.x; r < kBq; r += blockDim.x) {
        const int64_t t = q0 + r;
        Ls[r] = t < dm.T ? lb[t] * kLog2e : INFINITY;
        Ds[r] = t < dm.T ? db[t] : 0.f;
      }
      __syncthreads();
      if (!active) continue;
      for (int r = 0; r < kBq; r++) {
        const int64_t i = q0 + r;
        if (i < j || i >= dm.T) continue;
        const float* qrow = Qs + r * D;
        const float* grow = Gs + r * D;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int d = 0; d < D; d++) {
          s += qrow[d] * kr[d];
          dp += grow[d] * vr[d];
        }
        const float p = exp2f(s * sl2 - Ls[r]);
        const float ds = p * (dp - Ds[r]);
#pragma unroll
        for (int d = 0; d < D; d++) {
          dvr[d] += p * grow[d];
          dkr[d] += ds * qrow[d];
        }
      }
    }
  }
  if (!active) return;
  T* dkrow = dk + (b * dm.T + j) * ks + kh * D;
  T* dvrow = dv + (b * dm.T + j) * ks + kh * D;
#pragma unroll
  for (int d = 0; d < D; d++) {
    dkrow[d] = from_f<T>(to_f(dkrow[d]) + dkr[d] * scale);
    dvrow[d] = from_f<T>(to_f(dvrow[d]) + dvr[d]);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kBq2) attn_dq_kernel(T* dq, const T* dout, const T* q, const T* k, const T* v,
                                                       const float* lse, const float* delta, Dims dm, float scale,
                                                       float sl2) {
  extern __shared__ float sh[];
  constexpr int ldq = D + 1;
  float* Qs = sh;                  // (kBq2, D+1) own rows
  float* Gs = Qs + kBq2 * ldq;     // (kBq2, D+1) own rows of dO
  float* Ks = Gs + kBq2 * ldq;     // (kBc, D)
  float* Vs = Ks + kBc * D;        // (kBc, D)
  const int64_t b = blockIdx.y / dm.H, h = blockIdx.y % dm.H, kh = h / dm.G;
  const int64_t qs = dm.H * D, ks = dm.KVH * D;
  const int64_t q0 = int64_t(blockIdx.x) * kBq2, i = q0 + threadIdx.x;
  const bool active = i < dm.T;
  load_tile<T, D>(Qs, ldq, q + b * dm.T * qs + h * D, qs, q0, kBq2, dm.T);
  load_tile<T, D>(Gs, ldq, dout + b * dm.T * qs + h * D, qs, q0, kBq2, dm.T);
  const float li = active ? lse[(b * dm.H + h) * dm.T + i] * kLog2e : 0.f;
  const float di = active ? delta[(b * dm.H + h) * dm.T + i] : 0.f;
  float dqr[D];
#pragma unroll
  for (int d = 0; d < D; d++) dqr[d] = 0.f;
  const float* qrow = Qs + threadIdx.x * ldq;
  const float* grow = Gs + threadIdx.x * ldq;
  const T* kb = k + b * dm.T * ks + kh * D;
  const T* vb = v + b * dm.T * ks + kh * D;
  const int64_t kv_end = min(dm.T, q0 + kBq2);
  for (int64_t kv0 = 0; kv0 < kv_end; kv0 += kBc) {
    __syncthreads();
    load_tile<T, D>(Ks, D, kb, ks, kv0, kBc, dm.T);
    load_tile<T, D>(Vs, D, vb, ks, kv0, kBc, dm.T);
    __syncthreads();
    if (!active || kv0 > i) continue;
    for (int jj = 0; jj < kBc; jj++) {
      if (kv0 + jj > i) break;
      const float* krow = Ks + jj * D;
      const float* vrow = Vs + jj * D;
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int d = 0; d < D; d++) {
        s += qrow[d] * krow[d];
        dp += grow[d] * vrow[d];
      }
      const float p = exp2f(s * sl2 - li);
      const float ds = p * (dp - di);
#pragma unroll
      for (int d = 0; d < D; d++) dqr[d] += ds * krow[d];
    }
  }
  if (!active) return;
  T* dqrow = dq + (b * dm.T + i) * qs + h * D;
#pragma unroll
  for (int d = 0; d < D; d++) dqrow[d] = from_f<T>(to_f(dqrow[d]) + dqr[d] * scale);
}

Dims make_dims(int64_t B, int64_t T, int64_t H, int64_t KVH, const char* what) {
  if (KVH <= 0 || H % KVH != 0) fail(what, ": ", H, " query heads are not a multiple of ", KVH, " kv heads");
  if (B * H > 65535) fail(what, ": ", B * H, " (batch, head) pairs exceed the grid's y limit 65535");
  return Dims{B, T, H, KVH, H / KVH};
}

template <typename T, int D>
void fwd_launch(T* out, float* lse, const T* q, const T* k, const T* v, Dims dm) {
  const float scale = 1.f / std::sqrt(float(D));
  dim3 grid(unsigned((dm.T + kBr - 1) / kBr), unsigned(dm.B * dm.H));
  attn_fwd_kernel<T, D><<<grid, kBr, 0, stream()>>>(out, lse, q, k, v, dm, scale * kLog2e);
  detail::check_launch("attention_forward");
}

template <typename T, int D>
void bwd_launch(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const float* lse,
                const float* delta, Dims dm) {
  const float scale = 1.f / std::sqrt(float(D));
  const size_t sh_kv = sizeof(float) * size_t(2 * kBkv * (D + 1) + 2 * kBq * D + 2 * kBq);
  const size_t sh_q = sizeof(float) * size_t(2 * kBq2 * (D + 1) + 2 * kBc * D);
  static const bool attrs = [&] {
    check(cudaFuncSetAttribute(attn_dkdv_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sh_kv)),
          "attention_backward (smem attribute)");
    check(cudaFuncSetAttribute(attn_dq_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sh_q)),
          "attention_backward (smem attribute)");
    return true;
  }();
  (void)attrs;
  dim3 grid_kv(unsigned((dm.T + kBkv - 1) / kBkv), unsigned(dm.B * dm.KVH));
  attn_dkdv_kernel<T, D><<<grid_kv, kBkv, sh_kv, stream()>>>(dk, dv, dout, q, k, v, lse, delta, dm, scale,
                                                              scale * kLog2e);
  detail::check_launch("attention_backward (dk, dv)");
  dim3 grid_q(unsigned((dm.T + kBq2 - 1) / kBq2), unsigned(dm.B * dm.H));
  attn_dq_kernel<T, D><<<grid_q, kBq2, sh_q, stream()>>>(dq, dout, q, k, v, lse, delta, dm, scale, scale * kLog2e);
  detail::check_launch("attention_backward (dq)");
}

}  // namespace

template <typename T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H,
                       int64_t KVH, int64_t D) {
  const Dims dm = make_dims(B, Tn, H, KVH, "attention_forward");
  if (B <= 0 || Tn <= 0) return;
  switch (D) {
    case 32: fwd_launch<T, 32>(out, lse, q, k, v, dm); break;
    case 64: fwd_launch<T, 64>(out, lse, q, k, v, dm); break;
    case 128: fwd_launch<T, 128>(out, lse, q, k, v, dm); break;
    default: fail("attention_forward (CUDA): head dim ", D, " is not supported (32, 64, 128)");
  }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const float* lse, int64_t B, int64_t Tn, int64_t H, int64_t KVH, int64_t D) {
  const Dims dm = make_dims(B, Tn, H, KVH, "attention_backward");
  if (B <= 0 || Tn <= 0) return;
  float* delta = static_cast<float*>(scratch(1, sizeof(float) * size_t(B * H * Tn)));  // (B,H,T)
  const int64_t rows = B * Tn * H;
  attn_delta_kernel<T><<<unsigned((rows + 7) / 8), 256, 0, stream()>>>(delta, dout, out, dm, int(D));
  detail::check_launch("attention_backward (delta)");
  switch (D) {
    case 32: bwd_launch<T, 32>(dq, dk, dv, dout, q, k, v, lse, delta, dm); break;
    case 64: bwd_launch<T, 64>(dq, dk, dv, dout, q, k, v, lse, delta, dm); break;
    case 128: bwd_launch<T, 128>(dq, dk, dv, dout, q, k, v, lse, delta, dm); break;
    default: fail("attention_backward (CUDA): head dim ", D, " is not supported (32, 64, 128)");
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, int64_t);
template void attention_forward<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*, int64_t, int64_t,
                                      int64_t, int64_t, int64_t);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t);
template void attention_backward<bf16>(bf16*, bf16*, bf16*, const bf16*, const bf16*, const bf16*, const bf16*,
                                       const bf16*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace lowrank::ops::cuda
