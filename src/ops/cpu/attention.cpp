// Causal grouped-query attention. Each (batch, head) is an independent task; per task the
// query rows are processed in blocks of kBlk so that BLAS only touches the causal part
// [0, r1) of the score matrix. Tasks run in parallel (OpenMP) with single-threaded BLAS.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/fast_math.h"
#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

constexpr int64_t kBlk = 64;  // query rows per block
// Multiply-adds (about B·H·T²·D) below which attention stays on one thread.
constexpr int64_t kParallelWork = int64_t(1) << 20;

// OpenMP is the only thread pool: BLAS runs single-threaded (matmul.cpp does the same).
void use_serial_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}


// In place softmax over s[0, n): exp(s - max) / Σ.
[[gnu::noinline]] void softmax_row(float* s, int64_t n) {
  float mx = s[0];
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; j++) {
    const float e = exp_approx(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; j++) s[j] *= inv;
}

// d[0, n) <- a ⊙ (d - Σ a·d) * scale: softmax backward for probabilities a (n), upstream d (n).
[[gnu::noinline]] void softmax_backward_row(const float* a, float* d, int64_t n, float scale) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; j++) dot += a[j] * d[j];
#pragma omp simd
  for (int64_t j = 0; j < n; j++) d[j] = a[j] * (d[j] - dot) * scale;
}

float* thread_scratch(size_t n) {
  thread_local std::vector<float> buf;  // (n) floats, grown on demand
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

void check_heads(int64_t H, int64_t KVH, const char* what) {
  if (KVH <= 0 || H % KVH != 0) fail(what, ": ", H, " query heads are not a multiple of ", KVH, " kv heads");
}

}  // namespace

namespace {

// full_zero: zero each probability row up to T (the documented ops::attention_forward layout);
// otherwise only up to the end of the row's block, the part attention_backward reads.
void attn_forward(float* out, float* att, const float* q, const float* k, const float* v, int64_t qs,
                  int64_t ks, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, bool full_zero) {
  check_heads(H, KVH, "attention_forward");
  const int64_t G = H / KVH;
  const int64_t os = H * D;  // token row stride of out
  const float scale = 1.0f / std::sqrt(float(D));
  const int64_t tasks = B * H;
  const bool par = omp_get_max_threads() > 1 && tasks > 1 && B * H * T * T * D >= kParallelWork;
  use_serial_blas();
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t b = task / H, h = task % H, kh = h / G;
    const float* qb = q + b * T * qs + h * D;    // (T, D) row stride qs
    const float* kb = k + b * T * ks + kh * D;   // (T, D) row stride ks
    const float* vb = v + b * T * ks + kh * D;   // (T, D) row stride ks
    float* ob = out + b * T * os + h * D;        // (T, D) row stride os
    float* a = att + task * T * T;               // (T, T)
    for (int64_t r0 = 0; r0 < T; r0 += kBlk) {
      const int64_t r1 = std::min(T, r0 + kBlk), m = r1 - r0;
      // a[r0:r1, 0:r1] = scale * q[r0:r1] · k[0:r1]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, scale, qb + r0 * qs, qs, kb,
                  ks, 0.0f, a + r0 * T, T);
      for (int64_t t = r0; t < r1; t++) {
        float* row = a + t * T;  // (T)
        softmax_row(row, t + 1);
        std::fill(row + t + 1, row + (full_zero ? T : r1), 0.0f);
      }
      // out[r0:r1] = a[r0:r1, 0:r1] · v[0:r1]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.0f, a + r0 * T, T, vb, ks,
                  0.0f, ob + r0 * os, os);
    }
  }
}

}  // namespace

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  attn_forward(out, att, q, k, v, H * D, KVH * D, B, T, H, KVH, D, true);
}

void attention_forward_ex(float* out, float* att, const float* q, const float* k, const float* v,
                          int64_t qs, int64_t ks, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  attn_forward(out, att, q, k, v, qs, ks, B, T, H, KVH, D, false);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t B, int64_t T,
                        int64_t H, int64_t KVH, int64_t D) {
  attention_backward_ex(dq, dk, dv, dout, q, k, v, att, H * D, KVH * D, B, T, H, KVH, D, true);
}

