#include "model/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_error.h"

namespace lowrank {

using json = nlohmann::json;

// An integer field in [lo, hi]; absent or null gives def (def < lo: the field is required).
static int64_t get_int(const json& j, const char* key, const std::string& path, int64_t def = -1,
                       int64_t lo = 0, int64_t hi = int64_t(1) << 31) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def >= lo) return def;
    fail(path, ": missing integer field \"", key, "\"");
  }
  if (!j[key].is_number_integer()) fail(path, ": field \"", key, "\" must be an integer");
  int64_t v = j[key].get<int64_t>();
  if (v < lo || v > hi) fail(path, ": field \"", key, "\" is ", v, ", expected ", lo, "..", hi);
  return v;
}

// A number field; absent or null gives def. Anything else that is not a finite number in
// (lo, hi] (lo exclusive) is an error, never silently the default.
static float get_float(const json& j, const char* key, const std::string& path, float def,
                       double lo = -1e300, double hi = 1e300) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) fail(path, ": field \"", key, "\" must be a number, found ", j[key].type_name());
  const double v = j[key].get<double>();
  if (!std::isfinite(v) || !(v > lo) || v > hi)
    fail(path, ": field \"", key, "\" is ", v, ", expected a value in (", lo, ", ", hi, "]");
  return float(v);
}

static std::string get_string(const json& j, const char* key, const std::string& path, const std::string& def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_string()) fail(path, ": field \"", key, "\" must be a string");
  return j[key].get<std::string>();
}

static bool get_bool(const json& j, const char* key, const std::string& path, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) fail(path, ": field \"", key, "\" must be true or false");
  return j[key].get<bool>();
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
    fail(path, ": not valid JSON: ", json_error_text(e));
  }
  if (!j.is_object()) fail(path, ": expected a JSON object");
  ModelConfig c;
  c.model_type = get_string(j, "model_type", path, "");
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    c.architecture = j["architectures"][0].get<std::string>();
  std::vector<int32_t> bos;
  read_token_ids(j, "bos_token_id", bos);
  if (!bos.empty()) c.bos_id = bos[0];
  read_token_ids(j, "eos_token_id", c.eos_ids);
  // transformers' default: tied for GPT-2, untied for the llama family.
  c.tied = get_bool(j, "tie_word_embeddings", path, c.model_type == "gpt2");
  if (c.model_type == "gpt2") {
    c.arch = Arch::GPT2;
    c.vocab = get_int(j, "vocab_size", path, -1, 1);
    c.dim = get_int(j, "n_embd", path, -1, 1);
    c.n_layer = get_int(j, "n_layer", path, -1, 1);
    c.n_head = get_int(j, "n_head", path, -1, 1);
    c.n_kv_head = c.n_head;
    c.max_pos = get_int(j, "n_positions", path, -1, 1);
    c.ffn = get_int(j, "n_inner", path, 4 * c.dim, 1);
    c.norm_eps = get_float(j, "layer_norm_epsilon", path, 1e-5f, 0.0, 1.0);
    std::string act = get_string(j, "activation_function", path, "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      fail(path, ": activation_function \"", act, "\" is not supported (expected gelu_new)");
    if (get_bool(j, "scale_attn_by_inverse_layer_idx", path, false) || get_bool(j, "reorder_and_upcast_attn", path, false))
      fail(path, ": scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
  } else if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
    c.arch = Arch::LLAMA;
    c.vocab = get_int(j, "vocab_size", path, -1, 1);
    c.dim = get_int(j, "hidden_size", path, -1, 1);
    c.n_layer = get_int(j, "num_hidden_layers", path, -1, 1);
    c.n_head = get_int(j, "num_attention_heads", path, -1, 1);
    c.n_kv_head = get_int(j, "num_key_value_heads", path, c.n_head, 1);
    c.ffn = get_int(j, "intermediate_size", path, -1, 1);
    c.max_pos = get_int(j, "max_position_embeddings", path, 4096, 1);
    c.norm_eps = get_float(j, "rms_norm_eps", path, 1e-6f, 0.0, 1.0);
    std::string act = get_string(j, "hidden_act", path, "silu");
    if (act != "silu") fail(path, ": hidden_act \"", act, "\" is not supported (expected silu)");
    c.rope_theta = get_float(j, "rope_theta", path, 10000.f, 0.0);
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
      const json& rp = j["rope_parameters"];
      c.rope_theta = get_float(rp, "rope_theta", path, c.rope_theta, 0.0);
      std::string type = get_string(rp, "rope_type", path, "default");
      if (type != "default") fail(path, ": rope_type \"", type, "\" is not supported");
    }
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
      const json& rs = j["rope_scaling"];
      std::string type = get_string(rs, "rope_type", path, get_string(rs, "type", path, "default"));
      if (type != "default") fail(path, ": rope_scaling type \"", type, "\" is not supported");
    }
    if (c.model_type == "qwen2") {
      c.qkv_bias = true;
    } else {
      c.qkv_bias = c.o_bias = get_bool(j, "attention_bias", path, false);
      c.mlp_bias = get_bool(j, "mlp_bias", path, false);
    }
    if (c.model_type == "mistral" || c.model_type == "qwen2") {
      const int64_t window = get_int(j, "sliding_window", path, 0, 0);
      if (c.model_type == "mistral" || get_bool(j, "use_sliding_window", path, false)) c.sliding_window = window;
    }
  } else {
    fail(path, ": model_type \"", c.model_type, "\" is not supported (gpt2, llama, mistral, qwen2)");
  }
  if (c.n_head == 0 || c.dim % c.n_head != 0)
    fail(path, ": hidden size ", c.dim, " is not divisible by the number of heads ", c.n_head);
  c.head_dim = c.dim / c.n_head;
  if (c.arch == Arch::LLAMA) c.head_dim = get_int(j, "head_dim", path, c.head_dim, 1);
  if (c.n_kv_head == 0 || c.n_head % c.n_kv_head != 0)
    fail(path, ": num_attention_heads ", c.n_head, " is not a multiple of num_key_value_heads ", c.n_kv_head);
  if (c.head_dim % 2) fail(path, ": head_dim ", c.head_dim, " must be even");
  if (c.vocab <= 0 || c.n_layer <= 0) fail(path, ": vocab_size and layer count must be positive");
  return c;
}

}  // namespace lowrank
