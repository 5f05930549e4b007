#include "model/gguf_model.h"

#include <cstring>
#include <regex>

#include "core/error.h"
#include "io/gguf.h"

namespace lowrank {

int64_t gguf_qk_row(int64_t j, int64_t head_dim) {
  int64_t head = j / head_dim, i = j % head_dim, half = head_dim / 2;
  return head * head_dim + (i < half ? 2 * i : 2 * (i - half) + 1);
}

static const std::pair<const char*, const char*> kNames[] = {
    {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"}, {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

std::string gguf_to_hf_module(const std::string& g) {
  static const std::regex re(R"(blk\.(\d+)\.([a-z_]+))");
  std::smatch m;
  if (g == "output") return "lm_head";
  if (!std::regex_match(g, m, re)) return "";
  for (auto& [a, b] : kNames)
    if (m[2] == a) return "model.layers." + m[1].str() + "." + b;
  return "";
}

std::string hf_to_gguf_tensor(const std::string& hf) {
  static const std::regex re(R"(model\.layers\.(\d+)\.([a-z_]+\.[a-z_]+))");
  std::smatch m;
  if (hf == "lm_head") return "output";
  if (!std::regex_match(hf, m, re)) return "";
  for (auto& [a, b] : kNames)
    if (m[2] == b) return "blk." + m[1].str() + "." + a;
  return "";
}

namespace {

struct Source {
  std::shared_ptr<GgufFile> f;
  const GgufTensorInfo& info(const std::string& name) const {
    const GgufTensorInfo* t = f->tensor(name);
    if (!t) fail(f->path(), ": missing tensor ", name);
    return *t;
  }
  void check(const std::string& name, std::vector<int64_t> ne) const {
    const GgufTensorInfo& t = info(name);
    if (t.ne != ne)
      fail(f->path(), ": tensor ", name, ": expected ne ", shape_str(ne), " (from metadata) but found ",
           shape_str(t.ne));
  }
  FloatBuffer vec(const std::string& name, int64_t n) const {
    check(name, {n});
    Tensor t = f->tensor_as(name);
    FloatBuffer b = FloatBuffer::zeros({n});
    to_f32(t.dtype, t.data, b.ptr(), n);
    return b;
  }
  Matrix mat(const std::string& name, int64_t out, int64_t in) const {
    check(name, {in, out});
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

}  // namespace

std::unique_ptr<Model> load_gguf_model(const std::string& path) {
  Source s{std::make_shared<GgufFile>(GgufFile::open(path))};
  const GgufFile& f = *s.f;
  std::string arch = f.get_string("general.architecture", "");
  if (arch != "llama")
    fail(path, ": general.architecture \"", arch, "\" is not supported (only llama)");
  auto model = std::make_unique<Model>();
  model->source = path;
  ModelConfig& c = model->cfg;
  c.arch = Arch::LLAMA;
  c.model_type = "llama";
  c.architecture = "LlamaForCausalLM";
  auto need = [&](const std::string& key) {
    int64_t v = f.get_int(key, -1);
    if (v <= 0 || v > (int64_t(1) << 31)) fail(path, ": metadata ", key, " missing or invalid");
    return v;
  };
  c.dim = need("llama.embedding_length");
  c.n_layer = need("llama.block_count");
  c.ffn = need("llama.feed_forward_length");
  c.n_head = need("llama.attention.head_count");
  c.n_kv_head = f.get_int("llama.attention.head_count_kv", c.n_head);
  c.max_pos = f.get_int("llama.context_length", 2048);
  c.norm_eps = f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  c.rope_theta = f.get_float("llama.rope.freq_base", 10000.f);
  if (c.dim % c.n_head) fail(path, ": embedding_length ", c.dim, " not divisible by head_count ", c.n_head);
  c.head_dim = c.dim / c.n_head;
  if (c.n_kv_head <= 0 || c.n_head % c.n_kv_head) fail(path, ": head_count_kv ", c.n_kv_head, " does not divide head_count");
  int64_t rope_dim = f.get_int("llama.rope.dimension_count", c.head_dim);
  if (rope_dim != c.head_dim) fail(path, ": partial rotary (rope.dimension_count ", rope_dim, ") is not supported");
  c.rope_half = true;  // q/k rows are put back in HF order below
  const GgufTensorInfo& emb = s.info("token_embd.weight");
  if (emb.ne.size() != 2 || emb.ne[0] != c.dim) fail(path, ": token_embd.weight has ne ", shape_str(emb.ne));
  c.vocab = emb.ne[1];
  c.bos_id = int32_t(f.get_int("tokenizer.ggml.bos_token_id", -1));
  int64_t eos = f.get_int("tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) c.eos_ids.push_back(int32_t(eos));
  const int64_t C = c.dim, F = c.ffn, HD = c.n_head * c.head_dim, KD = c.n_kv_head * c.head_dim;
  model->wte = s.mat("token_embd.weight", c.vocab, C);
  model->layers.resize(size_t(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = model->layers[size_t(l)];
    std::string p = "blk." + std::to_string(l) + ".";
    std::string hp = "model.layers." + std::to_string(l) + ".";
    L.norm1.name = hp + "input_layernorm";
    L.norm1.w = s.vec(p + "attn_norm.weight", C);
    L.norm2.name = hp + "post_attention_layernorm";
    L.norm2.w = s.vec(p + "ffn_norm.weight", C);
    auto lin = [&](Linear& lin, const char* g, const char* h, int64_t out, int64_t in) {
      lin.module = hp + h;
      lin.layer = l;
      lin.in = in;
      lin.out = out;
      lin.W = s.mat(p + g + ".weight", out, in);
    };
    lin(L.q, "attn_q", "self_attn.q_proj", HD, C);
    lin(L.k, "attn_k", "self_attn.k_proj", KD, C);
    lin(L.v, "attn_v", "self_attn.v_proj", KD, C);
    lin(L.o, "attn_output", "self_attn.o_proj", C, HD);
    lin(L.fc, "ffn_gate", "mlp.gate_proj", F, C);
    lin(L.up, "ffn_up", "mlp.up_proj", F, C);
    lin(L.down, "ffn_down", "mlp.down_proj", C, F);
    L.q.W = unpermute_rows(L.q.W, c.head_dim);
    L.k.W = unpermute_rows(L.k.W, c.head_dim);
  }
  model->norm_f.name = "model.norm";
  model->norm_f.w = s.vec("output_norm.weight", C);
  model->lm_head.module = "lm_head";
  model->lm_head.in = C;
  model->lm_head.out = c.vocab;
  if (f.tensor("output.weight")) {
    model->lm_head.W = s.mat("output.weight", c.vocab, C);
  } else {
    c.tied = true;
    model->lm_head.W = model->wte;
  }
  return model;
}

std::unique_ptr<Model> load_model(const std::string& path) {
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return load_gguf_model(path);
  return load_hf_model(path);
}

}  // namespace lowrank
