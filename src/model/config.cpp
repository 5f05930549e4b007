#include "model/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_error.h"

namespace lowrank {

using json = nlohmann::json;

const char* family_name(Family f) {
  switch (f) {
    case Family::GPT2: return "gpt2";
    case Family::LLAMA: return "llama";
    case Family::MISTRAL: return "mistral";
    case Family::QWEN2: return "qwen2";
    case Family::QWEN3: return "qwen3";
    case Family::GEMMA2: return "gemma2";
    case Family::GEMMA3: return "gemma3";
    case Family::PHI3: return "phi3";
  }
  return "?";
}

// ---- RoPE ---------------------------------------------------------------------------------

std::vector<float> RopeConfig::inv_freq() const {
  const int64_t half = dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));  // (dim/2)
  // HF: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
  for (int64_t i = 0; i < half; i++) {
    const float e = float(2 * i) / float(dim);
    inv[size_t(i)] = 1.0f / float(std::pow(double(theta), double(e)));
  }
  const double kPi = 3.14159265358979323846;
  switch (scaling) {
    case RopeScaling::NONE:
      break;
    case RopeScaling::LINEAR:
      for (float& f : inv) f /= factor;
      break;
    case RopeScaling::LLAMA3: {
      // transformers _compute_llama3_parameters: wavelengths longer than
      // original/low_freq_factor are divided by factor, shorter than original/high_freq_factor
      // kept, and the band between interpolated smoothly.
      const double low_wl = double(original_max_pos) / double(low_freq_factor);
      const double high_wl = double(original_max_pos) / double(high_freq_factor);
      for (float& f : inv) {
        const double wl = 2.0 * kPi / double(f);
        if (wl > low_wl) {
          f = float(double(f) / double(factor));
        } else if (wl >= high_wl) {
          const double smooth = (double(original_max_pos) / wl - double(low_freq_factor)) /
                                double(high_freq_factor - low_freq_factor);
          f = float((1.0 - smooth) * double(f) / double(factor) + smooth * double(f));
        }
      }
      break;
    }
    case RopeScaling::YARN: {
      // transformers _compute_yarn_parameters: interpolation (inv/factor) and extrapolation
      // (inv) blended by a linear ramp between the correction dims of beta_fast and beta_slow.
      auto corr_dim = [&](double rotations) {
        return double(dim) * std::log(double(original_max_pos) / (rotations * 2.0 * kPi)) / (2.0 * std::log(double(theta)));
      };
      double low = std::floor(corr_dim(beta_fast)), high = std::ceil(corr_dim(beta_slow));
      low = std::max(low, 0.0);
      high = std::min(high, double(dim - 1));
      if (low == high) high += 0.001;
      for (int64_t i = 0; i < half; i++) {
        const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation_factor = 1.0 - ramp;
        const double f = inv[size_t(i)];
        inv[size_t(i)] = float(f / double(factor) * (1.0 - extrapolation_factor) + f * extrapolation_factor);
      }
      break;
    }
  }
  if (!freq_factors.empty())
    for (int64_t i = 0; i < half; i++) inv[size_t(i)] /= freq_factors[size_t(i)];
  return inv;
}

bool ModelConfig::any_window() const {
  for (const LayerSpec& l : layers)
    if (l.window > 0) return true;
  return false;
}

