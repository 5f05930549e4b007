// Writes a Hugging Face model dir with random bf16 weights for a config.json, streaming one
// tensor at a time (an 8B model never sits in memory as f32): for memory and speed
// measurements of large shapes without a download. Not part of the product.
// Build: g++ -O2 -std=c++20 -fopenmp -I src dev/random_hf_bf16.cpp -o /tmp/random_hf_bf16 \
//        build/liblowrank_model.a build/liblowrank_ops.a build/liblowrank_tokenizer.a \
//        build/liblowrank_adapter.a build/liblowrank_io.a build/liblowrank_core.a build/liblowrank_quants.a \
//        -lopenblas -lpcre2-8
// Usage: random_hf_bf16 CONFIG.json OUT_DIR [std]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/mmap_file.h"
#include "model/config.h"
#include "model/names.h"

using namespace lowrank;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CONFIG.json OUT_DIR [std]\n", argv[0]);
    return 2;
  }
  const std::string cfg_text = read_text_file(argv[1]);
  const ModelConfig c = config_from_hf_json(cfg_text, argv[1]);
  const float stdev = argc > 3 ? float(std::atof(argv[3])) : 0.02f;
  struct T { std::string name; std::vector<int64_t> shape; float mean; };
  std::vector<T> ts;
  const int64_t C = c.dim, F = c.ffn, HD = c.q_dim(), KD = c.kv_dim();
  ts.push_back({hf_embed_module(c) + ".weight", {c.vocab, C}, 0});
  for (int64_t l = 0; l < c.n_layer; l++)
    for (Role r : kAllRoles) {
      if (!has_role(c, r)) continue;
      const std::string n = hf_layer_module(c, l, r) + ".weight";
      switch (r) {
        case Role::Q: ts.push_back({n, {HD, C}, 0}); break;
        case Role::K: case Role::V: ts.push_back({n, {KD, C}, 0}); break;
        case Role::QKV: ts.push_back({n, {HD + 2 * KD, C}, 0}); break;
        case Role::O: ts.push_back({n, {C, HD}, 0}); break;
        case Role::GATE: case Role::UP: ts.push_back({n, {F, C}, 0}); break;
        case Role::GATE_UP: ts.push_back({n, {2 * F, C}, 0}); break;
        case Role::DOWN: ts.push_back({n, {C, F}, 0}); break;
        case Role::Q_NORM: case Role::K_NORM: ts.push_back({n, {c.head_dim}, c.norm_offset ? 0.f : 1.f}); break;
        default: ts.push_back({n, {C}, c.norm_offset ? 0.f : 1.f}); break;
      }
    }
  ts.push_back({hf_final_norm_module(c) + ".weight", {C}, c.norm_offset ? 0.f : 1.f});
  if (!c.tied) ts.push_back({"lm_head.weight", {c.vocab, C}, 0});
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  for (const T& t : ts) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= uint64_t(d);
    h[t.name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {off, off + 2 * n}}};
    off += 2 * n;
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  std::filesystem::create_directories(argv[2]);
  std::ofstream(std::string(argv[2]) + "/config.json") << cfg_text;
  std::ofstream out(std::string(argv[2]) + "/model.safetensors", std::ios::binary);
  const uint64_t hl = hs.size();
  out.write(reinterpret_cast<const char*>(&hl), 8);
  out.write(hs.data(), std::streamsize(hs.size()));
  std::mt19937_64 rng(1);
  std::vector<uint16_t> buf;
  for (const T& t : ts) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= uint64_t(d);
    buf.resize(n);
    const float a = stdev * std::sqrt(3.f);
    for (uint64_t i = 0; i < n; i++) {
      const float u = float(double(rng() >> 11) * (1.0 / 9007199254740992.0));
      buf[i] = f32_to_bf16(t.mean + a * (2 * u - 1));
    }
    out.write(reinterpret_cast<const char*>(buf.data()), std::streamsize(2 * n));
  }
  std::printf("wrote %s (%.2f GB)\n", argv[2], double(off) / 1e9);
  return out.good() ? 0 : 1;
}
