// A tiny random llama model written as an F32 GGUF with GgufWriter: llama.* hyper-parameters,
// a SentencePiece-style vocabulary llama.cpp accepts (<unk>, <s>, </s>, the 256 byte tokens and
// filler pieces), F32 norms and uniformly random F32 matrices. For the quantize tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "io/gguf.h"

struct TinyLlamaSpec {
  int64_t dim = 256, ffn = 512, n_layer = 2, n_head = 4, n_head_kv = 2, vocab = 512;
  float std = 0.05f;       // layer matrices: gain about 1 per layer (0.05·√256 = 0.8)
  float std_out = 0.3f;    // token_embd and output: logits of std ~5
  // output.weight row (7v + 3) mod vocab also gets successor·(token_embd row v): after token v
  // the model strongly predicts that token, so the argmax has a margin well above the
  // engines' rounding differences (0 = purely random output weights).
  float successor = 1.0f;
  uint32_t seed = 1;
  bool tied = false;   // no output.weight
};

inline void write_tiny_llama_gguf(const std::string& path, const TinyLlamaSpec& s) {
  using namespace lowrank;
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "tiny-random-llama");
  w.set_u32("general.file_type", 0);  // ALL_F32
  w.set_u32("llama.context_length", 256);
  w.set_u32("llama.embedding_length", uint32_t(s.dim));
  w.set_u32("llama.block_count", uint32_t(s.n_layer));
  w.set_u32("llama.feed_forward_length", uint32_t(s.ffn));
  w.set_u32("llama.attention.head_count", uint32_t(s.n_head));
  w.set_u32("llama.attention.head_count_kv", uint32_t(s.n_head_kv));
  w.set_u32("llama.rope.dimension_count", uint32_t(s.dim / s.n_head));
  w.set_f32("llama.rope.freq_base", 10000.0f);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores = {0, 0, 0};
  std::vector<int32_t> types = {2, 3, 3};
  const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; b++) {
    tokens.push_back(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">");
    scores.push_back(0);
    types.push_back(6);
  }
  for (int64_t i = int64_t(tokens.size()); i < s.vocab; i++) {
    tokens.push_back("\xe2\x96\x81t" + std::to_string(i));  // "▁t<i>"
    scores.push_back(-float(i));
    types.push_back(1);
  }
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);

  std::mt19937 rng(s.seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto mat = [&](const std::string& name, int64_t cols, int64_t rows, float sd) {
    std::vector<float> v(static_cast<size_t>(rows * cols));  // (rows, cols)
    for (float& x : v) x = sd * std::sqrt(3.0f) * u(rng);
    w.add_tensor_f32(name, {cols, rows}, v.data());
  };
  auto norm = [&](const std::string& name) {
    std::vector<float> v(static_cast<size_t>(s.dim));  // (dim)
    for (float& x : v) x = 1.0f + 0.1f * u(rng);
    w.add_tensor_f32(name, {s.dim}, v.data());
  };
  const int64_t hd = s.dim / s.n_head;
  std::vector<float> embd(static_cast<size_t>(s.vocab * s.dim));  // (vocab, dim)
  for (float& x : embd) x = s.std_out * std::sqrt(3.0f) * u(rng);
  w.add_tensor_f32("token_embd.weight", {s.dim, s.vocab}, embd.data());
  for (int64_t l = 0; l < s.n_layer; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    norm(p + "attn_norm.weight");
    mat(p + "attn_q.weight", s.dim, s.n_head * hd, s.std);
    mat(p + "attn_k.weight", s.dim, s.n_head_kv * hd, s.std);
    mat(p + "attn_v.weight", s.dim, s.n_head_kv * hd, s.std);
    mat(p + "attn_output.weight", s.n_head * hd, s.dim, s.std);
    norm(p + "ffn_norm.weight");
    mat(p + "ffn_gate.weight", s.dim, s.ffn, s.std);
    mat(p + "ffn_up.weight", s.dim, s.ffn, s.std);
    mat(p + "ffn_down.weight", s.ffn, s.dim, s.std);
  }
  norm("output_norm.weight");
  if (!s.tied) {
    std::vector<float> out(static_cast<size_t>(s.vocab * s.dim));  // (vocab, dim)
    for (float& x : out) x = s.std_out * std::sqrt(3.0f) * u(rng);
    for (int64_t v = 0; v < s.vocab; v++) {
      const int64_t row = (7 * v + 3) % s.vocab;
      for (int64_t c = 0; c < s.dim; c++) out[size_t(row * s.dim + c)] += s.successor * embd[size_t(v * s.dim + c)];
    }
    w.add_tensor_f32("output.weight", {s.dim, s.vocab}, out.data());
  }
  w.write(path);
}
