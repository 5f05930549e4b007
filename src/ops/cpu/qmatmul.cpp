// Quantized linear forward for decode-sized N: integer dot products on packed GGUF blocks
// against 8-bit quantized activations (see qmatmul.h for the scheme).
//
// Activations: each row of x is cut into blocks of 256 (K-quants, IQ2_XXS) or 32 (Q8_0,
// Q4_0) values; a block stores d = max|x|/127 (f32), q = round(x/d) in [-127, 127] and the
// int16 sums of every 16 consecutive q (used by the formats with an offset or a min term).
//
// Per weight format, one block contributes (all sums exact in int32):
//   Q8_0    dw·dx·Σ q·a                                    q int8
//   Q4_0    dw·dx·Σ (q−8)·a                                q 4-bit
//   Q2_K    d·dx·Σ_g sc_g Σ q·a  −  dmin·dx·Σ_g m_g·S_g     16 groups of 16, q 2-bit
//   Q4_K    d·dx·Σ_g sc_g Σ q·a  −  dmin·dx·Σ_g m_g·S_g     8 groups of 32, q 4-bit
//   Q5_K    as Q4_K with q 5-bit
//   Q6_K    d·dx·(Σ_g sc_g Σ q·a − 32·Σ_g sc_g·S_g)         16 groups of 16, q 6-bit, sc int8
//   IQ2_XXS d·dx/8·Σ_g (2·ls_g+1)·Σ ±grid·a                 8 groups of 32
// where a are the int8 activations and S_g the sum of a over group g.
//
// SIMD (AVX2 with FMA/F16C; VNNI and AVX-512BW/VL used when compiled for them): the weight
// codes of 32 elements are unpacked into one 256-bit vector of unsigned bytes, multiplied
// with 32 int8 activations by maddubs (u8·s8 → pairwise int16 sums; no saturation is
// possible for these code ranges: at most 63·127·2 = 16002), and weighted by the group
// scale with an int16 multiply-add into int32 lanes (vpdpwssd with VNNI). Signed weights
// (Q8_0, Q4_0) move their sign onto the activation (|w| · sign(a, w)); IQ2_XXS signs are
// applied to the activation with a byte mask. Each block ends with one int32→f32 conversion
// and an FMA into per-row f32 lanes. Up to 4 activation rows share one unpacking of a
// weight block. With AVX-512 VBMI + VNNI, IQ2_XXS (the bulk of a 2-bit model) has a 512-bit
// kernel that decodes signs and scales of a whole block in registers (see iq2_xxs_avx512).
// The scalar kernels compute the same integer sums in plain C++.
#include "ops/cpu/qmatmul.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "quants/grids.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QMM_SIMD 1
// GCC 12 reports its own _mm512_undefined_* placeholders inside the AVX-512 intrinsic
// headers as uninitialized; the headers are included here so that this applies to them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#define QMM_SIMD 0
#endif

