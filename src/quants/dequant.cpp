// Block decoders for the GGUF quantized encodings. Every decoder walks whole blocks and
// writes block_elems floats per block; multi-byte fields are read with memcpy because blocks
// of 17/18/22/34/50/66/... bytes are not naturally aligned. Layouts are those of ggml's
// ggml-common.h (block_* structs); the comment above each decoder states its formula.
#include "quants/dequant.h"

#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "quants/grids.h"
#include "quants/half.h"

namespace lowrank::quants {
namespace {

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
// +1 or -1 from bit j of a sign byte (set = negative).
inline float sign_of(uint32_t bits, int j) { return 1.0f - 2.0f * float((bits >> j) & 1); }
// Byte j of a packed grid entry.
inline float grid_u8(uint64_t g, int j) { return float(uint8_t(g >> (8 * j))); }
inline float grid_i8(uint64_t g, int j) { return float(int8_t(uint8_t(g >> (8 * j)))); }

// ---- plain ------------------------------------------------------------------------------

void dq_f16(const uint8_t* src, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)  // exact: every half is a float
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
#endif
  for (; i < n; i++) y[i] = load_f16(src + 2 * i);
}
void dq_bf16(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(load_u16(src + 2 * i));
}

// ---- 32-element blocks ------------------------------------------------------------------

// A code byte's two 4-bit levels as floats: pair[b] = {v[b & 15], v[b >> 4]}.
struct NibblePairs {
  alignas(32) float pair[256][2];
  explicit NibblePairs(const int8_t* v) {
    for (int b = 0; b < 256; b++) pair[b][0] = float(v[b & 15]), pair[b][1] = float(v[b >> 4]);
  }
};
const NibblePairs& iq4_pairs() {
  static const NibblePairs t(kIq4nlValues);
  return t;
}
const NibblePairs& q4_0_pairs() {  // nibble − 8
  static constexpr int8_t v[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
  static const NibblePairs t(v);
  return t;
}
const NibblePairs& q4_1_pairs() {  // nibble
  static constexpr int8_t v[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static const NibblePairs t(v);
  return t;
}
const NibblePairs& fp4_pairs() {
  static const NibblePairs t(kMxfp4Values);
  return t;
}

// Q4_0 (18 bytes): f16 d | u8 qs[16]. y[j] = d·(lo(qs[j]) − 8), y[j+16] = d·(hi(qs[j]) − 8).
void dq_q4_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const NibblePairs& t = q4_0_pairs();
  for (int64_t b = 0; b < nb; b++, src += 18, y += 32) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;  // [16]
    for (int j = 0; j < 16; j++) {
      y[j] = d * t.pair[qs[j]][0];
      y[j + 16] = d * t.pair[qs[j]][1];
    }
  }
}

// Q4_1 (20 bytes): f16 d | f16 m | u8 qs[16]. y[j] = d·lo(qs[j]) + m, y[j+16] = d·hi + m.
void dq_q4_1(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const NibblePairs& t = q4_1_pairs();
  for (int64_t b = 0; b < nb; b++, src += 20, y += 32) {
    const float d = load_f16(src), m = load_f16(src + 2);
    const uint8_t* qs = src + 4;  // [16]
    for (int j = 0; j < 16; j++) {
      y[j] = d * t.pair[qs[j]][0] + m;
      y[j + 16] = d * t.pair[qs[j]][1] + m;
    }
  }
}

// Q5_0 (22 bytes): f16 d | u32 qh | u8 qs[16]. Element j < 16: lo(qs[j]) | bit j of qh << 4;
// element j + 16: hi(qs[j]) | bit (j + 16) of qh << 4; y = d·(q − 16).
void dq_q5_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 22, y += 32) {
    const float d = load_f16(src);
    const uint32_t qh = load_u32(src + 2);
    const uint8_t* qs = src + 6;  // [16]
    for (int j = 0; j < 16; j++) {
      const int q0 = int(qs[j] & 15) | int(((qh >> j) & 1) << 4);
      const int q1 = int(qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
      y[j] = d * float(q0 - 16);
      y[j + 16] = d * float(q1 - 16);
    }
  }
}

