#include "model/random_model.h"

#include <cmath>

#include "core/error.h"
#include "core/mmap_file.h"
#include "model/names.h"

namespace lowrank {

namespace {

// HF config.json of the named shapes (only the fields config_from_hf_json reads).
const char* kGpt2_124m = R"({
  "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257,
  "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
  "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
  "bos_token_id": 50256, "eos_token_id": 50256})";

const char* kTinyLlama_1_1b = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
  "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
  "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
  "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2})";

// splitmix64 finalizer: a counter-based generator, so filling is parallel and deterministic.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Filler {
  uint64_t seed;
  uint64_t stream = 0;  // one stream per tensor, in construction order

  // p[i] = uniform(-a, a) with a = std·√3 (standard deviation std), or `value` when std == 0.
  void fill(float* p, int64_t n, float std, float value = 0.f) {
    const uint64_t base = mix64(seed ^ mix64(++stream));
    if (std == 0.f) {
      for (int64_t i = 0; i < n; i++) p[i] = value;
      return;
    }
    const float a = std * std::sqrt(3.f);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) {
      const double u = double(mix64(base + uint64_t(i)) >> 11) * (1.0 / 9007199254740992.0);
      p[i] = value + a * float(2.0 * u - 1.0);
    }
  }

  FloatBuffer vec(int64_t n, float std, float value = 0.f) {
    FloatBuffer b = FloatBuffer::zeros({n});
    fill(b.ptr(), n, std, value);
    return b;
  }

  // (out, in) weight; stored (in, out) and marked transposed when conv1d (GPT-2 Conv1D).
  Matrix mat(int64_t out, int64_t in, float std, bool conv1d) {
    FloatBuffer b = FloatBuffer::zeros(conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in});
    fill(b.ptr(), b.n, std);
    Matrix m = matrix_from_buffer(b);
    m.rows = out;
    m.cols = in;
    m.transposed = conv1d;
    return m;
  }
};

}  // namespace

ModelConfig shape_config(const std::string& s) {
  if (s == "gpt2-124m" || s == "gpt2") return config_from_hf_json(kGpt2_124m, s);
  if (s == "tinyllama-1.1b" || s == "tinyllama") return config_from_hf_json(kTinyLlama_1_1b, s);
  std::string path = s;
  const bool json_name = s.size() >= 5 && s.compare(s.size() - 5, 5, ".json") == 0;
  if (!json_name && file_exists(s + "/config.json")) path = s + "/config.json";
  if (!file_exists(path))
    fail("unknown shape \"", s, "\": expected gpt2-124m, tinyllama-1.1b or a path to a config.json");
  return config_from_hf_json(read_text_file(path), path);
}

std::unique_ptr<Model> make_random_model(const ModelConfig& cfg_in, const RandomModelOptions& o) {
  auto model = std::make_unique<Model>();
  model->cfg = cfg_in;
  ModelConfig& c = model->cfg;
  if (o.untie) c.tied = false;
  model->source = "random:" + (c.model_type.empty() ? std::string("model") : c.model_type);
  const int64_t C = c.dim, V = c.vocab, F = c.ffn, HD = c.q_dim(), KD = c.kv_dim();
  const float s = o.std;
  Filler fl{o.seed};
  const bool gpt2 = c.arch == Arch::GPT2;
  const bool conv = gpt2 && o.gpt2_conv1d;
  auto linear = [&](Linear& L, const std::string& module, int64_t layer, int64_t out, int64_t in, bool bias) {
    L.module = module;
    L.layer = layer;
    L.in = in;
    L.out = out;
    L.conv1d = gpt2;
    L.W = fl.mat(out, in, s, conv);
    if (bias) L.bias = fl.vec(out, s);
  };
  auto norm = [&](Norm& n, const std::string& name, bool with_bias, int64_t size) {
    n.name = name;
    n.w = fl.vec(size, s, c.norm_offset != 0.f ? 0.f : 1.f);  // (offset + w) near 1
    if (with_bias) n.b = fl.vec(size, s);
  };
  model->layers.resize(size_t(c.n_layer));
  model->wte = fl.mat(V, C, s, false);
  if (c.learned_pos) {
    model->wpe = FloatBuffer::zeros({c.max_pos, C});
    fl.fill(model->wpe.ptr(), model->wpe.n, s);
  }
  const bool ln = c.norm == NormKind::LAYER;
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = model->layers[size_t(l)];
    for (Role r : kAllRoles) {
      if (!has_role(c, r)) continue;
      const std::string name = hf_layer_module(c, l, r);
      switch (r) {
        case Role::ATTN_NORM: norm(L.attn_norm, name, ln, C); break;
        case Role::POST_ATTN_NORM: norm(L.post_attn_norm, name, ln, C); break;
        case Role::FFN_NORM: norm(L.ffn_norm, name, ln, C); break;
        case Role::POST_FFN_NORM: norm(L.post_ffn_norm, name, ln, C); break;
        case Role::Q_NORM: norm(L.q_norm, name, false, c.head_dim); break;
        case Role::K_NORM: norm(L.k_norm, name, false, c.head_dim); break;
        case Role::Q: linear(L.q, name, l, HD, C, c.qkv_bias); break;
        case Role::K: linear(L.k, name, l, KD, C, c.qkv_bias); break;
        case Role::V: linear(L.v, name, l, KD, C, c.qkv_bias); break;
        case Role::QKV: linear(L.qkv, name, l, HD + 2 * KD, C, c.qkv_bias); break;
        case Role::O: linear(L.o, name, l, C, HD, c.o_bias); break;
        case Role::GATE: linear(L.gate, name, l, F, C, c.mlp_bias); break;
        case Role::UP: linear(L.up, name, l, F, C, c.mlp_bias); break;
        case Role::GATE_UP: linear(L.gate_up, name, l, 2 * F, C, c.mlp_bias); break;
        case Role::DOWN: linear(L.down, name, l, C, F, c.mlp_bias); break;
      }
    }
  }
  norm(model->norm_f, hf_final_norm_module(c), ln, C);
  model->lm_head.module = "lm_head";
  model->lm_head.in = C;
  model->lm_head.out = V;
  model->lm_head.W = c.tied ? model->wte : fl.mat(V, C, s, false);
  model->finish_load();
  return model;
}

}  // namespace lowrank
