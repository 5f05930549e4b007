// The quants layer: the ggml type table, the lookup grids, a decoder test on hand-built blocks
// for every weight type not covered by test_dequant.cpp, and the quantizers.
//
// Decoder tests build each block byte by byte from chosen fields and compare every decoded
// element with the format's formula evaluated per element (element index -> byte, bits,
// scale), plus spot values worked out by hand. Two checks lock the codecs to llama.cpp
// itself: FNV-1a hashes of ggml's own output (ggml commit d99724f2, 2026-08-21, built
// from source for this purpose; ggml-base compiled as llama.cpp ships it, without FMA), for
// decoding fixed pseudo-random blocks and for quantizing fixed test weights. Grid hashes were
// computed from the tables as printed in ggml's src/ggml-common.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quants/dequant.h"
#include "quants/grids.h"
#include "quants/quantize.h"
#include "quants/types.h"

using namespace lowrank;

namespace {

struct Lcg {
  uint32_t s;
  explicit Lcg(uint32_t seed) : s(seed) {}
  uint8_t byte() {
    s = s * 1664525u + 1013904223u;
    return uint8_t(s >> 24);
  }
};

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

void put_f16(std::vector<uint8_t>& b, size_t at, uint16_t h) {
  b[at] = uint8_t(h & 0xff);
  b[at + 1] = uint8_t(h >> 8);
}
void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { put_f16(b, at, v); }
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; i++) b[at + i] = uint8_t(v >> (8 * i));
}

std::vector<float> decode(DType t, const std::vector<uint8_t>& blocks, int64_t n) {
  std::vector<float> y(size_t(n), std::nanf(""));
  EXPECT_TRUE(quants::dequantize_row(t, blocks.data(), y.data(), n)) << dtype_name(t);
  return y;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); i++) {
    const float tol = 1e-6f * std::max(1.0f, std::fabs(want[i]));
    ASSERT_NEAR(got[i], want[i], tol) << what << " element " << i;
  }
}

uint8_t grid_byte(uint64_t g, int j) { return uint8_t(g >> (8 * j)); }
bool bit(uint32_t v, int j) { return (v >> j) & 1; }

// The test weights whose ggml quantization is hashed below: 8192 values (32 super-blocks) of
// a bell-shaped distribution (sum of 4 LCG uniforms), with an all-zero super-block, a constant
// block of 32, an outlier, a super-block of tiny values and one of mixed signs at two scales.
std::vector<float> quant_test_weights() {
  const int64_t n = 8192;
  uint32_t s = 12345;
  auto u = [&] {
    s = s * 1664525u + 1013904223u;
    return float(s >> 8) * (1.0f / 16777216.0f);
  };
  std::vector<float> x(static_cast<size_t>(n));  // (8192)
  for (int64_t i = 0; i < n; i++) x[size_t(i)] = (u() + u() + u() + u() - 2.0f) * 0.05f;
  for (int64_t i = 256; i < 512; i++) x[size_t(i)] = 0.0f;         // zero super-block
  for (int64_t i = 512; i < 544; i++) x[size_t(i)] = 0.0371f;      // constant block
  x[1000] = 1.7f;                                                   // outlier
  for (int64_t i = 1024; i < 1280; i++) x[size_t(i)] *= 1e-6f;     // tiny values
  for (int64_t i = 1280; i < 1536; i++) x[size_t(i)] *= (i % 7 == 0) ? 20.0f : 0.1f;  // two scales
  return x;
}

double rmse_rel(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0, s = 0;
  for (size_t i = 0; i < x.size(); i++) {
    e += double(x[i] - y[i]) * double(x[i] - y[i]);
    s += double(x[i]) * double(x[i]);
  }
  return std::sqrt(e / s);
}

}  // namespace

// ---------------------------------------------------------------- type table and grids

TEST(QuantsTypes, GgmlTable) {
  // (name, ggml id, block elements, block bytes) as ggml.h / ggml-common.h define them.
  struct Row { DType t; const char* name; uint32_t id; int64_t be, bb; };
  const Row rows[] = {
      {DType::F32, "F32", 0, 1, 4},          {DType::F16, "F16", 1, 1, 2},
      {DType::Q4_0, "Q4_0", 2, 32, 18},      {DType::Q4_1, "Q4_1", 3, 32, 20},
      {DType::Q5_0, "Q5_0", 6, 32, 22},      {DType::Q5_1, "Q5_1", 7, 32, 24},
      {DType::Q8_0, "Q8_0", 8, 32, 34},      {DType::Q8_1, "Q8_1", 9, 32, 36},
      {DType::Q2_K, "Q2_K", 10, 256, 84},    {DType::Q3_K, "Q3_K", 11, 256, 110},
      {DType::Q4_K, "Q4_K", 12, 256, 144},   {DType::Q5_K, "Q5_K", 13, 256, 176},
      {DType::Q6_K, "Q6_K", 14, 256, 210},   {DType::Q8_K, "Q8_K", 15, 256, 292},
      {DType::IQ2_XXS, "IQ2_XXS", 16, 256, 66}, {DType::IQ2_XS, "IQ2_XS", 17, 256, 74},
      {DType::IQ3_XXS, "IQ3_XXS", 18, 256, 98}, {DType::IQ1_S, "IQ1_S", 19, 256, 50},
      {DType::IQ4_NL, "IQ4_NL", 20, 32, 18},    {DType::IQ3_S, "IQ3_S", 21, 256, 110},
      {DType::IQ2_S, "IQ2_S", 22, 256, 82},     {DType::IQ4_XS, "IQ4_XS", 23, 256, 136},
      {DType::I32, "I32", 26, 1, 4},            {DType::I64, "I64", 27, 1, 8},
      {DType::IQ1_M, "IQ1_M", 29, 256, 56},     {DType::BF16, "BF16", 30, 1, 2},
      {DType::TQ1_0, "TQ1_0", 34, 256, 54},     {DType::TQ2_0, "TQ2_0", 35, 256, 66},
      {DType::MXFP4, "MXFP4", 39, 32, 17},
  };
  for (const Row& r : rows) {
    EXPECT_STREQ(dtype_name(r.t), r.name);
    EXPECT_EQ(dtype_block_elems(r.t), r.be) << r.name;
    EXPECT_EQ(dtype_block_bytes(r.t), r.bb) << r.name;
    uint32_t id = 999;
    EXPECT_TRUE(quants::dtype_to_ggml_id(r.t, &id));
    EXPECT_EQ(id, r.id) << r.name;
    DType back;
    ASSERT_TRUE(quants::ggml_id_to_dtype(r.id, &back)) << r.name;
    EXPECT_EQ(back, r.t);
    EXPECT_STREQ(quants::ggml_id_name(r.id), r.name);
    DType named;
    EXPECT_TRUE(quants::dtype_from_name(r.name, &named));
    EXPECT_EQ(named, r.t);
    EXPECT_EQ(dtype_is_weight(r.t), r.t != DType::I32 && r.t != DType::I64) << r.name;
  }
  EXPECT_EQ(rows[0].id, 0u);
  DType d;
  EXPECT_TRUE(quants::dtype_from_name("q4_k", &d));  // case-insensitive
  EXPECT_EQ(d, DType::Q4_K);
  EXPECT_FALSE(quants::dtype_from_name("Q4_K_M", &d));
  // ggml ids without a DType here, removed ids and ids past the table.
  EXPECT_STREQ(quants::ggml_id_name(24), "I8");
  EXPECT_STREQ(quants::ggml_id_name(40), "NVFP4");
  EXPECT_STREQ(quants::ggml_id_name(42), "Q2_0");
  EXPECT_FALSE(quants::ggml_id_to_dtype(40, &d));
  for (uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u}) {
    EXPECT_EQ(quants::ggml_id_name(removed), nullptr) << removed;
    EXPECT_FALSE(quants::ggml_id_to_dtype(removed, &d));
  }
  EXPECT_EQ(quants::kGgmlTypeCount, 43u);
  EXPECT_EQ(quants::ggml_id_name(43), nullptr);
  int64_t be = 0, bb = 0;
  EXPECT_TRUE(quants::ggml_id_block(40, &be, &bb));  // NVFP4: 4 UE4M3 scales + 32 bytes
  EXPECT_EQ(be, 64);
  EXPECT_EQ(bb, 36);
  EXPECT_FALSE(quants::ggml_id_block(43, &be, &bb));
  uint32_t id;
  EXPECT_FALSE(quants::dtype_to_ggml_id(DType::U8, &id));
  EXPECT_EQ(dtype_bytes(DType::Q3_K, 512), 220u);
  EXPECT_EQ(dtype_bytes(DType::MXFP4, 64), 34u);
}

