// Block encoders. Each follows the reference quantizer llama.cpp's ggml uses when no importance
// matrix is given (quantize_row_*_ref in ggml-quants.c, and quantize_iq4_nl / quantize_iq4_xs
// with 7 scale trials as ggml_quantize_chunk calls them), so files written here carry the
// same kind of error as llama-quantize's. Summary per type:
//   Q8_0/Q8_1   d = max|x|/127, q = round(x/d)
//   Q4_0/Q5_0   d = x_max/−8 (−16) with x_max the value of largest magnitude, q = ⌊x/d + 8.5⌋
//   Q4_1/Q5_1   d = (max − min)/15 (31), m = min, q = ⌊(x − m)/d + 0.5⌋
//   Q6_K        per 16: make_qx_quants (weights x², 19 scale trials), block scales to int8
//   Q3_K        per 16: make_q3_quants (weights x², 5 rounds of coordinate descent), 6-bit scales
//   Q2_K        per 16: make_qkx2_quants (weights |x|, MAD, 16 trials), 4-bit scales and mins
//   Q4_K/Q5_K   per 32: make_qkx2_quants (weights rms + |x|, squared error, 21/16 trials),
//               6-bit scales and mins
//   IQ4_NL/XS   per 32: best level of the 16-level grid for 15 trial scales (weights x²);
//               IQ4_XS then 6-bit block scales
//   TQ1_0/TQ2_0 d = max|x|, ternary digits of round(x/d)
//   MXFP4       shared exponent ⌊log2 max|x|⌋ − 2, nearest E2M1 value
// After the scales are quantized, every K-quant re-rounds its values against the stored
// (f16-rounded) scales, as llama.cpp does.
#include "quants/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quants/grids.h"
#include "quants/half.h"

namespace lowrank::quants {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // GROUP_MAX_EPS: a group below this is all zero

// Round to nearest, ties to even, for |v| <= 2^22 (adds 1.5·2^23 and reads the mantissa).
inline int nearest_int(float v) {
  float f = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &f, 4);
  return (i & 0x007fffff) - 0x00400000;
}

inline void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
inline float f16_round(float v) { return f16_to_f32(f32_to_f16(v)); }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// ---- scale searches (ggml-quants.c) -------------------------------------------------------

// Symmetric quantization of x[n] to L[i] in [0, 2·nmax) (stored with offset nmax): starts
// from iscale = −nmax/x_max (x_max the value of largest magnitude) and tries the 18 nearby
// iscales −(nmax + 0.1·is)/x_max, keeping the one with the largest (Σw·x·l)²/Σw·l² (the best
// least-squares scale); weights w = qw[i], or x² without qw (rmse_type 1). Returns the scale
// Σw·x·l/Σw·l².
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw = nullptr) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; i++) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l + nmax);
    const float w = qw ? qw[i] : x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; is++) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; i++) {
      const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = qw ? qw[i] : x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; i++) L[i] = int8_t(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's group search: rounds with iscale = −nmax/x_max, then up to 5 passes in which each
// value in turn moves to the level that best fits the least-squares scale of the others,
// kept when it raises (Σw·x·l)²/Σw·l² (weights x²). L gets offset nmax. Returns Σw·x·l/Σw·l².
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; i++) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; itry++) {
    int n_changed = 0;
    for (int i = 0; i < n; i++) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int new_l = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = int8_t(new_l);
            sumlx = slx;
            suml2 = sl2;
            n_changed++;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; i++) L[i] = int8_t(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric quantization x ≈ scale·L − the_min with L in [0, nmax]: starts from the
// min/max range, then for nstep+1 trial iscales (rmin + rdelta·is + nmax)/(max − min) rounds
// and solves the weighted least-squares scale and offset (offset kept ≤ 0), keeping the trial
// with the smallest weighted error (absolute with use_mad, else squared).
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                       bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; i++) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; i++) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(clampi(l, 0, nmax));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
      const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; i++) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; i++) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// The importance-matrix variant of make_qkx2_quants (squared error, weights given or x²):
