// libFuzzer target for the GGUF reader: parses arbitrary bytes from memory (no disk I/O),
// reads every metadata value through its accessors, builds the tokenizer of small vocabularies
// (tokenizer.ggml.*) and runs it on a short text, and decodes the first block of every tensor.
// Any input must either parse or throw lowrank::Error; crashes, sanitizer reports, hangs and
// huge allocations are bugs.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quants/dequant.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"

using namespace lowrank;

namespace {

void touch_value(const GgufValue& v) {
  (void)v.to_string(4);
  try { (void)v.as_int(); } catch (const Error&) {}
  try { (void)v.as_double(); } catch (const Error&) {}
  try { (void)v.as_bool(); } catch (const Error&) {}
  try { (void)v.as_string(); } catch (const Error&) {}
  if (v.is_array() && v.count <= 4096) {
    try { (void)v.as_string_array(); } catch (const Error&) {}
    try { (void)v.as_float_array(); } catch (const Error&) {}
    try { (void)v.as_int_array(); } catch (const Error&) {}
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    GgufFile f = GgufFile::from_memory(data, size, "fuzz.gguf");
    for (const auto& kv : f.metadata()) touch_value(kv.second);
    (void)f.get_int("general.alignment", 32);
    try { (void)f.get_string_array("tokenizer.ggml.tokens"); } catch (const Error&) {}
    const GgufValue* toks = f.find("tokenizer.ggml.tokens");
    const GgufValue* merges = f.find("tokenizer.ggml.merges");
    if (toks && toks->count <= 4096 && (!merges || merges->count <= 4096)) {
      try {
        Tokenizer t = gguf_tokenizer(f);
        std::vector<int32_t> ids = t.encode("Hello <s> world</s>\n\t\xC3\xA9 12345 <|im_end|>", true);
        (void)t.decode(ids);
        (void)t.decode(ids, true);
      } catch (const Error&) {
      }
    }
    float block[256];  // one decoded block: up to 256 floats
    for (const GgufTensorInfo& t : f.tensors()) {
      const int64_t be = dtype_block_elems(t.dtype);
      const int64_t n = be > 1 ? be : std::min<int64_t>(t.n_elements, 256);
      if (t.n_elements >= n && t.nbytes >= dtype_bytes(t.dtype, n) && n > 0) {
        to_f32(t.dtype, t.data, block, n);
      }
      (void)f.tensor_as(t.name);
      try { (void)f.matrix(t.name); } catch (const Error&) {}
    }
  } catch (const Error&) {
  }
  return 0;
}