TEST(QuantsTables, MatchGgmlCommon) {
  // FNV-1a of each table's little-endian bytes, computed from ggml's src/ggml-common.h.
  EXPECT_EQ(fnv1a(quants::kIqSigns, 128), 0xf19ba8f8c3292ba5ull);
  EXPECT_EQ(fnv1a(quants::kIq4nlValues, 16), 0x055d06d2d8fa0f75ull);
  EXPECT_EQ(fnv1a(quants::kMxfp4Values, 16), 0x3f0e3c08af1e5eb5ull);
  EXPECT_EQ(fnv1a(quants::kIq2xxsGrid, 256 * 8), 0xbb4ee025b5ac6e8eull);
  EXPECT_EQ(fnv1a(quants::kIq2xsGrid, 512 * 8), 0xc9b1ee61e79909bdull);
  EXPECT_EQ(fnv1a(quants::kIq2sGrid, 1024 * 8), 0x123edd38a3b62b90ull);
  EXPECT_EQ(fnv1a(quants::kIq3xxsGrid, 256 * 4), 0xdfa5dc83d6a155d5ull);
  EXPECT_EQ(fnv1a(quants::kIq3sGrid, 512 * 4), 0xfa37020c25b44829ull);
  EXPECT_EQ(fnv1a(quants::kIq1sGrid, 2048 * 8), 0x6703ed863501ae2eull);
  // Entries copied by hand from the printed tables.
  EXPECT_EQ(quants::kIq2xsGrid[1], 0x080808080808082bull);
  EXPECT_EQ(quants::kIq2xsGrid[511], 0x2b2b2b2b2b2b2b2bull);
  EXPECT_EQ(quants::kIq2sGrid[1023], 0x2b2b2b2b2b2b2b2bull);
  EXPECT_EQ(quants::kIq3xxsGrid[0], 0x04040404u);
  EXPECT_EQ(quants::kIq3xxsGrid[255], 0x3e341c04u);
  EXPECT_EQ(quants::kIq3sGrid[1], 0x01010103u);
  EXPECT_EQ(quants::kIq3sGrid[511], 0x0f0f0101u);
  EXPECT_EQ(quants::kIq1sGrid[0], 0xffffffffffffffffull);
  EXPECT_EQ(quants::kIq1sGrid[1], 0xffffffffffffff01ull);
  EXPECT_EQ(quants::kIq1sGrid[2047], 0x0101010101010101ull);
  const int8_t iq4[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  const int8_t fp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (int i = 0; i < 16; i++) {
    EXPECT_EQ(quants::kIq4nlValues[i], iq4[i]);
    EXPECT_EQ(quants::kMxfp4Values[i], fp4[i]);
  }
  // Value sets: IQ2 magnitudes 8/25/43, IQ3_XXS 4..62, IQ3_S odd 1..15, IQ1 bytes -1/0/+1.
  for (int i = 0; i < 1024; i++)
    for (int j = 0; j < 8; j++) {
      const int m = grid_byte(quants::kIq2sGrid[i], j);
      ASSERT_TRUE(m == 8 || m == 25 || m == 43);
    }
  for (int i = 0; i < 512; i++)
    for (int j = 0; j < 4; j++) {
      const int m = grid_byte(quants::kIq3sGrid[i], j);
      ASSERT_TRUE(m % 2 == 1 && m <= 15);
    }
  for (int i = 0; i < 2048; i++)
    for (int j = 0; j < 8; j++) {
      const int8_t v = int8_t(grid_byte(quants::kIq1sGrid[i], j));
      ASSERT_TRUE(v >= -1 && v <= 1);
    }
}

// The quants layer is the lowest one: its sources include nothing else of the project.
TEST(QuantsTypes, IncludesNothingAboveIt) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(LOWRANK_SOURCE_DIR) / "src" / "quants";
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path());
    std::string line;
    files++;
    while (std::getline(f, line)) {
      if (line.rfind("#include \"", 0) != 0) continue;
      EXPECT_EQ(line.rfind("#include \"quants/", 0), 0u) << e.path() << ": " << line;
    }
  }
  EXPECT_GE(files, 8);
}

// ---------------------------------------------------------------- decoders, hand-built blocks

TEST(QuantsDequant, PlainFloats) {
  std::vector<uint8_t> f16(4), bf16(4), f32(8);
  put_f16(f16, 0, 0x3c00);   // 1
  put_f16(f16, 2, 0xc500);   // -5
  put_u16(bf16, 0, 0x3fc0);  // 1.5
  put_u16(bf16, 2, 0xc2f6);  // -123
  const float v[2] = {0.25f, -7.0f};
  std::memcpy(f32.data(), v, 8);
  EXPECT_EQ(decode(DType::F16, f16, 2), (std::vector<float>{1.0f, -5.0f}));
  EXPECT_EQ(decode(DType::BF16, bf16, 2), (std::vector<float>{1.5f, -123.0f}));
  EXPECT_EQ(decode(DType::F32, f32, 2), (std::vector<float>{0.25f, -7.0f}));
}

