// Element types of stored weights and the ggml/GGUF tensor type table (type id, name, block
// elements, block bytes), as ggml defines them (ggml.h enum ggml_type, ggml.c type traits).
//
// This is the lowest layer of the project: it includes nothing else of it. Programming
// errors are caught with asserts; functions that can meet bad input report it through their
// return value, and the layers above turn that into messages naming file and tensor.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lowrank::quants {

enum class DType : uint8_t {
  F32, F16, BF16,
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1,
  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
  IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS,
  TQ1_0, TQ2_0, MXFP4,
  I32, I64, U8,  // not weights: ids and indices (safetensors; GGUF I32/I64)
};
constexpr int kDTypeCount = int(DType::U8) + 1;

const char* dtype_name(DType t);
// Elements per block (1 for plain types) and bytes per block.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
bool dtype_is_quantized(DType t);
// Float weight types that decode to f32 (every type above except I32, I64, U8).
bool dtype_is_weight(DType t);
// Bytes for n elements (n must be a multiple of the block size for quantized types).
size_t dtype_bytes(DType t, int64_t n);
// The DType named name ("Q4_K", "f16", ...; case-insensitive); false if none.
bool dtype_from_name(const char* name, DType* out);

// ---- ggml type ids ----------------------------------------------------------------------
// ids 0 .. kGgmlTypeCount-1 are ggml's (GGML_TYPE_COUNT of the newest ggml); some are
// removed (4, 5, 31-33, 36-38) and a few have no DType here (I8, I16, F64, NVFP4, Q1_0, Q2_0).
constexpr uint32_t kGgmlTypeCount = 43;

// The DType stored under ggml type id; false for ids this engine does not decode.
bool ggml_id_to_dtype(uint32_t id, DType* out);
// The ggml type id of t; false for U8 (no ggml type).
bool dtype_to_ggml_id(DType t, uint32_t* out);
// ggml's name of a type id ("Q3_K", "NVFP4", ...), or nullptr for ids past the table and
// removed ids.
const char* ggml_id_name(uint32_t id);
// Block elements / bytes of any type id ggml defines (also those without a DType); false for
// removed ids and ids past the table.
bool ggml_id_block(uint32_t id, int64_t* elems, int64_t* bytes);

}  // namespace lowrank::quants