// Q5_1 (24 bytes): f16 d | f16 m | u32 qh | u8 qs[16]; q as Q5_0, y = d·q + m.
void dq_q5_1(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 24, y += 32) {
    const float d = load_f16(src), m = load_f16(src + 2);
    const uint32_t qh = load_u32(src + 4);
    const uint8_t* qs = src + 8;  // [16]
    for (int j = 0; j < 16; j++) {
      const int q0 = int(qs[j] & 15) | int(((qh >> j) & 1) << 4);
      const int q1 = int(qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
      y[j] = d * float(q0) + m;
      y[j + 16] = d * float(q1) + m;
    }
  }
}

// Q8_0 (34 bytes): f16 d | i8 q[32]. y[j] = d·q[j].
void dq_q8_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 34, y += 32) {
    const float d = load_f16(src);
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);  // [32]
    for (int j = 0; j < 32; j++) y[j] = d * float(q[j]);
  }
}

// Q8_1 (36 bytes): f16 d | f16 s (= d·Σq, unused here) | i8 q[32]. y[j] = d·q[j].
void dq_q8_1(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 36, y += 32) {
    const float d = load_f16(src);
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 4);  // [32]
    for (int j = 0; j < 32; j++) y[j] = d * float(q[j]);
  }
}

// IQ4_NL (18 bytes): f16 d | u8 qs[16]. y[j] = d·v[lo(qs[j])], y[j+16] = d·v[hi(qs[j])] with
// v the 16 non-linear levels.
void dq_iq4_nl(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const NibblePairs& t = iq4_pairs();
  for (int64_t b = 0; b < nb; b++, src += 18, y += 32) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;  // [16]
    for (int j = 0; j < 16; j++) {
      y[j] = d * t.pair[qs[j]][0];
      y[j + 16] = d * t.pair[qs[j]][1];
    }
  }
}

// E8M0 exponent e as 2^(e−128) (half of 2^(e−127)), subnormal for e < 2 (ggml's
// GGML_E8M0_TO_FP32_HALF).
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (uint32_t(0x00200000) << e) : (uint32_t(e - 1) << 23);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// MXFP4 (17 bytes): u8 e | u8 qs[16]. y[j] = v[lo(qs[j])]·2^(e−128), y[j+16] = v[hi]·…, with v
// the doubled E2M1 values.
void dq_mxfp4(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const NibblePairs& t = fp4_pairs();
  for (int64_t b = 0; b < nb; b++, src += 17, y += 32) {
    const float d = e8m0_half(src[0]);
    const uint8_t* qs = src + 1;  // [16]
    for (int j = 0; j < 16; j++) {
      y[j] = d * t.pair[qs[j]][0];
      y[j + 16] = d * t.pair[qs[j]][1];
    }
  }
}

// ---- K-quants (256-element super-blocks) ------------------------------------------------

// Q2_K (84 bytes): u8 scales[16] | u8 qs[64] | f16 d | f16 dmin.
// Half h (128 elements) reads qs[32h..32h+31]; shift 2k gives elements 128h+32k+m from
// qs[32h+m] (m < 32), group 8h+2k for m < 16 and 8h+2k+1 for m >= 16.
// y = d·(sc & 15)·q − dmin·(sc >> 4).
void dq_q2_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 84, y += 256) {
    const uint8_t* scales = src;     // [16]: low nibble scale, high nibble min
    const uint8_t* qs = src + 16;    // [64]: 4 two-bit fields per byte
    const float d = load_f16(src + 80);
    const float dmin = load_f16(src + 82);
    for (int h = 0; h < 2; h++) {
      const uint8_t* q = qs + 32 * h;
      for (int k = 0; k < 4; k++) {
        const int shift = 2 * k;
        const uint8_t s0 = scales[8 * h + 2 * k], s1 = scales[8 * h + 2 * k + 1];
        const float dl0 = d * float(s0 & 15), ml0 = dmin * float(s0 >> 4);
        const float dl1 = d * float(s1 & 15), ml1 = dmin * float(s1 >> 4);
        float* yy = y + 128 * h + 32 * k;
        for (int l = 0; l < 16; l++) yy[l] = dl0 * float((q[l] >> shift) & 3) - ml0;
        for (int l = 0; l < 16; l++) yy[16 + l] = dl1 * float((q[16 + l] >> shift) & 3) - ml1;
      }
    }
  }
}