namespace lowrank::ops {
namespace {

// ------------------------------------------------------------------ activations

// x (N, K) quantized to int8 blocks of bs (32 or 256) values.
struct QActs {
  int64_t K = 0, bs = 0, nb = 0;  // row length, block size, blocks per row
  const int8_t* q = nullptr;      // (N, K)
  const float* d = nullptr;       // (N, nb) block scales
  const int16_t* s = nullptr;     // (N, K/16) sums of 16 consecutive q
  const int8_t* qrow(int64_t n) const { return q + n * K; }
  const float* drow(int64_t n) const { return d + n * nb; }
  const int16_t* srow(int64_t n) const { return s + n * (K / 16); }
};

// Quantizes x (N, K) into buffers q (N, K), d (N, K/bs), s (N, K/16). The same code serves
// the SIMD and the scalar kernels, so both see identical int8 activations.
void quantize_acts(const float* x, int64_t N, int64_t K, int64_t bs, int8_t* q, float* d,
                   int16_t* s) {
  const int64_t nb = K / bs;
  for (int64_t n = 0; n < N; n++) {
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + n * K + b * bs;  // (bs)
      int8_t* qb = q + n * K + b * bs;        // (bs)
      float amax = 0.0f;
      for (int64_t i = 0; i < bs; i++) amax = std::max(amax, std::fabs(xb[i]));
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      d[n * nb + b] = amax / 127.0f;
      for (int64_t i = 0; i < bs; i++) {
        const float v = std::nearbyint(xb[i] * id);
        qb[i] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
      }
      int16_t* sb = s + n * (K / 16) + b * (bs / 16);  // (bs/16)
      for (int64_t g = 0; g < bs / 16; g++) {
        int sum = 0;
        for (int i = 0; i < 16; i++) sum += qb[16 * g + i];
        sb[g] = int16_t(sum);
      }
    }
  }
}

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if QMM_SIMD
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 6-bit scales and mins of a Q4_K/Q5_K block (scales[12]) as 8 bytes each.
inline void k_scales(const uint8_t* s, uint64_t* sc, uint64_t* mn) {
  const uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
  const uint32_t sc_lo = a & 0x3f3f3f3fu, m_lo = b & 0x3f3f3f3fu;
  const uint32_t sc_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
  const uint32_t m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
  *sc = uint64_t(sc_lo) | (uint64_t(sc_hi) << 32);
  *mn = uint64_t(m_lo) | (uint64_t(m_hi) << 32);
}

inline uint8_t byte_of(uint64_t v, int i) { return uint8_t(v >> (8 * i)); }

// ------------------------------------------------------------------ scalar kernels
// Each returns Σ over the nb weight blocks of the row for activation row n.

float q8_0_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 34 * b;
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    const int8_t* x = xq + 32 * b;
    int32_t sum = 0;
    for (int i = 0; i < 32; i++) sum += int32_t(q[i]) * x[i];
    res += load_f16(blk) * xd[b] * float(sum);
  }
  return res;
}

float q4_0_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 18 * b;
    const uint8_t* qs = blk + 2;
    const int8_t* x = xq + 32 * b;
    int32_t sum = 0;
    for (int i = 0; i < 16; i++) {
      sum += (int32_t(qs[i] & 15) - 8) * x[i];
      sum += (int32_t(qs[i] >> 4) - 8) * x[i + 16];
    }
    res += load_f16(blk) * xd[b] * float(sum);
  }
  return res;
}

float q2_k_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  const int16_t* xs = a.srow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 84 * b;
    const uint8_t* scales = blk;    // [16]
    const uint8_t* qs = blk + 16;   // [64]
    const int8_t* x = xq + 256 * b;
    int32_t isum = 0, msum = 0;
    for (int h = 0; h < 2; h++) {
      for (int k = 0; k < 4; k++) {
        for (int half = 0; half < 2; half++) {
          const int g = 8 * h + 2 * k + half;
          int32_t gs = 0;
          for (int l = 0; l < 16; l++) {
            const int m = 16 * half + l;
            gs += int32_t((qs[32 * h + m] >> (2 * k)) & 3) * x[128 * h + 32 * k + m];
          }
          isum += int32_t(scales[g] & 15) * gs;
        }
      }
    }
    for (int g = 0; g < 16; g++) msum += int32_t(scales[g] >> 4) * xs[16 * b + g];
    const float dx = xd[b];
    res += load_f16(blk + 80) * dx * float(isum);
    res -= load_f16(blk + 82) * dx * float(msum);
  }
  return res;
}