// the same search over nstep+1 trial iscales (rmin + rdelta·is + nmax)/(max − min).
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  auto wt = [&](int i) { return weights ? weights[i] : x[i] * x[i]; };
  float min = x[0], max = x[0];
  float sum_w = wt(0);
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = wt(i);
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max <= min) {
    std::memset(L, 0, size_t(n));
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_mad = 0;
  for (int i = 0; i < n; i++) {
    L[i] = uint8_t(clampi(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * L[i] + min - x[i];
    best_mad += wt(i) * (diff * diff);
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
      const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      const float w = wt(i);
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float mad = 0;
      for (int i = 0; i < n; i++) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        mad += wt(i) * (diff * diff);
      }
      if (mad < best_mad) {
        for (int i = 0; i < n; i++) L[i] = Laux[i];
        best_mad = mad;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Quantization of non-negative x[n] (group scales or mins) to L in [0, nmax] with weights qw:
// 9 trial scales (0.1·is + nmax)/max, then up to 5 passes of per-value coordinate descent on
// the weighted least-squares fit. Returns the scale Σw·x·l/Σw·l².
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* qw) {
  float max = 0;
  for (int i = 0; i < n; i++) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    for (int i = 0; i < n; i++) L[i] = 0;
    return 0.f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; i++) L[i] = uint8_t(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; i++) {
    const float diff = x[i] - scale * L[i];
    best_mse += qw[i] * diff * diff;
  }
  for (int is = -4; is <= 4; is++) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * is + nmax) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; i++) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * l;
      mse += qw[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = uint8_t(l);
    sumlx += qw[i] * x[i] * l;
    suml2 += qw[i] * l * l;
  }
  for (int itry = 0; itry < 5; itry++) {
    int n_changed = 0;
    for (int i = 0; i < n; i++) {
      const float w = qw[i];
      float slx = sumlx - w * x[i] * L[i];
      float sl2 = suml2 - w * L[i] * L[i];
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = uint8_t(new_l);
            sumlx = slx;
            suml2 = sl2;
            n_changed++;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Index of the level of val[0..n) (ascending) nearest to x (ties to the lower level).
inline int best_index_int8(int n, const int8_t* val, float x) {
  if (x <= val[0]) return 0;
  if (x >= val[n - 1]) return n - 1;
  int ml = 0, mu = n - 1;
  while (mu - ml > 1) {
    const int mav = (ml + mu) / 2;
    if (x < val[mav]) mu = mav;
    else ml = mav;
  }
  return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

// ---- 32-element blocks --------------------------------------------------------------------

// Value of largest magnitude (its sign kept) and that magnitude.
inline void signed_absmax(const float* x, int n, float* max, float* amax) {
  *max = 0;
  *amax = 0;
  for (int j = 0; j < n; j++) {
    if (*amax < std::fabs(x[j])) {
      *amax = std::fabs(x[j]);
      *max = x[j];
    }
  }
}

// Q4_0 (18 bytes): d = x_max/−8, q = min(15, trunc(x/d + 8.5)).
void q_q4_0(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 18) {
    float max, amax;
    signed_absmax(x, 32, &max, &amax);
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    for (int j = 0; j < 16; j++) {
      const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int q1 = std::min(15, int(int8_t(x[j + 16] * id + 8.5f)));
      y[2 + j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

// Q4_1 (20 bytes): d = (max − min)/15, m = min, q = min(15, trunc((x − min)/d + 0.5)).
void q_q4_1(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 20) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    store_f16(y + 2, min);
    for (int j = 0; j < 16; j++) {
      const int q0 = std::min(15, int(int8_t((x[j] - min) * id + 0.5f)));
      const int q1 = std::min(15, int(int8_t((x[j + 16] - min) * id + 0.5f)));
      y[4 + j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

// Q5_0 (22 bytes): d = x_max/−16, q = min(31, trunc(x/d + 16.5)); bit 4 of element j in bit j
// of qh.
void q_q5_0(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 22) {
    float max, amax;
    signed_absmax(x, 32, &max, &amax);
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
      const int q0 = std::min(31, int(int8_t(x[j] * id + 16.5f)));
      const int q1 = std::min(31, int(int8_t(x[j + 16] * id + 16.5f)));
      y[6 + j] = uint8_t((q0 & 15) | ((q1 & 15) << 4));
      qh |= uint32_t((q0 >> 4) & 1) << j;
      qh |= uint32_t((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(y + 2, &qh, 4);
  }
}

// Q5_1 (24 bytes): d = (max − min)/31, m = min, q = trunc((x − min)/d + 0.5).
void q_q5_1(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 24) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    store_f16(y + 2, min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
      const int q0 = int(uint8_t((x[j] - min) * id + 0.5f));
      const int q1 = int(uint8_t((x[j + 16] - min) * id + 0.5f));
      y[8 + j] = uint8_t((q0 & 15) | ((q1 & 15) << 4));
      qh |= uint32_t((q0 >> 4) & 1) << j;
      qh |= uint32_t((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(y + 4, &qh, 4);
  }
}

// Q8_0 (34 bytes): d = max|x|/127, q = round(x/d) (half away from zero).
void q_q8_0(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 34) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    for (int j = 0; j < 32; j++) y[2 + j] = uint8_t(int8_t(std::round(x[j] * id)));
  }
}

// Q8_1 (36 bytes): as Q8_0, plus s = d·Σq.
void q_q8_1(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 36) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y, d);
    int sum = 0;
    for (int j = 0; j < 32; j++) {
      const int8_t q = int8_t(std::round(x[j] * id));
      y[4 + j] = uint8_t(q);
      sum += q;
    }
    store_f16(y + 2, float(sum) * d);
  }
}

// Non-linear 4-bit quantization of one super-block of sb values in blocks of 32 against the
// 16 levels v (IQ4_NL: sb = 32; IQ4_XS: sb = 256 with 6-bit block scales). Per block, with
// weights x²: the first scale is x_max/v[0]'s magnitude, then 15 trial inverse scales
// (t + v[0])/x_max for t in −7..7; each value takes its nearest level; the least-squares scale
// Σw·q·x/Σw·q² of the best trial is kept. IQ4_XS then stores d = −s_max/32 and per block
// l = round(s/d) in [−32, 31] (offset 32) and re-picks the levels against d·l.
// Writes d to dh, the packed 4-bit codes to q4[sb/2] and, for sb > 32, the scales.
// qw (sb importance weights, may be null): the weights become qw·sqrt(σ² + x²) with
// σ² = 2·Σx²/sb, as with llama.cpp's importance matrix.
void iq4_quantize(int sb, const float* x, uint8_t* dh, uint8_t* q4, uint8_t* scales_h,
                  uint8_t* scales_l, const float* qw = nullptr) {
  constexpr int kTry = 7;
  const int8_t* values = kIq4nlValues;
  uint8_t L[256];      // level index per element
  float scales[8];     // per-block scale
  float max_scale = 0, amax_scale = 0;
  const int nblk = sb / 32;
  float sigma2 = 0;
  for (int j = 0; j < sb; j++) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / sb;
  std::memset(q4, 0, size_t(sb / 2));
  for (int ib = 0; ib < nblk; ib++) {
    const float* xb = x + 32 * ib;
    uint8_t* Lb = L + 32 * ib;
    float weight[32];
    if (qw) {
      for (int j = 0; j < 32; j++) weight[j] = qw[32 * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    } else {
      for (int j = 0; j < 32; j++) weight[j] = xb[j] * xb[j];
    }
    float max, amax;
    signed_absmax(xb, 32, &max, &amax);
    if (amax < kGroupMaxEps) {
      scales[ib] = 0;
      continue;
    }
    float d = -max / values[0];
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; j++) {
      const int l = best_index_int8(16, values, id * xb[j]);
      Lb[j] = uint8_t(l);
      const float q = values[l];
      sumqx += weight[j] * q * xb[j];
      sumq2 += weight[j] * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -kTry; itry <= kTry; itry++) {
      id = (itry + values[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; j++) {
        const int l = best_index_int8(16, values, id * xb[j]);
        const float q = values[l];
        sumqx += weight[j] * q * xb[j];
        sumq2 += weight[j] * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  if (nblk > 1) {
    uint16_t sh = 0;
    const float d = -max_scale / 32;
    store_f16(dh, d);
    const float id = d ? 1 / d : 0.f;
    for (int ib = 0; ib < nblk; ib++) {
      int l = clampi(nearest_int(id * scales[ib]), -32, 31);
      const float dl = d * l;
      const float idl = dl ? 1 / dl : 0.f;
      for (int j = 0; j < 32; j++) L[32 * ib + j] = uint8_t(best_index_int8(16, values, idl * x[32 * ib + j]));
      l += 32;
      if (ib % 2 == 0) scales_l[ib / 2] = uint8_t(l & 15);
      else scales_l[ib / 2] |= uint8_t((l & 15) << 4);
      sh |= uint16_t((l >> 4) << (2 * ib));
    }
    std::memcpy(scales_h, &sh, 2);
  } else {
    store_f16(dh, scales[0]);
    const float id = scales[0] ? 1 / scales[0] : 0;
    for (int j = 0; j < sb; j++) L[j] = uint8_t(best_index_int8(16, values, id * x[j]));
  }
  for (int i = 0; i < sb / 32; i++)
    for (int j = 0; j < 16; j++) q4[16 * i + j] = uint8_t(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void q_iq4_nl(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 18) iq4_quantize(32, x, y, y + 2, nullptr, nullptr);
}

// IQ4_XS (136 bytes): f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128].
void q_iq4_xs(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 136) iq4_quantize(256, x, y, y + 8, y + 2, y + 4);
}

// MXFP4 (17 bytes): e = ⌊log2 max|x|⌋ − 2 + 127 (0 for an all-zero block); each value takes
// the E2M1 level v (doubled values) minimizing |v·2^(e−128) − x| (the first on ties).
void q_mxfp4(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 32, y += 17) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
    // (clamped to the byte: an all-subnormal block would otherwise go below 0)
    const float ef = amax > 0.0f ? std::floor(std::log2(amax)) - 2 + 127 : 0.0f;
    const uint8_t e = uint8_t(std::min(255.0f, std::max(0.0f, ef)));
    const uint32_t bits = e < 2 ? (uint32_t(0x00200000) << e) : (uint32_t(e - 1) << 23);
    float d;
    std::memcpy(&d, &bits, 4);
    y[0] = e;
    auto best = [&](float v) {
      int bi = 0;
      float be = std::fabs(kMxfp4Values[0] * d - v);
      for (int i = 1; i < 16; i++) {
        const float err = std::fabs(kMxfp4Values[i] * d - v);
        if (err < be) {
          bi = i;
          be = err;
        }
      }
      return bi;
    };
    for (int j = 0; j < 16; j++) y[1 + j] = uint8_t(best(x[j]) | (best(x[j + 16]) << 4));
  }
}

// ---- K-quants -----------------------------------------------------------------------------

// Q2_K (84 bytes): per 16 values make_qkx2_quants (nmax 3, weights |x|, MAD, rmin −0.5,
// rdelta 0.1, 16 trials); scales and mins to 4 bits against max/15; re-round.
void q_q2_k(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 84) {
    uint8_t L[256], Laux[16];
    float weights[16], mins[16], scales[16];
    uint8_t* sc = y;         // [16]
    uint8_t* qs = y + 16;    // [64]
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
      for (int l = 0; l < 16; l++) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = 15.f / max_scale;
      for (int j = 0; j < 16; j++) sc[j] = uint8_t(nearest_int(iscale * scales[j]));
      store_f16(y + 80, max_scale / 15.f);
    } else {
      for (int j = 0; j < 16; j++) sc[j] = 0;
      store_f16(y + 80, 0.f);
    }
    if (max_min > 0) {
      const float iscale = 15.f / max_min;
      for (int j = 0; j < 16; j++) sc[j] = uint8_t(sc[j] | (nearest_int(iscale * mins[j]) << 4));
      store_f16(y + 82, max_min / 15.f);
    } else {
      store_f16(y + 82, 0.f);
    }
    const float dd = f16_round(max_scale > 0 ? max_scale / 15.f : 0.f);
    const float dm = f16_round(max_min > 0 ? max_min / 15.f : 0.f);
    for (int j = 0; j < 16; j++) {
      const float d = dd * float(sc[j] & 15);
      if (!d) continue;
      const float m = dm * float(sc[j] >> 4);
      for (int i = 0; i < 16; i++) L[16 * j + i] = uint8_t(clampi(nearest_int((x[16 * j + i] + m) / d), 0, 3));
    }
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        const uint8_t* Lh = L + 128 * h;
        qs[32 * h + l] = uint8_t(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
      }
  }
}

// Q3_K (110 bytes): per 16 values make_q3_quants (nmax 4); the 16 scales to 6 bits against
// −32/s_max (s_max the scale of largest magnitude); re-round to [−4, 3]; the high bit of
// element j goes to bit j/32 of hmask[j%32].
void q_q3_k(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 110) {
    int8_t L[256];
    float scales[16];
    uint8_t* hmask = y;        // [32]
    uint8_t* qs = y + 32;      // [64]
    uint8_t* sc = y + 96;      // [12]
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      const float s = std::fabs(scales[j]);
      if (s > amax) {
        amax = s;
        max_scale = scales[j];
      }
    }
    std::memset(sc, 0, 12);
    float dd = 0;
    if (max_scale) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; j++) {
        int l = clampi(int8_t(nearest_int(iscale * scales[j])), -32, 31) + 32;
        if (j < 8) sc[j] = uint8_t(l & 15);
        else sc[j - 8] = uint8_t(sc[j - 8] | ((l & 15) << 4));
        l >>= 4;
        sc[j % 4 + 8] = uint8_t(sc[j % 4 + 8] | (l << (2 * (j / 4))));
      }
      store_f16(y + 108, 1 / iscale);
      dd = f16_round(1 / iscale);
    } else {
      store_f16(y + 108, 0.f);
    }
    for (int j = 0; j < 16; j++) {
      const int lo = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
      const int s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      const float d = dd * float(s);
      if (!d) continue;
      for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clampi(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    std::memset(hmask, 0, 32);
    for (int j = 0; j < 256; j++) {
      if (L[j] > 3) {
        hmask[j % 32] = uint8_t(hmask[j % 32] | (1 << (j / 32)));
        L[j] = int8_t(L[j] - 4);
      }
    }
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        const int8_t* Lh = L + 128 * h;
        qs[32 * h + l] = uint8_t(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
      }
  }
}

// Packs the 8 six-bit scales and mins of Q4_K/Q5_K into scales[12].
void pack_k_scales(const float* scales, const float* mins, float max_scale, float max_min, uint8_t* s) {
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; j++) {
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      s[j] = ls;
      s[j + 4] = lm;
    } else {
      s[j + 4] = uint8_t((ls & 15) | ((lm & 15) << 4));
      s[j - 4] = uint8_t(s[j - 4] | ((ls >> 4) << 6));
      s[j] = uint8_t(s[j] | ((lm >> 4) << 6));
    }
  }
}

inline void k_scale_min(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The codes L[256] of a Q4_K (nmax 15) or Q5_K (nmax 31) block into qs (and qh).
template <int nmax>
void pack_q45_k(const uint8_t* L, uint8_t* y) {
  if constexpr (nmax == 15) {
    uint8_t* q = y + 16;  // [128]
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) q[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + l + 32] << 4));
  } else {
    uint8_t* qh = y + 16;  // [32]
    uint8_t* ql = y + 48;  // [128]
    std::memset(qh, 0, 32);
    for (int c = 0; c < 4; c++) {
      for (int j = 0; j < 32; j++) {
        int l1 = L[64 * c + j], l2 = L[64 * c + j + 32];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] = uint8_t(qh[j] | (1 << (2 * c)));
        }
        if (l2 > 15) {
          l2 -= 16;
          qh[j] = uint8_t(qh[j] | (1 << (2 * c + 1)));
        }
        ql[32 * c + j] = uint8_t(l1 | (l2 << 4));
      }
    }
  }
}

