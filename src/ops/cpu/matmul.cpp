// Matrix products: a thin BLAS wrapper (gemm) and the linear layer forward/backward.
// Threading: OpenMP only. OpenBLAS is switched to one thread on first use and products are
// split over OpenMP threads here (gemm_par), so there is a single thread pool.
// F32 weights go straight to sgemm (sgemv for a single row), split by output columns. Every
// other dtype is converted in row tiles into a per-thread scratch buffer; threads take whole
// tiles and call BLAS on them, so the weight is never converted in full. For a few rows of x
// (decode) F16/BF16 rows are read directly by fused convert+dot kernels, and quantized rows
// are converted one at a time into an L1 buffer.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

// One thread pool: every op parallelizes with OpenMP and calls BLAS single-threaded, so the
// OpenMP and OpenBLAS pools never compete for the (few) cores. Idempotent.
void use_serial_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

// Multiply-adds below which an f32 product runs on one thread.
constexpr int64_t kGemmParallelWork = int64_t(1) << 18;
// Multiply-adds below which the tiled (converted-weight) path stays on one thread.
constexpr int64_t kParallelWork = int64_t(1) << 18;
// Up to this many rows of x, converted weights are used row by row (convert one row into an
// L1 buffer, then dot products) instead of tile + BLAS: decode is bound by reading W.
constexpr int64_t kRowPathMaxN = 4;

inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// C (M,N; row stride ldc) = alpha * op(A) * op(B) + beta * C with explicit leading dims.
// A single output row or column is routed to sgemv, which avoids sgemm's packing of B.
void gemm_ld(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
             int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // op(A)·op(B) is empty: only the beta scaling remains
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  if (M == 1) {
    // C row (N) = alpha * op(B)ᵀ · a ; a = row 0 of op(A): stride 1 untransposed, lda when transposed.
    const int64_t inca = ta ? lda : 1;
    if (tb)  // B stored (N, K)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, inca, beta, C, 1);
    else     // B stored (K, N)
      cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, inca, beta, C, 1);
    return;
  }
  if (N == 1) {
    // C column (M; stride ldc) = alpha * op(A) · b ; b = column 0 of op(B).
    const int64_t incb = tb ? 1 : ldb;
    if (ta)  // A stored (K, M)
      cblas_sgemv(CblasRowMajor, CblasTrans, K, M, alpha, A, lda, B, incb, beta, C, ldc);
    else     // A stored (M, K)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, alpha, A, lda, B, incb, beta, C, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// gemm_ld split over OpenMP threads by blocks of C columns (or rows when C is taller than
// wide, so that the smaller operand is the one every thread reads in full).
void gemm_par(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  use_serial_blas();
  const int nt = omp_get_max_threads();
  if (nt <= 1 || omp_in_parallel() || M * N * std::max<int64_t>(K, 1) < kGemmParallelWork) {
    gemm_ld(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_cols = N >= M;
  const int64_t len = by_cols ? N : M;
  const int64_t chunk = ((len + nt - 1) / nt + 15) / 16 * 16;  // multiple of 16 (64 bytes)
  const int64_t nchunks = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static, 1) num_threads(int(nchunks))
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t p0 = c * chunk, np = std::min(chunk, len - p0);
    if (by_cols)  // C[:, p0:p0+np] uses columns p0.. of op(B)
      gemm_ld(ta, tb, M, np, K, alpha, A, lda, tb ? B + p0 * ldb : B + p0, ldb, beta, C + p0, ldc);
    else          // C[p0:p0+np, :] uses rows p0.. of op(A)
      gemm_ld(ta, tb, np, N, K, alpha, ta ? A + p0 : A + p0 * lda, lda, B, ldb, beta,
              C + p0 * ldc, ldc);
  }
}

// n f16 values -> f32 (hardware conversion when F16C is available).
void f16_row_to_f32(const uint16_t* __restrict s, float* __restrict d, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
#endif
  for (; i < n; i++) d[i] = f16_to_f32(s[i]);
}

void bf16_row_to_f32(const uint16_t* __restrict s, float* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = std::bit_cast<float>(uint32_t(s[i]) << 16);
}

// Converts logical rows [r0, r0+n) of W into f32 scratch.
// Untransposed storage: tile (n, cols) row-major. Transposed storage (cols, rows): tile
// (cols, n) row-major, i.e. the matching column block of the stored matrix.
void convert_tile(const Matrix& W, int64_t r0, int64_t n, float* tile) {
  if (!W.transposed) {
    const size_t off = dtype_bytes(W.dtype, r0 * W.cols);
    const int64_t cnt = n * W.cols;
    const char* src = static_cast<const char*>(W.data) + off;
    switch (W.dtype) {
      case DType::F16: f16_row_to_f32(reinterpret_cast<const uint16_t*>(src), tile, cnt); return;
      case DType::BF16: bf16_row_to_f32(reinterpret_cast<const uint16_t*>(src), tile, cnt); return;
      default: W.rows_f32(r0, n, tile); return;
    }
  }
  for (int64_t c = 0; c < W.cols; c++) {
    const int64_t idx = c * W.rows + r0;  // first element of stored row c in this block
    switch (W.dtype) {
      case DType::F32:
        std::memcpy(tile + c * n, static_cast<const float*>(W.data) + idx, size_t(n) * 4);
        break;
      case DType::F16:
        f16_row_to_f32(static_cast<const uint16_t*>(W.data) + idx, tile + c * n, n);
        break;
      case DType::BF16:
        bf16_row_to_f32(static_cast<const uint16_t*>(W.data) + idx, tile + c * n, n);
        break;
      default: fail("transposed matrix of dtype ", dtype_name(W.dtype), " is not supported");
    }
  }
}

// Rows per conversion tile: 128 (sgemm on narrower tiles loses efficiency; the tile is
// packed by BLAS anyway), reduced so that every thread gets at least two tiles when the
// matrix allows it; a multiple of 8.
int64_t tile_rows_for(const Matrix& W, int nthreads) {
  int64_t t = 128;
  const int64_t per_thread = (W.rows + 2 * nthreads - 1) / (2 * nthreads);
  t = std::min(t, std::max<int64_t>(8, (per_thread + 7) / 8 * 8));
  return std::min(t, std::max<int64_t>(W.rows, 1));
}

// Σ a·b over n floats.
[[gnu::noinline]] float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// y (n) += alpha · x (n)
[[gnu::noinline]] void axpy(float* __restrict y, float alpha, const float* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

// Fused conversion + dot / axpy for 16-bit weight rows (no f32 copy of the row is written).
inline float bf16f(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Σ w·x over n with w bf16 (n), x f32 (n).
[[gnu::noinline]] float dot_bf16(const uint16_t* __restrict w, const float* __restrict x, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += bf16f(w[i]) * x[i];
  return s;
}

// y (n) += alpha · w (n, bf16)
[[gnu::noinline]] void axpy_bf16(float* __restrict y, float alpha, const uint16_t* __restrict w, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] += alpha * bf16f(w[i]);
}

// Σ w·x over n with w f16 (n), x f32 (n).
[[gnu::noinline]] float dot_f16(const uint16_t* __restrict w, const float* __restrict x, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    acc = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + i), acc);
  }
  s = _mm512_reduce_add_ps(acc);