// The 16 six-bit Q3_K scales from scales[12]: scale j has low 4 bits from scales[j] (j < 8,
// low nibble) or scales[j−8] (j >= 8, high nibble) and high 2 bits from bits 2·(j/4) of
// scales[8 + j%4]; the stored value is offset by 32.
inline void unpack_q3_k_scales(const uint8_t* s, int sc[16]) {
  for (int j = 0; j < 16; j++) {
    const int lo = j < 8 ? (s[j] & 15) : (s[j - 8] >> 4);
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | (hi << 4)) - 32;
  }
}

// Q3_K (110 bytes): u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d.
// Element 128h + 32k + l (half h, shift 2k, l < 32): low 2 bits (qs[32h + l] >> 2k) & 3, high
// bit = bit (4h + k) of hmask[l]; group 8h + 2k + (l >= 16). y = d·sc·(q − (hbit ? 0 : 4)).
void dq_q3_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 110, y += 256) {
    const uint8_t* hmask = src;      // [32]
    const uint8_t* qs = src + 32;    // [64]
    int sc[16];
    unpack_q3_k_scales(src + 96, sc);
    const float d = load_f16(src + 108);
    for (int h = 0; h < 2; h++) {
      const uint8_t* q = qs + 32 * h;
      for (int k = 0; k < 4; k++) {
        const int shift = 2 * k, hb = 4 * h + k;
        const float dl0 = d * float(sc[8 * h + 2 * k]), dl1 = d * float(sc[8 * h + 2 * k + 1]);
        float* yy = y + 128 * h + 32 * k;
        for (int l = 0; l < 16; l++) {
          yy[l] = dl0 * float(int((q[l] >> shift) & 3) - (((hmask[l] >> hb) & 1) ? 0 : 4));
        }
        for (int l = 16; l < 32; l++) {
          yy[l] = dl1 * float(int((q[l] >> shift) & 3) - (((hmask[l] >> hb) & 1) ? 0 : 4));
        }
      }
    }
  }
}

// Unpacks the 8 six-bit scales and mins of a Q4_K/Q5_K block from scales[12].
inline void unpack_k_scales(const uint8_t* s, uint8_t sc[8], uint8_t m[8]) {
  for (int j = 0; j < 4; j++) {
    sc[j] = s[j] & 63;
    m[j] = s[j + 4] & 63;
  }
  for (int j = 4; j < 8; j++) {
    sc[j] = uint8_t((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
    m[j] = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q4_K (144 bytes): f16 d | f16 dmin | u8 scales[12] | u8 qs[128].
// Chunk c (64 elements) reads qs[32c..32c+31]: low nibbles are group 2c, high nibbles 2c+1.
// y = d·sc_g·q − dmin·m_g.
void dq_q4_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 144, y += 256) {
    const float d = load_f16(src);
    const float dmin = load_f16(src + 2);
    uint8_t sc[8], m[8];
    unpack_k_scales(src + 4, sc, m);
    const uint8_t* qs = src + 16;  // [128]
    for (int c = 0; c < 4; c++) {
      const float d0 = d * float(sc[2 * c]), m0 = dmin * float(m[2 * c]);
      const float d1 = d * float(sc[2 * c + 1]), m1 = dmin * float(m[2 * c + 1]);
      const uint8_t* q = qs + 32 * c;
      float* yy = y + 64 * c;
      for (int l = 0; l < 32; l++) yy[l] = d0 * float(q[l] & 15) - m0;
      for (int l = 0; l < 32; l++) yy[32 + l] = d1 * float(q[l] >> 4) - m1;
    }
  }
}

// Q5_K (176 bytes): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
// As Q4_K; element l of chunk c gets +16 from bit 2c (low half) / 2c+1 (high half) of qh[l].
void dq_q5_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 176, y += 256) {
    const float d = load_f16(src);
    const float dmin = load_f16(src + 2);
    uint8_t sc[8], m[8];
    unpack_k_scales(src + 4, sc, m);
    const uint8_t* qh = src + 16;  // [32]
    const uint8_t* qs = src + 48;  // [128]
    for (int c = 0; c < 4; c++) {
      const float d0 = d * float(sc[2 * c]), m0 = dmin * float(m[2 * c]);
      const float d1 = d * float(sc[2 * c + 1]), m1 = dmin * float(m[2 * c + 1]);
      const uint8_t* q = qs + 32 * c;
      const int b0 = 2 * c, b1 = 2 * c + 1;
      float* yy = y + 64 * c;
      for (int l = 0; l < 32; l++) {
        yy[l] = d0 * float((q[l] & 15) | (((qh[l] >> b0) & 1) << 4)) - m0;
      }
      for (int l = 0; l < 32; l++) {
        yy[32 + l] = d1 * float((q[l] >> 4) | (((qh[l] >> b1) & 1) << 4)) - m1;
      }
    }
  }
}