// Q4_K (nmax 15, 144 bytes) and Q5_K (nmax 31, 176 bytes): per 32 values make_qkx2_quants
// with weights rms(x) + |x| (squared error; Q4_K rmin −1, 21 trials; Q5_K rmin −0.5, 16),
// 6-bit scales and mins against max/63, re-round.
template <int nmax>
void q_q45_k(const float* x, uint8_t* y, int64_t nb) {
  constexpr int bb = nmax == 15 ? 144 : 176;
  for (int64_t b = 0; b < nb; b++, x += 256, y += bb) {
    uint8_t L[256], Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; l++) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = nmax == 15
                      ? make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false)
                      : make_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t* s = y + 4;  // [12]
    pack_k_scales(scales, mins, max_scale, max_min, s);
    store_f16(y, max_scale / 63.f);
    store_f16(y + 2, max_min / 63.f);
    const float dd = f16_round(max_scale / 63.f), dm = f16_round(max_min / 63.f);
    for (int j = 0; j < 8; j++) {
      int sc, m;
      k_scale_min(j, s, &sc, &m);
      const float d = dd * float(sc);
      if (!d) continue;
      const float dmn = dm * float(m);
      for (int i = 0; i < 32; i++) L[32 * j + i] = uint8_t(clampi(nearest_int((x[32 * j + i] + dmn) / d), 0, nmax));
    }
    pack_q45_k<nmax>(L, y);
  }
}

