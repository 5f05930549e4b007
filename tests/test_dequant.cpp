// Dequantizer tests on hand-built blocks: each block is assembled byte by byte from chosen
// scales and quants, and every decoded element is compared with the formula from the GGUF
// notes evaluated per element (element index -> which byte/bit/scale), independently of the
// block-walking decoder.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quants/dequant.h"
#include "quants/grids.h"

using namespace lowrank;

namespace {

// Deterministic byte source for filling quants.
struct Lcg {
  uint32_t s;
  explicit Lcg(uint32_t seed) : s(seed) {}
  uint8_t byte() {
    s = s * 1664525u + 1013904223u;
    return uint8_t(s >> 24);
  }
};

void put_f16(std::vector<uint8_t>& b, size_t at, uint16_t h) {
  b[at] = uint8_t(h & 0xff);
  b[at + 1] = uint8_t(h >> 8);
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); i++) {
    float tol = 1e-6f * std::max(1.0f, std::fabs(want[i]));
    ASSERT_NEAR(got[i], want[i], tol) << what << " element " << i;
  }
}

std::vector<float> decode(DType t, const std::vector<uint8_t>& blocks, int64_t n) {
  std::vector<float> y(size_t(n), std::nanf(""));
  dequantize(t, blocks.data(), y.data(), n);
  return y;
}