// Q6_K (210 bytes): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d.
// Half h: ql[64h..], qh[32h..], scales[8h..]; for l < 32 (is = l/16) four 6-bit values:
// element l: lo(ql[l]) | bits 0-1 of qh[l], scale is; l+32: lo(ql[l+32]) | bits 2-3, is+2;
// l+64: hi(ql[l]) | bits 4-5, is+4; l+96: hi(ql[l+32]) | bits 6-7, is+6. y = d·sc·(q − 32).
void dq_q6_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 210, y += 256) {
    const float d = load_f16(src + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(src + 192);  // [16]
    for (int h = 0; h < 2; h++) {
      const uint8_t* ql = src + 64 * h;        // [64]
      const uint8_t* qh = src + 128 + 32 * h;  // [32]
      const int8_t* sc = scales + 8 * h;       // [8]
      float* yy = y + 128 * h;
      for (int is = 0; is < 2; is++) {
        const float s1 = d * float(sc[is]), s2 = d * float(sc[is + 2]);
        const float s3 = d * float(sc[is + 4]), s4 = d * float(sc[is + 6]);
        for (int l = 16 * is; l < 16 * is + 16; l++) {
          const int q1 = (ql[l] & 15) | (((qh[l] >> 0) & 3) << 4);
          const int q2 = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
          const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
          const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
          yy[l] = s1 * float(q1 - 32);
          yy[l + 32] = s2 * float(q2 - 32);
          yy[l + 64] = s3 * float(q3 - 32);
          yy[l + 96] = s4 * float(q4 - 32);
        }
      }
    }
  }
}

// Q8_K (292 bytes): f32 d | i8 q[256] | i16 bsums[16] (sums of 16 q, unused here). y = d·q.
void dq_q8_k(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 292, y += 256) {
    float d;
    std::memcpy(&d, src, 4);
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 4);  // [256]
    for (int j = 0; j < 256; j++) y[j] = d * float(q[j]);
  }
}

// IQ4_XS (136 bytes): f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128].
// Group g (32 elements): ls = nibble (g%2) of scales_l[g/2] | bits 2g..2g+1 of scales_h << 4,
// dl = d·(ls − 32); y[32g+j] = dl·v[lo(qs[16g+j])], y[32g+16+j] = dl·v[hi(qs[16g+j])].
void dq_iq4_xs(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const NibblePairs& t = iq4_pairs();
  for (int64_t b = 0; b < nb; b++, src += 136, y += 256) {
    const float d = load_f16(src);
    const uint16_t sh = load_u16(src + 2);
    const uint8_t* sl = src + 4;   // [4]
    const uint8_t* qs = src + 8;   // [128]
    for (int g = 0; g < 8; g++) {
      const int ls = ((sl[g / 2] >> (4 * (g % 2))) & 15) | (((sh >> (2 * g)) & 3) << 4);
      const float dl = d * float(ls - 32);
      const uint8_t* q = qs + 16 * g;
      float* yy = y + 32 * g;
      for (int j = 0; j < 16; j++) {
        yy[j] = dl * t.pair[q[j]][0];
        yy[j + 16] = dl * t.pair[q[j]][1];
      }
    }
  }
}

// ---- ternary ----------------------------------------------------------------------------