// Q4_K (hbit = false) and Q5_K (hbit = true).
template <bool hbit>
float q45_k_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int64_t bb = hbit ? 176 : 144;
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  const int16_t* xs = a.srow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + bb * b;
    uint64_t sc, mn;
    k_scales(blk + 4, &sc, &mn);
    const uint8_t* qh = blk + 16;               // [32] (Q5_K)
    const uint8_t* qs = blk + (hbit ? 48 : 16);  // [128]
    const int8_t* x = xq + 256 * b;
    int32_t isum = 0, msum = 0;
    for (int c = 0; c < 4; c++) {
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; l++) {
        int q0 = qs[32 * c + l] & 15, q1 = qs[32 * c + l] >> 4;
        if (hbit) {
          q0 |= ((qh[l] >> (2 * c)) & 1) << 4;
          q1 |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        s0 += q0 * x[64 * c + l];
        s1 += q1 * x[64 * c + 32 + l];
      }
      isum += int32_t(byte_of(sc, 2 * c)) * s0 + int32_t(byte_of(sc, 2 * c + 1)) * s1;
    }
    for (int g = 0; g < 16; g++) msum += int32_t(byte_of(mn, g / 2)) * xs[16 * b + g];
    const float dx = xd[b];
    res += load_f16(blk) * dx * float(isum);
    res -= load_f16(blk + 2) * dx * float(msum);
  }
  return res;
}

float q6_k_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  const int16_t* xs = a.srow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 210 * b;
    const int8_t* scales = reinterpret_cast<const int8_t*>(blk + 192);  // [16]
    const int8_t* x = xq + 256 * b;
    int32_t isum = 0, msum = 0;
    for (int h = 0; h < 2; h++) {
      const uint8_t* ql = blk + 64 * h;
      const uint8_t* qh = blk + 128 + 32 * h;
      const int8_t* sc = scales + 8 * h;
      const int8_t* xx = x + 128 * h;
      for (int is = 0; is < 2; is++) {
        int32_t s1 = 0, s2 = 0, s3 = 0, s4 = 0;
        for (int l = 16 * is; l < 16 * is + 16; l++) {
          s1 += ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) * xx[l];
          s2 += ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) * xx[l + 32];
          s3 += ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) * xx[l + 64];
          s4 += ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) * xx[l + 96];
        }
        isum += sc[is] * s1 + sc[is + 2] * s2 + sc[is + 4] * s3 + sc[is + 6] * s4;
      }
    }
    for (int g = 0; g < 16; g++) msum += int32_t(scales[g]) * xs[16 * b + g];
    res += load_f16(blk + 208) * xd[b] * float(isum - 32 * msum);
  }
  return res;
}

float iq2_xxs_scalar(const uint8_t* w, int64_t nb, const QActs& a, int64_t n) {
  const int8_t* xq = a.qrow(n);
  const float* xd = a.drow(n);
  float res = 0.0f;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 66 * b;
    const int8_t* x = xq + 256 * b;
    int32_t isum = 0;
    for (int g = 0; g < 8; g++) {
      const uint32_t w0 = load_u32(blk + 2 + 8 * g), w1 = load_u32(blk + 6 + 8 * g);
      int32_t gs = 0;
      for (int k = 0; k < 4; k++) {
        const uint64_t grid = quants::kIq2xxsGrid[(w0 >> (8 * k)) & 255];
        const uint8_t signs = quants::kIqSigns[(w1 >> (7 * k)) & 127];
        for (int j = 0; j < 8; j++) {
          const int32_t v = int32_t(byte_of(grid, j)) * x[32 * g + 8 * k + j];
          gs += (signs >> j) & 1 ? -v : v;
        }
      }
      isum += int32_t(2 * (w1 >> 28) + 1) * gs;
    }
    res += load_f16(blk) * xd[b] * 0.125f * float(isum);
  }
  return res;
}

// ------------------------------------------------------------------ SIMD kernels
#if QMM_SIMD