#elif defined(__F16C__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), acc);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (float l : lanes) s += l;
#endif
  for (; i < n; i++) s += f16_to_f32(w[i]) * x[i];
  return s;
}

// y (n) += alpha · w (n, f16)
[[gnu::noinline]] void axpy_f16(float* __restrict y, float alpha, const uint16_t* __restrict w, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 a = _mm512_set1_ps(alpha);
  for (; i + 16 <= n; i += 16) {
    const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, wv, _mm512_loadu_ps(y + i)));
  }
#elif defined(__F16C__) && defined(__FMA__)
  const __m256 a = _mm256_set1_ps(alpha);
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, wv, _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; i++) y[i] += alpha * f16_to_f32(w[i]);
}

void check_matrix(const Matrix& W, const char* what) {
  if (W.empty()) fail(what, ": matrix has no data");
  if (W.transposed && W.dtype != DType::F32 && W.dtype != DType::F16 && W.dtype != DType::BF16)
    fail(what, ": transposed matrix of dtype ", dtype_name(W.dtype), " is not supported");
  const int64_t be = dtype_block_elems(W.dtype);
  if (be > 1 && W.cols % be != 0)
    fail(what, ": ", dtype_name(W.dtype), " matrix row length ", W.cols,
         " is not a multiple of the block size ", be);
}