// The k-th base-3 digit (0..4, most significant first) of a TQ1_0 byte that stores
// ceil(v·256/243) for a 5-trit value v: ((byte·3^k mod 256)·3) >> 8.
inline int trit(uint8_t byte, int k) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const uint8_t q = uint8_t(byte * kPow3[k]);
  return (int(q) * 3) >> 8;
}

// TQ1_0 (54 bytes): u8 qs[48] | u8 qh[4] | f16 d; values (trit − 1)·d.
// qs[0..31] hold elements 32k + m (k < 5 = trit k of qs[m]); qs[32..47] elements
// 160 + 16k + m (trit k of qs[32 + m]); qh[0..3] elements 240 + 4k + j (trit k of qh[j], k < 4).
void dq_tq1_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 54, y += 256) {
    const uint8_t* qs = src;       // [48]
    const uint8_t* qh = src + 48;  // [4]
    const float d = load_f16(src + 52);
    for (int k = 0; k < 5; k++)
      for (int m = 0; m < 32; m++) y[32 * k + m] = float(trit(qs[m], k) - 1) * d;
    for (int k = 0; k < 5; k++)
      for (int m = 0; m < 16; m++) y[160 + 16 * k + m] = float(trit(qs[32 + m], k) - 1) * d;
    for (int k = 0; k < 4; k++)
      for (int j = 0; j < 4; j++) y[240 + 4 * k + j] = float(trit(qh[j], k) - 1) * d;
  }
}

// TQ2_0 (66 bytes): u8 qs[64] | f16 d. Element 128c + 32l + m = ((qs[32c + m] >> 2l) & 3) − 1,
// times d.
void dq_tq2_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 66, y += 256) {
    const uint8_t* qs = src;  // [64]
    const float d = load_f16(src + 64);
    for (int c = 0; c < 2; c++)
      for (int l = 0; l < 4; l++)
        for (int m = 0; m < 32; m++)
          y[128 * c + 32 * l + m] = float(int((qs[32 * c + m] >> (2 * l)) & 3) - 1) * d;
  }
}

// ---- i-quants ---------------------------------------------------------------------------

// The IQ grids expanded to floats once (entry i, element j -> value), and sign bytes as 8
// factors of +-1, so the inner loops are 8-wide multiplies instead of byte extraction. IQ2_XXS
// is the bulk of a 2-bit model, and the f32 tile path decodes it for every prefill and
// training step.
template <int N, int W>
struct FloatGrid {
  alignas(32) float v[N][8];  // v[i][j] = element j of grid point i (W = 8 or 4 elements a point)
};
template <int N, typename T>
FloatGrid<N, 8> expand_grid8(const T* grid, bool is_signed) {
  FloatGrid<N, 8> g;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < 8; j++) g.v[i][j] = is_signed ? grid_i8(grid[i], j) : grid_u8(grid[i], j);
  return g;
}
template <int N>
FloatGrid<N, 4> expand_grid4(const uint32_t* grid) {
  FloatGrid<N, 4> g;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < 8; j++) g.v[i][j] = j < 4 ? grid_u8(grid[i], j) : 0.0f;
  return g;
}
struct SignTables {
  alignas(32) float parity[128][8];  // kIqSigns[s] as factors
  alignas(32) float raw[256][8];     // a plain sign byte as factors
  SignTables() {
    for (int s = 0; s < 128; s++)
      for (int j = 0; j < 8; j++) parity[s][j] = sign_of(kIqSigns[s], j);
    for (int s = 0; s < 256; s++)
      for (int j = 0; j < 8; j++) raw[s][j] = sign_of(uint32_t(s), j);
  }
};
const SignTables& signs() {
  static const SignTables t;
  return t;
}
const FloatGrid<256, 8>& iq2xxs_grid() {
  static const auto g = expand_grid8<256>(kIq2xxsGrid, false);
  return g;
}
const FloatGrid<512, 8>& iq2xs_grid() {
  static const auto g = expand_grid8<512>(kIq2xsGrid, false);
  return g;
}
const FloatGrid<1024, 8>& iq2s_grid() {
  static const auto g = expand_grid8<1024>(kIq2sGrid, false);
  return g;
}
const FloatGrid<2048, 8>& iq1s_grid() {
  static const auto g = expand_grid8<2048>(kIq1sGrid, true);
  return g;
}
const FloatGrid<256, 4>& iq3xxs_grid() {
  static const auto g = expand_grid4<256>(kIq3xxsGrid);
  return g;
}
const FloatGrid<512, 4>& iq3s_grid() {
  static const auto g = expand_grid4<512>(kIq3sGrid);
  return g;
}

