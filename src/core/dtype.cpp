#include "core/dtype.h"

#include "core/error.h"
#include "io/dequant.h"

namespace lowrank {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q2_K: return "Q2_K";
    case DType::Q4_K: return "Q4_K";
    case DType::Q5_K: return "Q5_K";
    case DType::Q6_K: return "Q6_K";
    case DType::IQ2_XXS: return "IQ2_XXS";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::Q8_0: case DType::Q4_0: return 32;
    case DType::Q2_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::IQ2_XXS: return 256;
    default: return 1;
  }
}

int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::Q8_0: return 34;
    case DType::Q4_0: return 18;
    case DType::Q2_K: return 84;
    case DType::Q4_K: return 144;
    case DType::Q5_K: return 176;
    case DType::Q6_K: return 210;
    case DType::IQ2_XXS: return 66;
  }
  return 0;
}

bool dtype_is_quantized(DType t) { return dtype_block_elems(t) > 1; }

size_t dtype_bytes(DType t, int64_t n) {
  return size_t(n / dtype_block_elems(t)) * size_t(dtype_block_bytes(t));
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do { man <<= 1; e++; } while (!(man & 0x400));
      man &= 0x3ff;
      u = sign | uint32_t(127 - 15 - e) << 23 | man << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000 | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t absu = u & 0x7fffffff;
  if (absu > 0x7f800000) return uint16_t(sign | 0x7e00);            // NaN
  if (absu >= 0x477ff000) return uint16_t(sign | 0x7c00);           // overflow -> inf
  if (absu < 0x38800000) {                                           // subnormal or zero
    if (absu < 0x33000000) return uint16_t(sign);
    uint32_t e = absu >> 23;
    uint32_t man = (absu & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;  // value in units of 2^-24 is man >> shift
    uint32_t half_man = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_man & 1))) half_man++;
    return uint16_t(sign | half_man);
  }
  uint32_t h = ((absu >> 13) - (112u << 10));
  uint32_t rem = absu & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return uint16_t(sign | h);
}

void to_f32(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    // 16-bit values are loaded with memcpy: tensor data in a file may sit at an odd offset,
    // and dereferencing a misaligned uint16_t* is undefined behaviour.
    case DType::F16: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    }
    case DType::BF16: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    }
    default:
      if (dtype_is_quantized(t)) {
        dequantize(t, src, dst, n);
        return;
      }
      fail("cannot convert dtype ", dtype_name(t), " to f32");
  }
}

}  // namespace lowrank
