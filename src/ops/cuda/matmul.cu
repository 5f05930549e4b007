// Matrix products through cuBLASLt (row-major API on top of column-major cuBLAS: the
// row-major product C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ),
// plus the linear layer forward/backward and the bias kernels.
// Algorithms come from cuBLASLt's heuristic and are cached per (types, transposes, shape,
// pointer alignment). The workspace is the op scratch slot 0 (32 MiB).
#include <cublasLt.h>

#include <cstring>
#include <map>
#include <tuple>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

constexpr size_t kWorkspace = size_t(32) << 20;
bool g_allow_tf32 = false;

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt error in ", what, ": status ", int(s));
}

cublasLtHandle_t handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    check_lt(cublasLtCreate(&x), "cublasLtCreate");
    return x;
  }();
  return h;
}

template <typename T> constexpr cudaDataType_t dtype_of() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % uintptr_t(al)) != 0) al >>= 1;
  return al;
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

using Key = std::tuple<int, int, int, bool, bool, int64_t, int64_t, int64_t, int, int, int, bool>;

// Builds (once per key) the descriptors and the heuristic's best algorithm for the
// column-major product D (m,n) = op(A') (m,k) · op(B') (k,n) where A' is our B and B' our A.
template <typename TI, typename TO>
const Plan& plan_for(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, const void* B,
                     const void* C) {
  static std::map<Key, Plan> cache;
  const int ala = alignment_of(A), alb = alignment_of(B), alc = alignment_of(C);
  const bool tf32 = std::is_same_v<TI, float> && g_allow_tf32;
  const Key key{int(dtype_of<TI>()), int(dtype_of<TO>()), 0, ta, tb, M, N, K, ala, alb, alc, tf32};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;

  Plan p;
  const cublasComputeType_t ct = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check_lt(cublasLtMatmulDescCreate(&p.desc, ct, CUDA_R_32F), "matmul desc");
  const cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS A' = our B
  const cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS B' = our A
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), "transa");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), "transb");
  // Our B: (K,N) row-major = column-major (N,K) ld N; transposed storage (N,K) row-major =
  // column-major (K,N) ld K.
  if (!tb)
    check_lt(cublasLtMatrixLayoutCreate(&p.la, dtype_of<TI>(), uint64_t(N), uint64_t(K), N), "layout A'");
  else
    check_lt(cublasLtMatrixLayoutCreate(&p.la, dtype_of<TI>(), uint64_t(K), uint64_t(N), K), "layout A'");
  // Our A: (M,K) row-major = column-major (K,M) ld K; transposed (K,M) = column-major (M,K) ld M.
  if (!ta)
    check_lt(cublasLtMatrixLayoutCreate(&p.lb, dtype_of<TI>(), uint64_t(K), uint64_t(M), K), "layout B'");
  else
    check_lt(cublasLtMatrixLayoutCreate(&p.lb, dtype_of<TI>(), uint64_t(M), uint64_t(K), M), "layout B'");
  // C (M,N) row-major = column-major (N,M) ld N.
  check_lt(cublasLtMatrixLayoutCreate(&p.lc, dtype_of<TO>(), uint64_t(N), uint64_t(M), N), "layout C");

  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = kWorkspace;
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), "pref ws");
  const uint32_t a_al = uint32_t(alb), b_al = uint32_t(ala), c_al = uint32_t(alc);  // A' = B, B' = A
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_al, sizeof(a_al)), "pref al a");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_al, sizeof(b_al)), "pref al b");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c_al, sizeof(c_al)), "pref al c");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c_al, sizeof(c_al)), "pref al d");
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  check_lt(cublasLtMatmulAlgoGetHeuristic(handle(), p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &res, &found),
           "algo heuristic");
  cublasLtMatmulPreferenceDestroy(pref);
  if (found < 1)
    fail("cuBLASLt: no algorithm for gemm M=", M, " N=", N, " K=", K, " ta=", ta, " tb=", tb);
  p.algo = res.algo;
  return cache.emplace(key, p).first->second;
}

