#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

using namespace lowrank;

TEST(DType, HalfRoundTrip) {
  // Every finite f16 value converts to f32 and back unchanged.
  for (uint32_t h = 0; h < 0x10000; h++) {
    uint16_t x = uint16_t(h);
    if ((x & 0x7c00) == 0x7c00) continue;  // inf/nan
    float f = f16_to_f32(x);
    EXPECT_EQ(f32_to_f16(f), x) << "h=" << h << " f=" << f;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie rounds to even
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                       // overflow
}

TEST(DType, BF16RoundTrip) {
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    uint16_t x = uint16_t(h);
    if ((x & 0x7f80) == 0x7f80) continue;
    EXPECT_EQ(f32_to_bf16(bf16_to_f32(x)), x);
  }
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
}
