#include "quants/types.h"

#include <cassert>
#include <cctype>
#include <cstring>

namespace lowrank::quants {
namespace {

struct Traits {
  DType dtype;
  const char* name;
  int32_t ggml_id;  // -1: none
  int32_t block_elems;
  int32_t block_bytes;
  bool weight;
};

// Indexed by DType. Block sizes: ggml-common.h block structs (QK_K = 256).
constexpr Traits kTraits[kDTypeCount] = {
    {DType::F32, "F32", 0, 1, 4, true},
    {DType::F16, "F16", 1, 1, 2, true},
    {DType::BF16, "BF16", 30, 1, 2, true},
    {DType::Q4_0, "Q4_0", 2, 32, 18, true},      // f16 d | u8 qs[16]
    {DType::Q4_1, "Q4_1", 3, 32, 20, true},      // f16 d, m | u8 qs[16]
    {DType::Q5_0, "Q5_0", 6, 32, 22, true},      // f16 d | u8 qh[4] | u8 qs[16]
    {DType::Q5_1, "Q5_1", 7, 32, 24, true},      // f16 d, m | u8 qh[4] | u8 qs[16]
    {DType::Q8_0, "Q8_0", 8, 32, 34, true},      // f16 d | i8 qs[32]
    {DType::Q8_1, "Q8_1", 9, 32, 36, true},      // f16 d, s | i8 qs[32]
    {DType::Q2_K, "Q2_K", 10, 256, 84, true},    // scales[16] qs[64] d dmin
    {DType::Q3_K, "Q3_K", 11, 256, 110, true},   // hmask[32] qs[64] scales[12] d
    {DType::Q4_K, "Q4_K", 12, 256, 144, true},   // d dmin scales[12] qs[128]
    {DType::Q5_K, "Q5_K", 13, 256, 176, true},   // d dmin scales[12] qh[32] qs[128]
    {DType::Q6_K, "Q6_K", 14, 256, 210, true},   // ql[128] qh[64] scales[16] d
    {DType::Q8_K, "Q8_K", 15, 256, 292, true},   // f32 d | i8 qs[256] | i16 bsums[16]
    {DType::IQ1_S, "IQ1_S", 19, 256, 50, true},  // d | qs[32] | u16 qh[8]
    {DType::IQ1_M, "IQ1_M", 29, 256, 56, true},  // qs[32] | qh[16] | scales[8]
    {DType::IQ2_XXS, "IQ2_XXS", 16, 256, 66, true},  // d | u16 qs[32]
    {DType::IQ2_XS, "IQ2_XS", 17, 256, 74, true},    // d | u16 qs[32] | scales[8]
    {DType::IQ2_S, "IQ2_S", 22, 256, 82, true},      // d | qs[64] | qh[8] | scales[8]
    {DType::IQ3_XXS, "IQ3_XXS", 18, 256, 98, true},  // d | qs[96]
    {DType::IQ3_S, "IQ3_S", 21, 256, 110, true},     // d | qs[64] qh[8] signs[32] scales[4]
    {DType::IQ4_NL, "IQ4_NL", 20, 32, 18, true},     // d | qs[16]
    {DType::IQ4_XS, "IQ4_XS", 23, 256, 136, true},   // d | u16 scales_h | scales_l[4] | qs[128]
    {DType::TQ1_0, "TQ1_0", 34, 256, 54, true},      // qs[48] | qh[4] | d
    {DType::TQ2_0, "TQ2_0", 35, 256, 66, true},      // qs[64] | d
    {DType::MXFP4, "MXFP4", 39, 32, 17, true},       // u8 e (E8M0) | qs[16]
    {DType::I32, "I32", 26, 1, 4, false},
    {DType::I64, "I64", 27, 1, 8, false},
    {DType::U8, "U8", -1, 1, 1, false},
};

constexpr bool table_in_order() {
  for (int i = 0; i < kDTypeCount; i++)
    if (int(kTraits[i].dtype) != i) return false;
  return true;
}
static_assert(table_in_order(), "kTraits must be indexed by DType");

const Traits& traits(DType t) {
  assert(int(t) < kDTypeCount);
  return kTraits[int(t)];
}

// Every ggml type id: name and block geometry (nullptr name: removed id).
struct GgmlId {
  const char* name;
  int32_t block_elems;
  int32_t block_bytes;
};
constexpr GgmlId kGgmlIds[kGgmlTypeCount] = {
    {"F32", 1, 4},       {"F16", 1, 2},      {"Q4_0", 32, 18},   {"Q4_1", 32, 20},
    {nullptr, 0, 0},     {nullptr, 0, 0},    {"Q5_0", 32, 22},   {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},    {"Q8_1", 32, 36},   {"Q2_K", 256, 84},  {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},  {"Q5_K", 256, 176}, {"Q6_K", 256, 210}, {"Q8_K", 256, 292},
    {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18},  {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82}, {"IQ4_XS", 256, 136},
    {"I8", 1, 1},        {"I16", 1, 2},      {"I32", 1, 4},      {"I64", 1, 8},
    {"F64", 1, 8},       {"IQ1_M", 256, 56}, {"BF16", 1, 2},     {nullptr, 0, 0},
    {nullptr, 0, 0},     {nullptr, 0, 0},    {"TQ1_0", 256, 54}, {"TQ2_0", 256, 66},
    {nullptr, 0, 0},     {nullptr, 0, 0},    {nullptr, 0, 0},    {"MXFP4", 32, 17},
    {"NVFP4", 64, 36},   {"Q1_0", 128, 18},  {"Q2_0", 64, 18},
};

constexpr bool ids_agree() {
  for (const Traits& t : kTraits) {
    if (t.ggml_id < 0) continue;
    const GgmlId& g = kGgmlIds[t.ggml_id];
    if (!g.name || g.block_elems != t.block_elems || g.block_bytes != t.block_bytes) return false;
  }
  return true;
}
static_assert(ids_agree(), "DType traits and ggml id table disagree");

bool iequal(const char* a, const char* b) {
  for (; *a && *b; a++, b++)
    if (std::toupper(static_cast<unsigned char>(*a)) != std::toupper(static_cast<unsigned char>(*b))) return false;
  return *a == *b;
}

}  // namespace

const char* dtype_name(DType t) { return traits(t).name; }
int64_t dtype_block_elems(DType t) { return traits(t).block_elems; }
int64_t dtype_block_bytes(DType t) { return traits(t).block_bytes; }
bool dtype_is_quantized(DType t) { return traits(t).block_elems > 1; }
bool dtype_is_weight(DType t) { return traits(t).weight; }

size_t dtype_bytes(DType t, int64_t n) {
  const Traits& tr = traits(t);
  assert(n >= 0 && n % tr.block_elems == 0);
  return size_t(n / tr.block_elems) * size_t(tr.block_bytes);
}

bool dtype_from_name(const char* name, DType* out) {
  for (const Traits& t : kTraits) {
    if (iequal(name, t.name)) {
      *out = t.dtype;
      return true;
    }
  }
  return false;
}

bool ggml_id_to_dtype(uint32_t id, DType* out) {
  for (const Traits& t : kTraits) {
    if (t.ggml_id >= 0 && uint32_t(t.ggml_id) == id) {
      *out = t.dtype;
      return true;
    }
  }
  return false;
}

bool dtype_to_ggml_id(DType t, uint32_t* out) {
  const Traits& tr = traits(t);
  if (tr.ggml_id < 0) return false;
  *out = uint32_t(tr.ggml_id);
  return true;
}

const char* ggml_id_name(uint32_t id) { return id < kGgmlTypeCount ? kGgmlIds[id].name : nullptr; }

bool ggml_id_block(uint32_t id, int64_t* elems, int64_t* bytes) {
  if (id >= kGgmlTypeCount || !kGgmlIds[id].name) return false;
  *elems = kGgmlIds[id].block_elems;
  *bytes = kGgmlIds[id].block_bytes;
  return true;
}

}  // namespace lowrank::quants
