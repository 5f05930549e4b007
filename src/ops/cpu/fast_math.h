// Branch-free math for vectorized loops of the CPU ops (libm's expf/tanhf calls would not
// vectorize). Shared by activation.cpp, attention*.cpp and loss.cpp.
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>

namespace lowrank::ops {

// exp(x): Cephes polynomial, within ~1.5 ulp on [-87, 88]; saturates above 88, 0 below -87.
inline float exp_approx(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  // n = round(xc·log2 e) via the 1.5·2^23 trick (std::floor would block vectorization)
  const float fx = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>((int32_t(fx) + 127) << 23);  // 2^n
  return x < -87.0f ? 0.0f : p * scale;
}

inline float sigmoid_approx(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

// tanh(x) = 2·sigmoid(2x) - 1 (relative error near 0 of a few ulp of 1, i.e. absolute ~1e-7).
inline float tanh_approx(float x) { return 2.0f * sigmoid_approx(2.0f * x) - 1.0f; }

}  // namespace lowrank::ops
