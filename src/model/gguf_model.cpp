// Models from GGUF files, read the way llama.cpp reads each architecture (quantized weights
// stay quantized in memory). Every metadata key of the architecture and every tensor must be
// understood: anything that would change the math and is not implemented is refused with the
// file and the key or tensor named.
#include "model/gguf_model.h"

#include <cmath>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/gguf.h"
#include "model/names.h"

namespace lowrank {

namespace {

struct Source {
  std::shared_ptr<GgufFile> f;
  std::set<std::string> used;

  const GgufTensorInfo* find(const std::string& name) const { return f->tensor(name); }
  const GgufTensorInfo& info(const std::string& name) const {
    const GgufTensorInfo* t = f->tensor(name);
    if (!t) fail(f->path(), ": missing tensor ", name);
    return *t;
  }
  void check(const std::string& name, std::vector<int64_t> ne) const {
    const GgufTensorInfo& t = info(name);
    if (t.ne != ne)
      fail(f->path(), ": tensor ", name, ": expected ne ", shape_str(ne), " (from metadata) but found ", shape_str(t.ne));
  }
  FloatBuffer vec(const std::string& name, int64_t n) {
    check(name, {n});
    used.insert(name);
    Tensor t = f->tensor_as(name);
    FloatBuffer b = FloatBuffer::zeros({n});
    to_f32(t.dtype, t.data, b.ptr(), n);
    return b;
  }
  Matrix mat(const std::string& name, int64_t out, int64_t in) {
    check(name, {in, out});
    used.insert(name);
    Matrix m = f->matrix(name);
    auto keep = f;
    m.owner = std::shared_ptr<const void>(keep, m.data);
    return m;
  }
};

// Reorders the rows of a q/k weight from GGUF order back to HF order (rows are whole blocks,
// so this is a byte copy of each row; quantized data stays quantized).
Matrix unpermute_rows(const Matrix& m, int64_t head_dim) {
  const size_t row_bytes = dtype_bytes(m.dtype, m.cols);
  auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[row_bytes * size_t(m.rows)]);
  const uint8_t* src = static_cast<const uint8_t*>(m.data);
  for (int64_t j = 0; j < m.rows; j++)
    std::memcpy(buf.get() + size_t(j) * row_bytes, src + size_t(gguf_qk_row(j, head_dim)) * row_bytes, row_bytes);
  Matrix out = m;
  out.data = buf.get();
  out.owner = std::shared_ptr<const void>(buf, buf.get());
  return out;
}
FloatBuffer unpermute_vec(const FloatBuffer& b, int64_t head_dim) {
  FloatBuffer out = FloatBuffer::zeros({b.n});
  for (int64_t j = 0; j < b.n; j++) out.ptr()[j] = b.ptr()[gguf_qk_row(j, head_dim)];
  return out;
}

// The metadata keys of "<arch>." this reader interprets; any other key under the prefix is
// refused (it might change the math). Keys that never change it are accepted as well.
const std::set<std::string>& known_keys() {
  static const std::set<std::string> k = {
      "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
      "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon",
      "attention.key_length", "attention.value_length", "rope.freq_base", "rope.dimension_count",
      "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length", "rope.scaling.finetuned",
      "rope.scaling.attn_factor", "rope.freq_scale", "rope.scaling.yarn_log_multiplier", "vocab_size",
      "attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "expert_count",
      "expert_used_count", "rope.dimension_sections", "attention.sliding_window_pattern",
  };
  return k;
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  const std::string arch = f.get_string("general.architecture", "");
  ModelConfig out;
  ModelConfig& c = out;
  c.arch = Arch::LLAMA;
  if (arch == "llama") c.family = Family::LLAMA, c.model_type = "llama", c.architecture = "LlamaForCausalLM";
  else if (arch == "qwen2") c.family = Family::QWEN2, c.model_type = "qwen2", c.architecture = "Qwen2ForCausalLM";
  else if (arch == "qwen3") c.family = Family::QWEN3, c.model_type = "qwen3", c.architecture = "Qwen3ForCausalLM";
  else if (arch == "gemma2") c.family = Family::GEMMA2, c.model_type = "gemma2", c.architecture = "Gemma2ForCausalLM";
  else if (arch == "gemma3") c.family = Family::GEMMA3, c.model_type = "gemma3_text", c.architecture = "Gemma3ForCausalLM";
  else if (arch == "phi3") c.family = Family::PHI3, c.model_type = "phi3", c.architecture = "Phi3ForCausalLM";
  else
    fail(path, ": general.architecture \"", arch,
         "\" is not supported (llama, qwen2, qwen3, gemma2, gemma3, phi3)");
  const Family fam = c.family;
  const bool gemma = fam == Family::GEMMA2 || fam == Family::GEMMA3;
  const std::string P = arch + ".";
  for (const auto& [key, value] : f.metadata())
    if (key.compare(0, P.size(), P) == 0 && !known_keys().count(key.substr(P.size())))
      fail(path, ": metadata ", key, " is not supported (it may change the computation)");
  auto need = [&](const std::string& key) {
    const GgufValue* v = f.find(P + key);
    if (!v || !v->is_int() || v->as_int() <= 0 || v->as_int() > (int64_t(1) << 31))
      fail(path, ": metadata ", P + key, " missing or invalid");
    return v->as_int();
  };
  auto opt_int = [&](const std::string& key, int64_t def) {
    const GgufValue* v = f.find(P + key);
    if (!v) return def;
    if (!v->is_int() || v->as_int() < 0 || v->as_int() > (int64_t(1) << 31))
      fail(path, ": metadata ", P + key, " must be a non-negative integer (one value for all layers)");
    return v->as_int();
  };
  auto opt_float = [&](const std::string& key, float def) {
    const GgufValue* v = f.find(P + key);
    if (!v) return def;
    if (!v->is_float() && !v->is_int()) fail(path, ": metadata ", P + key, " must be a number");
    const double x = v->as_double();
    if (!std::isfinite(x)) fail(path, ": metadata ", P + key, " is not finite");
    return float(x);
  };
  if (opt_int("expert_count", 0) > 0) fail(path, ": metadata ", P, "expert_count: mixture-of-experts models are not supported");
  if (f.find(P + "rope.dimension_sections")) fail(path, ": metadata ", P, "rope.dimension_sections (M-RoPE) is not supported");
  c.dim = need("embedding_length");
  c.n_layer = need("block_count");
  c.ffn = need("feed_forward_length");
  c.n_head = need("attention.head_count");
  c.n_kv_head = opt_int("attention.head_count_kv", c.n_head);
  c.max_pos = opt_int("context_length", 2048);
  c.norm_eps = opt_float("attention.layer_norm_rms_epsilon", 1e-5f);
  if (c.n_kv_head <= 0) fail(path, ": metadata ", P, "attention.head_count_kv must be positive");
  c.head_dim = opt_int("attention.key_length", c.dim % c.n_head == 0 ? c.dim / c.n_head : 0);
  if (c.head_dim <= 0) fail(path, ": metadata ", P, "attention.key_length is needed (embedding_length / head_count is not whole)");
  if (opt_int("attention.value_length", c.head_dim) != c.head_dim)
    fail(path, ": metadata ", P, "attention.value_length differs from key_length: not supported");

  // Family structure (llama.cpp's graph of each architecture).
  c.qkv_bias = false;
  c.qk_norm = fam == Family::QWEN3 || fam == Family::GEMMA3;
  c.post_norms = gemma;
  c.norm_offset = 0.f;  // llama.cpp's converter stores Gemma's norm weights as 1 + w
  c.embed_scale = gemma ? std::sqrt(float(c.dim)) : 1.f;
  c.act = gemma ? Activation::GELU_TANH : Activation::SILU;
  c.fused_qkv = fam == Family::PHI3;
  c.fused_gate_up = fam == Family::PHI3;
  c.attn_scale = 1.f / std::sqrt(float(c.head_dim));
  if (fam == Family::GEMMA2) {
    c.attn_softcap = opt_float("attn_logit_softcapping", 50.f);
    c.final_softcap = opt_float("final_logit_softcapping", 30.f);
  } else {
    c.attn_softcap = opt_float("attn_logit_softcapping", 0.f);
    c.final_softcap = opt_float("final_logit_softcapping", 0.f);
    if (!gemma && (c.attn_softcap != 0.f || c.final_softcap != 0.f))
      fail(path, ": softcapping metadata is not supported for architecture ", arch);
  }

  // RoPE: base frequency, rotated dims, scaling.
  RopeConfig rope;
  rope.theta = opt_float("rope.freq_base", gemma && fam == Family::GEMMA3 ? 1e6f : 10000.f);
  rope.dim = opt_int("rope.dimension_count", c.head_dim);
  const std::string scaling = f.get_string(P + "rope.scaling.type", "none");
  float factor = opt_float("rope.scaling.factor", 0.f);
  if (f.find(P + "rope.freq_scale")) {
    const float fs = opt_float("rope.freq_scale", 1.f);
    if (!(fs > 0)) fail(path, ": metadata ", P, "rope.freq_scale must be positive");
    if (factor == 0.f) factor = 1.f / fs;
  }
  if (scaling == "none") {
    if (factor != 0.f && factor != 1.f) fail(path, ": metadata ", P, "rope.scaling.factor without a scaling type");
  } else if (scaling == "linear") {
    rope.scaling = RopeScaling::LINEAR;
    rope.factor = factor > 0 ? factor : 1.f;
  } else if (scaling == "yarn") {
    // llama.cpp's rope_yarn with its defaults (ext_factor 1, beta_fast 32, beta_slow 1,
    // magnitude 1 + 0.1·ln(factor)): the same inverse frequencies and cos/sin factor as
    // transformers' YaRN with its defaults.
    rope.scaling = RopeScaling::YARN;
    rope.factor = factor > 0 ? factor : 1.f;
    rope.original_max_pos = opt_int("rope.scaling.original_context_length", 0);
    if (rope.original_max_pos <= 0) fail(path, ": metadata ", P, "rope.scaling.original_context_length is needed for yarn");
    if (opt_float("rope.scaling.attn_factor", 1.f) != 1.f)
      fail(path, ": metadata ", P, "rope.scaling.attn_factor other than 1 is not supported");
    if (f.find(P + "rope.scaling.yarn_log_multiplier"))
      fail(path, ": metadata ", P, "rope.scaling.yarn_log_multiplier is not supported");
    rope.attn_factor = rope.factor <= 1.f ? 1.f : float(0.1 * std::log(double(rope.factor)) + 1.0);
  } else {
    fail(path, ": metadata ", P, "rope.scaling.type \"", scaling, "\" is not supported (none, linear, yarn)");
  }
  if (const GgufTensorInfo* rf = f.tensor("rope_freqs.weight")) {
    // Llama 3.1+: per-pair frequency divisors written by the converter (rope_scaling llama3).
    if (rf->ne.size() != 1 || rf->ne[0] != rope.dim / 2)
      fail(path, ": tensor rope_freqs.weight has ne ", shape_str(rf->ne), ", expected [", rope.dim / 2, "]");
    rope.freq_factors.resize(size_t(rope.dim / 2));
    to_f32(rf->dtype, rf->data, rope.freq_factors.data(), rope.dim / 2);
  }
  c.ropes = {rope};
  c.layers.assign(size_t(c.n_layer), LayerSpec{});
  if (gemma) {
    // llama.cpp: Gemma 2 alternates sliding (even layers) and global layers; Gemma 3 has five
    // sliding layers per global one, whose RoPE base is 10000 without scaling.
    const int64_t window = opt_int("attention.sliding_window", 4096);
    const int64_t pattern = fam == Family::GEMMA2 ? 2 : 6;
    if (fam == Family::GEMMA3) {
      RopeConfig local = rope;
      local.theta = 10000.f;
      local.scaling = RopeScaling::NONE;
      local.factor = 1.f;
      local.freq_factors.clear();
      c.ropes.push_back(local);
    }
    for (int64_t l = 0; l < c.n_layer; l++) {
      const bool sliding = (l + 1) % pattern != 0;
      c.layers[size_t(l)].window = sliding ? window : 0;
      c.layers[size_t(l)].rope = fam == Family::GEMMA3 && sliding ? 1 : 0;
    }
  } else if (fam == Family::PHI3) {
    const int64_t window = opt_int("attention.sliding_window", 0);
    for (LayerSpec& l : c.layers) l.window = window;
  }
  // llama / qwen2 / qwen3: llama.cpp applies no sliding window for these architectures, so
  // neither does this reader (a window in the file would be ignored by llama.cpp too).

  const GgufTensorInfo* embp = f.tensor("token_embd.weight");
  if (!embp) fail(path, ": missing tensor token_embd.weight");
  const GgufTensorInfo& emb = *embp;
  if (emb.ne.size() != 2 || emb.ne[0] != c.dim) fail(path, ": token_embd.weight has ne ", shape_str(emb.ne));
  c.vocab = emb.ne[1];
  c.bos_id = int32_t(f.get_int("tokenizer.ggml.bos_token_id", -1));
  int64_t eos = f.get_int("tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) c.eos_ids.push_back(int32_t(eos));
  // Optional biases: llama.cpp reads them when present (Qwen2 always has q/k/v biases).
  for (const GgufTensorInfo& t : f.tensors()) {
    const std::string& n = t.name;
    auto ends = [&](const char* suf) {
      const size_t k = std::strlen(suf);
      return n.size() >= k && n.compare(n.size() - k, k, suf) == 0;
    };
    if (ends(".attn_q.bias") || ends(".attn_k.bias") || ends(".attn_v.bias") || ends(".attn_qkv.bias")) c.qkv_bias = true;
    if (ends(".attn_output.bias")) c.o_bias = true;
    if (ends(".ffn_gate.bias") || ends(".ffn_up.bias") || ends(".ffn_down.bias")) c.mlp_bias = true;
  }
  c.validate(path);
  return out;
}

std::unique_ptr<Model> load_gguf_model(const std::string& path) {
  Source s{std::make_shared<GgufFile>(GgufFile::open(path)), {}};
  const GgufFile& f = *s.f;
  auto model = std::make_unique<Model>();
  model->source = path;
  model->cfg = config_from_gguf(f);
  ModelConfig& c = model->cfg;
  if (f.tensor("rope_freqs.weight")) s.used.insert("rope_freqs.weight");
  const int64_t C = c.dim, F = c.ffn, HD = c.q_dim(), KD = c.kv_dim(), D = c.head_dim;
  model->wte = s.mat("token_embd.weight", c.vocab, C);
  model->layers.resize(size_t(c.n_layer));
  const bool permuted = gguf_permutes_qk(c);
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = model->layers[size_t(l)];
    auto norm = [&](Norm& n, Role r, int64_t size) {
      n.name = hf_layer_module(c, l, r);
      n.w = s.vec(gguf_layer_tensor(l, r) + ".weight", size);
    };
    auto lin = [&](Linear& lin, Role r, int64_t out, int64_t in) {
      const std::string g = gguf_layer_tensor(l, r);
      lin.module = hf_layer_module(c, l, r);
      lin.layer = l;
      lin.in = in;
      lin.out = out;
      lin.W = s.mat(g + ".weight", out, in);
      const bool want_bias = r == Role::O ? c.o_bias
                             : (r == Role::Q || r == Role::K || r == Role::V || r == Role::QKV) ? c.qkv_bias
                                                                                                 : c.mlp_bias;
      if (want_bias) lin.bias = s.vec(g + ".bias", out);
    };
    norm(L.attn_norm, Role::ATTN_NORM, C);
    norm(L.ffn_norm, Role::FFN_NORM, C);
    if (c.post_norms) {
      norm(L.post_attn_norm, Role::POST_ATTN_NORM, C);
      norm(L.post_ffn_norm, Role::POST_FFN_NORM, C);
    }
    if (c.qk_norm) {
      norm(L.q_norm, Role::Q_NORM, D);
      norm(L.k_norm, Role::K_NORM, D);
    }
    if (c.fused_qkv) {
      lin(L.qkv, Role::QKV, HD + 2 * KD, C);
    } else {
      lin(L.q, Role::Q, HD, C);
      lin(L.k, Role::K, KD, C);
      lin(L.v, Role::V, KD, C);
      if (permuted) {
        L.q.W = unpermute_rows(L.q.W, D);
        L.k.W = unpermute_rows(L.k.W, D);
        if (L.q.bias.n) L.q.bias = unpermute_vec(L.q.bias, D);
        if (L.k.bias.n) L.k.bias = unpermute_vec(L.k.bias, D);
      }
    }
    lin(L.o, Role::O, C, HD);
    if (c.fused_gate_up) {
      lin(L.gate_up, Role::GATE_UP, 2 * F, C);
    } else {
      lin(L.gate, Role::GATE, F, C);
      lin(L.up, Role::UP, F, C);
    }
    lin(L.down, Role::DOWN, C, F);
  }
  model->norm_f.name = hf_final_norm_module(c);
  model->norm_f.w = s.vec("output_norm.weight", C);
  model->lm_head.module = "lm_head";
  model->lm_head.in = C;
  model->lm_head.out = c.vocab;
  if (s.find("output.weight")) {
    model->lm_head.W = s.mat("output.weight", c.vocab, C);
  } else {
    c.tied = true;
    model->lm_head.W = model->wte;
  }
  for (const GgufTensorInfo& t : f.tensors())
    if (!s.used.count(t.name))
      fail(path, ": tensor ", t.name, " is not part of a ", f.get_string("general.architecture", ""),
           " model as this engine reads it (unsupported variant?)");
  model->finish_load();
  return model;
}

std::unique_ptr<Model> load_model(const std::string& path) {
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return load_gguf_model(path);
  return load_hf_model(path);
}

}  // namespace lowrank
