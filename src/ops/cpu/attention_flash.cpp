// Causal grouped-query attention in blocks of query rows, keeping per row only the
// log-sum-exp (flash-attention style): memory is linear in the sequence length, and the
// backward recomputes each block's probabilities from q, k and the saved log-sum-exp.
//
// The G = H/KVH query heads that share a kv head are processed together: a block holds m
// query positions × G heads as m·G rows, so each K/V row is read once per block for all G
// heads (decode: one row per head, one pass over the cache per kv head).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/fast_math.h"
#include "ops/cpu/ops_ext.h"

namespace lowrank::ops {
namespace {

constexpr int64_t kBlockRows = 64;  // query rows (positions × heads of a group) per block

void use_serial_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);  // OpenMP is the only thread pool
    return true;
  }();
  (void)done;
}

// Per-thread scratch; grown on demand, contents not kept between calls.
struct Scratch {
  std::vector<float> q, o, s, g;
  float* get(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};
Scratch& scratch() {
  thread_local Scratch sc;
  return sc;
}

// Keys a query at absolute position p may see, intersected with [lo, hi): [first, p].
inline int64_t first_key(int64_t p, int64_t window) { return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0; }

void check(const AttnShape& a, const char* what) {
  if (a.KVH <= 0 || a.H % a.KVH != 0) fail(what, ": ", a.H, " query heads are not a multiple of ", a.KVH, " kv heads");
  if (a.D <= 0) fail(what, ": head size ", a.D);
}

// Positions per block: G heads each, about kBlockRows rows in all.
int64_t block_positions(int64_t G) { return std::max<int64_t>(1, kBlockRows / G); }

}  // namespace

void attention_flash_forward(const AttnSeq* seqs, int64_t S, int64_t qs, int64_t os, int64_t ks, const AttnShape& a) {
  check(a, "attention");
  const int64_t G = a.H / a.KVH, D = a.D, mq = block_positions(G);
  // One task per (sequence, kv head, block of query positions): independent outputs.
  struct Task { int64_t s, kh, r0; };
  std::vector<Task> tasks;
  int64_t work = 0;
  for (int64_t s = 0; s < S; s++) {
    for (int64_t kh = 0; kh < a.KVH; kh++)
      for (int64_t r0 = 0; r0 < seqs[s].n; r0 += mq) tasks.push_back({s, kh, r0});
    work += seqs[s].n * (seqs[s].start + seqs[s].n) * a.H * D;
  }
  use_serial_blas();
  const bool par = omp_get_max_threads() > 1 && tasks.size() > 1 && work >= (int64_t(1) << 18);
  const float cap = a.softcap;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (size_t ti = 0; ti < tasks.size(); ti++) {
    const Task t = tasks[ti];
    const AttnSeq& sq = seqs[t.s];
    const int64_t r1 = std::min(sq.n, t.r0 + mq), m = r1 - t.r0, rows = m * G;
    const int64_t lo = first_key(sq.start + t.r0, a.window), hi = sq.start + r1, L = hi - lo;
    Scratch& sc = scratch();
    float* Qb = sc.get(sc.q, size_t(rows * D));  // (m·G, D): row i·G + g = position r0+i, head kh·G+g
    float* Ob = sc.get(sc.o, size_t(rows * D));  // (m·G, D)
    float* Sb = sc.get(sc.s, size_t(rows * L));  // (m·G, L) scores, then probabilities
    for (int64_t i = 0; i < m; i++)
      std::memcpy(Qb + i * G * D, sq.q + (t.r0 + i) * qs + t.kh * G * D, size_t(G * D) * 4);
    const float* kb = sq.k + lo * ks + t.kh * D;  // (L, D) row stride ks
    const float* vb = sq.v + lo * ks + t.kh * D;  // (L, D) row stride ks
    // Sb = scale · Qb · K[lo:hi]ᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(L), int(D), a.scale, Qb, int(D), kb, int(ks),
                0.0f, Sb, int(L));
    for (int64_t i = 0; i < m; i++) {
      const int64_t p = sq.start + t.r0 + i;
      const int64_t j0 = first_key(p, a.window) - lo, j1 = p - lo + 1;  // valid [j0, j1) of the row
      for (int64_t g = 0; g < G; g++) {
        float* row = Sb + (i * G + g) * L;  // (L)
        if (cap > 0) {
#pragma omp simd
          for (int64_t j = j0; j < j1; j++) row[j] = cap * tanh_approx(row[j] / cap);
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = j0; j < j1; j++) mx = std::max(mx, row[j]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = j0; j < j1; j++) {
          const float e = exp_approx(row[j] - mx);
          row[j] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < j0; j++) row[j] = 0.0f;
#pragma omp simd
        for (int64_t j = j0; j < j1; j++) row[j] *= inv;
        for (int64_t j = j1; j < L; j++) row[j] = 0.0f;
        if (sq.lse) {
          float* st = sq.lse + 2 * ((t.kh * G + g) * sq.n + t.r0 + i);
          st[0] = mx;
          st[1] = inv;
        }
      }
    }
    // Ob = P · V[lo:hi]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(L), 1.0f, Sb, int(L), vb, int(ks),
                0.0f, Ob, int(D));
    for (int64_t i = 0; i < m; i++)
      std::memcpy(sq.out + (t.r0 + i) * os + t.kh * G * D, Ob + i * G * D, size_t(G * D) * 4);
  }
}

