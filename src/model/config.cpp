#include "model/config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lowrank {

using json = nlohmann::json;

static int64_t get_int(const json& j, const char* key, const std::string& path, int64_t def = -1) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def >= 0) return def;
    fail(path, ": missing integer field \"", key, "\"");
  }
  if (!j[key].is_number_integer()) fail(path, ": field \"", key, "\" must be an integer");
  int64_t v = j[key].get<int64_t>();
  if (v < 0 || v > (int64_t(1) << 31)) fail(path, ": field \"", key, "\" out of range: ", v);
  return v;
}

static float get_float(const json& j, const char* key, float def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) return def;
  return j[key].get<float>();
}

static void read_token_ids(const json& j, const char* key, std::vector<int32_t>& out) {
  if (!j.contains(key)) return;
  if (j[key].is_number_integer()) out.push_back(j[key].get<int32_t>());
  if (j[key].is_array())
    for (const json& v : j[key])
      if (v.is_number_integer()) out.push_back(v.get<int32_t>());
}

ModelConfig config_from_hf_json(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(path, ": expected a JSON object");
  ModelConfig c;
  c.model_type = j.value("model_type", std::string());
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    c.architecture = j["architectures"][0].get<std::string>();
  std::vector<int32_t> bos;
  read_token_ids(j, "bos_token_id", bos);
  if (!bos.empty()) c.bos_id = bos[0];
  read_token_ids(j, "eos_token_id", c.eos_ids);
  c.tied = j.value("tie_word_embeddings", c.model_type == "gpt2");
  if (c.model_type == "gpt2") {
    c.arch = Arch::GPT2;
    c.vocab = get_int(j, "vocab_size", path);
    c.dim = get_int(j, "n_embd", path);
    c.n_layer = get_int(j, "n_layer", path);
    c.n_head = get_int(j, "n_head", path);
    c.n_kv_head = c.n_head;
    c.max_pos = get_int(j, "n_positions", path);
    c.ffn = get_int(j, "n_inner", path, 4 * c.dim);
    c.norm_eps = get_float(j, "layer_norm_epsilon", 1e-5f);
    std::string act = j.value("activation_function", std::string("gelu_new"));
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      fail(path, ": activation_function \"", act, "\" is not supported (expected gelu_new)");
    if (j.value("scale_attn_by_inverse_layer_idx", false) || j.value("reorder_and_upcast_attn", false))
      fail(path, ": scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
  } else if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
    c.arch = Arch::LLAMA;
    c.vocab = get_int(j, "vocab_size", path);
    c.dim = get_int(j, "hidden_size", path);
    c.n_layer = get_int(j, "num_hidden_layers", path);
    c.n_head = get_int(j, "num_attention_heads", path);
    c.n_kv_head = get_int(j, "num_key_value_heads", path, c.n_head);
    c.ffn = get_int(j, "intermediate_size", path);
    c.max_pos = get_int(j, "max_position_embeddings", path, 4096);
    c.norm_eps = get_float(j, "rms_norm_eps", 1e-6f);
    std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") fail(path, ": hidden_act \"", act, "\" is not supported (expected silu)");
    c.rope_theta = get_float(j, "rope_theta", 10000.f);
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
      const json& rp = j["rope_parameters"];
      c.rope_theta = get_float(rp, "rope_theta", c.rope_theta);
      std::string type = rp.value("rope_type", std::string("default"));
      if (type != "default") fail(path, ": rope_type \"", type, "\" is not supported");
    }
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
      std::string type = j["rope_scaling"].value("rope_type", j["rope_scaling"].value("type", std::string("default")));
      if (type != "default") fail(path, ": rope_scaling type \"", type, "\" is not supported");
    }
    if (c.model_type == "qwen2") {
      c.qkv_bias = true;
    } else {
      c.qkv_bias = c.o_bias = j.value("attention_bias", false);
      c.mlp_bias = j.value("mlp_bias", false);
    }
    if (c.model_type == "mistral" || c.model_type == "qwen2") {
      if (j.contains("sliding_window") && j["sliding_window"].is_number_integer() &&
          (c.model_type == "mistral" || j.value("use_sliding_window", false)))
        c.sliding_window = j["sliding_window"].get<int64_t>();
    }
  } else {
    fail(path, ": model_type \"", c.model_type, "\" is not supported (gpt2, llama, mistral, qwen2)");
  }
  if (c.n_head == 0 || c.dim % c.n_head != 0)
    fail(path, ": hidden size ", c.dim, " is not divisible by the number of heads ", c.n_head);
  c.head_dim = c.dim / c.n_head;
  if (c.arch == Arch::LLAMA && j.contains("head_dim") && j["head_dim"].is_number_integer())
    c.head_dim = j["head_dim"].get<int64_t>();
  if (c.n_kv_head == 0 || c.n_head % c.n_kv_head != 0)
    fail(path, ": num_attention_heads ", c.n_head, " is not a multiple of num_key_value_heads ", c.n_kv_head);
  if (c.head_dim % 2) fail(path, ": head_dim ", c.head_dim, " must be even");
  if (c.vocab <= 0 || c.n_layer <= 0) fail(path, ": vocab_size and layer count must be positive");
  return c;
}

}  // namespace lowrank