TEST(QuantsDequant, Q4_1) {
  // 20 bytes: f16 d | f16 m | u8 qs[16]; y[j] = d·lo + m, y[j+16] = d·hi + m.
  std::vector<uint8_t> b(20);
  put_f16(b, 0, 0x3800);  // d = 0.5
  put_f16(b, 2, 0xbd00);  // m = -1.25
  Lcg r(3);
  for (int j = 0; j < 16; j++) b[4 + j] = r.byte();
  b[4] = 0xf3;
  std::vector<float> want(32);
  for (int i = 0; i < 32; i++) {
    const uint8_t byte = b[4 + i % 16];
    want[i] = 0.5f * float(i < 16 ? (byte & 15) : (byte >> 4)) - 1.25f;
  }
  const auto y = decode(DType::Q4_1, b, 32);
  expect_close(y, want, "Q4_1");
  EXPECT_EQ(y[0], 0.25f);   // 0.5·3 − 1.25
  EXPECT_EQ(y[16], 6.25f);  // 0.5·15 − 1.25
}

TEST(QuantsDequant, Q5_0_and_Q5_1) {
  // Q5_0 (22 bytes): f16 d | u32 qh | u8 qs[16]; Q5_1 (24): f16 d | f16 m | u32 qh | qs[16].
  // Element i: nibble (low for i < 16) of qs[i % 16], fifth bit = bit i of qh.
  Lcg r(5);
  uint8_t qs[16];
  for (auto& q : qs) q = r.byte();
  qs[1] = 0x0a;                                  // element 1: nibble 10, element 17: nibble 0
  const uint32_t qh = 0x5a3c0f02u | (1u << 1);   // bit 1 set, bit 17 clear
  std::vector<uint8_t> b0(22), b1(24);
  put_f16(b0, 0, 0x3400);  // d = 0.25
  put_u32(b0, 2, qh);
  put_f16(b1, 0, 0x3400);
  put_f16(b1, 2, 0x4100);  // m = 2.5
  put_u32(b1, 4, qh);
  for (int j = 0; j < 16; j++) b0[6 + j] = b1[8 + j] = qs[j];
  std::vector<float> w0(32), w1(32);
  for (int i = 0; i < 32; i++) {
    const int q = (i < 16 ? (qs[i % 16] & 15) : (qs[i % 16] >> 4)) | (bit(qh, i) << 4);
    w0[i] = 0.25f * float(q - 16);
    w1[i] = 0.25f * float(q) + 2.5f;
  }
  const auto y0 = decode(DType::Q5_0, b0, 32), y1 = decode(DType::Q5_1, b1, 32);
  expect_close(y0, w0, "Q5_0");
  expect_close(y1, w1, "Q5_1");
  EXPECT_EQ(y0[1], 2.5f);    // 0.25·(26 − 16)
  EXPECT_EQ(y0[17], -4.0f);  // 0.25·(0 − 16)
  EXPECT_EQ(y1[1], 9.0f);    // 0.25·26 + 2.5
  EXPECT_EQ(y1[17], 2.5f);
}

TEST(QuantsDequant, Q8_1_and_Q8_K) {
  // Q8_1 (36 bytes): f16 d | f16 s | i8 q[32]; Q8_K (292): f32 d | i8 q[256] | i16 bsums[16].
  std::vector<uint8_t> a(36), k(292);
  put_f16(a, 0, 0xb800);  // d = -0.5
  put_f16(a, 2, 0x7bff);  // s is not used to decode
  Lcg r(9);
  for (int j = 0; j < 32; j++) a[4 + j] = r.byte();
  const float dk = 0.1f;
  std::memcpy(k.data(), &dk, 4);
  for (int j = 0; j < 256; j++) k[4 + j] = r.byte();
  for (int j = 0; j < 32; j++) k[260 + j] = r.byte();
  std::vector<float> wa(32), wk(256);
  for (int i = 0; i < 32; i++) wa[i] = -0.5f * float(int8_t(a[4 + i]));
  for (int i = 0; i < 256; i++) wk[i] = 0.1f * float(int8_t(k[4 + i]));
  expect_close(decode(DType::Q8_1, a, 32), wa, "Q8_1");
  expect_close(decode(DType::Q8_K, k, 256), wk, "Q8_K");
  a[4] = 0x81;  // -127
  EXPECT_EQ(decode(DType::Q8_1, a, 32)[0], 63.5f);
}

TEST(QuantsDequant, Q3_K) {
  // 110 bytes: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d. Sixteen groups of 16 with a
  // signed 6-bit scale s (stored s + 32): low 4 bits in the low (g < 8) or high (g >= 8) nibble
  // of scales[g % 8], high 2 bits in bits 2·(g/4) of scales[8 + g%4]. Element i = 128h + 32k + l
  // takes 2 bits (qs[32h + l] >> 2k) & 3 and a high bit (hmask[l] >> (4h + k)) & 1; the value
  // is d·s·(q − 4) with q = low + 4·high.
  const int s[16] = {-32, 31, 0, 5, -7, 17, -1, 30, 9, -20, 12, 1, -32, 25, 3, -9};
  std::vector<uint8_t> b(110);
  for (int g = 0; g < 16; g++) {
    const int v = s[g] + 32;
    if (g < 8) b[96 + g] = uint8_t(b[96 + g] | (v & 15));
    else b[96 + g - 8] = uint8_t(b[96 + g - 8] | ((v & 15) << 4));
    b[96 + 8 + g % 4] = uint8_t(b[96 + 8 + g % 4] | ((v >> 4) << (2 * (g / 4))));
  }
  Lcg r(13);
  for (int i = 0; i < 96; i++) b[i] = r.byte();
  put_f16(b, 108, 0x3000);  // d = 0.125
  // Element 0: qs[0] bits 0-1 = 3, hmask[0] bit 0 = 1 -> q = 7; element 128 + 96 + 17 = 241:
  // qs[32 + 17] bits 6-7 = 1, hmask[17] bit 7 = 0 -> q = 1.
  b[32] = uint8_t((b[32] & ~3) | 3);
  b[0] = uint8_t(b[0] | 1);
  b[32 + 49] = uint8_t((b[32 + 49] & 0x3f) | (1 << 6));
  b[17] = uint8_t(b[17] & 0x7f);
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const int q = ((b[32 + 32 * h + l] >> (2 * k)) & 3) + 4 * ((b[l] >> (4 * h + k)) & 1);
    want[i] = 0.125f * float(s[i / 16]) * float(q - 4);
  }
  const auto y = decode(DType::Q3_K, b, 256);
  expect_close(y, want, "Q3_K");
  EXPECT_EQ(y[0], 0.125f * -32 * 3);   // group 0, q = 7
  EXPECT_EQ(y[241], 0.125f * -9 * -3); // group 15, q = 1
}