// Packs 8 six-bit scales and mins into the 12-byte Q4_K/Q5_K layout (inverse of the notes).
void pack_k_scales(const int sc[8], const int m[8], uint8_t out[12]) {
  for (int j = 0; j < 4; j++) {
    out[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    out[j + 8] = uint8_t((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
}

}  // namespace

TEST(Dequant, Q8_0) {
  // Two blocks of 34 bytes: f16 d | i8 q[32].
  const uint16_t dbits[2] = {0x3555 /* ~0.3333 */, 0xb800 /* -0.5 */};
  std::vector<uint8_t> b(68);
  int8_t q[2][32];
  for (int k = 0; k < 2; k++) {
    put_f16(b, 34 * k, dbits[k]);
    for (int j = 0; j < 32; j++) {
      q[k][j] = int8_t(j * 8 - 128 + k * 3);
      b[34 * k + 2 + j] = uint8_t(q[k][j]);
    }
  }
  q[1][31] = 127;
  b[34 + 2 + 31] = 127;
  std::vector<float> want(64);
  for (int i = 0; i < 64; i++) want[i] = f16_to_f32(dbits[i / 32]) * float(q[i / 32][i % 32]);
  expect_close(decode(DType::Q8_0, b, 64), want, "Q8_0");
  EXPECT_FLOAT_EQ(decode(DType::Q8_0, b, 64)[0], f16_to_f32(0x3555) * -128.0f);
  EXPECT_FLOAT_EQ(decode(DType::Q8_0, b, 64)[63], -63.5f);
}

TEST(Dequant, Q4_0) {
  // One block of 18 bytes: f16 d | u8 qs[16].
  std::vector<uint8_t> b(18);
  put_f16(b, 0, 0x3e00);  // 1.5
  for (int j = 0; j < 16; j++) b[2 + j] = uint8_t((j * 37 + 5) & 0xff);
  b[2 + 0] = 0xf0;  // element 0: nibble 0 -> -8; element 16: nibble 15 -> +7
  std::vector<float> want(32);
  for (int i = 0; i < 32; i++) {
    uint8_t byte = b[2 + i % 16];
    int nib = i < 16 ? (byte & 15) : (byte >> 4);
    want[i] = 1.5f * float(nib - 8);
  }
  auto y = decode(DType::Q4_0, b, 32);
  expect_close(y, want, "Q4_0");
  EXPECT_EQ(y[0], -12.0f);
  EXPECT_EQ(y[16], 10.5f);
}

TEST(Dequant, Q2_K) {
  // One super-block of 84 bytes: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin.
  std::vector<uint8_t> b(84);
  int sc[16], mn[16];
  for (int g = 0; g < 16; g++) {
    sc[g] = (g * 5 + 1) & 15;
    mn[g] = (g * 3 + 2) & 15;
    b[g] = uint8_t(sc[g] | (mn[g] << 4));
  }
  Lcg r(7);
  for (int i = 0; i < 64; i++) b[16 + i] = r.byte();
  // qs[0] holds q = 0,1,2,3 at shifts 0,2,4,6 -> elements 0, 32, 64, 96 (groups 0, 2, 4, 6).
  b[16 + 0] = 0b11100100;
  // qs[32 + 17] (second half, second 16 of each shift) holds q = 3,0,1,2.
  b[16 + 49] = 0b10010011;
  put_f16(b, 80, 0x3400);  // d = 0.25
  put_f16(b, 82, 0x2e66);  // dmin ~ 0.1
  const float d = 0.25f, dmin = f16_to_f32(0x2e66);
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    int h = i / 128, k = (i % 128) / 32, m = i % 32;
    int q = (b[16 + 32 * h + m] >> (2 * k)) & 3;
    int g = 8 * h + 2 * k + m / 16;
    want[i] = d * float(sc[g]) * float(q) - dmin * float(mn[g]);
  }
  auto y = decode(DType::Q2_K, b, 256);
  expect_close(y, want, "Q2_K");
  // Spot checks against values worked out by hand.
  EXPECT_NEAR(y[0], d * sc[0] * 0 - dmin * mn[0], 1e-6);
  EXPECT_NEAR(y[32], d * sc[2] * 1 - dmin * mn[2], 1e-6);
  EXPECT_NEAR(y[64], d * sc[4] * 2 - dmin * mn[4], 1e-6);
  EXPECT_NEAR(y[96], d * sc[6] * 3 - dmin * mn[6], 1e-6);
  // Second half: element 128 + 32k + 17 uses qs[49], group 8 + 2k + 1.
  EXPECT_NEAR(y[128 + 17], d * sc[9] * 3 - dmin * mn[9], 1e-6);
  EXPECT_NEAR(y[128 + 32 + 17], d * sc[11] * 0 - dmin * mn[11], 1e-6);
  EXPECT_NEAR(y[128 + 64 + 17], d * sc[13] * 1 - dmin * mn[13], 1e-6);
  EXPECT_NEAR(y[128 + 96 + 17], d * sc[15] * 2 - dmin * mn[15], 1e-6);
}

TEST(Dequant, Q4_K) {
  // One super-block of 144 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qs[128].
  // Scales/mins use bits 4-5 for j >= 4 (stored in the top bits of scales[0..7]).
  const int sc[8] = {1, 63, 17, 40, 63, 33, 5, 48};
  const int mn[8] = {0, 62, 31, 63, 47, 2, 63, 16};
  std::vector<uint8_t> b(144);
  put_f16(b, 0, 0x3800);  // d = 0.5
  put_f16(b, 2, 0x3266);  // dmin ~ 0.2
  pack_k_scales(sc, mn, &b[4]);
  Lcg r(11);
  for (int i = 0; i < 128; i++) b[16 + i] = r.byte();
  const float d = 0.5f, dmin = f16_to_f32(0x3266);
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    int c = i / 64, hi = (i % 64) / 32, l = i % 32;
    uint8_t byte = b[16 + 32 * c + l];
    int q = hi ? (byte >> 4) : (byte & 15);
    int j = 2 * c + hi;
    want[i] = d * float(sc[j]) * float(q) - dmin * float(mn[j]);
  }
  auto y = decode(DType::Q4_K, b, 256);
  expect_close(y, want, "Q4_K");
  // Group 5 (j >= 4): scale 33 = 0b100001 needs the high bits from scales[1] >> 6.
  b[16 + 64] = 0xa0;  // chunk 2, element 0 of the high nibble half (element 160): q = 10
  y = decode(DType::Q4_K, b, 256);
  EXPECT_NEAR(y[160], 0.5f * 33 * 10 - dmin * 2, 1e-5);
  EXPECT_NEAR(y[128], 0.5f * 63 * 0 - dmin * 47, 1e-5);  // group 4: low nibble 0, min 47
}

TEST(Dequant, Q5_K) {
  // One super-block of 176 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
  const int sc[8] = {63, 2, 48, 9, 17, 63, 32, 1};
  const int mn[8] = {5, 63, 0, 44, 63, 16, 7, 50};
  std::vector<uint8_t> b(176);
  put_f16(b, 0, 0x3400);  // d = 0.25
  put_f16(b, 2, 0x3000);  // dmin = 0.125
  pack_k_scales(sc, mn, &b[4]);
  Lcg r(23);
  for (int i = 0; i < 32; i++) b[16 + i] = r.byte();
  for (int i = 0; i < 128; i++) b[48 + i] = r.byte();
  // Element 3 of chunk 3: low-nibble element 195 takes bit 6 of qh[3], high (227) bit 7.
  b[16 + 3] = 0x80;      // only bit 7 set
  b[48 + 96 + 3] = 0xff; // both nibbles 15
  const float d = 0.25f, dmin = 0.125f;
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    int c = i / 64, hi = (i % 64) / 32, l = i % 32;
    uint8_t byte = b[48 + 32 * c + l];
    int q = (hi ? (byte >> 4) : (byte & 15)) + 16 * ((b[16 + l] >> (2 * c + hi)) & 1);
    int j = 2 * c + hi;
    want[i] = d * float(sc[j]) * float(q) - dmin * float(mn[j]);
  }
  auto y = decode(DType::Q5_K, b, 256);
  expect_close(y, want, "Q5_K");
  EXPECT_NEAR(y[195], 0.25f * 32 * 15 - 0.125f * 7, 1e-5);  // group 6, no fifth bit
  EXPECT_NEAR(y[227], 0.25f * 1 * 31 - 0.125f * 50, 1e-5);  // group 7, fifth bit set
}