// acc + Σ pairs a·b (int16 → int32 lanes).
inline __m256i dpwssd(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// acc + Σ quads u·s (u8 · s8 → int32 lanes); exact for the ranges used here.
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Shuffle controls picking int16 element e of each 128-bit lane (kPick[e]) or element 2k in
// the low lane and 2k+1 in the high lane (kPair[k]).
struct ShuffleCtl {
  alignas(32) uint8_t pick[8][32];
  alignas(32) uint8_t pair[4][32];
  ShuffleCtl() {
    for (int e = 0; e < 8; e++)
      for (int i = 0; i < 32; i++) pick[e][i] = uint8_t(2 * e + (i & 1));
    for (int k = 0; k < 4; k++)
      for (int i = 0; i < 32; i++) pair[k][i] = uint8_t(2 * (2 * k + (i >= 16)) + (i & 1));
  }
};
const ShuffleCtl kCtl;

#if !(defined(__AVX512BW__) && defined(__AVX512VL__))
// IQ2_XXS sign index → 8 bytes of +1 / −1 for _mm256_sign_epi8.
struct Iq2Signs {
  uint64_t s[128];
  Iq2Signs() {
    for (int i = 0; i < 128; i++) {
      s[i] = 0;
      for (int j = 0; j < 8; j++)
        s[i] |= uint64_t((quants::kIqSigns[i] >> j) & 1 ? 0xff : 0x01) << (8 * j);
    }
  }
};
const Iq2Signs kIq2Signs;
#endif

template <int NR>
void q8_0_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 34 * b;
    const float dw = load_f16(blk);
    const __m256i q = loadu(blk + 2);
    const __m256i aq = _mm256_abs_epi8(q);
    for (int j = 0; j < NR; j++) {
      const __m256i xs = _mm256_sign_epi8(loadu(a.qrow(n0 + j) + 32 * b), q);
      const __m256i dot = dpbusd(_mm256_setzero_si256(), aq, xs);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * a.drow(n0 + j)[b]), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}

template <int NR>
void q4_0_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 18 * b;
    const float dw = load_f16(blk);
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m256i q = _mm256_sub_epi8(
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), m4), eight);
    const __m256i aq = _mm256_abs_epi8(q);
    for (int j = 0; j < NR; j++) {
      const __m256i xs = _mm256_sign_epi8(loadu(a.qrow(n0 + j) + 32 * b), q);
      const __m256i dot = dpbusd(_mm256_setzero_si256(), aq, xs);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * a.drow(n0 + j)[b]), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}

template <int NR>
void q2_k_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  const __m128i m4 = _mm_set1_epi8(15);
  const __m256i m2 = _mm256_set1_epi8(3);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 84 * b;
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk));
    const __m128i scl = _mm_and_si128(sc, m4);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
    __m256i sumi[NR];
    for (int j = 0; j < NR; j++) sumi[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      const __m256i sh = _mm256_broadcastsi128_si256(
          _mm_cvtepu8_epi16(h ? _mm_srli_si128(scl, 8) : scl));  // scales 8h..8h+7 (int16)
      const __m256i qv = loadu(blk + 16 + 32 * h);
      for (int k = 0; k < 4; k++) {
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m2);
        const __m256i scv = _mm256_shuffle_epi8(sh, loadu(kCtl.pair[k]));
        for (int j = 0; j < NR; j++) {
          const __m256i p = _mm256_maddubs_epi16(v, loadu(a.qrow(n0 + j) + 256 * b + 128 * h + 32 * k));
          sumi[j] = dpwssd(sumi[j], p, scv);
        }
      }
    }
    const float d = load_f16(blk + 80), dmin = load_f16(blk + 82);
    for (int j = 0; j < NR; j++) {
      const float dx = a.drow(n0 + j)[b];
      const __m256i summ = _mm256_madd_epi16(mins, loadu(a.srow(n0 + j) + 16 * b));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_set1_ps(d * dx), acc[j]);
      acc[j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_set1_ps(dmin * dx), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}

