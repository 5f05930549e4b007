// Writes GGUF seed files for the fuzz target fuzz_gguf (fuzz/corpus/gguf): one small file per
// family of block types, each tensor 2 rows of 256 elements. Types with an encoder hold
// quantized pseudo-random weights; the codebook types (IQ1/IQ2/IQ3) hold pseudo-random bytes
// with a small f16 scale. Not built by CMake:
//   g++ -std=c++20 -O2 -Isrc dev/make_gguf_seeds.cpp build/liblowrank_io.a build/liblowrank_core.a \
//       build/liblowrank_quants.a -fopenmp -o /tmp/make_gguf_seeds && /tmp/make_gguf_seeds fuzz/corpus/gguf
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "quants/quantize.h"

using namespace lowrank;

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  const std::vector<std::pair<std::string, std::vector<DType>>> files = {
      {"types_32.gguf", {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_1, DType::IQ4_NL, DType::MXFP4}},
      {"types_k.gguf", {DType::Q3_K, DType::Q8_K, DType::IQ4_XS, DType::TQ1_0, DType::TQ2_0, DType::BF16}},
      {"types_iq.gguf", {DType::IQ1_S, DType::IQ1_M, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S}},
  };
  uint32_t s = 1;
  auto rnd = [&] {
    s = s * 1664525u + 1013904223u;
    return s >> 8;
  };
  for (const auto& [name, types] : files) {
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_u32("general.alignment", 32);
    for (DType t : types) {
      std::vector<float> x(512);  // (2, 256)
      for (float& v : x) v = (float(rnd() % 2001) - 1000.0f) * 1e-3f;
      std::vector<uint8_t> q(dtype_bytes(t, 512));
      if (!quants::quantize_row(t, x.data(), q.data(), 512)) {
        for (auto& b : q) b = uint8_t(rnd());
        const int64_t bb = dtype_block_bytes(t);
        for (size_t at = 0; at + bb <= q.size(); at += size_t(bb)) {
          if (t != DType::IQ1_M) {  // f16 d first: 2^-7
            q[at] = 0x00;
            q[at + 1] = 0x20;
          }
        }
      }
      w.add_tensor_copy(std::string("blk.0.") + dtype_name(t) + ".weight", {256, 2}, t, q.data(), q.size());
    }
    w.write(dir + "/" + name);
    std::printf("%s: %zu tensors\n", name.c_str(), w.tensor_count());
  }
}