void attention_flash_backward(const AttnSeqGrad* seqs, int64_t S, int64_t qs, int64_t os, int64_t ks,
                              const AttnShape& a) {
  check(a, "attention backward");
  const int64_t G = a.H / a.KVH, D = a.D, mq = block_positions(G);
  // One task per (sequence, kv head): it alone writes that head's dk/dv rows.
  const int64_t tasks = S * a.KVH;
  int64_t work = 0;
  for (int64_t s = 0; s < S; s++) work += seqs[s].n * (seqs[s].start + seqs[s].n) * a.H * D;
  use_serial_blas();
  const bool par = omp_get_max_threads() > 1 && tasks > 1 && work >= (int64_t(1) << 18);
  const float cap = a.softcap;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t s = task / a.KVH, kh = task % a.KVH;
    const AttnSeqGrad& sq = seqs[s];
    const int64_t nk = sq.start + sq.n;
    for (int64_t r = 0; r < nk; r++) {
      std::fill(sq.dk + r * ks + kh * D, sq.dk + r * ks + kh * D + D, 0.0f);
      std::fill(sq.dv + r * ks + kh * D, sq.dv + r * ks + kh * D + D, 0.0f);
    }
    Scratch& sc = scratch();
    for (int64_t r0 = 0; r0 < sq.n; r0 += mq) {
      const int64_t r1 = std::min(sq.n, r0 + mq), m = r1 - r0, rows = m * G;
      const int64_t lo = first_key(sq.start + r0, a.window), hi = sq.start + r1, L = hi - lo;
      float* Qb = sc.get(sc.q, size_t(3 * rows * D));  // Qb, dOb, then dQb: (m·G, D) each
      float* dOb = Qb + rows * D;
      float* dQb = dOb + rows * D;
      float* Pb = sc.get(sc.s, size_t((cap > 0 ? 3 : 2) * rows * L));  // P, dP/dS [, 1 - tanh²]: (m·G, L) each
      float* dPb = Pb + rows * L;
      float* Tb = dPb + rows * L;
      for (int64_t i = 0; i < m; i++) {
        std::memcpy(Qb + i * G * D, sq.q + (r0 + i) * qs + kh * G * D, size_t(G * D) * 4);
        std::memcpy(dOb + i * G * D, sq.dout + (r0 + i) * os + kh * G * D, size_t(G * D) * 4);
      }
      const float* kb = sq.k + lo * ks + kh * D;  // (L, D) row stride ks
      const float* vb = sq.v + lo * ks + kh * D;
      float* dkb = sq.dk + lo * ks + kh * D;
      float* dvb = sq.dv + lo * ks + kh * D;
      // Pb = scale · Qb · Kᵀ ; dPb = dOb · Vᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(L), int(D), a.scale, Qb, int(D), kb, int(ks),
                  0.0f, Pb, int(L));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(L), int(D), 1.0f, dOb, int(D), vb, int(ks),
                  0.0f, dPb, int(L));
      for (int64_t i = 0; i < m; i++) {
        const int64_t p = sq.start + r0 + i;
        const int64_t j0 = first_key(p, a.window) - lo, j1 = p - lo + 1;
        for (int64_t g = 0; g < G; g++) {
          const int64_t row_i = i * G + g;
          float* pr = Pb + row_i * L;
          float* dr = dPb + row_i * L;
          float* tr = Tb + row_i * L;
          // P recomputed exactly as the forward computed it (same scores, the saved row max
          // and 1/Σexp), and D = Σ_j P_j·dP_j: the softmax backward of eager attention.
          const float* st = sq.lse + 2 * ((kh * G + g) * sq.n + r0 + i);
          const float mx = st[0], inv = st[1];
          for (int64_t j = 0; j < j0; j++) pr[j] = dr[j] = 0.0f;
          if (cap > 0) {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) {
              const float th = tanh_approx(pr[j] / cap);
              pr[j] = exp_approx(cap * th - mx) * inv;
              tr[j] = 1.0f - th * th;
            }
          } else {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) pr[j] = exp_approx(pr[j] - mx) * inv;
          }
          float dd = 0.0f;
#pragma omp simd reduction(+ : dd)
          for (int64_t j = j0; j < j1; j++) dd += pr[j] * dr[j];
          if (cap > 0) {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) dr[j] = pr[j] * (dr[j] - dd) * tr[j] * a.scale;
          } else {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) dr[j] = pr[j] * (dr[j] - dd) * a.scale;
          }
          for (int64_t j = j1; j < L; j++) pr[j] = dr[j] = 0.0f;
        }
      }
      // dV[lo:hi] += Pᵀ · dO ; dQb = dS · K ; dK[lo:hi] += dSᵀ · Qb
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(L), int(D), int(rows), 1.0f, Pb, int(L), dOb, int(D),
                  1.0f, dvb, int(ks));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(L), 1.0f, dPb, int(L), kb, int(ks),
                  0.0f, dQb, int(D));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(L), int(D), int(rows), 1.0f, dPb, int(L), Qb, int(D),
                  1.0f, dkb, int(ks));
      for (int64_t i = 0; i < m; i++)
        std::memcpy(sq.dq + (r0 + i) * qs + kh * G * D, dQb + i * G * D, size_t(G * D) * 4);
    }
  }
}

}  // namespace lowrank::ops
