// Block decoders for the GGUF quantized encodings (layouts: shared GGUF notes of this project).
// Every decoder walks whole blocks and writes block_elems floats per block; the inner loops
// are fixed-length and branch-free so the compiler can vectorize them. Blocks are read with
// memcpy for multi-byte fields because blocks of 34/18/66 bytes are not naturally aligned.
#include "io/dequant.h"

#include <cstring>

#include "core/error.h"
#include "io/iq2xxs_tables.h"

namespace lowrank {
namespace {

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Q8_0 block (34 bytes): f16 d | i8 q[32]. y[j] = d * q[j].
void dq_q8_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 34, y += 32) {
    const float d = load_f16(src);
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);  // q[32]
    for (int j = 0; j < 32; j++) y[j] = d * float(q[j]);
  }
}

// Q4_0 block (18 bytes): f16 d | u8 qs[16]. y[j] = d*(lo(qs[j]) - 8), y[j+16] = d*(hi(qs[j]) - 8).
void dq_q4_0(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, src += 18, y += 32) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;  // qs[16]
    for (int j = 0; j < 16; j++) {
      y[j] = d * float(int(qs[j] & 15) - 8);
      y[j + 16] = d * float(int(qs[j] >> 4) - 8);
    }
  }
}

// Q2_K block (84 bytes): u8 scales[16] | u8 qs[64] | f16 d | f16 dmin.
// Half h (128 elements) reads qs[32h..32h+31]; shift 2k gives elements 128h+32k+m from
// qs[32h+m] (m < 32), group 8h+2k for m < 16 and 8h+2k+1 for m >= 16.
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

// Q4_K block (144 bytes): f16 d | f16 dmin | u8 scales[12] | u8 qs[128].
// Chunk c (64 elements) reads qs[32c..32c+31]: low nibbles are group 2c, high nibbles 2c+1.
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

// Q5_K block (176 bytes): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
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

// Q6_K block (210 bytes): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d.
// Half h: ql[64h..], qh[32h..], scales[8h..]; four quarters of 32 elements (see notes).
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

// IQ2_XXS expanded to floats once: grid[256][8] magnitudes and signs[128][8] of +-1, so the
// inner loop is one 8-wide multiply instead of byte extraction and branches.
struct Iq2xxsFloatTables {
  alignas(32) float grid[256][8];   // grid[i][j] = byte j of kIq2xxsGrid[i]
  alignas(32) float signs[128][8];  // signs[s][j] = -1 if bit j of kIq2xxsSigns[s] else +1
  Iq2xxsFloatTables() {
    for (int i = 0; i < 256; i++) {
      for (int j = 0; j < 8; j++) grid[i][j] = float((kIq2xxsGrid[i] >> (8 * j)) & 255);
    }
    for (int s = 0; s < 128; s++) {
      for (int j = 0; j < 8; j++) signs[s][j] = ((kIq2xxsSigns[s] >> j) & 1) ? -1.0f : 1.0f;
    }
  }
};

const Iq2xxsFloatTables& iq2xxs_float_tables() {
  static const Iq2xxsFloatTables t;
  return t;
}

// IQ2_XXS block (66 bytes): f16 d | u16 qs[32]. Group g (32 elements) = words w0, w1 at
// byte 2 + 8g: the 4 bytes of w0 index the grid (8 magnitudes each), 7-bit fields of w1 pick
// sign bytes, w1 >> 28 is the 4-bit group scale.
void dq_iq2_xxs(const uint8_t* __restrict src, float* __restrict y, int64_t nb) {
  const Iq2xxsFloatTables& tab = iq2xxs_float_tables();
  for (int64_t b = 0; b < nb; b++, src += 66, y += 256) {
    const float d = load_f16(src);
    for (int g = 0; g < 8; g++) {
      uint32_t w0, w1;
      std::memcpy(&w0, src + 2 + 8 * g, 4);
      std::memcpy(&w1, src + 6 + 8 * g, 4);
      const float db = d * (0.5f + float(w1 >> 28)) * 0.25f;
      for (int k = 0; k < 4; k++) {
        const float* __restrict grid = tab.grid[(w0 >> (8 * k)) & 255];
        const float* __restrict sign = tab.signs[(w1 >> (7 * k)) & 127];
        float* yy = y + 32 * g + 8 * k;
        for (int j = 0; j < 8; j++) yy[j] = db * grid[j] * sign[j];
      }
    }
  }
}

}  // namespace

void dequantize(DType t, const void* src, float* dst, int64_t n) {
  if (!dtype_is_quantized(t)) {
    switch (t) {
      case DType::F32: case DType::F16: case DType::BF16:
        to_f32(t, src, dst, n);
        return;
      default:
        fail("dequantize: ", dtype_name(t), " is not a weight type");
    }
  }
  const int64_t be = dtype_block_elems(t);
  if (n < 0 || n % be != 0) {
    fail("dequantize: ", n, " elements is not a multiple of the ", dtype_name(t), " block size ",
         be);
  }
  const int64_t nb = n / be;
  const uint8_t* s = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::Q8_0: dq_q8_0(s, dst, nb); return;
    case DType::Q4_0: dq_q4_0(s, dst, nb); return;
    case DType::Q2_K: dq_q2_k(s, dst, nb); return;
    case DType::Q4_K: dq_q4_k(s, dst, nb); return;
    case DType::Q5_K: dq_q5_k(s, dst, nb); return;
    case DType::Q6_K: dq_q6_k(s, dst, nb); return;
    case DType::IQ2_XXS: dq_iq2_xxs(s, dst, nb); return;
    default: fail("dequantize: no decoder for ", dtype_name(t));
  }
}

}  // namespace lowrank