// Per-thread scratch, reused across calls (the OpenMP pool threads persist).
float* thread_scratch(size_t n) {
  thread_local std::vector<float> buf;  // (n) floats, grown on demand
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, const float* B, float beta, float* C) {
  const int64_t lda = trans_a ? M : K;
  const int64_t ldb = trans_b ? K : N;
  gemm_par(trans_a, trans_b, M, N, K, alpha, A, std::max<int64_t>(lda, 1), B,
           std::max<int64_t>(ldb, 1), beta, C, N);
}

void linear_forward(float* y, const float* x, const Matrix& W, const float* bias, int64_t N) {
  check_matrix(W, "linear_forward");
  const int64_t out = W.rows, in = W.cols;
  if (N <= 0 || out <= 0) return;

  if (W.dtype == DType::F32) {
    const float* w = static_cast<const float*>(W.data);  // (out, in) or (in, out) when transposed
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if (N * out >= 65536)
      for (int64_t n = 0; n < N; n++) std::memcpy(y + n * out, bias, size_t(out) * 4);
      beta = 1.0f;
    }
    if (!W.transposed)
      gemm_par(false, true, N, out, in, 1.0f, x, in, w, in, beta, y, out);
    else
      gemm_par(false, false, N, out, in, 1.0f, x, in, w, out, beta, y, out);
    return;
  }

  if (N <= kRowPathMaxN && !W.transposed) {
    // y[n, r] = W[r, :] · x[n, :] (+ bias[r]); threads own contiguous row ranges.
#pragma omp parallel if (N * out * in >= kParallelWork)
    {
      float* row = thread_scratch(size_t(in));  // (in) one converted weight row
      const uint16_t* w16 = static_cast<const uint16_t*>(W.data);  // (out, in) for F16/BF16
#pragma omp for schedule(static)
      for (int64_t r = 0; r < out; r++) {
        const float b = bias ? bias[r] : 0.0f;
        float* yr = y + r;  // column r of y (N; stride out)
        if (W.dtype == DType::BF16) {
          for (int64_t n = 0; n < N; n++) yr[n * out] = dot_bf16(w16 + r * in, x + n * in, in) + b;
        } else if (W.dtype == DType::F16) {
          for (int64_t n = 0; n < N; n++) yr[n * out] = dot_f16(w16 + r * in, x + n * in, in) + b;
        } else {
          convert_tile(W, r, 1, row);
          for (int64_t n = 0; n < N; n++) yr[n * out] = dot(row, x + n * in, in) + b;
        }
      }
    }
    return;
  }

  const int nthreads = omp_get_max_threads();
  const int64_t tr_rows = tile_rows_for(W, nthreads);
  const int64_t ntiles = (out + tr_rows - 1) / tr_rows;
  const bool par = nthreads > 1 && ntiles > 1 && N * out * in >= kParallelWork;
  use_serial_blas();
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t t = 0; t < ntiles; t++) {
    const int64_t r0 = t * tr_rows, n = std::min(tr_rows, out - r0);
    float* tile = thread_scratch(size_t(n * in));  // (n, in), or (in, n) when transposed
    convert_tile(W, r0, n, tile);
    // y[:, r0:r0+n] (N, n; row stride out) = x (N, in) · tileᵀ
    if (!W.transposed)
      gemm_ld(false, true, N, n, in, 1.0f, x, in, tile, in, 0.0f, y + r0, out);
    else
      gemm_ld(false, false, N, n, in, 1.0f, x, in, tile, n, 0.0f, y + r0, out);
    if (bias)
      for (int64_t i = 0; i < N; i++) {
        float* yr = y + i * out + r0;  // (n)
        for (int64_t j = 0; j < n; j++) yr[j] += bias[r0 + j];
      }
  }
}

void linear_backward_input(float* dx, const float* dy, const Matrix& W, int64_t N) {
  linear_backward_input_ex(dx, dy, W, N, true);
}