void ModelConfig::validate(const std::string& src) const {
  if (vocab <= 0 || dim <= 0 || n_layer <= 0 || n_head <= 0 || n_kv_head <= 0 || head_dim <= 0 || ffn <= 0)
    fail(src, ": vocabulary, hidden size, layers, heads, head size and FFN size must be positive");
  if (n_head % n_kv_head != 0)
    fail(src, ": ", n_head, " attention heads are not a multiple of ", n_kv_head, " key/value heads");
  if (int64_t(layers.size()) != n_layer) fail(src, ": per-layer description has ", layers.size(), " of ", n_layer, " layers");
  if (arch == Arch::LLAMA) {
    if (ropes.empty()) fail(src, ": no rotary embedding description");
    for (const RopeConfig& r : ropes) {
      if (r.dim <= 0 || r.dim % 2 || r.dim > head_dim)
        fail(src, ": rotary dimension ", r.dim, " must be even and at most the head size ", head_dim);
      if (!(r.theta > 0) || !std::isfinite(r.theta)) fail(src, ": rope theta ", r.theta, " must be positive");
      if (!(r.factor > 0) || !std::isfinite(r.factor)) fail(src, ": rope scaling factor ", r.factor, " must be positive");
      if (!r.freq_factors.empty() && int64_t(r.freq_factors.size()) != r.dim / 2)
        fail(src, ": rope frequency factors: ", r.freq_factors.size(), " values for ", r.dim / 2, " rotated pairs");
      for (float f : r.freq_factors)
        if (!(f > 0) || !std::isfinite(f)) fail(src, ": rope frequency factor ", f, " must be positive");
    }
    for (const LayerSpec& l : layers)
      if (l.rope < 0 || l.rope >= int(ropes.size()) || l.window < 0) fail(src, ": bad per-layer attention description");
  }
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) fail(src, ": norm epsilon ", norm_eps, " must be positive");
  if (!(attn_scale > 0) || !std::isfinite(attn_scale)) fail(src, ": attention scale ", attn_scale, " must be positive");
  if (attn_softcap < 0 || final_softcap < 0 || !std::isfinite(attn_softcap) || !std::isfinite(final_softcap))
    fail(src, ": softcapping values must be positive");
  if (fused_qkv && arch == Arch::GPT2 && q_dim() != dim) fail(src, ": GPT-2 heads must split the hidden size");
}

// ---- config.json --------------------------------------------------------------------------

namespace {

// Field readers: absent or null gives the default; a present field of the wrong type or out
// of range is an error naming the file and the key, never silently the default.
struct Fields {
  const json& j;
  const std::string& path;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }

  int64_t integer(const char* key, int64_t def = -1, int64_t lo = 0, int64_t hi = int64_t(1) << 31) const {
    if (!has(key)) {
      if (def >= lo) return def;
      fail(path, ": missing integer field \"", key, "\"");
    }
    if (!j[key].is_number_integer()) fail(path, ": field \"", key, "\" must be an integer");
    int64_t v = j[key].get<int64_t>();
    if (v < lo || v > hi) fail(path, ": field \"", key, "\" is ", v, ", expected ", lo, "..", hi);
    return v;
  }
  // A finite number in (lo, hi] (lo exclusive).
  float number(const char* key, float def, double lo = -1e300, double hi = 1e300) const {
    if (!has(key)) return def;
    if (!j[key].is_number()) fail(path, ": field \"", key, "\" must be a number, found ", j[key].type_name());
    const double v = j[key].get<double>();
    if (!std::isfinite(v) || !(v > lo) || v > hi)
      fail(path, ": field \"", key, "\" is ", v, ", expected a value in (", lo, ", ", hi, "]");
    return float(v);
  }
  std::string string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    if (!j[key].is_string()) fail(path, ": field \"", key, "\" must be a string");
    return j[key].get<std::string>();
  }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    if (!j[key].is_boolean()) fail(path, ": field \"", key, "\" must be true or false");
    return j[key].get<bool>();
  }
  // A key whose non-default value changes the math in a way this engine does not implement.
  void refuse_if_set(const char* key, const char* why) const {
    if (has(key) && !(j[key].is_boolean() && !j[key].get<bool>()))
      fail(path, ": \"", key, "\" is set (", j[key].dump(), "): ", why, " is not supported");
  }
};

void read_token_ids(const json& j, const char* key, std::vector<int32_t>& out) {
  if (!j.contains(key)) return;
  if (j[key].is_number_integer()) out.push_back(j[key].get<int32_t>());
  if (j[key].is_array())
    for (const json& v : j[key])
      if (v.is_number_integer()) out.push_back(v.get<int32_t>());
}