TEST(QuantsDequant, IQ4_NL_and_IQ4_XS) {
  const float v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  // IQ4_NL (18 bytes): f16 d | u8 qs[16]; y[j] = d·v[lo(qs[j])], y[j+16] = d·v[hi(qs[j])].
  std::vector<uint8_t> a(18);
  put_f16(a, 0, 0x2c00);  // d = 1/16
  Lcg r(17);
  for (int j = 0; j < 16; j++) a[2 + j] = r.byte();
  a[2] = 0xf0;
  std::vector<float> wa(32);
  for (int i = 0; i < 32; i++) wa[i] = 0.0625f * v[i < 16 ? (a[2 + i] & 15) : (a[2 + i - 16] >> 4)];
  const auto ya = decode(DType::IQ4_NL, a, 32);
  expect_close(ya, wa, "IQ4_NL");
  EXPECT_EQ(ya[0], -127 * 0.0625f);
  EXPECT_EQ(ya[16], 113 * 0.0625f);
  // IQ4_XS (136 bytes): f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128]. Group g of 32:
  // 6-bit ls = nibble (g%2) of scales_l[g/2] | bits 2g..2g+1 of scales_h << 4, scale d·(ls − 32);
  // element 32g + j takes the low (j < 16) or high nibble of qs[16g + j % 16].
  const int ls[8] = {0, 63, 32, 33, 17, 48, 5, 40};
  std::vector<uint8_t> b(136);
  put_f16(b, 0, 0x3800);  // d = 0.5
  uint16_t sh = 0;
  for (int g = 0; g < 8; g++) {
    b[4 + g / 2] = uint8_t(b[4 + g / 2] | ((ls[g] & 15) << (4 * (g % 2))));
    sh = uint16_t(sh | ((ls[g] >> 4) << (2 * g)));
  }
  put_u16(b, 2, sh);
  for (int j = 0; j < 128; j++) b[8 + j] = r.byte();
  b[8 + 16] = 0x8f;  // group 1: element 32 level 15, element 48 level 8
  std::vector<float> wb(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, j = i % 32;
    const uint8_t byte = b[8 + 16 * g + j % 16];
    wb[i] = 0.5f * float(ls[g] - 32) * v[j < 16 ? (byte & 15) : (byte >> 4)];
  }
  const auto yb = decode(DType::IQ4_XS, b, 256);
  expect_close(yb, wb, "IQ4_XS");
  EXPECT_EQ(yb[32], 0.5f * 31 * 113);
  EXPECT_EQ(yb[48], 0.5f * 31 * 1);
  for (int j = 64; j < 96; j++) EXPECT_EQ(yb[j], 0.0f);  // group 2: ls = 32 -> scale 0
}

TEST(QuantsDequant, MXFP4) {
  // 17 bytes: u8 e | u8 qs[16]; y[j] = v[lo]·2^(e−128), y[j+16] = v[hi]·2^(e−128), v the
  // doubled E2M1 values.
  const float v[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  std::vector<uint8_t> b(17 * 3);
  b[0] = 130;  // 2^2 = 4
  b[17] = 1;   // 2^-127 (subnormal)
  b[34] = 0;   // 2^-128
  Lcg r(19);
  for (int k = 0; k < 3; k++)
    for (int j = 0; j < 16; j++) b[17 * k + 1 + j] = r.byte();
  b[1] = 0x97;  // element 0: code 7 (12), element 16: code 9 (-1)
  const float scale[3] = {4.0f, std::ldexp(1.0f, -127), std::ldexp(1.0f, -128)};
  std::vector<float> want(96);
  for (int i = 0; i < 96; i++) {
    const int k = i / 32, j = i % 32;
    const uint8_t byte = b[17 * k + 1 + j % 16];
    want[i] = v[j < 16 ? (byte & 15) : (byte >> 4)] * scale[k];
  }
  const auto y = decode(DType::MXFP4, b, 96);
  for (int i = 0; i < 96; i++) ASSERT_EQ(y[i], want[i]) << i;
  EXPECT_EQ(y[0], 48.0f);
  EXPECT_EQ(y[16], -4.0f);
}

TEST(QuantsDequant, TQ1_0_and_TQ2_0) {
  // Trits t in {0, 1, 2}, value (t − 1)·d. TQ1_0 (54 bytes: qs[48] | qh[4] | f16 d) stores 5
  // trits per byte as ceil(v·256/243) of v = Σ t_k·3^(4−k): qs[m] (m < 32) holds elements
  // m + 32k, qs[32 + m] (m < 16) elements 160 + m + 16k, qh[j] elements 240 + j + 4k (k < 4,
  // fifth trit 0). TQ2_0 (66 bytes: qs[64] | f16 d): element 128c + 32l + m in bits 2l..2l+1 of
  // qs[32c + m].
  int t[256];
  Lcg r(23);
  for (int& x : t) x = r.byte() % 3;
  t[0] = 2;
  t[255] = 0;
  std::vector<uint8_t> a(54), b(66);
  auto pack = [](const int* tr, int count) {
    int v = 0;
    for (int k = 0; k < 5; k++) v = v * 3 + (k < count ? tr[k] : 0);
    return uint8_t((v * 256 + 242) / 243);
  };
  for (int m = 0; m < 32; m++) {
    const int tr[5] = {t[m], t[m + 32], t[m + 64], t[m + 96], t[m + 128]};
    a[m] = pack(tr, 5);
  }
  for (int m = 0; m < 16; m++) {
    const int tr[5] = {t[160 + m], t[176 + m], t[192 + m], t[208 + m], t[224 + m]};
    a[32 + m] = pack(tr, 5);
  }
  for (int j = 0; j < 4; j++) {
    const int tr[4] = {t[240 + j], t[244 + j], t[248 + j], t[252 + j]};
    a[48 + j] = pack(tr, 4);
  }
  put_f16(a, 52, 0x4200);  // d = 3
  for (int i = 0; i < 256; i++) {
    const int c = i / 128, l = (i % 128) / 32, m = i % 32;
    b[32 * c + m] = uint8_t(b[32 * c + m] | (t[i] << (2 * l)));
  }
  put_f16(b, 64, 0x4200);
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) want[i] = 3.0f * float(t[i] - 1);
  const auto ya = decode(DType::TQ1_0, a, 256), yb = decode(DType::TQ2_0, b, 256);
  for (int i = 0; i < 256; i++) {
    ASSERT_EQ(ya[i], want[i]) << "TQ1_0 element " << i;
    ASSERT_EQ(yb[i], want[i]) << "TQ2_0 element " << i;
  }
  EXPECT_EQ(ya[0], 3.0f);
  EXPECT_EQ(ya[255], -3.0f);
}