// y[0..8) = scale · a[0..8) · sign[0..8)
inline void put8(float* __restrict y, float scale, const float* __restrict a, const float* __restrict sign) {
  for (int j = 0; j < 8; j++) y[j] = scale * a[j] * sign[j];
}
// y[0..4) from a[0..4), y[4..8) from b[0..4)
inline void put4x2(float* __restrict y, float scale, const float* __restrict a, const float* __restrict b,
                   const float* __restrict sign) {
  for (int j = 0; j < 4; j++) y[j] = scale * a[j] * sign[j];
  for (int j = 0; j < 4; j++) y[4 + j] = scale * b[j] * sign[4 + j];
}

// IQ2_XXS (66 bytes): f16 d | u16 qs[32]. Group g (32 elements) = words w0, w1 at byte
// 2 + 8g: byte k of w0 indexes the grid (8 magnitudes for elements 8k..8k+7), the 7-bit field
// k of w1 picks the sign byte, w1 >> 28 is the 4-bit group scale: d·(0.5 + s)·0.25.
void dq_iq2_xxs(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq2xxs_grid();
  const auto& sg = signs();
  for (int64_t b = 0; b < nb; b++, src += 66, y += 256) {
    const float d = load_f16(src);
    for (int g = 0; g < 8; g++) {
      const uint32_t w0 = load_u32(src + 2 + 8 * g), w1 = load_u32(src + 6 + 8 * g);
      const float db = d * (0.5f + float(w1 >> 28)) * 0.25f;
      for (int k = 0; k < 4; k++)
        put8(y + 32 * g + 8 * k, db, grid.v[(w0 >> (8 * k)) & 255], sg.parity[(w1 >> (7 * k)) & 127]);
    }
  }
}

// IQ2_XS (74 bytes): f16 d | u16 qs[32] | u8 scales[8]. Group g: scales[g] holds two 4-bit
// scales (low nibble for its first 16 elements, high for the last 16): d·(0.5 + s)·0.25.
// Word qs[4g + k]: bits 0-8 index the 512-point grid, bits 9-15 pick the sign byte.
void dq_iq2_xs(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq2xs_grid();
  const auto& sg = signs();
  for (int64_t b = 0; b < nb; b++, src += 74, y += 256) {
    const float d = load_f16(src);
    const uint8_t* scales = src + 66;  // [8]
    for (int g = 0; g < 8; g++) {
      const float db[2] = {d * (0.5f + float(scales[g] & 15)) * 0.25f,
                           d * (0.5f + float(scales[g] >> 4)) * 0.25f};
      for (int k = 0; k < 4; k++) {
        const uint16_t w = load_u16(src + 2 + 2 * (4 * g + k));
        put8(y + 32 * g + 8 * k, db[k / 2], grid.v[w & 511], sg.parity[w >> 9]);
      }
    }
  }
}

// IQ2_S (82 bytes): f16 d | u8 qs[32] | u8 signs[32] | u8 qh[8] | u8 scales[8].
// Group g, sub-group k (8 elements): grid index qs[4g + k] | (bits 2k..2k+1 of qh[g]) << 8
// (1024 points), sign byte signs[4g + k] (bit j set = negative), scale as IQ2_XS.
void dq_iq2_s(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq2s_grid();
  const auto& sg = signs();
  for (int64_t b = 0; b < nb; b++, src += 82, y += 256) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;       // [32]
    const uint8_t* signs = src + 34;   // [32]
    const uint8_t* qh = src + 66;      // [8]
    const uint8_t* scales = src + 74;  // [8]
    for (int g = 0; g < 8; g++) {
      const float db[2] = {d * (0.5f + float(scales[g] & 15)) * 0.25f,
                           d * (0.5f + float(scales[g] >> 4)) * 0.25f};
      for (int k = 0; k < 4; k++) {
        const int idx = qs[4 * g + k] | (((qh[g] >> (2 * k)) & 3) << 8);
        put8(y + 32 * g + 8 * k, db[k / 2], grid.v[idx], sg.raw[signs[4 * g + k]]);
      }
    }
  }
}

