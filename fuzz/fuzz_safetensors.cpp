// libFuzzer target for the safetensors reader: parses arbitrary bytes from memory (no disk
// I/O) and, when they parse, converts the bytes of every F32/F16/BF16 tensor to f32 (a bounded
// prefix of each) and looks every tensor up by name. Any input must either parse or throw
// lowrank::Error; crashes, sanitizer reports, hangs and huge allocations are bugs.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

using namespace lowrank;

namespace {

constexpr int64_t kMaxElems = 4096;  // per tensor, so one input stays cheap

bool is_float_type(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    SafetensorsFile st = SafetensorsFile::parse(data, size, "fuzz.safetensors");
    std::vector<float> buf(static_cast<size_t>(kMaxElems), 0.f);
    for (const Tensor& t : st.tensors()) {
      const int64_t numel = t.numel();
      if (numel < 0) __builtin_trap();  // shape validation let a negative size through
      if (!is_float_type(t.dtype)) continue;
      // Validation promised that the byte range matches the shape; read only what it covers.
      const int64_t n = std::min<int64_t>(numel, kMaxElems);
      if (n == 0) continue;
      if (dtype_bytes(t.dtype, n) > t.nbytes) __builtin_trap();
      to_f32(t.dtype, t.data, buf.data(), n);
      // The last element too, so the whole claimed range is known to be inside the input.
      if (numel > n) {
        const size_t esz = size_t(dtype_block_bytes(t.dtype));
        to_f32(t.dtype, static_cast<const uint8_t*>(t.data) + t.nbytes - esz, buf.data(), 1);
      }
      (void)st.get(t.name);
    }
    (void)st.has("model.embed_tokens.weight");
    for (const auto& kv : st.metadata()) (void)kv.second.size();
    try {
      (void)st.get("no such tensor \x01");
    } catch (const Error&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