TEST(QuantsDequant, IQ2_XS) {
  // 74 bytes: f16 d | u16 qs[32] | u8 scales[8]. Element i: group g = i/32, sub-group
  // k = (i%32)/8, j = i%8; word w = qs[4g + k]: magnitude = byte j of grid[w & 511], negative
  // when bit j of sign byte kIqSigns[w >> 9] is set; scale d·(0.5 + s)·0.25 with s the low
  // (k < 2) or high nibble of scales[g].
  std::vector<uint8_t> b(74);
  put_f16(b, 0, 0x3c00);  // d = 1
  Lcg r(29);
  for (int i = 2; i < 74; i++) b[i] = r.byte();
  put_u16(b, 2, uint16_t(1 | (1 << 9)));  // grid 1 (43, 8, ...), signs 129 (elements 0, 7)
  b[66] = 0xf0;                           // group 0: s = 0 (sub-groups 0-1), 15 (2-3)
  put_u16(b, 6, uint16_t(511 | (127 << 9)));  // sub-group 2: grid 511 (all 43), all negative
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const uint16_t w = uint16_t(b[2 + 2 * (4 * g + k)] | (b[3 + 2 * (4 * g + k)] << 8));
    const int s = k < 2 ? (b[66 + g] & 15) : (b[66 + g] >> 4);
    const float mag = grid_byte(quants::kIq2xsGrid[w & 511], j);
    want[i] = (0.5f + float(s)) * 0.25f * mag * (bit(quants::kIqSigns[w >> 9], j) ? -1.f : 1.f);
  }
  const auto y = decode(DType::IQ2_XS, b, 256);
  expect_close(y, want, "IQ2_XS");
  EXPECT_EQ(y[0], -43 * 0.125f);
  EXPECT_EQ(y[1], 8 * 0.125f);
  EXPECT_EQ(y[7], -8 * 0.125f);
  EXPECT_EQ(y[16], -43 * 3.875f);
}

TEST(QuantsDequant, IQ2_S) {
  // 82 bytes: f16 d | u8 qs[32] | u8 signs[32] | u8 qh[8] | u8 scales[8]. Sub-group k of group
  // g: grid index qs[4g + k] | ((qh[g] >> 2k) & 3) << 8 into the 1024-point grid, sign byte
  // signs[4g + k] (bit j set = element j negative), scale as IQ2_XS.
  std::vector<uint8_t> b(82);
  put_f16(b, 0, 0x4000);  // d = 2
  Lcg r(31);
  for (int i = 2; i < 82; i++) b[i] = r.byte();
  b[2] = 0xff;
  b[66] = uint8_t(b[66] | 3);  // sub-group 0: index 1023 (all 43)
  b[34] = 0x81;                // elements 0 and 7 negative
  b[74] = 0x31;                // group 0: s = 1 (sub-groups 0-1), 3 (2-3)
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const int idx = b[2 + 4 * g + k] | (((b[66 + g] >> (2 * k)) & 3) << 8);
    const int s = k < 2 ? (b[74 + g] & 15) : (b[74 + g] >> 4);
    const float mag = grid_byte(quants::kIq2sGrid[idx], j);
    want[i] = 2.0f * (0.5f + float(s)) * 0.25f * mag * (bit(b[34 + 4 * g + k], j) ? -1.f : 1.f);
  }
  const auto y = decode(DType::IQ2_S, b, 256);
  expect_close(y, want, "IQ2_S");
  EXPECT_EQ(y[0], -43 * 0.75f);
  EXPECT_EQ(y[1], 43 * 0.75f);
  EXPECT_EQ(y[7], -43 * 0.75f);
}

TEST(QuantsDequant, IQ3_XXS) {
  // 98 bytes: f16 d | u8 qs[64] | u32 w[8]. Group g: scale d·(0.5 + (w[g] >> 28))·0.5;
  // sub-group k: sign byte kIqSigns[(w[g] >> 7k) & 127]; elements 0-3 from grid point
  // qs[8g + 2k], 4-7 from qs[8g + 2k + 1] (4 magnitudes each).
  std::vector<uint8_t> b(98);
  put_f16(b, 0, 0x3c00);  // d = 1
  Lcg r(37);
  for (int i = 2; i < 98; i++) b[i] = r.byte();
  b[2] = 255;  // sub-group 0, first half: 0x3e341c04 -> 4, 28, 52, 62
  b[3] = 0;    // second half: 4, 4, 4, 4
  put_u32(b, 66, (3u << 28) | 3u);  // scale 0.5·3.5 = 1.75; sub-group 0 signs 3 (elements 0, 1)
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const uint32_t w = uint32_t(b[66 + 4 * g]) | uint32_t(b[67 + 4 * g]) << 8 | uint32_t(b[68 + 4 * g]) << 16 |
                       uint32_t(b[69 + 4 * g]) << 24;
    const int gp = b[2 + 8 * g + 2 * k + j / 4];
    const float mag = grid_byte(quants::kIq3xxsGrid[gp], j % 4);
    want[i] = (0.5f + float(w >> 28)) * 0.5f * mag * (bit(quants::kIqSigns[(w >> (7 * k)) & 127], j) ? -1.f : 1.f);
  }
  const auto y = decode(DType::IQ3_XXS, b, 256);
  expect_close(y, want, "IQ3_XXS");
  const float expect0[8] = {-4, -28, 52, 62, 4, 4, 4, 4};
  for (int j = 0; j < 8; j++) EXPECT_EQ(y[j], 1.75f * expect0[j]) << j;
}

TEST(QuantsDequant, IQ3_S) {
  // 110 bytes: f16 d | u8 qs[64] | u8 qh[8] | u8 signs[32] | u8 scales[4]. Group g: scale
  // d·(1 + 2s), s = nibble (g%2) of scales[g/2]; sub-group k: grid points
  // qs[8g + 2k] | bit 2k of qh[g] << 8 (elements 0-3) and qs[8g + 2k + 1] | bit 2k+1 << 8
  // (elements 4-7) of the 512-point grid; sign byte signs[4g + k].
  std::vector<uint8_t> b(110);
  put_f16(b, 0, 0x3800);  // d = 0.5
  Lcg r(41);
  for (int i = 2; i < 110; i++) b[i] = r.byte();
  b[2] = 0xff;
  b[3] = 1;
  b[66] = uint8_t((b[66] & ~3) | 1);  // first point 511 (1, 1, 15, 15), second point 1 (3, 1, 1, 1)
  b[74] = 0x0f;                       // elements 0-3 negative
  b[106] = uint8_t((b[106] & 0xf0) | 2);  // group 0: s = 2 -> 0.5·5 = 2.5
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const int s = (b[106 + g / 2] >> (4 * (g % 2))) & 15;
    const int hb = (b[66 + g] >> (2 * k + j / 4)) & 1;
    const int idx = b[2 + 8 * g + 2 * k + j / 4] | (hb << 8);
    const float mag = grid_byte(quants::kIq3sGrid[idx], j % 4);
    want[i] = 0.5f * float(1 + 2 * s) * mag * (bit(b[74 + 4 * g + k], j) ? -1.f : 1.f);
  }
  const auto y = decode(DType::IQ3_S, b, 256);
  expect_close(y, want, "IQ3_S");
  const float expect0[8] = {-1, -1, -15, -15, 3, 1, 1, 1};
  for (int j = 0; j < 8; j++) EXPECT_EQ(y[j], 2.5f * expect0[j]) << j;
}