void linear_backward_input_ex(float* dx, const float* dy, const Matrix& W, int64_t N, bool accumulate) {
  check_matrix(W, "linear_backward_input");
  const int64_t out = W.rows, in = W.cols;
  if (N <= 0 || in <= 0) return;
  if (out <= 0) {
    if (!accumulate) std::fill(dx, dx + N * in, 0.0f);
    return;
  }

  if (W.dtype == DType::F32) {
    const float* w = static_cast<const float*>(W.data);  // (out, in) or (in, out) when transposed
    const float beta = accumulate ? 1.0f : 0.0f;
    if (!W.transposed)
      gemm_par(false, false, N, in, out, 1.0f, dy, out, w, in, beta, dx, in);
    else
      gemm_par(false, true, N, in, out, 1.0f, dy, out, w, out, beta, dx, in);
    return;
  }
  if (!accumulate) {  // the tiled paths below accumulate into dx
    const int64_t total = N * in;
#pragma omp parallel for if (total >= 65536)
    for (int64_t i = 0; i < total; i++) dx[i] = 0.0f;
  }

  const bool row_path = N <= kRowPathMaxN && !W.transposed;
  const int64_t tr_rows = row_path ? 1 : tile_rows_for(W, omp_get_max_threads());
  const int64_t ntiles = (out + tr_rows - 1) / tr_rows;
  const int nthr =
      N * out * in >= kParallelWork ? int(std::min<int64_t>(omp_get_max_threads(), ntiles)) : 1;
  // Thread 0 accumulates into dx itself; threads 1.. into private partial sums.
  thread_local std::vector<float> partial;  // (nthr-1, N, in)
  const size_t per = size_t(N * in);
  if (nthr > 1) partial.assign(size_t(nthr - 1) * per, 0.0f);
  {
    use_serial_blas();
    float* partial_base = partial.data();
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
      const int tid = omp_get_thread_num();
      float* acc = tid == 0 ? dx : partial_base + size_t(tid - 1) * per;  // (N, in)
      if (row_path) {
        float* row = thread_scratch(size_t(in));  // (in) one converted weight row
        const uint16_t* w16 = static_cast<const uint16_t*>(W.data);  // (out, in) for F16/BF16
#pragma omp for schedule(static)
        for (int64_t r = 0; r < out; r++) {
          // acc[n, :] += dy[n, r] · W[r, :]
          if (W.dtype == DType::BF16) {
            for (int64_t n = 0; n < N; n++) axpy_bf16(acc + n * in, dy[n * out + r], w16 + r * in, in);
          } else if (W.dtype == DType::F16) {
            for (int64_t n = 0; n < N; n++) axpy_f16(acc + n * in, dy[n * out + r], w16 + r * in, in);
          } else {
            convert_tile(W, r, 1, row);
            for (int64_t n = 0; n < N; n++) axpy(acc + n * in, dy[n * out + r], row, in);
          }
        }
      } else {
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntiles; t++) {
          const int64_t r0 = t * tr_rows, n = std::min(tr_rows, out - r0);
          float* tile = thread_scratch(size_t(n * in));  // (n, in), or (in, n) when transposed
          convert_tile(W, r0, n, tile);
          // acc (N, in) += dy[:, r0:r0+n] (N, n; row stride out) · W[r0:r0+n, :]
          if (!W.transposed)
            gemm_ld(false, false, N, in, n, 1.0f, dy + r0, out, tile, in, 1.0f, acc, in);
          else
            gemm_ld(false, true, N, in, n, 1.0f, dy + r0, out, tile, n, 1.0f, acc, in);
        }
      }
    }
  }
  if (nthr > 1) {
    const float* pb = partial.data();
    const int64_t total = int64_t(per);
#pragma omp parallel for if (total >= 65536)
    for (int64_t i = 0; i < total; i++) {
      float s = dx[i];
      for (int p = 0; p < nthr - 1; p++) s += pb[size_t(p) * per + size_t(i)];
      dx[i] = s;
    }
  }
}

void linear_backward_weight(float* dW, float* dbias, const float* dy, const float* x, int64_t N,
                            int64_t in, int64_t out) {
  if (N <= 0 || out <= 0) return;
  // dW (out, in) += dyᵀ (out, N) · x (N, in)
  if (dW && in > 0) gemm_par(true, false, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
  if (dbias) {
    constexpr int64_t kChunk = 256;
    const int64_t nchunks = (out + kChunk - 1) / kChunk;
#pragma omp parallel for if (N * out >= 65536)
    for (int64_t c = 0; c < nchunks; c++) {
      const int64_t o0 = c * kChunk, o1 = std::min(out, o0 + kChunk);
      for (int64_t n = 0; n < N; n++) {
        const float* d = dy + n * out;  // (out)
        for (int64_t o = o0; o < o1; o++) dbias[o] += d[o];
      }
    }
  }
}

}  // namespace lowrank::ops