TEST(Dequant, Q6_K) {
  // One super-block of 210 bytes: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d.
  std::vector<uint8_t> b(210);
  Lcg r(5);
  for (int i = 0; i < 192; i++) b[i] = r.byte();
  int8_t sc[16];
  for (int k = 0; k < 16; k++) {
    sc[k] = int8_t(k * 17 - 128);
    b[192 + k] = uint8_t(sc[k]);
  }
  put_f16(b, 208, 0x2c00);  // d = 0.0625
  // Hand case, second half, l = 20: ql[64+20] = 0x3c, ql[64+52] = 0x1f, qh[32+20] = 0b11100100.
  b[64 + 20] = 0x3c;
  b[64 + 52] = 0x1f;
  b[128 + 32 + 20] = 0b11100100;
  const float d = 0.0625f;
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    int h = i / 128, t = (i % 128) / 32, l = i % 32;
    uint8_t lo = b[64 * h + l + 32 * (t & 1)];
    int q = (t < 2 ? (lo & 15) : (lo >> 4)) | (((b[128 + 32 * h + l] >> (2 * t)) & 3) << 4);
    want[i] = d * float(sc[8 * h + l / 16 + 2 * t]) * float(q - 32);
  }
  auto y = decode(DType::Q6_K, b, 256);
  expect_close(y, want, "Q6_K");
  // q1 = 0xc | 0<<4 = 12, q2 = 0xf | 1<<4 = 31, q3 = 0x3 | 2<<4 = 35, q4 = 0x1 | 3<<4 = 49;
  // l = 20 -> is = 1, scales[8 + 1 + 2t].
  EXPECT_NEAR(y[128 + 20], d * sc[9] * (12 - 32), 1e-5);
  EXPECT_NEAR(y[128 + 52], d * sc[11] * (31 - 32), 1e-5);
  EXPECT_NEAR(y[128 + 84], d * sc[13] * (35 - 32), 1e-5);
  EXPECT_NEAR(y[128 + 116], d * sc[15] * (49 - 32), 1e-5);
}

TEST(Dequant, IQ2_XXS_TableValues) {
  // Known entries of the published tables (copied by hand from the table file).
  EXPECT_EQ(quants::kIq2xxsGrid[0], 0x0808080808080808ull);
  EXPECT_EQ(quants::kIq2xxsGrid[1], 0x080808080808082bull);
  EXPECT_EQ(quants::kIq2xxsGrid[2], 0x0808080808081919ull);
  EXPECT_EQ(quants::kIq2xxsGrid[255], 0x2b2b2b1908081908ull);
  EXPECT_EQ(quants::kIqSigns[0], 0);
  EXPECT_EQ(quants::kIqSigns[1], 129);
  EXPECT_EQ(quants::kIqSigns[3], 3);
  EXPECT_EQ(quants::kIqSigns[127], 255);
  // Structural properties: grid magnitudes are 8, 25 or 43; sign bytes have even parity and
  // their low 7 bits equal the index.
  for (int i = 0; i < 256; i++) {
    for (int j = 0; j < 8; j++) {
      int m = int((quants::kIq2xxsGrid[i] >> (8 * j)) & 255);
      EXPECT_TRUE(m == 8 || m == 25 || m == 43) << "grid " << i;
    }
  }
  for (int i = 0; i < 128; i++) {
    EXPECT_EQ(quants::kIqSigns[i] & 127, i);
    EXPECT_EQ(__builtin_popcount(quants::kIqSigns[i]) % 2, 0);
  }
}