// IQ3_XXS (98 bytes): f16 d | u8 qs[64] (grid indices) | u32 scales_signs[8].
// Group g: word w = scales_signs[g]; scale d·(0.5 + (w >> 28))·0.5; sub-group k (8 elements)
// takes sign byte kIqSigns[(w >> 7k) & 127] and two 4-magnitude grid points qs[8g + 2k],
// qs[8g + 2k + 1] (elements 0-3 and 4-7).
void dq_iq3_xxs(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq3xxs_grid();
  const auto& sg = signs();
  for (int64_t b = 0; b < nb; b++, src += 98, y += 256) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;  // [64]
    for (int g = 0; g < 8; g++) {
      const uint32_t w = load_u32(src + 66 + 4 * g);
      const float db = d * (0.5f + float(w >> 28)) * 0.5f;
      for (int k = 0; k < 4; k++) {
        put4x2(y + 32 * g + 8 * k, db, grid.v[qs[8 * g + 2 * k]], grid.v[qs[8 * g + 2 * k + 1]],
               sg.parity[(w >> (7 * k)) & 127]);
      }
    }
  }
}

// IQ3_S (110 bytes): f16 d | u8 qs[64] | u8 qh[8] | u8 signs[32] | u8 scales[4].
// Group g: scale d·(1 + 2·s) with s the nibble (g%2) of scales[g/2]; sub-group k: grid
// points qs[8g + 2k] | (bit 2k of qh[g]) << 8 and qs[8g + 2k + 1] | (bit 2k+1 of qh[g]) << 8
// (512 points, 4 magnitudes each), sign byte signs[4g + k].
void dq_iq3_s(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq3s_grid();
  const auto& sg = signs();
  for (int64_t b = 0; b < nb; b++, src += 110, y += 256) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;        // [64]
    const uint8_t* qh = src + 66;       // [8]
    const uint8_t* signs = src + 74;    // [32]
    const uint8_t* scales = src + 106;  // [4]
    for (int g = 0; g < 8; g++) {
      const float db = d * float(1 + 2 * ((scales[g / 2] >> (4 * (g % 2))) & 15));
      for (int k = 0; k < 4; k++) {
        const int i0 = qs[8 * g + 2 * k] | (((qh[g] >> (2 * k)) & 1) << 8);
        const int i1 = qs[8 * g + 2 * k + 1] | (((qh[g] >> (2 * k + 1)) & 1) << 8);
        put4x2(y + 32 * g + 8 * k, db, grid.v[i0], grid.v[i1], sg.raw[signs[4 * g + k]]);
      }
    }
  }
}

constexpr float kIq1Delta = 0.125f;  // IQ1S_DELTA = IQ1M_DELTA

// IQ1_S (50 bytes): f16 d | u8 qs[32] | u16 qh[8]. Group g: w = qh[g]; scale
// dl = d·(2·((w >> 12) & 7) + 1), shift δ = −1/8 if bit 15 else +1/8; sub-group k: grid point
// qs[4g + k] | ((w >> 3k) & 7) << 8 of 8 values in {−1, 0, 1}; y = dl·(v + δ).
void dq_iq1_s(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq1s_grid();
  for (int64_t b = 0; b < nb; b++, src += 50, y += 256) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;  // [32]
    for (int g = 0; g < 8; g++) {
      const uint16_t w = load_u16(src + 34 + 2 * g);
      const float dl = d * float(2 * ((w >> 12) & 7) + 1);
      const float delta = (w & 0x8000) ? -kIq1Delta : kIq1Delta;
      for (int k = 0; k < 4; k++) {
        const float* v = grid.v[qs[4 * g + k] | (((w >> (3 * k)) & 7) << 8)];
        float* yy = y + 32 * g + 8 * k;
        for (int j = 0; j < 8; j++) yy[j] = dl * (v[j] + delta);
      }
    }
  }
}

