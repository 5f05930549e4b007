// Loading a Hugging Face model directory into Model.
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace lowrank {

using json = nlohmann::json;

namespace {

struct TensorSource {
  std::vector<SafetensorsFile> files;
  std::map<std::string, std::pair<size_t, std::string>> where;  // name -> (file idx, path)
  std::string dir;

  const Tensor* find(const std::string& name) const {
    auto it = where.find(name);
    if (it == where.end()) return nullptr;
    return &files[it->second.first].get(name);
  }
  const Tensor& get(const std::string& name) const {
    const Tensor* t = find(name);
    if (!t) fail(dir, ": missing tensor ", name, " (not in any safetensors file)");
    return *t;
  }
  std::string file_of(const std::string& name) const {
    auto it = where.find(name);
    return it == where.end() ? dir : it->second.second;
  }
};

TensorSource open_tensors(const std::string& dir) {
  TensorSource src;
  src.dir = dir;
  std::string single = dir + "/model.safetensors";
  std::string index = dir + "/model.safetensors.index.json";
  std::vector<std::string> paths;
  if (file_exists(single)) {
    paths.push_back(single);
  } else if (file_exists(index)) {
    json j;
    try {
      j = json::parse(read_text_file(index));
    } catch (const json::exception& e) {
      fail(index, ": not valid JSON: ", json_error_text(e));
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) fail(index, ": missing weight_map");
    std::set<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) fail(index, ": weight_map entry ", it.key(), " is not a file name");
      std::string f = it->get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        fail(index, ": weight_map entry ", it.key(), " names a file outside the directory: ", f);
      shards.insert(f);
    }
    for (const std::string& f : shards) paths.push_back(dir + "/" + f);
  } else {
    fail(dir, ": no model.safetensors or model.safetensors.index.json");
  }
  for (const std::string& p : paths) {
    src.files.push_back(SafetensorsFile::open(p));
    for (const Tensor& t : src.files.back().tensors()) src.where[t.name] = {src.files.size() - 1, p};
  }
  return src;
}

void check_shape(const TensorSource& src, const Tensor& t, const std::vector<int64_t>& want) {
  if (t.shape != want)
    fail(src.file_of(t.name), ": tensor ", t.name, ": expected shape ", shape_str(want),
         " (from config.json) but found ", shape_str(t.shape));
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    fail(src.file_of(t.name), ": tensor ", t.name, ": dtype ", dtype_name(t.dtype), " is not a float type");
}

FloatBuffer load_vector(const TensorSource& src, const std::string& name, int64_t n) {
  const Tensor& t = src.get(name);
  check_shape(src, t, {n});
  FloatBuffer b = FloatBuffer::zeros({n});
  to_f32(t.dtype, t.data, b.ptr(), n);
  return b;
}

// nn.Linear weight (out, in) or GPT-2 Conv1D weight (in, out).
Matrix load_matrix(const TensorSource& src, const std::string& name, int64_t out, int64_t in, bool conv1d) {
  const Tensor& t = src.get(name);
  check_shape(src, t, conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in});
  Matrix m;
  m.rows = out;
  m.cols = in;
  if (t.dtype == DType::F32) {
    m.dtype = DType::F32;
    m.data = t.data;
    m.owner = t.owner;
    m.transposed = conv1d;
    return m;
  }
  // f16/bf16: convert once to f32 (out, in) so the hot loops run on BLAS directly.
  Matrix view;
  view.dtype = t.dtype;
  view.rows = out;
  view.cols = in;
  view.data = t.data;
  view.transposed = conv1d;
  FloatBuffer b = FloatBuffer::zeros({out, in});
  view.rows_f32(0, out, b.ptr());
  return matrix_from_buffer(b);
}

void init_linear(Linear& L, const TensorSource& src, const std::string& module, int64_t layer,
                 int64_t out, int64_t in, bool bias, bool conv1d) {
  L.module = module;
  L.layer = layer;
  L.in = in;
  L.out = out;
  L.conv1d = conv1d;
  L.W = load_matrix(src, module + ".weight", out, in, conv1d);
  if (bias) L.bias = load_vector(src, module + ".bias", out);
}

// tie_word_embeddings false (stated, or transformers' default for the family): the head must be
// in the file; never fall back to the embeddings, which computes another model.
Matrix load_untied_head(const TensorSource& src, const std::string& cfg_path, int64_t V, int64_t C) {
  if (!src.find("lm_head.weight"))
    fail(src.dir, ": missing tensor lm_head.weight (", cfg_path,
         " has tie_word_embeddings false, explicitly or by the family's default)");
  return load_matrix(src, "lm_head.weight", V, C, false);
}

}  // namespace