template <bool hbit, int NR>
void q45_k_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  const int64_t bb = hbit ? 176 : 144;
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(15), b4 = _mm256_set1_epi8(16);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + bb * b;
    uint64_t sc8, mn8;
    k_scales(blk + 4, &sc8, &mn8);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(sc8))));
    const __m128i mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(mn8)));
    const __m256i mins = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
    const uint8_t* qs = blk + (hbit ? 48 : 16);
    __m256i qh = hbit ? loadu(blk + 16) : _mm256_setzero_si256();
    __m256i sumi[NR];
    for (int j = 0; j < NR; j++) sumi[j] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
      const __m256i qv = loadu(qs + 32 * c);
      __m256i lo = _mm256_and_si256(qv, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
      if (hbit) {  // bits 2c, 2c+1 of qh (at bits 0, 1 after the running shift) → bit 4
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), b4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), b4));
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m256i s0 = _mm256_shuffle_epi8(sc, loadu(kCtl.pick[2 * c]));
      const __m256i s1 = _mm256_shuffle_epi8(sc, loadu(kCtl.pick[2 * c + 1]));
      for (int j = 0; j < NR; j++) {
        const int8_t* x = a.qrow(n0 + j) + 256 * b + 64 * c;
        sumi[j] = dpwssd(sumi[j], _mm256_maddubs_epi16(lo, loadu(x)), s0);
        sumi[j] = dpwssd(sumi[j], _mm256_maddubs_epi16(hi, loadu(x + 32)), s1);
      }
    }
    const float d = load_f16(blk), dmin = load_f16(blk + 2);
    for (int j = 0; j < NR; j++) {
      const float dx = a.drow(n0 + j)[b];
      const __m256i summ = _mm256_madd_epi16(mins, loadu(a.srow(n0 + j) + 16 * b));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_set1_ps(d * dx), acc[j]);
      acc[j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_set1_ps(dmin * dx), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}

template <int NR>
void q6_k_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(15), m6 = _mm256_set1_epi8(0x30);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 210 * b;
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192));
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);  // 16 scales (int16)
    __m256i sumi[NR];
    for (int j = 0; j < NR; j++) sumi[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      const __m256i sh = _mm256_broadcastsi128_si256(h ? _mm256_extracti128_si256(sc16, 1)
                                                       : _mm256_castsi256_si128(sc16));
      const __m256i qla = loadu(blk + 64 * h), qlb = loadu(blk + 64 * h + 32);
      const __m256i qh = loadu(blk + 128 + 32 * h);
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(qla, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m6));
      q[1] = _mm256_or_si256(_mm256_and_si256(qlb, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m6));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qla, 4), m4), _mm256_and_si256(qh, m6));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qlb, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), m6));
      for (int k = 0; k < 4; k++) {
        const __m256i scv = _mm256_shuffle_epi8(sh, loadu(kCtl.pair[k]));
        for (int j = 0; j < NR; j++) {
          const __m256i p = _mm256_maddubs_epi16(q[k], loadu(a.qrow(n0 + j) + 256 * b + 128 * h + 32 * k));
          sumi[j] = dpwssd(sumi[j], p, scv);
        }
      }
    }
    const float d = load_f16(blk + 208);
    for (int j = 0; j < NR; j++) {
      const __m256i summ = _mm256_madd_epi16(sc16, loadu(a.srow(n0 + j) + 16 * b));
      const __m256i tot = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(summ, 5));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_set1_ps(d * a.drow(n0 + j)[b]), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}