// One rope description from a rope_scaling / rope_parameters object (theta given).
RopeConfig parse_rope(const json& obj, const std::string& path, const std::string& where, float theta, int64_t dim,
                      int64_t max_pos) {
  RopeConfig r;
  r.theta = theta;
  r.dim = dim;
  if (obj.is_null()) return r;
  if (!obj.is_object()) fail(path, ": \"", where, "\" must be an object");
  Fields f{obj, path};
  if (f.has("rope_theta")) r.theta = f.number("rope_theta", theta, 0.0);
  std::string type = f.string("rope_type", f.string("type", "default"));
  if (type == "default") {
    // nothing
  } else if (type == "linear") {
    r.scaling = RopeScaling::LINEAR;
    r.factor = f.number("factor", 1.f, 0.0);
  } else if (type == "llama3") {
    r.scaling = RopeScaling::LLAMA3;
    r.factor = f.number("factor", 8.f, 0.0);
    r.low_freq_factor = f.number("low_freq_factor", 1.f, 0.0);
    r.high_freq_factor = f.number("high_freq_factor", 4.f, 0.0);
    r.original_max_pos = f.integer("original_max_position_embeddings", 8192, 1);
    if (!(r.high_freq_factor > r.low_freq_factor))
      fail(path, ": ", where, ": high_freq_factor must exceed low_freq_factor");
  } else if (type == "yarn") {
    r.scaling = RopeScaling::YARN;
    r.factor = f.number("factor", 1.f, 0.0);
    r.beta_fast = f.number("beta_fast", 32.f, 0.0);
    r.beta_slow = f.number("beta_slow", 1.f, 0.0);
    r.original_max_pos = f.integer("original_max_position_embeddings", max_pos, 1);
    f.refuse_if_set("mscale", "YaRN mscale");
    f.refuse_if_set("mscale_all_dim", "YaRN mscale_all_dim");
    if (f.has("truncate") && !f.boolean("truncate", true)) fail(path, ": ", where, ": YaRN truncate false is not supported");
    // transformers: attention_factor defaults to 0.1·ln(factor) + 1 (1 when factor <= 1).
    r.attn_factor = f.number("attention_factor", r.factor <= 1.f ? 1.f : float(0.1 * std::log(double(r.factor)) + 1.0), 0.0);
  } else {
    fail(path, ": ", where, " type \"", type, "\" is not supported (default, linear, llama3, yarn)");
  }
  return r;
}

}  // namespace