TEST(QuantsDequant, IQ1_S) {
  // 50 bytes: f16 d | u8 qs[32] | u16 qh[8]. Group g with w = qh[g]: scale
  // d·(2·((w >> 12) & 7) + 1), shift δ = −1/8 when bit 15 is set else +1/8; sub-group k: grid
  // point qs[4g + k] | ((w >> 3k) & 7) << 8 (8 values in {−1, 0, 1}); y = scale·(v + δ).
  std::vector<uint8_t> b(50);
  put_f16(b, 0, 0x3400);  // d = 0.25
  Lcg r(43);
  for (int i = 2; i < 50; i++) b[i] = r.byte();
  b[2] = 0;
  b[3] = 0xff;
  put_u16(b, 34, uint16_t((2 << 12) | (7 << 3)));  // group 0: scale 0.25·5, δ = +1/8;
  //                                                  sub-group 0 index 0, sub-group 1 index 2047
  put_u16(b, 36, uint16_t(0x8000 | (0 << 12)));    // group 1: scale 0.25, δ = −1/8
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const uint16_t w = uint16_t(b[34 + 2 * g] | (b[35 + 2 * g] << 8));
    const float delta = (w & 0x8000) ? -0.125f : 0.125f;
    const int idx = b[2 + 4 * g + k] | (((w >> (3 * k)) & 7) << 8);
    const float v = float(int8_t(grid_byte(quants::kIq1sGrid[idx], j)));
    want[i] = 0.25f * float(2 * ((w >> 12) & 7) + 1) * (v + delta);
  }
  const auto y = decode(DType::IQ1_S, b, 256);
  expect_close(y, want, "IQ1_S");
  for (int j = 0; j < 8; j++) {
    EXPECT_EQ(y[j], 1.25f * (-1 + 0.125f));     // grid 0: all −1
    EXPECT_EQ(y[8 + j], 1.25f * (1 + 0.125f));  // grid 2047: all +1
  }
}

TEST(QuantsDequant, IQ1_M) {
  // 56 bytes: u8 qs[32] | u8 qh[16] | u16 sc[4]. The f16 super-block scale is the top nibbles
  // of sc[0..3] (sc[0] gives bits 0-3 ... sc[3] bits 12-15). Group g: 3-bit scales
  // s1 = (sc[g/2] >> 6(g%2)) & 7 (sub-groups 0-1), s2 = (sc[g/2] >> 6(g%2)+3) & 7 (2-3), scale
  // d·(2s + 1). Sub-group k reads qh byte qh[2g + k/2]: grid index qs[4g + k] | (bits 0-2 (k
  // even) or 4-6 (k odd)) << 8, δ = −1/8 if bit 3 (k even) / 7 (k odd) else +1/8.
  std::vector<uint8_t> b(56);
  Lcg r(47);
  for (int i = 0; i < 48; i++) b[i] = r.byte();
  // d = 0.5 = f16 0x3800: nibbles (low to high) 0, 0, 8, 3 go to the tops of sc[0..3].
  uint16_t sc[4];
  for (int i = 0; i < 4; i++) sc[i] = uint16_t((r.byte() | (r.byte() << 8)) & 0x0fff);
  sc[2] |= 0x8000;
  sc[3] |= 0x3000;
  sc[0] = uint16_t((sc[0] & ~0x3f) | 1 | (3 << 3));  // group 0: s1 = 1, s2 = 3
  for (int i = 0; i < 4; i++) put_u16(b, 48 + 2 * i, sc[i]);
  b[0] = 0;
  b[1] = 0xff;
  b[32] = 0x78;  // sub-group 0: index 0, δ = −1/8; sub-group 1: index 0x7ff, δ = +1/8
  std::vector<float> want(256);
  for (int i = 0; i < 256; i++) {
    const int g = i / 32, k = (i % 32) / 8, j = i % 8;
    const int s = (sc[g / 2] >> (6 * (g % 2) + 3 * (k / 2))) & 7;
    const uint8_t h = b[32 + 2 * g + k / 2];
    const int idx = b[4 * g + k] | (((h >> (4 * (k % 2))) & 7) << 8);
    const float delta = ((h >> (4 * (k % 2) + 3)) & 1) ? -0.125f : 0.125f;
    const float v = float(int8_t(grid_byte(quants::kIq1sGrid[idx], j)));
    want[i] = 0.5f * float(2 * s + 1) * (v + delta);
  }
  const auto y = decode(DType::IQ1_M, b, 256);
  expect_close(y, want, "IQ1_M");
  for (int j = 0; j < 8; j++) {
    EXPECT_EQ(y[j], 1.5f * (-1 - 0.125f));     // s1 = 1: 0.5·3; grid 0 all −1, δ −1/8
    EXPECT_EQ(y[8 + j], 1.5f * (1 + 0.125f));  // grid 2047 all +1, δ +1/8
  }
}

TEST(QuantsDequant, RejectsWhatItCannotDecode) {
  std::vector<uint8_t> b(512);
  std::vector<float> y(512);
  EXPECT_FALSE(quants::dequantize_row(DType::Q3_K, b.data(), y.data(), 128));  // partial block
  EXPECT_FALSE(quants::dequantize_row(DType::IQ4_NL, b.data(), y.data(), 33));
  EXPECT_FALSE(quants::dequantize_row(DType::Q4_1, b.data(), y.data(), -32));
  EXPECT_FALSE(quants::dequantize_row(DType::I32, b.data(), y.data(), 4));      // not a weight
  EXPECT_TRUE(quants::dequantize_row(DType::IQ1_M, b.data(), y.data(), 0));
  EXPECT_THROW(to_f32(DType::TQ1_0, b.data(), y.data(), 100), Error);
  EXPECT_THROW(to_f32(DType::I64, b.data(), y.data(), 4), Error);
}

