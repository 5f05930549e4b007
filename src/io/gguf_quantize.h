// Requantizing a GGUF model with llama.cpp's mixture presets (`llama-quantize` without an
// importance matrix): which tensor gets which type is decided by the rules of llama.cpp's
// src/llama-quant.cpp (tensor_allows_quantization, llama_tensor_get_type_impl,
// tensor_type_fallback at ggml-org/llama.cpp 007dbbf3), the data by the quants layer's
// reference quantizers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"

namespace lowrank {

// A llama.cpp file type (`llama-quantize` type name): its LLAMA_FTYPE_* value, written as
// general.file_type, and the default tensor type of the mixture.
struct QuantPreset {
  std::string name;      // "Q4_K_M", ...
  uint32_t ftype = 0;    // LLAMA_FTYPE_MOSTLY_*
  DType default_type = DType::F32;
};

// The presets this engine writes: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S,
// Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4_MOE
// (and llama-quantize's aliases Q3_K, Q4_K, Q5_K for the _M variants). Case-insensitive; false
// if unknown.
bool quant_preset(const std::string& name, QuantPreset* out);
std::vector<std::string> quant_preset_names();

// What happens to one tensor.
struct TensorQuantPlan {
  std::string name;
  std::vector<int64_t> ne;   // ggml order
  DType from = DType::F32;
  DType to = DType::F32;
  bool fallback = false;     // the mixture's type did not fit the row length (llama.cpp's fallback)
};

// The type of every tensor of f (in f's tensor order) under preset p, by llama.cpp's rules;
// pure (llama-quantize --pure): every quantizable tensor gets the preset's default type, no
// per-tensor mixture (the row-length fallback still applies).
// Throws lowrank::Error naming the file and tensor when a tensor cannot be stored in the
// chosen type and llama.cpp defines no fallback (e.g. Q8_0 for rows not a multiple of 32).
std::vector<TensorQuantPlan> plan_quantization(const GgufFile& f, const QuantPreset& p, bool pure = false,
                                               bool has_imatrix = false);

// The model facts the rules read: general.architecture and its block_count, head counts
// (layer 0's when per-layer arrays) and expert_count.
struct QuantModelInfo {
  std::string arch;
  int n_layer = 0, n_head = 0, n_head_kv = 0, n_expert = 0;
};
QuantModelInfo quant_model_info(const GgufFile& f);
// The same rules on a list of tensors (name, ne and from filled in; to and fallback are set);
// path names the model in messages. has_imatrix: the rules llama.cpp applies when an
// importance matrix is given (ffn_down of IQ4_NL/IQ4_XS stays, of Q4_0/Q5_0 takes Q4_1/Q5_1 in
// the first eighth of the layers).
std::vector<TensorQuantPlan> plan_quantization(std::vector<TensorQuantPlan> tensors, const QuantModelInfo& info,
                                               const QuantPreset& p, bool pure, const std::string& path,
                                               bool has_imatrix = false);

struct QuantizeStats {
  int64_t tensors = 0, requantized = 0, copied = 0, fallbacks = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data only
  int64_t elements = 0;
};

struct QuantizeOptions {
  bool pure = false;             // llama-quantize --pure
  // Quantize with llama.cpp's importance-matrix quantizers and an importance of 1 for every
  // column of every tensor (llama-quantize --imatrix with such a file): a weighted least-squares
  // search for the K-quant block scales that lowers the error of most types (on TinyLlama
  // IQ2_XXS -> Q4_K_M: perplexity +1.6 % instead of +3.8 %). Off: llama-quantize's default.
  bool uniform_imatrix = false;
  int threads = 0;               // <= 0: OpenMP's default
};

// Writes in (any GGUF this engine reads) requantized to preset p at out: metadata copied,
// general.file_type and general.quantization_version set, split keys removed; tensors in the
// input's order, each either copied (same type) or dequantized and quantized. out is written
// atomically (GgufWriter: out.tmp, then rename).
QuantizeStats quantize_gguf(const std::string& in, const std::string& out, const QuantPreset& p,
                            const QuantizeOptions& opt = {});

}  // namespace lowrank