// IQ1_M (56 bytes): u8 qs[32] | u8 qh[16] | u16 sc[4] (the 8 bytes "scales").
// The f16 super-block scale d is assembled from the top nibbles of sc[0..3] (sc[0] >> 12 gives
// bits 0-3, sc[1] bits 4-7, sc[2] bits 8-11, sc[3] bits 12-15). Group g: 3-bit scales
// s1 = (sc[g/2] >> 6(g%2)) & 7 for sub-groups 0-1 and s2 = (sc[g/2] >> 6(g%2)+3) & 7 for 2-3,
// dl = d·(2s + 1). Sub-group k uses byte qh[2g + k/2]: grid index qs[4g + k] | (bits 0-2 of
// that byte (k even) or bits 4-6 (k odd)) << 8, δ = −1/8 if bit 3 (k even) / bit 7 (k odd).
void dq_iq1_m(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const auto& grid = iq1s_grid();
  for (int64_t b = 0; b < nb; b++, src += 56, y += 256) {
    const uint8_t* qs = src;       // [32]
    const uint8_t* qh = src + 32;  // [16]
    uint16_t sc[4];
    for (int i = 0; i < 4; i++) sc[i] = load_u16(src + 48 + 2 * i);
    const uint16_t dbits = uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) |
                                    (sc[3] & 0xf000));
    const float d = f16_to_f32(dbits);
    for (int g = 0; g < 8; g++) {
      const int sh = 6 * (g % 2);
      const float dl[2] = {d * float(2 * ((sc[g / 2] >> sh) & 7) + 1),
                           d * float(2 * ((sc[g / 2] >> (sh + 3)) & 7) + 1)};
      for (int k = 0; k < 4; k++) {
        const uint8_t h = qh[2 * g + k / 2];
        const int hs = 4 * (k % 2);
        const int idx = qs[4 * g + k] | (((h >> hs) & 7) << 8);
        const float delta = ((h >> (hs + 3)) & 1) ? -kIq1Delta : kIq1Delta;
        const float* v = grid.v[idx];
        float* yy = y + 32 * g + 8 * k;
        for (int j = 0; j < 8; j++) yy[j] = dl[k / 2] * (v[j] + delta);
      }
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*, int64_t);

BlockFn block_decoder(DType t) {
  switch (t) {
    case DType::Q4_0: return dq_q4_0;
    case DType::Q4_1: return dq_q4_1;
    case DType::Q5_0: return dq_q5_0;
    case DType::Q5_1: return dq_q5_1;
    case DType::Q8_0: return dq_q8_0;
    case DType::Q8_1: return dq_q8_1;
    case DType::Q2_K: return dq_q2_k;
    case DType::Q3_K: return dq_q3_k;
    case DType::Q4_K: return dq_q4_k;
    case DType::Q5_K: return dq_q5_k;
    case DType::Q6_K: return dq_q6_k;
    case DType::Q8_K: return dq_q8_k;
    case DType::IQ1_S: return dq_iq1_s;
    case DType::IQ1_M: return dq_iq1_m;
    case DType::IQ2_XXS: return dq_iq2_xxs;
    case DType::IQ2_XS: return dq_iq2_xs;
    case DType::IQ2_S: return dq_iq2_s;
    case DType::IQ3_XXS: return dq_iq3_xxs;
    case DType::IQ3_S: return dq_iq3_s;
    case DType::IQ4_NL: return dq_iq4_nl;
    case DType::IQ4_XS: return dq_iq4_xs;
    case DType::TQ1_0: return dq_tq1_0;
    case DType::TQ2_0: return dq_tq2_0;
    case DType::MXFP4: return dq_mxfp4;
    default: return nullptr;
  }
}

}  // namespace

bool dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  if (n < 0 || !dtype_is_weight(t)) return false;
  const uint8_t* s = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32:
      if (n) std::memcpy(dst, src, size_t(n) * 4);
      return true;
    case DType::F16: dq_f16(s, dst, n); return true;
    case DType::BF16: dq_bf16(s, dst, n); return true;
    default: break;
  }
  const int64_t be = dtype_block_elems(t);
  const BlockFn fn = block_decoder(t);
  if (!fn || n % be != 0) return false;
  fn(s, dst, n / be);
  return true;
}

}  // namespace lowrank::quants