// Decoding fixed pseudo-random bytes gives exactly ggml's floats (NaN canonicalized) for every
// weight type ggml can decode: 2048 elements per type from an LCG seeded with 777 + type id.
TEST(QuantsDequant, MatchesLlamaCppOnRandomBlocks) {
  const std::pair<DType, uint64_t> want[] = {
      {DType::F16, 0x04cb9137e2cf6e3bull},     {DType::BF16, 0x862831489cd50bdbull},
      {DType::Q4_0, 0x091250760d82f95cull},    {DType::Q4_1, 0x2a4e3be3986707e3ull},
      {DType::Q5_0, 0xab61c54b4732a0a3ull},    {DType::Q5_1, 0xc7e91289d64a3d60ull},
      {DType::Q8_0, 0xdf316cdb18b2b330ull},    {DType::Q2_K, 0xd10ea38f33b46251ull},
      {DType::Q3_K, 0x2722653b548b6c33ull},    {DType::Q4_K, 0xf725143299ae0c47ull},
      {DType::Q5_K, 0x5a431e6256093b20ull},    {DType::Q6_K, 0x4ac9948080e7e9cbull},
      {DType::IQ2_XXS, 0xd26b445bb74086beull}, {DType::IQ2_XS, 0x5b05fbdb67a4662eull},
      {DType::IQ3_XXS, 0xcc09d1346e5fde84ull}, {DType::IQ1_S, 0x37fb9a79361536c6ull},
      {DType::IQ4_NL, 0x0faf4be1a821a4d4ull},  {DType::IQ3_S, 0x00a6d48aa77deee7ull},
      {DType::IQ2_S, 0xd130c57330465a00ull},   {DType::IQ4_XS, 0xdbcc404d2640f19eull},
      {DType::IQ1_M, 0xe474958e88f7a653ull},   {DType::TQ1_0, 0xc080c2c4a16c5562ull},
      {DType::TQ2_0, 0x29f6129f5d274068ull},   {DType::MXFP4, 0xaaebd6fb72698e9dull},
  };
  for (const auto& [t, hash] : want) {
    uint32_t id = 0;
    ASSERT_TRUE(quants::dtype_to_ggml_id(t, &id));
    const int64_t n = 2048;
    std::vector<uint8_t> b(dtype_bytes(t, n));  // n elements of blocks
    uint32_t s = 777u + id;
    for (auto& x : b) {
      s = s * 1664525u + 1013904223u;
      x = uint8_t(s >> 24);
    }
    std::vector<float> y(static_cast<size_t>(n));
    ASSERT_TRUE(quants::dequantize_row(t, b.data(), y.data(), n));
    uint64_t h = 0xcbf29ce484222325ull;
    for (float v : y) {
      uint32_t u;
      if (std::isnan(v)) u = 0x7fc00000u;
      else std::memcpy(&u, &v, 4);
      h = fnv1a(&u, 4, h);
    }
    EXPECT_EQ(h, hash) << dtype_name(t);
  }
}

// ---------------------------------------------------------------- quantizers

// Quantizing the test weights gives exactly the bytes of ggml_quantize_chunk (no importance
// matrix, rows of 512), i.e. what llama-quantize writes, for every type both implement.
TEST(QuantsQuantize, MatchesLlamaCppBytes) {
  const std::pair<DType, uint64_t> want[] = {
      {DType::F16, 0xb3bdd1dd1a8280e6ull},    {DType::BF16, 0x5b8255f5f0a79605ull},
      {DType::Q4_0, 0x704d95484041c54dull},   {DType::Q4_1, 0x70fa74cc7e6427d2ull},
      {DType::Q5_0, 0x8f9d76bffe35e6deull},   {DType::Q5_1, 0x529d8780f2d32fe3ull},
      {DType::Q8_0, 0x1a2fa0dc4cd34715ull},   {DType::Q2_K, 0xb16440c0c7fd2fd2ull},
      {DType::Q3_K, 0x46cf4b4f06485891ull},   {DType::Q4_K, 0x1a30d419453488eaull},
      {DType::Q5_K, 0x79c7bb46b90583afull},   {DType::Q6_K, 0x0a60a7f8e8659e5aull},
      {DType::IQ4_NL, 0x0501e22ead5eef5bull}, {DType::IQ4_XS, 0xff7c56c7d5caf023ull},
      {DType::TQ1_0, 0x1b296dafdb49d85bull},  {DType::TQ2_0, 0xc9a192959aa8dc85ull},
      {DType::MXFP4, 0x4803beae5e8403bfull},
  };
  const std::vector<float> x = quant_test_weights();
  for (const auto& [t, hash] : want) {
    std::vector<uint8_t> q(dtype_bytes(t, int64_t(x.size())));
    ASSERT_TRUE(quants::quantize_row(t, x.data(), q.data(), int64_t(x.size()))) << dtype_name(t);
    EXPECT_EQ(fnv1a(q.data(), q.size()), hash) << dtype_name(t);
  }
}

// With an importance matrix (rows of 512; all ones, and varied: 0.5 + ((37·i) mod 11)/10 for
// column i) the bytes are those of ggml_quantize_chunk given the same imatrix, i.e. of
// llama-quantize --imatrix.
TEST(QuantsQuantize, ImportanceMatrixMatchesLlamaCppBytes) {
  const std::pair<DType, uint64_t> ones[] = {
      {DType::Q4_0, 0x64abf1f75a28d457ull},   {DType::Q4_1, 0x0051e5122603146aull},
      {DType::Q5_0, 0x0bf42d43164664e0ull},   {DType::Q5_1, 0xcdb18760b10085f9ull},
      {DType::Q2_K, 0xd7a184cbfabd8893ull},   {DType::Q3_K, 0xaeee9f0fcff63a10ull},
      {DType::Q4_K, 0xf8c31b6990079269ull},   {DType::Q5_K, 0xe104990226cbb9a6ull},
      {DType::Q6_K, 0x4891f3e2707d9bdcull},   {DType::IQ4_NL, 0xccd9d16df41e9c73ull},
      {DType::IQ4_XS, 0x46adff4399b9c7aeull},
  };
  const std::pair<DType, uint64_t> varied[] = {
      {DType::Q4_0, 0xc5fab1e8b38e2e20ull},   {DType::Q4_1, 0xfb4f3a30fd7f049aull},
      {DType::Q5_0, 0x99a8330bb6ca9fe7ull},   {DType::Q5_1, 0x58d95cc09f761621ull},
      {DType::Q2_K, 0x2940d801feeea119ull},   {DType::Q3_K, 0x2bcaac3e711e35b6ull},
      {DType::Q4_K, 0x8a88761990c97573ull},   {DType::Q5_K, 0xb24b0157d49f0c5bull},
      {DType::Q6_K, 0x40137d465ba42928ull},   {DType::IQ4_NL, 0x97e3be05bb69f2edull},
      {DType::IQ4_XS, 0x80235fc1e5fc7becull},
  };
  const std::vector<float> x = quant_test_weights();
  const int64_t npr = 512, rows = int64_t(x.size()) / npr;
  std::vector<float> w1(size_t(npr), 1.0f), wv(static_cast<size_t>(npr));  // (npr) each
  for (int64_t i = 0; i < npr; i++) wv[size_t(i)] = 0.5f + float((i * 37) % 11) / 10.0f;
  for (const auto& [list, imx] : {std::pair{&ones, &w1}, std::pair{&varied, &wv}}) {
    for (const auto& [t, hash] : *list) {
      std::vector<uint8_t> q(dtype_bytes(t, int64_t(x.size())));
      ASSERT_TRUE(quants::quantize_rows(t, x.data(), q.data(), rows, npr, imx->data())) << dtype_name(t);
      EXPECT_EQ(fnv1a(q.data(), q.size()), hash) << dtype_name(t) << (list == &ones ? " (ones)" : " (varied)");
    }
  }
  // Without an imatrix quantize_rows is quantize_row; types the importance does not affect
  // ignore it.
  std::vector<uint8_t> a(dtype_bytes(DType::Q8_0, 8192)), b(a.size());
  ASSERT_TRUE(quants::quantize_rows(DType::Q8_0, x.data(), a.data(), rows, npr, w1.data()));
  ASSERT_TRUE(quants::quantize_row(DType::Q8_0, x.data(), b.data(), 8192));
  EXPECT_EQ(a, b);
  EXPECT_FALSE(quants::quantize_rows(DType::Q4_K, x.data(), a.data(), 2, 384, w1.data()));  // 384 % 256
}