// One Q6_K block (210 bytes): per 16 values make_qx_quants (nmax 32; weights x², or qw[256]
// when given); the 16 scales to int8 against −128/s_max; re-round to [−32, 31].
void q6_k_block(const float* x, uint8_t* y, const float* qw) {
  int8_t L[256];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ib++) {
    scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : nullptr);
    if (std::fabs(scales[ib]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(y, 0, 210);
    return;
  }
  int8_t* sc = reinterpret_cast<int8_t*>(y + 192);  // [16]
  const float iscale = -128.f / max_scale;
  store_f16(y + 208, 1 / iscale);
  const float dd = f16_round(1 / iscale);
  for (int ib = 0; ib < 16; ib++) sc[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
  for (int j = 0; j < 16; j++) {
    const float d = dd * float(sc[j]);
    if (!d) continue;
    for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clampi(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
  }
  uint8_t* ql = y;         // [128]
  uint8_t* qh = y + 128;   // [64]
  for (int h = 0; h < 2; h++) {
    const int8_t* Lh = L + 128 * h;
    for (int l = 0; l < 32; l++) {
      const int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
      ql[64 * h + l] = uint8_t((q1 & 15) | ((q3 & 15) << 4));
      ql[64 * h + l + 32] = uint8_t((q2 & 15) | ((q4 & 15) << 4));
      qh[32 * h + l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

void q_q6_k(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 210) q6_k_block(x, y, nullptr);
}

// Q8_K (292 bytes): d = x_max/−127 (f32), q = min(127, round(x/d)), bsums of 16.
void q_q8_k(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 292) {
    float max, amax;
    signed_absmax(x, 256, &max, &amax);
    int8_t* q = reinterpret_cast<int8_t*>(y + 4);  // [256]
    if (!amax) {
      std::memset(y, 0, 292);
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; j++) q[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
    for (int g = 0; g < 16; g++) {
      int sum = 0;
      for (int i = 0; i < 16; i++) sum += q[16 * g + i];
      const int16_t s = int16_t(sum);
      std::memcpy(y + 260 + 2 * g, &s, 2);
    }
    const float d = 1 / iscale;
    std::memcpy(y, &d, 4);
  }
}

// ---- ternary ------------------------------------------------------------------------------

// TQ1_0 (54 bytes): d = max|x|; trits t = round(x/d) + 1 packed 5 per byte (4 in qh) as
// ceil(v·256/243) of the base-3 number v (first element most significant).
void q_tq1_0(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 54) {
    float amax = 0;
    for (int j = 0; j < 256; j++) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y + 52, d);
    auto t = [&](float v) { return int(std::lround(v * id)) + 1; };
    auto pack = [](int v) { return uint8_t((uint16_t(v) * 256 + 242) / 243); };
    for (int m = 0; m < 32; m++) {
      int v = 0;
      for (int k = 0; k < 5; k++) v = v * 3 + t(x[m + 32 * k]);
      y[m] = pack(v);
    }
    for (int m = 0; m < 16; m++) {
      int v = 0;
      for (int k = 0; k < 5; k++) v = v * 3 + t(x[160 + m + 16 * k]);
      y[32 + m] = pack(v);
    }
    for (int j = 0; j < 4; j++) {
      int v = 0;
      for (int k = 0; k < 4; k++) v = v * 3 + t(x[240 + j + 4 * k]);
      y[48 + j] = pack(v * 3);
    }
  }
}

// TQ2_0 (66 bytes): d = max|x|; 2-bit codes round(x/d) + 1, element 128c + 32l + m in bits
// 2l of qs[32c + m].
void q_tq2_0(const float* x, uint8_t* y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, x += 256, y += 66) {
    float amax = 0;
    for (int j = 0; j < 256; j++) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax;
    const float id = d ? 1.0f / d : 0.0f;
    store_f16(y + 64, d);
    for (int c = 0; c < 2; c++)
      for (int m = 0; m < 32; m++) {
        int q = 0;
        for (int l = 0; l < 4; l++) q |= ((int(std::lround(x[128 * c + 32 * l + m] * id)) + 1) & 3) << (2 * l);
        y[32 * c + m] = uint8_t(q);
      }
  }
}

// ---- with an importance matrix (llama.cpp's quantize_row_*_impl) ---------------------------
// qw holds one importance weight per column of the row (n_per_row of them, the same for every
// row). Each row is one call: some types use the row's mean square.

// Q4_0 / Q5_0 (nmax 8 / 16) and Q4_1 / Q5_1 (15 / 31 levels): per 32 values, weights
// qw·sqrt(σ² + x²) with σ² the row's mean square; make_qx_quants (symmetric) or
// make_qkx3_quants (with a min, 37 trials from rmin −0.9 in steps of 0.05).
void qw_legacy(DType t, const float* x, uint8_t* y, int64_t n, const float* qw) {
  float sum_x2 = 0;
  for (int64_t j = 0; j < n; j++) sum_x2 += x[j] * x[j];
  const float sigma2 = sum_x2 / n;
  const int64_t bb = dtype_block_bytes(t);
  for (int64_t ib = 0; ib < n / 32; ib++, y += bb) {
    const float* xb = x + 32 * ib;
    float weight[32];
    for (int j = 0; j < 32; j++) weight[j] = qw[32 * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    uint8_t L[32], Laux[32];
    if (t == DType::Q4_0 || t == DType::Q5_0) {
      int8_t Ls[32];
      const float d = make_qx_quants(32, t == DType::Q4_0 ? 8 : 16, xb, Ls, weight);
      store_f16(y, d);
      for (int j = 0; j < 32; j++) L[j] = uint8_t(Ls[j]);
    } else {
      float min;
      const float d = make_qkx3_quants(32, t == DType::Q4_1 ? 15 : 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36);
      store_f16(y, d);
      store_f16(y + 2, -min);
    }
    if (t == DType::Q4_0 || t == DType::Q4_1) {
      uint8_t* qs = y + (t == DType::Q4_0 ? 2 : 4);  // [16]
      for (int j = 0; j < 16; j++) qs[j] = uint8_t(L[j] | (L[j + 16] << 4));
    } else {
      uint8_t* qs = y + (t == DType::Q5_0 ? 6 : 8);  // [16]
      uint32_t qh = 0;
      for (int j = 0; j < 16; j++) {
        qs[j] = uint8_t((L[j] & 15) | ((L[j + 16] & 15) << 4));
        qh |= uint32_t((L[j] >> 4) & 1) << j;
        qh |= uint32_t((L[j + 16] >> 4) & 1) << (j + 16);
      }
      std::memcpy(y + (t == DType::Q5_0 ? 2 : 4), &qh, 4);
    }
  }
}

void pack_2bit(const uint8_t* L, uint8_t* qs) {  // L[256] in 0..3 -> qs[64]
  for (int h = 0; h < 2; h++)
    for (int l = 0; l < 32; l++) {
      const uint8_t* Lh = L + 128 * h;
      qs[32 * h + l] = uint8_t(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
}

// Q2_K: per 16 values make_qkx3_quants (nmax 3, weights qw·sqrt(σ² + x²), σ² the block's mean
// square), then the 16 scales and 16 mins each to 4 bits with make_qp_quants weighted by the
// groups' total weights; re-round.
void qw_q2_k(const float* x, uint8_t* y, int64_t n, const float* qw) {
  for (int64_t b = 0; b < n / 256; b++, x += 256, y += 84) {
    uint8_t L[256], Laux[16], Ls[16], Lm[16];
    float mins[16], scales[16], sw[16], weight[16];
    float sumx2 = 0;
    for (int j = 0; j < 256; j++) sumx2 += x[j] * x[j];
    const float sigma2 = sumx2 / 256;
    for (int j = 0; j < 16; j++) {
      const float* w = qw + 256 * b + 16 * j;
      for (int l = 0; l < 16; l++) weight[l] = w[l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      sw[j] = 0;
      for (int l = 0; l < 16; l++) sw[j] += weight[l];
      scales[j] = make_qkx3_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    const float dm = make_qp_quants(16, 15, scales, Ls, sw);
    const float mm = make_qp_quants(16, 15, mins, Lm, sw);
    store_f16(y + 80, dm);
    store_f16(y + 82, mm);
    const float dd = f16_round(dm), dmn = f16_round(mm);
    uint8_t* sc = y;  // [16]
    for (int j = 0; j < 16; j++) sc[j] = uint8_t(Ls[j] | (Lm[j] << 4));
    for (int j = 0; j < 16; j++) {
      const float d = dd * float(sc[j] & 15);
      if (!d) continue;
      const float m = dmn * float(sc[j] >> 4);
      for (int i = 0; i < 16; i++) L[16 * j + i] = uint8_t(clampi(nearest_int((x[16 * j + i] + m) / d), 0, 3));
    }
    pack_2bit(L, y + 16);
  }
}

// Q3_K: per 16 values make_qx_quants (nmax 4, weights qw·sqrt(σ² + x²), σ² twice the block's
// mean square); the 16 scales with make_qx_quants (nmax 32) weighted by the groups' total
// weights; re-round.
void qw_q3_k(const float* x, uint8_t* y, int64_t n, const float* qw) {
  for (int64_t b = 0; b < n / 256; b++, x += 256, y += 110) {
    int8_t L[256], Ls[16];
    float scales[16], weight[16], sw[16];
    float sumx2 = 0;
    for (int j = 0; j < 256; j++) sumx2 += x[j] * x[j];
    const float sigma2 = 2 * sumx2 / 256;
    for (int j = 0; j < 16; j++) {
      const float* w = qw + 256 * b + 16 * j;
      for (int l = 0; l < 16; l++) weight[l] = w[l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 16; l++) sumw += weight[l];
      sw[j] = sumw;
      scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
    }
    uint8_t* sc = y + 96;  // [12]
    std::memset(sc, 0, 12);
    const float d_block = make_qx_quants(16, 32, scales, Ls, sw);
    for (int j = 0; j < 16; j++) {
      int l = Ls[j];
      if (j < 8) sc[j] = uint8_t(l & 15);
      else sc[j - 8] = uint8_t(sc[j - 8] | ((l & 15) << 4));
      l >>= 4;
      sc[j % 4 + 8] = uint8_t(sc[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    store_f16(y + 108, d_block);
    const float dd = f16_round(d_block);
    for (int j = 0; j < 16; j++) {
      const int lo = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
      const int sv = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      const float d = dd * float(sv);
      if (!d) continue;
      for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clampi(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    uint8_t* hmask = y;  // [32]
    std::memset(hmask, 0, 32);
    uint8_t Lu[256];
    for (int j = 0; j < 256; j++) {
      int l = L[j];
      if (l > 3) {
        hmask[j % 32] = uint8_t(hmask[j % 32] | (1 << (j / 32)));
        l -= 4;
      }
      Lu[j] = uint8_t(l);
    }
    pack_2bit(Lu, y + 32);
  }
}

// Q4_K / Q5_K: per 32 values make_qkx3_quants (weights qw·sqrt(σ² + x²), σ² twice the
// block's mean square, 37 trials), scales and mins to 6 bits with make_qp_quants weighted by
// the groups' total weights; re-round.
template <int nmax>
void qw_q45_k(const float* x, uint8_t* y, int64_t n, const float* qw) {
  constexpr int bb = nmax == 15 ? 144 : 176;
  for (int64_t b = 0; b < n / 256; b++, x += 256, y += bb) {
    uint8_t L[256], Laux[32], Ls[8], Lm[8];
    float weights[32], mins[8], scales[8], sw[8];
    float sum_x2 = 0;
    for (int l = 0; l < 256; l++) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / 256;
    for (int j = 0; j < 8; j++) {
      const float* w = qw + 256 * b + 32 * j;
      for (int l = 0; l < 32; l++) weights[l] = w[l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 32; l++) sumw += weights[l];
      sw[j] = sumw;
      scales[j] = make_qkx3_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    const float d_block = make_qp_quants(8, 63, scales, Ls, sw);
    const float m_block = make_qp_quants(8, 63, mins, Lm, sw);
    uint8_t* s = y + 4;  // [12]
    for (int j = 0; j < 8; j++) {
      const uint8_t ls = std::min<uint8_t>(63, Ls[j]), lm = std::min<uint8_t>(63, Lm[j]);
      if (j < 4) {
        s[j] = ls;
        s[j + 4] = lm;
      } else {
        s[j + 4] = uint8_t((ls & 15) | ((lm & 15) << 4));
        s[j - 4] = uint8_t(s[j - 4] | ((ls >> 4) << 6));
        s[j] = uint8_t(s[j] | ((lm >> 4) << 6));
      }
    }
    store_f16(y, d_block);
    store_f16(y + 2, m_block);
    const float dd = f16_round(d_block), dm = f16_round(m_block);
    for (int j = 0; j < 8; j++) {
      int sc, m;
      k_scale_min(j, s, &sc, &m);
      const float d = dd * float(sc);
      if (!d) continue;
      const float dmn = dm * float(m);
      for (int i = 0; i < 32; i++) L[32 * j + i] = uint8_t(clampi(nearest_int((x[32 * j + i] + dmn) / d), 0, nmax));
    }
    pack_q45_k<nmax>(L, y);
  }
}

// Q6_K: per 16 values make_qx_quants (nmax 32) with the importance weights themselves; the
// rest as without them.
void qw_q6_k(const float* x, uint8_t* y, int64_t n, const float* qw) {
  for (int64_t b = 0; b < n / 256; b++, x += 256, y += 210) q6_k_block(x, y, qw + 256 * b);
}

using BlockFn = void (*)(const float*, uint8_t*, int64_t);

BlockFn block_encoder(DType t) {
  switch (t) {
    case DType::Q4_0: return q_q4_0;
    case DType::Q4_1: return q_q4_1;
    case DType::Q5_0: return q_q5_0;
    case DType::Q5_1: return q_q5_1;
    case DType::Q8_0: return q_q8_0;
    case DType::Q8_1: return q_q8_1;
    case DType::Q2_K: return q_q2_k;
    case DType::Q3_K: return q_q3_k;
    case DType::Q4_K: return q_q45_k<15>;
    case DType::Q5_K: return q_q45_k<31>;
    case DType::Q6_K: return q_q6_k;
    case DType::Q8_K: return q_q8_k;
    case DType::IQ4_NL: return q_iq4_nl;
    case DType::IQ4_XS: return q_iq4_xs;
    case DType::TQ1_0: return q_tq1_0;
    case DType::TQ2_0: return q_tq2_0;
    case DType::MXFP4: return q_mxfp4;
    default: return nullptr;
  }
}

}  // namespace

bool can_quantize(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || block_encoder(t) != nullptr;
}

bool quantize_rows(DType t, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* imatrix) {
  if (nrows < 0 || n_per_row < 0 || !can_quantize(t)) return false;
  if (!imatrix) return quantize_row(t, src, dst, nrows * n_per_row);
  const int64_t be = dtype_block_elems(t);
  if (n_per_row % be != 0) return false;
  const size_t row_bytes = dtype_bytes(t, n_per_row);
  uint8_t* d = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < nrows; r++) {
    const float* x = src + r * n_per_row;
    uint8_t* y = d + size_t(r) * row_bytes;
    switch (t) {
      case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: qw_legacy(t, x, y, n_per_row, imatrix); break;
      case DType::Q2_K: qw_q2_k(x, y, n_per_row, imatrix); break;
      case DType::Q3_K: qw_q3_k(x, y, n_per_row, imatrix); break;
      case DType::Q4_K: qw_q45_k<15>(x, y, n_per_row, imatrix); break;
      case DType::Q5_K: qw_q45_k<31>(x, y, n_per_row, imatrix); break;
      case DType::Q6_K: qw_q6_k(x, y, n_per_row, imatrix); break;
      case DType::IQ4_NL:
        for (int64_t b = 0; b < n_per_row / 32; b++) iq4_quantize(32, x + 32 * b, y + 18 * b, y + 18 * b + 2, nullptr, nullptr, imatrix + 32 * b);
        break;
      case DType::IQ4_XS:
        for (int64_t b = 0; b < n_per_row / 256; b++) {
          uint8_t* yb = y + 136 * b;
          iq4_quantize(256, x + 256 * b, yb, yb + 8, yb + 2, yb + 4, imatrix + 256 * b);
        }
        break;
      default:  // the importance matrix does not change these (llama.cpp ignores it too)
        if (!quantize_row(t, x, y, n_per_row)) return false;
    }
  }
  return true;
}

bool quantize_row(DType t, const float* src, void* dst, int64_t n) {
  if (n < 0 || !can_quantize(t)) return false;
  uint8_t* d = static_cast<uint8_t*>(dst);
  switch (t) {
    case DType::F32:
      if (n) std::memcpy(dst, src, size_t(n) * 4);
      return true;
    case DType::F16:
      for (int64_t i = 0; i < n; i++) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return true;
    case DType::BF16:
      for (int64_t i = 0; i < n; i++) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return true;
    default: break;
  }
  const int64_t be = dtype_block_elems(t);
  if (n % be != 0) return false;
  block_encoder(t)(src, d, n / be);
  return true;
}

}  // namespace lowrank::quants