template <typename TO>
__global__ void scale_kernel(TO* c, int64_t n, float beta) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    c[i] = detail::from_f<TO>(beta == 0.f ? 0.f : beta * detail::to_f(c[i]));
}

template <typename T>
__global__ void add_bias_kernel(T* y, const T* bias, int64_t N, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = detail::from_f<T>(detail::to_f(y[i]) + detail::to_f(bias[i % C]));
}

// dbias (C) += Σ_n dy (N, C): each thread owns one column and a slice of rows; partial sums
// meet in an atomic add.
template <typename T>
__global__ void bias_grad_kernel(float* dbias, const T* dy, int64_t N, int64_t C, int64_t rows_per) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
  float s = 0.f;
  for (int64_t r = r0; r < r1; r++) s += detail::to_f(dy[r * C + c]);
  atomicAdd(dbias + c, s);
}

}  // namespace

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }

template <typename TI, typename TO>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const TI* A, const TI* B,
          float beta, TO* C) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // op(A)·op(B) is empty: only the beta scaling remains
    const unsigned blocks = detail::blocks_for(M * N, 256);
    scale_kernel<TO><<<blocks < 65536 ? blocks : 65536, 256, 0, stream()>>>(C, M * N, beta);
    detail::check_launch("gemm (K = 0)");
    return;
  }
  const Plan& p = plan_for<TI, TO>(ta, tb, M, N, K, A, B, C);
  void* ws = scratch(0, kWorkspace);
  check_lt(cublasLtMatmul(handle(), p.desc, &alpha, B, p.la, A, p.lb, &beta, C, p.lc, C, p.lc, &p.algo, ws,
                          kWorkspace, stream()),
           "cublasLtMatmul");
}

template <typename T>
void add_bias(T* y, const T* bias, int64_t N, int64_t C) {
  if (N <= 0 || C <= 0) return;
  const unsigned blocks = detail::blocks_for(N * C, 256);
  add_bias_kernel<T><<<blocks < 65536 ? blocks : 65536, 256, 0, stream()>>>(y, bias, N, C);
  detail::check_launch("add_bias");
}

template <typename T>
void linear_forward(T* y, const T* x, const T* W, const T* bias, int64_t N, int64_t in, int64_t out) {
  gemm<T, T>(false, true, N, out, in, 1.f, x, W, 0.f, y);
  if (bias) add_bias<T>(y, bias, N, out);
}

template <typename T>
void linear_backward_input(T* dx, const T* dy, const T* W, int64_t N, int64_t in, int64_t out) {
  gemm<T, T>(false, false, N, in, out, 1.f, dy, W, 1.f, dx);
}

template <typename T>
void linear_backward_weight(float* dW, float* dbias, const T* dy, const T* x, int64_t N, int64_t in,
                            int64_t out) {
  gemm<T, float>(true, false, out, in, N, 1.f, dy, x, 1.f, dW);
  if (dbias && N > 0 && out > 0) {
    const int64_t rows_per = 256;
    dim3 grid(unsigned((out + 255) / 256), unsigned((N + rows_per - 1) / rows_per));
    bias_grad_kernel<T><<<grid, 256, 0, stream()>>>(dbias, dy, N, out, rows_per);
    detail::check_launch("linear_backward_weight (bias)");
  }
}

template void gemm<float, float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, const float*, float, float*);
template void gemm<bf16, bf16>(bool, bool, int64_t, int64_t, int64_t, float, const bf16*, const bf16*, float, bf16*);
template void gemm<bf16, float>(bool, bool, int64_t, int64_t, int64_t, float, const bf16*, const bf16*, float, float*);

#define LOWRANK_INSTANTIATE(T)                                                                      \
  template void add_bias<T>(T*, const T*, int64_t, int64_t);                                        \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);     \
  template void linear_backward_input<T>(T*, const T*, const T*, int64_t, int64_t, int64_t);        \
  template void linear_backward_weight<T>(float*, float*, const T*, const T*, int64_t, int64_t, int64_t);
LOWRANK_INSTANTIATE(float)
LOWRANK_INSTANTIATE(bf16)
#undef LOWRANK_INSTANTIATE

}  // namespace lowrank::ops::cuda
