// Loading a Hugging Face model directory into Model.
#include <nlohmann/json.hpp>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/names.h"

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

// nn.Linear weight (out, in) or GPT-2 Conv1D weight (in, out), kept in its stored dtype
// (F32, F16, BF16: the matmuls convert tiles as they go, so a bf16 model stays bf16 in memory).
Matrix load_matrix(const TensorSource& src, const std::string& name, int64_t out, int64_t in, bool conv1d) {
  const Tensor& t = src.get(name);
  check_shape(src, t, conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in});
  Matrix m;
  m.dtype = t.dtype;
  m.rows = out;
  m.cols = in;
  m.data = t.data;
  m.owner = t.owner;
  m.transposed = conv1d;
  return m;
}

// tie_word_embeddings false (stated, or transformers' default for the family): the head must be
// in the file; never fall back to the embeddings, which computes another model.
Matrix load_untied_head(const TensorSource& src, const std::string& cfg_path, int64_t V, int64_t C) {
  if (!src.find("lm_head.weight"))
    fail(src.dir, ": missing tensor lm_head.weight (", cfg_path,
         " has tie_word_embeddings false, explicitly or by the family's default)");
  return load_matrix(src, "lm_head.weight", V, C, false);
}

// Tensors of HF checkpoints that are not weights (buffers some versions saved).
bool ignorable_tensor(const std::string& name) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends(".rotary_emb.inv_freq") || ends(".attn.bias") || ends(".attn.masked_bias");
}

}  // namespace

std::unique_ptr<Model> load_hf_model(const std::string& dir) {
  std::string cfg_path = dir + "/config.json";
  auto model = std::make_unique<Model>();
  model->cfg = config_from_hf_json(read_text_file(cfg_path), cfg_path);
  model->source = dir;
  const ModelConfig& c = model->cfg;
  TensorSource src = open_tensors(dir);
  std::set<std::string> used;
  auto matrix = [&](const std::string& name, int64_t out, int64_t in, bool conv1d) {
    used.insert(name);
    return load_matrix(src, name, out, in, conv1d);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    used.insert(name);
    return load_vector(src, name, n);
  };
  const int64_t C = c.dim, V = c.vocab, F = c.ffn, HD = c.q_dim(), KD = c.kv_dim(), D = c.head_dim;
  const std::string embed = hf_embed_module(c);
  model->wte = matrix(embed + ".weight", V, C, false);
  if (c.learned_pos) {
    const Tensor& wpe = src.get("transformer.wpe.weight");
    used.insert(wpe.name);
    check_shape(src, wpe, {c.max_pos, C});
    model->wpe = FloatBuffer::zeros({c.max_pos, C});
    to_f32(wpe.dtype, wpe.data, model->wpe.ptr(), c.max_pos * C);
  }
  model->layers.resize(size_t(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = model->layers[size_t(l)];
    auto norm = [&](Norm& n, Role r, int64_t size) {
      n.name = hf_layer_module(c, l, r);
      n.w = vec(n.name + ".weight", size);
      if (c.norm == NormKind::LAYER) n.b = vec(n.name + ".bias", size);
    };
    auto lin = [&](Linear& lin, Role r, int64_t out, int64_t in, bool bias) {
      lin.module = hf_layer_module(c, l, r);
      lin.layer = l;
      lin.in = in;
      lin.out = out;
      lin.conv1d = c.conv1d;
      lin.W = matrix(lin.module + ".weight", out, in, c.conv1d);
      if (bias) lin.bias = vec(lin.module + ".bias", out);
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
      lin(L.qkv, Role::QKV, HD + 2 * KD, C, c.qkv_bias);
    } else {
      lin(L.q, Role::Q, HD, C, c.qkv_bias);
      lin(L.k, Role::K, KD, C, c.qkv_bias);
      lin(L.v, Role::V, KD, C, c.qkv_bias);
    }
    lin(L.o, Role::O, C, HD, c.o_bias);
    if (c.fused_gate_up) {
      lin(L.gate_up, Role::GATE_UP, 2 * F, C, c.mlp_bias);
    } else {
      if (c.gated_ffn) lin(L.gate, Role::GATE, F, C, c.mlp_bias);
      lin(L.up, Role::UP, F, C, c.mlp_bias);
    }
    lin(L.down, Role::DOWN, C, F, c.mlp_bias);
  }
  model->norm_f.name = hf_final_norm_module(c);
  model->norm_f.w = vec(model->norm_f.name + ".weight", C);
  if (c.norm == NormKind::LAYER) model->norm_f.b = vec(model->norm_f.name + ".bias", C);
  model->lm_head.module = "lm_head";
  model->lm_head.in = C;
  model->lm_head.out = V;
  if (c.tied) {
    model->lm_head.W = model->wte;
    used.insert("lm_head.weight");  // a tied checkpoint may carry a copy; the embedding is used
  } else {
    model->lm_head.W = load_untied_head(src, cfg_path, V, C);
    used.insert("lm_head.weight");
  }
  // A tensor this model does not read would be computed without: refused, never ignored
  // (an extra bias, a norm of another family, a vision tower...).
  for (const auto& [name, where] : src.where)
    if (!used.count(name) && !ignorable_tensor(name))
      fail(where.second, ": tensor ", name, " is not part of a ", c.model_type,
           " model as this engine reads it (unsupported variant?)");
  model->finish_load();
  return model;
}

}  // namespace lowrank