template <int NR>
void iq2_xxs_simd(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m256 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm256_setzero_ps();
  const uint64_t* grid = quants::kIq2xxsGrid;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 66 * b;
    __m256i sumi[NR];
    for (int j = 0; j < NR; j++) sumi[j] = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
      const uint32_t w0 = load_u32(blk + 2 + 8 * g), w1 = load_u32(blk + 6 + 8 * g);
      const __m256i mags = _mm256_set_epi64x(int64_t(grid[w0 >> 24]), int64_t(grid[(w0 >> 16) & 255]),
                                             int64_t(grid[(w0 >> 8) & 255]), int64_t(grid[w0 & 255]));
      const __m256i scv = _mm256_set1_epi16(int16_t(2 * (w1 >> 28) + 1));
#if defined(__AVX512BW__) && defined(__AVX512VL__)
      const __mmask32 neg = __mmask32(quants::kIqSigns[w1 & 127]) |
                            (__mmask32(quants::kIqSigns[(w1 >> 7) & 127]) << 8) |
                            (__mmask32(quants::kIqSigns[(w1 >> 14) & 127]) << 16) |
                            (__mmask32(quants::kIqSigns[(w1 >> 21) & 127]) << 24);
      for (int j = 0; j < NR; j++) {
        const __m256i xv = loadu(a.qrow(n0 + j) + 256 * b + 32 * g);
        const __m256i xs = _mm256_mask_sub_epi8(xv, neg, _mm256_setzero_si256(), xv);
        sumi[j] = dpwssd(sumi[j], _mm256_maddubs_epi16(mags, xs), scv);
      }
#else
      const uint64_t* st = kIq2Signs.s;
      const __m256i sgn = _mm256_set_epi64x(int64_t(st[(w1 >> 21) & 127]), int64_t(st[(w1 >> 14) & 127]),
                                            int64_t(st[(w1 >> 7) & 127]), int64_t(st[w1 & 127]));
      for (int j = 0; j < NR; j++) {
        const __m256i xs = _mm256_sign_epi8(loadu(a.qrow(n0 + j) + 256 * b + 32 * g), sgn);
        sumi[j] = dpwssd(sumi[j], _mm256_maddubs_epi16(mags, xs), scv);
      }
#endif
    }
    const float d = load_f16(blk) * 0.125f;
    for (int j = 0; j < NR; j++)
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_set1_ps(d * a.drow(n0 + j)[b]), acc[j]);
  }
  for (int j = 0; j < NR; j++) out[j] = hsum(acc[j]);
}


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && defined(__AVX512VNNI__)
#define QMM_IQ2_AVX512 1
// IQ2_XXS with 512-bit vectors, two 32-element groups per vector. The 64 bytes of a block's
// qs (8 groups × (w0, w1), group g = qword g) are decoded in registers:
//  - magnitudes: the 8 grid rows of two groups are loaded as scalars and inserted (a 64-bit
//    gather was measured 1.5-2x slower on the AMD Zen 5 development machine);
//  - signs: vpmultishiftqb extracts the four 7-bit sign fields of each w1 into bytes, and
//    vpermi2b looks them up in the 128-byte sign table; the 8 sign bytes of two groups are
//    then the 64-bit mask that negates the matching activation bytes;
//  - scales: (w1 >> 28)·2 + 1 broadcast to the 16 int16 lanes of each group with vpermw.
struct Iq2Avx512Ctl {
  alignas(64) uint8_t sshift[64];    // qword g: bit offsets 32, 39, 46, 53 of the w1 fields
  alignas(64) uint16_t scale[4][32]; // pair p: int16 lanes 0..15 ← word 4·2p, 16..31 ← 4·(2p+1)
  alignas(64) uint8_t signs[128];    // quants::kIqSigns
  Iq2Avx512Ctl() {
    for (int i = 0; i < 64; i++) sshift[i] = (i % 8) < 4 ? uint8_t(32 + 7 * (i % 8)) : 0;
    for (int p = 0; p < 4; p++)
      for (int i = 0; i < 32; i++) scale[p][i] = uint16_t(4 * (2 * p + i / 16));
    std::memcpy(signs, quants::kIqSigns, 128);
  }
};
const Iq2Avx512Ctl kIq2Ctl;