TEST(Dequant, IQ2_XXS) {
  // One super-block of 66 bytes: f16 d | u16 qs[32] = 8 groups of (u32 w0, u32 w1).
  std::vector<uint8_t> b(66);
  put_f16(b, 0, 0x3c00);  // d = 1
  const int grid_idx[8][4] = {{0, 1, 2, 255}, {1, 1, 0, 0}};
  const int sign_idx[8][4] = {{0, 1, 3, 127}, {127, 0, 1, 3}};
  const int scale4[8] = {0, 15, 7, 3, 9, 1, 12, 5};
  Lcg r(99);
  int gi[8][4], si[8][4];
  for (int g = 0; g < 8; g++) {
    uint32_t w0 = 0, w1 = uint32_t(scale4[g]) << 28;
    for (int k = 0; k < 4; k++) {
      gi[g][k] = g < 2 ? grid_idx[g][k] : r.byte();
      si[g][k] = g < 2 ? sign_idx[g][k] : (r.byte() & 127);
      w0 |= uint32_t(gi[g][k]) << (8 * k);
      w1 |= uint32_t(si[g][k]) << (7 * k);
    }
    for (int k = 0; k < 4; k++) {
      b[2 + 8 * g + k] = uint8_t(w0 >> (8 * k));
      b[6 + 8 * g + k] = uint8_t(w1 >> (8 * k));
    }
  }
  auto y = decode(DType::IQ2_XXS, b, 256);
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    int g = i / 32, k = (i % 32) / 8, j = i % 8;
    float db = 1.0f * (0.5f + float(scale4[g])) * 0.25f;
    float mag = float((quants::kIq2xxsGrid[gi[g][k]] >> (8 * j)) & 255);
    bool neg = (quants::kIqSigns[si[g][k]] >> j) & 1;
    want[i] = neg ? -db * mag : db * mag;
  }
  expect_close(y, want, "IQ2_XXS");

  // Group 0, scale nibble 0 -> 0.125. Grid 0 is all 8; sign index 0 has no negatives.
  for (int j = 0; j < 8; j++) EXPECT_EQ(y[j], 1.0f);
  // Grid 1 = 0x080808080808082b: element 8 is 43, others 8; signs 129 negate elements 0 and 7.
  EXPECT_EQ(y[8], -43 * 0.125f);
  for (int j = 1; j < 7; j++) EXPECT_EQ(y[8 + j], 8 * 0.125f);
  EXPECT_EQ(y[15], -8 * 0.125f);
  // Grid 2 = 0x0808080808081919 (25, 25, 8...); signs 3 negate elements 0 and 1.
  EXPECT_EQ(y[16], -25 * 0.125f);
  EXPECT_EQ(y[17], -25 * 0.125f);
  EXPECT_EQ(y[18], 8 * 0.125f);
  // Grid 255 = 0x2b2b2b1908081908 (8, 25, 8, 8, 25, 43, 43, 43); signs 255 all negative.
  const float g255[8] = {8, 25, 8, 8, 25, 43, 43, 43};
  for (int j = 0; j < 8; j++) EXPECT_EQ(y[24 + j], -g255[j] * 0.125f);
  // Group 1, scale nibble 15 -> 3.875; grid 1 with all signs negative.
  EXPECT_EQ(y[32], -43 * 3.875f);
  EXPECT_EQ(y[33], -8 * 3.875f);
}

TEST(Dequant, RejectsPartialBlocks) {
  std::vector<uint8_t> b(256);
  std::vector<float> y(256);
  EXPECT_THROW(dequantize(DType::Q8_0, b.data(), y.data(), 31), Error);
  EXPECT_THROW(dequantize(DType::Q4_K, b.data(), y.data(), 128), Error);
  EXPECT_NO_THROW(dequantize(DType::Q4_0, b.data(), y.data(), 0));
}

TEST(Dequant, ManyBlocksMatchSingleBlocks) {
  // Decoding n blocks at once equals decoding each block separately (block stride check), for
  // every block type (pseudo-random bytes: NaN where a random scale is one, on both sides).
  for (int ti = 0; ti < quants::kDTypeCount; ti++) {
    const DType t = DType(ti);
    if (!dtype_is_weight(t) || !dtype_is_quantized(t)) continue;
    const int nb = 5;
    const int64_t be = dtype_block_elems(t), bb = dtype_block_bytes(t);
    std::vector<uint8_t> b(size_t(nb * bb));  // nb blocks of bb bytes
    Lcg r(uint32_t(ti + 1));
    for (auto& x : b) x = r.byte();
    std::vector<float> all(size_t(nb * be));
    dequantize(t, b.data(), all.data(), nb * be);
    for (int k = 0; k < nb; k++) {
      std::vector<float> one(static_cast<size_t>(be));
      dequantize(t, b.data() + k * bb, one.data(), be);
      for (int64_t i = 0; i < be; i++) {
        const float x = one[size_t(i)], y = all[size_t(k * be + i)];
        ASSERT_TRUE(std::memcmp(&x, &y, 4) == 0 || (std::isnan(x) && std::isnan(y))) << dtype_name(t) << " block " << k;
      }
    }
  }
}