ModelConfig config_from_hf_json(const std::string& text, const std::string& path) {
  json root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON: ", json_error_text(e));
  }
  if (!root.is_object()) fail(path, ": expected a JSON object");
  ModelConfig c;
  {
    Fields r{root, path};
    c.model_type = r.string("model_type", "");
    if (root.contains("architectures") && root["architectures"].is_array() && !root["architectures"].empty() &&
        root["architectures"][0].is_string())
      c.architecture = root["architectures"][0].get<std::string>();
  }
  if (c.model_type == "gemma3" && root.contains("text_config"))
    fail(path, ": model_type gemma3 with a text_config (the multimodal Gemma 3 checkpoint) is not supported; "
         "only the text model (model_type gemma3_text, Gemma3ForCausalLM)");
  const json& j = root;
  Fields f{j, path};
  std::vector<int32_t> bos;
  read_token_ids(j, "bos_token_id", bos);
  if (!bos.empty()) c.bos_id = bos[0];
  read_token_ids(j, "eos_token_id", c.eos_ids);
  // Mixture-of-experts and other block variants: refused by name.
  for (const char* k : {"num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok"})
    if (f.has(k) && !(j[k].is_number() && j[k].get<double>() == 0))
      fail(path, ": \"", k, "\" is set: mixture-of-experts models are not supported");

  const std::string& mt = c.model_type;
  if (mt == "gpt2") {
    c.arch = Arch::GPT2;
    c.family = Family::GPT2;
    c.vocab = f.integer("vocab_size", -1, 1);
    c.dim = f.integer("n_embd", -1, 1);
    c.n_layer = f.integer("n_layer", -1, 1);
    c.n_head = f.integer("n_head", -1, 1);
    c.n_kv_head = c.n_head;
    c.max_pos = f.integer("n_positions", -1, 1);
    c.ffn = f.integer("n_inner", 4 * c.dim, 1);
    c.norm_eps = f.number("layer_norm_epsilon", 1e-5f, 0.0, 1.0);
    std::string act = f.string("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      fail(path, ": activation_function \"", act, "\" is not supported (expected gelu_new)");
    if (f.boolean("scale_attn_by_inverse_layer_idx", false) || f.boolean("reorder_and_upcast_attn", false))
      fail(path, ": scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
    if (!f.boolean("scale_attn_weights", true)) fail(path, ": scale_attn_weights false is not supported");
    if (c.dim % c.n_head) fail(path, ": n_embd ", c.dim, " is not divisible by n_head ", c.n_head);
    c.head_dim = c.dim / c.n_head;
    c.norm = NormKind::LAYER;
    c.gated_ffn = false;
    c.act = Activation::GELU_TANH;
    c.fused_qkv = true;
    c.conv1d = true;
    c.learned_pos = true;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.tied = f.boolean("tie_word_embeddings", true);
    c.attn_scale = 1.f / std::sqrt(float(c.head_dim));
    c.layers.assign(size_t(c.n_layer), LayerSpec{});
    c.validate(path);
    return c;
  }

  c.arch = Arch::LLAMA;
  if (mt == "llama") c.family = Family::LLAMA;
  else if (mt == "mistral") c.family = Family::MISTRAL;
  else if (mt == "qwen2") c.family = Family::QWEN2;
  else if (mt == "qwen3") c.family = Family::QWEN3;
  else if (mt == "gemma2") c.family = Family::GEMMA2;
  else if (mt == "gemma3_text") c.family = Family::GEMMA3;
  else if (mt == "phi3") c.family = Family::PHI3;
  else
    fail(path, ": model_type \"", mt, "\" is not supported (gpt2, llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3)");
  const Family fam = c.family;
  const bool gemma = fam == Family::GEMMA2 || fam == Family::GEMMA3;

  c.vocab = f.integer("vocab_size", -1, 1);
  c.dim = f.integer("hidden_size", -1, 1);
  c.n_layer = f.integer("num_hidden_layers", -1, 1);
  c.n_head = f.integer("num_attention_heads", -1, 1);
  c.n_kv_head = f.integer("num_key_value_heads", c.n_head, 1);
  c.ffn = f.integer("intermediate_size", -1, 1);
  c.max_pos = f.integer("max_position_embeddings", gemma ? 8192 : 4096, 1);
  c.norm_eps = f.number("rms_norm_eps", 1e-6f, 0.0, 1.0);
  // transformers' defaults: head_dim 128 for Qwen3, 256 for Gemma, else hidden/heads.
  int64_t def_head = c.dim % c.n_head == 0 ? c.dim / c.n_head : -1;
  if (fam == Family::QWEN3) def_head = 128;
  if (gemma) def_head = 256;
  c.head_dim = f.integer("head_dim", def_head, 1);

  // Activation.
  std::string act = f.string("hidden_act", gemma ? "gelu_pytorch_tanh" : "silu");
  if (gemma) act = f.string("hidden_activation", act);
  if (act == "silu") c.act = Activation::SILU;
  else if (act == "gelu_pytorch_tanh" || (gemma && act == "gelu_tanh")) c.act = Activation::GELU_TANH;
  else fail(path, ": hidden_act \"", act, "\" is not supported (silu, gelu_pytorch_tanh)");

  // Biases, tying, structure.
  c.tied = f.boolean("tie_word_embeddings", gemma);
  if (fam == Family::QWEN2) {
    c.qkv_bias = true;
  } else {
    c.qkv_bias = c.o_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
  }
  c.qk_norm = fam == Family::QWEN3 || fam == Family::GEMMA3;
  c.post_norms = gemma;
  c.norm_offset = gemma ? 1.f : 0.f;
  c.embed_scale = gemma ? std::sqrt(float(c.dim)) : 1.f;
  c.fused_qkv = c.fused_gate_up = fam == Family::PHI3;

  // Attention scale and softcapping.
  c.attn_scale = 1.f / std::sqrt(float(c.head_dim));
  if (gemma) c.attn_scale = 1.f / std::sqrt(f.number("query_pre_attn_scalar", float(c.head_dim), 0.0));
  if (fam == Family::GEMMA2) {
    c.attn_softcap = f.number("attn_logit_softcapping", 50.f, 0.0);
    c.final_softcap = f.number("final_logit_softcapping", 30.f, 0.0);
  } else if (fam == Family::GEMMA3) {
    c.attn_softcap = f.number("attn_logit_softcapping", 0.f, 0.0);
    c.final_softcap = f.number("final_logit_softcapping", 0.f, 0.0);
  } else {
    f.refuse_if_set("attn_logit_softcapping", "attention softcapping for this family");
    f.refuse_if_set("final_logit_softcapping", "final logit softcapping for this family");
  }
  for (const char* k : {"use_qk_norm", "attention_chunk_size", "no_rope_layers", "qk_layernorm", "embedding_multiplier",
                        "logits_scaling", "residual_multiplier", "attention_multiplier"})
    f.refuse_if_set(k, k);

  // Rotary embeddings: rope_theta + rope_scaling (older files) or rope_parameters (newer),
  // which for Gemma 3 may hold one entry per layer type.
  const double partial = f.number("partial_rotary_factor", 1.f, 0.0, 1.0);
  int64_t rope_dim = int64_t(std::llround(double(c.head_dim) * partial));
  rope_dim -= rope_dim % 2;
  float theta = f.number("rope_theta", gemma && fam == Family::GEMMA3 ? 1e6f : 10000.f, 0.0);
  if (fam == Family::PHI3 && f.has("rope_scaling"))
    fail(path, ": rope_scaling for phi3 (longrope/su) is not supported");
  json rope_global = f.has("rope_scaling") ? j["rope_scaling"] : json();
  json rope_local;  // Gemma 3 sliding layers
  if (f.has("rope_parameters")) {
    const json& rp = j["rope_parameters"];
    if (!rp.is_object()) fail(path, ": \"rope_parameters\" must be an object");
    if (rp.contains("full_attention") || rp.contains("sliding_attention")) {
      for (auto it = rp.begin(); it != rp.end(); ++it)
        if (it.key() != "full_attention" && it.key() != "sliding_attention")
          fail(path, ": rope_parameters entry \"", it.key(), "\" is not supported");
      if (rp.contains("full_attention")) rope_global = rp["full_attention"];
      if (rp.contains("sliding_attention")) rope_local = rp["sliding_attention"];
    } else {
      rope_global = rp;
    }
  }
  c.ropes.push_back(parse_rope(rope_global, path, "rope_scaling", theta, rope_dim, c.max_pos));
  if (fam == Family::GEMMA3) {
    const float local_theta = f.number("rope_local_base_freq", 10000.f, 0.0);
    c.ropes.push_back(parse_rope(rope_local, path, "rope_parameters.sliding_attention", local_theta, rope_dim, c.max_pos));
  } else if (!rope_local.is_null()) {
    fail(path, ": per-layer-type rope_parameters are only supported for gemma3");
  }

  // Sliding windows per layer.
  c.layers.assign(size_t(c.n_layer), LayerSpec{});
  const int64_t window = f.integer("sliding_window", 0, 0);
  std::vector<bool> sliding(size_t(c.n_layer), false);
  if (f.has("layer_types")) {
    const json& lt = j["layer_types"];
    if (!lt.is_array() || int64_t(lt.size()) != c.n_layer)
      fail(path, ": \"layer_types\" must list one type per layer (", c.n_layer, ")");
    for (size_t i = 0; i < lt.size(); i++) {
      if (!lt[i].is_string()) fail(path, ": \"layer_types\" entries must be strings");
      const std::string t = lt[i].get<std::string>();
      if (t == "sliding_attention") sliding[i] = true;
      else if (t != "full_attention") fail(path, ": layer type \"", t, "\" is not supported");
    }
    if (fam == Family::QWEN2 || fam == Family::QWEN3)
      if (!f.boolean("use_sliding_window", false)) sliding.assign(sliding.size(), false);
  } else if (fam == Family::MISTRAL || fam == Family::PHI3) {
    sliding.assign(sliding.size(), window > 0);
  } else if (fam == Family::QWEN2 || fam == Family::QWEN3) {
    if (f.boolean("use_sliding_window", false)) {
      const int64_t from = f.integer("max_window_layers", c.n_layer, 0);
      for (int64_t i = from; i < c.n_layer; i++) sliding[size_t(i)] = window > 0;
    }
  } else if (fam == Family::GEMMA2) {
    for (int64_t i = 0; i < c.n_layer; i++) sliding[size_t(i)] = (i + 1) % 2 != 0;
  } else if (fam == Family::GEMMA3) {
    const int64_t pattern = f.integer("sliding_window_pattern", 6, 1);
    for (int64_t i = 0; i < c.n_layer; i++) sliding[size_t(i)] = (i + 1) % pattern != 0;
  } else if (fam == Family::LLAMA) {
    // LlamaForCausalLM has no sliding window; a window in its config is not applied by HF.
  }
  for (int64_t i = 0; i < c.n_layer; i++) {
    LayerSpec& l = c.layers[size_t(i)];
    l.window = sliding[size_t(i)] ? window : 0;
    if (sliding[size_t(i)] && window == 0 && gemma) l.window = 4096;
    l.rope = fam == Family::GEMMA3 && sliding[size_t(i)] ? 1 : 0;
  }
  c.validate(path);
  return c;
}

}  // namespace lowrank