void attention_backward_ex(float* dq, float* dk, float* dv, const float* dout, const float* q,
                           const float* k, const float* v, const float* att, int64_t qs, int64_t ks,
                           int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, bool accumulate) {
  check_heads(H, KVH, "attention_backward");
  const int64_t G = H / KVH;
  const int64_t os = H * D;  // token row stride of dout
  const float scale = 1.0f / std::sqrt(float(D));
  // One task per (batch, kv head): its query heads are processed in order, so the shared
  // dk/dv rows are written by one thread only.
  const int64_t tasks = B * KVH;
  const bool par = omp_get_max_threads() > 1 && tasks > 1 && B * H * T * T * D >= kParallelWork;
  use_serial_blas();
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t b = task / KVH, kh = task % KVH;
    const float* kb = k + b * T * ks + kh * D;  // (T, D) row stride ks
    const float* vb = v + b * T * ks + kh * D;  // (T, D) row stride ks
    float* dkb = dk + b * T * ks + kh * D;      // (T, D) row stride ks
    float* dvb = dv + b * T * ks + kh * D;      // (T, D) row stride ks
    if (!accumulate)
      for (int64_t t = 0; t < T; t++) {
        std::fill(dkb + t * ks, dkb + t * ks + D, 0.0f);
        std::fill(dvb + t * ks, dvb + t * ks + D, 0.0f);
      }
    float* ds = thread_scratch(size_t(std::min(T, kBlk) * T));  // (kBlk, T): dscores block
    for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
      const float* qb = q + b * T * qs + h * D;      // (T, D) row stride qs
      const float* gb = dout + b * T * os + h * D;   // (T, D) row stride os
      float* dqb = dq + b * T * qs + h * D;          // (T, D) row stride qs
      const float* a = att + (b * H + h) * T * T;    // (T, T)
      for (int64_t r0 = 0; r0 < T; r0 += kBlk) {
        const int64_t r1 = std::min(T, r0 + kBlk), m = r1 - r0;
        const float* ab = a + r0 * T;  // (m, T) rows r0..r1 of the probabilities
        // ds[0:m, 0:r1] = dout[r0:r1] · v[0:r1]ᵀ  (gradient w.r.t. the probabilities)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, 1.0f, gb + r0 * os, os, vb,
                    ks, 0.0f, ds, T);
        // dv[0:r1] += a[r0:r1, 0:r1]ᵀ · dout[r0:r1]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.0f, ab, T, gb + r0 * os,
                    os, 1.0f, dvb, ks);
        // softmax backward: ds = a ⊙ (ds - Σ_j a·ds) * scale; zero beyond the diagonal
        for (int64_t i = 0; i < m; i++) {
          const int64_t t = r0 + i;
          float* dr = ds + i * T;  // (T)
          softmax_backward_row(ab + i * T, dr, t + 1, scale);
          std::fill(dr + t + 1, dr + r1, 0.0f);
        }
        // dq[r0:r1] (+)= ds[0:m, 0:r1] · k[0:r1]  (each dq row block is produced here only)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.0f, ds, T, kb, ks,
                    accumulate ? 1.0f : 0.0f, dqb + r0 * qs, qs);
        // dk[0:r1] += ds[0:m, 0:r1]ᵀ · q[r0:r1]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.0f, ds, T, qb + r0 * qs,
                    qs, 1.0f, dkb, ks);
      }
    }
  }
}

void attention_prefill(float* out, const float* q, int64_t qs, const float* kcache, const float* vcache,
                       int64_t start, int64_t T, int64_t H, int64_t KVH, int64_t D) {
  check_heads(H, KVH, "attention_prefill");
  if (T <= 0) return;
  const int64_t G = H / KVH;
  const int64_t ks = KVH * D, os = H * D;  // cache and out row strides
  const float scale = 1.0f / std::sqrt(float(D));
  const int64_t L = start + T;             // keys visible to the last query
  const bool par = omp_get_max_threads() > 1 && H > 1 && H * T * L * D >= kParallelWork;
  use_serial_blas();
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t h = 0; h < H; h++) {
    const int64_t kh = h / G;
    const float* qb = q + h * D;              // (T, D) row stride qs
    const float* kb = kcache + kh * D;        // (L, D) row stride ks
    const float* vb = vcache + kh * D;        // (L, D) row stride ks
    float* ob = out + h * D;                  // (T, D) row stride os
    float* s = thread_scratch(size_t(std::min(T, kBlk) * L));  // (m, L) scores of one block
    for (int64_t r0 = 0; r0 < T; r0 += kBlk) {
      const int64_t r1 = std::min(T, r0 + kBlk), m = r1 - r0, n = start + r1;  // keys [0, n)
      // s[0:m, 0:n] = scale * q[r0:r1] · k[0:n]ᵀ ; query r (position start + r) sees keys [0, start + r]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, D, scale, qb + r0 * qs, qs, kb, ks, 0.0f, s, n);
      for (int64_t i = 0; i < m; i++) {
        float* row = s + i * n;
        const int64_t len = start + r0 + i + 1;
        softmax_row(row, len);
        std::fill(row + len, row + n, 0.0f);
      }
      // out[r0:r1] = s[0:m, 0:n] · v[0:n]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, n, 1.0f, s, n, vb, ks, 0.0f, ob + r0 * os, os);
    }
  }
}

void attention_decode(float* out, const float* q, const float* kcache, const float* vcache,
                      int64_t T, int64_t H, int64_t KVH, int64_t D) {
  check_heads(H, KVH, "attention_decode");
  if (T <= 0) fail("attention_decode: empty kv cache");
  const int64_t G = H / KVH;
  const int64_t ks = KVH * D;  // cache row stride
  const float scale = 1.0f / std::sqrt(float(D));
  const bool par = omp_get_max_threads() > 1 && KVH > 1 && T * H * D >= 16384;
  use_serial_blas();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t kh = 0; kh < KVH; kh++) {
    const float* qg = q + kh * G * D;          // (G, D): the query heads of this kv head
    const float* kb = kcache + kh * D;         // (T, D) row stride ks
    const float* vb = vcache + kh * D;         // (T, D) row stride ks
    float* og = out + kh * G * D;              // (G, D)
    float* s = thread_scratch(size_t(G * T));  // (G, T) scores / probabilities
    if (G == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, T, D, scale, kb, ks, qg, 1, 0.0f, s, 1);
      softmax_row(s, T);
      cblas_sgemv(CblasRowMajor, CblasTrans, T, D, 1.0f, vb, ks, s, 1, 0.0f, og, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G, T, D, scale, qg, D, kb, ks, 0.0f, s, T);
      for (int64_t g = 0; g < G; g++) softmax_row(s + g * T, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G, D, T, 1.0f, s, T, vb, ks, 0.0f, og, D);
    }
  }
}

}  // namespace lowrank::ops