std::unique_ptr<Model> load_hf_model(const std::string& dir) {
  std::string cfg_path = dir + "/config.json";
  auto model = std::make_unique<Model>();
  model->cfg = config_from_hf_json(read_text_file(cfg_path), cfg_path);
  model->source = dir;
  const ModelConfig& c = model->cfg;
  TensorSource src = open_tensors(dir);
  const int64_t C = c.dim, V = c.vocab, F = c.ffn, HD = c.n_head * c.head_dim, KD = c.n_kv_head * c.head_dim;
  model->layers.resize(size_t(c.n_layer));
  if (c.arch == Arch::GPT2) {
    model->wte = load_matrix(src, "transformer.wte.weight", V, C, false);
    const Tensor& wpe = src.get("transformer.wpe.weight");
    check_shape(src, wpe, {c.max_pos, C});
    model->wpe = FloatBuffer::zeros({c.max_pos, C});
    to_f32(wpe.dtype, wpe.data, model->wpe.ptr(), c.max_pos * C);
    for (int64_t l = 0; l < c.n_layer; l++) {
      Layer& L = model->layers[size_t(l)];
      std::string p = "transformer.h." + std::to_string(l);
      L.norm1.name = p + ".ln_1";
      L.norm1.w = load_vector(src, p + ".ln_1.weight", C);
      L.norm1.b = load_vector(src, p + ".ln_1.bias", C);
      L.norm2.name = p + ".ln_2";
      L.norm2.w = load_vector(src, p + ".ln_2.weight", C);
      L.norm2.b = load_vector(src, p + ".ln_2.bias", C);
      init_linear(L.qkv, src, p + ".attn.c_attn", l, 3 * C, C, true, true);
      init_linear(L.o, src, p + ".attn.c_proj", l, C, C, true, true);
      init_linear(L.fc, src, p + ".mlp.c_fc", l, F, C, true, true);
      init_linear(L.down, src, p + ".mlp.c_proj", l, C, F, true, true);
    }
    model->norm_f.name = "transformer.ln_f";
    model->norm_f.w = load_vector(src, "transformer.ln_f.weight", C);
    model->norm_f.b = load_vector(src, "transformer.ln_f.bias", C);
    model->lm_head.module = "lm_head";
    model->lm_head.in = C;
    model->lm_head.out = V;
    if (c.tied)
      model->lm_head.W = model->wte;
    else
      model->lm_head.W = load_untied_head(src, cfg_path, V, C);
  } else {
    model->wte = load_matrix(src, "model.embed_tokens.weight", V, C, false);
    for (int64_t l = 0; l < c.n_layer; l++) {
      Layer& L = model->layers[size_t(l)];
      std::string p = "model.layers." + std::to_string(l);
      L.norm1.name = p + ".input_layernorm";
      L.norm1.w = load_vector(src, p + ".input_layernorm.weight", C);
      L.norm2.name = p + ".post_attention_layernorm";
      L.norm2.w = load_vector(src, p + ".post_attention_layernorm.weight", C);
      init_linear(L.q, src, p + ".self_attn.q_proj", l, HD, C, c.qkv_bias, false);
      init_linear(L.k, src, p + ".self_attn.k_proj", l, KD, C, c.qkv_bias, false);
      init_linear(L.v, src, p + ".self_attn.v_proj", l, KD, C, c.qkv_bias, false);
      init_linear(L.o, src, p + ".self_attn.o_proj", l, C, HD, c.o_bias, false);
      init_linear(L.fc, src, p + ".mlp.gate_proj", l, F, C, c.mlp_bias, false);
      init_linear(L.up, src, p + ".mlp.up_proj", l, F, C, c.mlp_bias, false);
      init_linear(L.down, src, p + ".mlp.down_proj", l, C, F, c.mlp_bias, false);
    }
    model->norm_f.name = "model.norm";
    model->norm_f.w = load_vector(src, "model.norm.weight", C);
    model->lm_head.module = "lm_head";
    model->lm_head.in = C;
    model->lm_head.out = V;
    if (c.tied)
      model->lm_head.W = model->wte;
    else
      model->lm_head.W = load_untied_head(src, cfg_path, V, C);
  }
  return model;
}

}  // namespace lowrank