template <int NR>
void iq2_xxs_avx512(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out) {
  __m512 acc[NR];
  for (int j = 0; j < NR; j++) acc[j] = _mm512_setzero_ps();
  const long long* grid = reinterpret_cast<const long long*>(quants::kIq2xxsGrid);
  const __m512i sg_lo = _mm512_load_si512(kIq2Ctl.signs), sg_hi = _mm512_load_si512(kIq2Ctl.signs + 64);
  const __m512i sshift = _mm512_load_si512(kIq2Ctl.sshift);
  const __m512i one = _mm512_set1_epi64(1);
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = w + 66 * b;
    const __m512i v = _mm512_loadu_si512(blk + 2);  // qs: qword g = (w0, w1) of group g
    // Sign bytes: qword g bytes 0..3 = signs of group g; packed to dword g = 32-bit mask.
    const __m512i sidx = _mm512_multishift_epi64_epi8(sshift, v);
    const __m512i sbytes = _mm512_permutex2var_epi8(sg_lo, sidx, sg_hi);
    alignas(32) uint64_t masks[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(masks), _mm512_cvtepi64_epi32(sbytes));
    const __m512i sc = _mm512_or_si512(_mm512_slli_epi64(_mm512_srli_epi64(v, 60), 1), one);
    __m512i mags[4], scv[4];
    for (int p = 0; p < 4; p++) {
      const uint8_t* gi = blk + 2 + 16 * p;  // index bytes: w0 of groups 2p (gi[0..3]), 2p+1 (gi[8..11])
      mags[p] = _mm512_set_epi64(grid[gi[11]], grid[gi[10]], grid[gi[9]], grid[gi[8]],
                                 grid[gi[3]], grid[gi[2]], grid[gi[1]], grid[gi[0]]);
      scv[p] = _mm512_permutexvar_epi16(_mm512_load_si512(kIq2Ctl.scale[p]), sc);
    }
    const float d = load_f16(blk) * 0.125f;
    for (int j = 0; j < NR; j++) {
      const int8_t* x = a.qrow(n0 + j) + 256 * b;
      __m512i sumi = _mm512_setzero_si512();
      for (int p = 0; p < 4; p++) {
        const __m512i xv = _mm512_loadu_si512(x + 64 * p);
        const __m512i xs = _mm512_mask_sub_epi8(xv, __mmask64(masks[p]), _mm512_setzero_si512(), xv);
        sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(mags[p], xs), scv[p]);
      }
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(d * a.drow(n0 + j)[b]), acc[j]);
    }
  }
  for (int j = 0; j < NR; j++) out[j] = _mm512_reduce_add_ps(acc[j]);
}
#endif

#endif  // QMM_SIMD

// ------------------------------------------------------------------ dispatch

constexpr int kMaxNR = 4;  // activation rows sharing one unpacking of a weight block
using SimdFn = void (*)(const uint8_t* w, int64_t nb, const QActs& a, int64_t n0, float* out);
using ScalarFn = float (*)(const uint8_t* w, int64_t nb, const QActs& a, int64_t n);

struct Kernel {
  int64_t act_block = 0;     // activation block size (32 or 256)
  ScalarFn scalar = nullptr;
  SimdFn simd[kMaxNR] = {};  // simd[nr-1] handles nr activation rows; null without SIMD
};

#if QMM_SIMD
#define QMM_SIMD_FNS(f) {f<1>, f<2>, f<3>, f<4>}
#else
#define QMM_SIMD_FNS(f) {}
#endif

bool kernel_for(DType t, Kernel* k) {
  switch (t) {
    case DType::Q8_0: *k = {32, q8_0_scalar, QMM_SIMD_FNS(q8_0_simd)}; return true;
    case DType::Q4_0: *k = {32, q4_0_scalar, QMM_SIMD_FNS(q4_0_simd)}; return true;
    case DType::Q2_K: *k = {256, q2_k_scalar, QMM_SIMD_FNS(q2_k_simd)}; return true;
#if QMM_SIMD
    case DType::Q4_K: *k = {256, q45_k_scalar<false>, {q45_k_simd<false, 1>, q45_k_simd<false, 2>,
                                                      q45_k_simd<false, 3>, q45_k_simd<false, 4>}};
      return true;
    case DType::Q5_K: *k = {256, q45_k_scalar<true>, {q45_k_simd<true, 1>, q45_k_simd<true, 2>,
                                                     q45_k_simd<true, 3>, q45_k_simd<true, 4>}};
      return true;
#else
    case DType::Q4_K: *k = {256, q45_k_scalar<false>, {}}; return true;
    case DType::Q5_K: *k = {256, q45_k_scalar<true>, {}}; return true;
#endif
    case DType::Q6_K: *k = {256, q6_k_scalar, QMM_SIMD_FNS(q6_k_simd)}; return true;
#if defined(QMM_IQ2_AVX512)
    case DType::IQ2_XXS: *k = {256, iq2_xxs_scalar, QMM_SIMD_FNS(iq2_xxs_avx512)}; return true;
#else
    case DType::IQ2_XXS: *k = {256, iq2_xxs_scalar, QMM_SIMD_FNS(iq2_xxs_simd)}; return true;
#endif
    default: return false;
  }
}