// Values a format represents exactly come back exactly.
TEST(QuantsQuantize, ExactValuesRoundTrip) {
  Lcg r(53);
  auto ints = [&](int n, int lo, int hi) {
    std::vector<int> v(static_cast<size_t>(n));
    for (int& x : v) x = lo + int(r.byte()) % (hi - lo + 1);
    return v;
  };
  auto round_trip = [](DType t, const std::vector<float>& x) {
    std::vector<uint8_t> q(dtype_bytes(t, int64_t(x.size())));
    EXPECT_TRUE(quants::quantize_row(t, x.data(), q.data(), int64_t(x.size())));
    std::vector<float> y(x.size());
    EXPECT_TRUE(quants::dequantize_row(t, q.data(), y.data(), int64_t(x.size())));
    return y;
  };
  {  // Q8_0: d·q with max |q| = 127 and d a power of two.
    auto q = ints(64, -127, 127);
    q[5] = 127;
    q[40] = -127;
    std::vector<float> x(64);
    for (int i = 0; i < 64; i++) x[i] = 0.125f * float(q[i]);
    EXPECT_EQ(round_trip(DType::Q8_0, x), x);
    auto qk = ints(256, -127, 127);  // Q8_K: one f32 scale per 256
    qk[100] = -127;
    std::vector<float> xk(256);
    for (int i = 0; i < 256; i++) xk[i] = 0.125f * float(qk[i]);
    EXPECT_EQ(round_trip(DType::Q8_K, xk), xk);
  }
  {  // Q4_0 / Q5_0: d·(q − 8) (d·(q − 16)) with the extreme −8d (−16d) present.
    for (auto [t, half] : {std::pair{DType::Q4_0, 8}, std::pair{DType::Q5_0, 16}}) {
      auto q = ints(64, 0, 2 * half - 1);
      q[3] = 0;
      q[35] = 0;
      std::vector<float> x(64);
      for (int i = 0; i < 64; i++) x[i] = 0.0625f * float(q[i] - half);
      EXPECT_EQ(round_trip(t, x), x) << dtype_name(t);
    }
  }
  {  // Q4_1 / Q5_1: min + d·q with both ends present.
    for (auto [t, top] : {std::pair{DType::Q4_1, 15}, std::pair{DType::Q5_1, 31}}) {
      auto q = ints(64, 0, top);
      q[0] = 0;
      q[1] = top;
      q[32] = 0;
      q[33] = top;
      std::vector<float> x(64);
      for (int i = 0; i < 64; i++) x[i] = -1.5f + 0.25f * float(q[i]);
      EXPECT_EQ(round_trip(t, x), x) << dtype_name(t);
    }
  }
  {  // IQ4_NL: d·v[l] with the level −127 present.
    auto l = ints(64, 0, 15);
    l[7] = 0;
    l[50] = 0;
    std::vector<float> x(64);
    for (int i = 0; i < 64; i++) x[i] = 0.03125f * float(quants::kIq4nlValues[l[i]]);
    EXPECT_EQ(round_trip(DType::IQ4_NL, x), x);
  }
  {  // Ternary: {−d, 0, d}.
    auto t = ints(256, -1, 1);
    t[9] = 1;
    std::vector<float> x(256);
    for (int i = 0; i < 256; i++) x[i] = 0.5f * float(t[i]);
    EXPECT_EQ(round_trip(DType::TQ1_0, x), x);
    EXPECT_EQ(round_trip(DType::TQ2_0, x), x);
  }
  {  // MXFP4: E2M1 values times a power of two, the largest 6 (v = 12) so the exponent fits.
    auto l = ints(32, 0, 15);
    l[0] = 7;
    std::vector<float> x(32);
    for (int i = 0; i < 32; i++) x[i] = 0.25f * float(quants::kMxfp4Values[l[i]]);
    EXPECT_EQ(round_trip(DType::MXFP4, x), x);
  }
  {  // F16 / BF16: values of the format.
    std::vector<float> x = {1.0f, -2.5f, 65504.0f, 0.0f, std::ldexp(1.0f, -24), 3.140625f};
    EXPECT_EQ(round_trip(DType::F16, x), x);
    std::vector<float> xb = {1.0f, -2.5f, 1.5f, 0.0f, 256.0f, std::ldexp(-1.5f, 120)};
    EXPECT_EQ(round_trip(DType::BF16, xb), xb);
  }
  {  // All-zero super-blocks stay zero in every block format.
    std::vector<float> z(256, 0.0f);
    for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                    DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K, DType::IQ4_NL, DType::IQ4_XS, DType::TQ1_0,
                    DType::TQ2_0, DType::MXFP4})
      EXPECT_EQ(round_trip(t, z), z) << dtype_name(t);
  }
}

// More bits, less error: on the test weights (outliers and the two-scale block included) the
// relative RMSE falls with each step up the K-quant ladder, and Q8_0 is near f16's.
TEST(QuantsQuantize, ErrorFallsWithBits) {
  const std::vector<float> x = quant_test_weights();
  auto err = [&](DType t) {
    std::vector<uint8_t> q(dtype_bytes(t, int64_t(x.size())));
    EXPECT_TRUE(quants::quantize_row(t, x.data(), q.data(), int64_t(x.size())));
    std::vector<float> y(x.size());
    EXPECT_TRUE(quants::dequantize_row(t, q.data(), y.data(), int64_t(x.size())));
    return rmse_rel(x, y);
  };
  const DType ladder[] = {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::F16};
  double prev = 1.0;
  for (DType t : ladder) {
    const double e = err(t);
    EXPECT_LT(e, prev) << dtype_name(t);
    prev = e;
  }
  EXPECT_LT(err(DType::Q5_1), err(DType::Q4_1));
  EXPECT_LT(err(DType::Q5_0), err(DType::Q4_0));
}

TEST(QuantsQuantize, RejectsWhatItCannotEncode) {
  std::vector<float> x(512, 0.5f);
  std::vector<uint8_t> q(4096);
  for (DType t : {DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S, DType::IQ1_S,
                  DType::IQ1_M, DType::I32, DType::U8}) {
    EXPECT_FALSE(quants::can_quantize(t)) << dtype_name(t);
    EXPECT_FALSE(quants::quantize_row(t, x.data(), q.data(), 256)) << dtype_name(t);
  }
  EXPECT_FALSE(quants::quantize_row(DType::Q4_K, x.data(), q.data(), 128));  // partial super-block
  EXPECT_FALSE(quants::quantize_row(DType::Q8_0, x.data(), q.data(), 40));
  EXPECT_FALSE(quants::quantize_row(DType::Q8_0, x.data(), q.data(), -32));
  EXPECT_TRUE(quants::can_quantize(DType::Q8_1));
}
