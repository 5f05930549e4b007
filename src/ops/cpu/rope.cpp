// Rotary position embedding, mirroring Hugging Face's float32 computation:
//   inv_freq[i] = 1 / theta^(float(2i)/D)   (float32)
//   angle       = float(pos) * inv_freq[i]   (float32)
//   cos, sin    = of that float angle, rounded to float32
// The cos/sin table is cached per calling thread, keyed by (theta, D), and extended on demand.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace lowrank::ops {
namespace {

struct RopeTable {
  float theta = 0.0f;
  int64_t half = 0;        // D/2
  int64_t npos = 0;        // positions covered
  std::vector<float> cos;  // (npos, half)
  std::vector<float> sin;  // (npos, half)
};

const RopeTable& rope_table(float theta, int64_t D, int64_t max_pos) {
  thread_local RopeTable tab;
  const int64_t half = D / 2;
  if (tab.theta != theta || tab.half != half) {
    tab = RopeTable{};
    tab.theta = theta;
    tab.half = half;
  }
  if (max_pos >= tab.npos) {
    std::vector<float> inv(static_cast<size_t>(half));  // (half)
    for (int64_t i = 0; i < half; i++) {
      const float e = float(2 * i) / float(D);
      const float p = float(std::pow(double(theta), double(e)));
      inv[size_t(i)] = 1.0f / p;
    }
    const int64_t old = tab.npos;
    const int64_t npos = std::max<int64_t>(max_pos + 1, std::min<int64_t>(2 * old, old + 4096));
    tab.cos.resize(size_t(npos * half));
    tab.sin.resize(size_t(npos * half));
    for (int64_t p = old; p < npos; p++)
      for (int64_t i = 0; i < half; i++) {
        const float a = float(p) * inv[size_t(i)];
        tab.cos[size_t(p * half + i)] = float(std::cos(double(a)));
        tab.sin[size_t(p * half + i)] = float(std::sin(double(a)));
      }
    tab.npos = npos;
  }
  return tab;
}

// Rotates every head of x (N, H, D) in place; sign = +1 forward, -1 inverse (Rᵀ).
void rope_apply(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                bool half_rotation, float sign) {
  if (D % 2 != 0) fail("rope: head dim ", D, " is odd");
  if (N <= 0) return;
  int64_t max_pos = 0;
  for (int64_t n = 0; n < N; n++) {
    if (pos[n] < 0) fail("rope: negative position ", pos[n], " at row ", n);
    max_pos = std::max<int64_t>(max_pos, pos[n]);
  }
  const RopeTable& tab = rope_table(theta, D, max_pos);
  const int64_t half = D / 2;
  const float* cos_tab = tab.cos.data();  // (npos, half)
  const float* sin_tab = tab.sin.data();  // (npos, half)
#pragma omp parallel for if (N * H * D >= 32768)
  for (int64_t n = 0; n < N; n++) {
    const float* c = cos_tab + int64_t(pos[n]) * half;  // (half)
    const float* s = sin_tab + int64_t(pos[n]) * half;  // (half)
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (n * H + h) * D;  // (D)
      if (half_rotation) {
        float* v1 = v;         // (half) first halves
        float* v2 = v + half;  // (half) second halves
#pragma omp simd
        for (int64_t i = 0; i < half; i++) {
          const float a = v1[i], b = v2[i], si = sign * s[i];
          v1[i] = a * c[i] - b * si;
          v2[i] = b * c[i] + a * si;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < half; i++) {
          const float a = v[2 * i], b = v[2 * i + 1], si = sign * s[i];
          v[2 * i] = a * c[i] - b * si;
          v[2 * i + 1] = b * c[i] + a * si;
        }
      }
    }
  }
}

}  // namespace

void rope_forward(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                  bool half_rotation) {
  rope_apply(x, pos, N, H, D, theta, half_rotation, 1.0f);
}

void rope_backward(float* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta,
                   bool half_rotation) {
  rope_apply(dx, pos, N, H, D, theta, half_rotation, -1.0f);
}

void rope_tables(float* cos, float* sin, const int32_t* pos, int64_t N, const float* inv_freq, int64_t half,
                 float attn_factor) {
#pragma omp parallel for if (N * half >= 65536)
  for (int64_t n = 0; n < N; n++) {
    if (pos[n] < 0) continue;  // checked by the caller
    for (int64_t i = 0; i < half; i++) {
      // HF: angle = float(pos) * inv_freq in float32; cos/sin of that float, times the factor.
      const float a = float(pos[n]) * inv_freq[i];
      cos[n * half + i] = float(std::cos(double(a))) * attn_factor;
      sin[n * half + i] = float(std::sin(double(a))) * attn_factor;
    }
  }
}

void rope_apply(float* x, int64_t N, int64_t H, int64_t D, int64_t rot, const float* cos, const float* sin,
                bool inverse) {
  if (rot % 2 != 0 || rot > D) fail("rope: rotated dims ", rot, " must be even and at most ", D);
  const int64_t half = rot / 2;
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for if (N * H * D >= 32768)
  for (int64_t n = 0; n < N; n++) {
    const float* c = cos + n * half;  // (half)
    const float* s = sin + n * half;  // (half)
    for (int64_t h = 0; h < H; h++) {
      float* v1 = x + (n * H + h) * D;  // (half) first halves of the rotated part
      float* v2 = v1 + half;            // (half) second halves
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        const float a = v1[i], b = v2[i], si = sign * s[i];
        v1[i] = a * c[i] - b * si;
        v2[i] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace lowrank::ops