// Multiply-adds below which a call stays on the calling thread.
constexpr int64_t kParallelWork = int64_t(1) << 16;

}  // namespace

namespace qmm_detail {

int64_t activation_block(DType t) {
  Kernel k;
  return kernel_for(t, &k) ? k.act_block : 0;
}

void quantize_activations(const float* x, int64_t N, int64_t K, int64_t bs, int8_t* q,
                          float* d, int16_t* s) {
  quantize_acts(x, N, K, bs, q, d, s);
}

const char* simd_name() {
#if QMM_SIMD && defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
  return "avx512-vnni";
#elif QMM_SIMD && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
  return "avx2-vnni";
#elif QMM_SIMD
  return "avx2";
#else
  return "scalar";
#endif
}

bool quant_linear_forward_impl(float* y, const float* x, const Matrix& W, const float* bias,
                               int64_t N, bool simd) {
  Kernel kern;
  if (W.empty() || W.transposed || !kernel_for(W.dtype, &kern)) return false;
  const int64_t be = dtype_block_elems(W.dtype);
  const int64_t rows = W.rows, K = W.cols;
  if (rows < 0 || K <= 0 || K % be != 0 || K % kern.act_block != 0) return false;
  if (N <= 0 || rows == 0) return true;
  if (!kern.simd[0]) simd = false;

  // Quantized activations, kept by the calling thread across calls.
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> dbuf;
  thread_local std::vector<int16_t> sbuf;
  qbuf.resize(size_t(N * K));
  dbuf.resize(size_t(N * (K / kern.act_block)));
  sbuf.resize(size_t(N * (K / 16)));
  quantize_acts(x, N, K, kern.act_block, qbuf.data(), dbuf.data(), sbuf.data());
  QActs acts;
  acts.K = K;
  acts.bs = kern.act_block;
  acts.nb = K / kern.act_block;
  acts.q = qbuf.data();
  acts.d = dbuf.data();
  acts.s = sbuf.data();

  const int64_t nbw = K / be;  // weight blocks per row
  const size_t row_bytes = dtype_bytes(W.dtype, K);
  const uint8_t* base = static_cast<const uint8_t*>(W.data);

  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (rows * K * N < kParallelWork) nt = 1;
  // About 8 chunks per thread, so that a thread slowed by other load gets fewer.
  const int64_t chunk = std::max<int64_t>(4, (rows + 8 * nt - 1) / (8 * nt));
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  nt = int(std::min<int64_t>(nt, nchunks));

#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
    float res[kMaxNR];
    for (int64_t r = r0; r < r1; r++) {
      const uint8_t* wr = base + size_t(r) * row_bytes;
      const float bv = bias ? bias[r] : 0.0f;
      for (int64_t n0 = 0; n0 < N; n0 += kMaxNR) {
        const int nr = int(std::min<int64_t>(kMaxNR, N - n0));
        if (simd) {
          kern.simd[nr - 1](wr, nbw, acts, n0, res);
        } else {
          for (int j = 0; j < nr; j++) res[j] = kern.scalar(wr, nbw, acts, n0 + j);
        }
        for (int j = 0; j < nr; j++) y[(n0 + j) * rows + r] = res[j] + bv;
      }
    }
  }
  return true;
}

}  // namespace qmm_detail

bool quant_linear_forward(float* y, const float* x, const Matrix& W, const float* bias, int64_t N) {
  return qmm_detail::quant_linear_forward_impl(y, x, W, bias, N, true);
}

}  // namespace lowrank::ops
