#include "lora/lora_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "core/json_error.h"

namespace lowrank {

using json = nlohmann::json;

LoraConfig LoraConfig::from_json(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON: ", json_error_text(e));
  }
  if (!j.is_object()) fail(path, ": expected a JSON object");
  LoraConfig c;
  std::string peft_type = j.value("peft_type", std::string("LORA"));
  if (peft_type != "LORA") fail(path, ": peft_type \"", peft_type, "\" is not supported (expected LORA)");
  try {
    if (!j.contains("r") || !j["r"].is_number_integer()) fail(path, ": missing integer field \"r\"");
    c.r = j["r"].get<int64_t>();
    if (c.r <= 0 || c.r > 65536) fail(path, ": r must be positive, got ", c.r);
    if (j.contains("lora_alpha") && j["lora_alpha"].is_number()) c.lora_alpha = j["lora_alpha"].get<double>();
    else c.lora_alpha = double(c.r);
    if (j.contains("lora_dropout") && j["lora_dropout"].is_number()) c.lora_dropout = j["lora_dropout"].get<double>();
    if (c.lora_dropout < 0 || c.lora_dropout >= 1) fail(path, ": lora_dropout must be in [0, 1)");
    const json& tm = j.contains("target_modules") ? j["target_modules"] : json();
    if (tm.is_string()) {
      std::string s = tm.get<std::string>();
      if (s == "all-linear") c.all_linear = true;
      else c.target_regex = s;
    } else if (tm.is_array()) {
      for (const json& t : tm) {
        if (!t.is_string()) fail(path, ": target_modules entries must be strings");
        c.target_modules.push_back(t.get<std::string>());
      }
    } else {
      fail(path, ": target_modules must be a list of names, a regex string or \"all-linear\"");
    }
    c.use_rslora = j.value("use_rslora", false);
    c.fan_in_fan_out = j.value("fan_in_fan_out", false);
    if (j.contains("bias") && j["bias"].is_string()) c.bias = j["bias"].get<std::string>();
    if (c.bias != "none") fail(path, ": bias \"", c.bias, "\" is not supported (only \"none\")");
    if (j.value("use_dora", false)) fail(path, ": use_dora is not supported");
    if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
      fail(path, ": modules_to_save is not supported");
    if (j.contains("rank_pattern") && j["rank_pattern"].is_object())
      for (auto it = j["rank_pattern"].begin(); it != j["rank_pattern"].end(); ++it) {
        if (!it->is_number_integer() || it->get<int64_t>() <= 0)
          fail(path, ": rank_pattern[", it.key(), "] must be a positive integer");
        c.rank_pattern[it.key()] = it->get<int64_t>();
      }
    if (j.contains("alpha_pattern") && j["alpha_pattern"].is_object())
      for (auto it = j["alpha_pattern"].begin(); it != j["alpha_pattern"].end(); ++it) {
        if (!it->is_number()) fail(path, ": alpha_pattern[", it.key(), "] must be a number");
        c.alpha_pattern[it.key()] = it->get<double>();
      }
    if (j.contains("layers_to_transform")) {
      const json& lt = j["layers_to_transform"];
      if (lt.is_number_integer()) c.layers_to_transform.push_back(lt.get<int64_t>());
      else if (lt.is_array())
        for (const json& v : lt)
          if (v.is_number_integer()) c.layers_to_transform.push_back(v.get<int64_t>());
    }
    if (j.contains("init_lora_weights")) {
      const json& iw = j["init_lora_weights"];
      if (iw.is_boolean()) c.init_lora_weights = iw.get<bool>() ? "true" : "false";
      else if (iw.is_string()) c.init_lora_weights = iw.get<std::string>();
    }
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
      c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
    if (j.contains("auto_mapping") && j["auto_mapping"].is_object()) {
      c.base_model_class = j["auto_mapping"].value("base_model_class", std::string());
      c.parent_library = j["auto_mapping"].value("parent_library", std::string());
    }
    if (j.contains("task_type") && j["task_type"].is_string()) c.task_type = j["task_type"].get<std::string>();
  } catch (const json::exception& e) {
    fail(path, ": bad field type: ", json_error_text(e));
  }
  if (!c.target_regex.empty()) {
    try {
      std::regex re(c.target_regex);
    } catch (const std::regex_error& e) {
      fail(path, ": target_modules regex \"", c.target_regex, "\" is invalid: ", e.what());
    }
  }
  return c;
}

std::string LoraConfig::to_json() const {
  // nlohmann::json objects are std::map-backed: keys come out sorted, like PEFT's sort_keys.
  json j;
  j["alora_invocation_tokens"] = nullptr;
  j["alpha_pattern"] = json::object();
  for (auto& [k, v] : alpha_pattern) {
    if (v == std::floor(v)) j["alpha_pattern"][k] = int64_t(v);
    else j["alpha_pattern"][k] = v;
  }
  j["arrow_config"] = nullptr;
  if (!base_model_class.empty())
    j["auto_mapping"] = {{"base_model_class", base_model_class}, {"parent_library", parent_library}};
  else
    j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path);
  j["bias"] = bias;
  j["corda_config"] = nullptr;
  j["ensure_weight_tying"] = false;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["inference_mode"] = true;
  if (init_lora_weights == "true") j["init_lora_weights"] = true;
  else if (init_lora_weights == "false") j["init_lora_weights"] = false;
  else j["init_lora_weights"] = init_lora_weights;
  j["kasa_config"] = nullptr;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = layers_to_transform.empty() ? json(nullptr) : json(layers_to_transform);
  j["loftq_config"] = json::object();
  if (lora_alpha == std::floor(lora_alpha)) j["lora_alpha"] = int64_t(lora_alpha);
  else j["lora_alpha"] = lora_alpha;
  j["lora_bias"] = false;
  j["lora_dropout"] = lora_dropout;
  j["lora_ga_config"] = nullptr;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["monteclora_config"] = nullptr;
  j["peft_type"] = "LORA";
  j["peft_version"] = "0.21.0";
  j["qalora_group_size"] = 16;
  j["r"] = r;
  j["rank_pattern"] = json::object();
  for (auto& [k, v] : rank_pattern) j["rank_pattern"][k] = v;
  j["revision"] = nullptr;
  if (all_linear) j["target_modules"] = "all-linear";
  else if (!target_regex.empty()) j["target_modules"] = target_regex;
  else j["target_modules"] = target_modules;  // PEFT's set order is arbitrary: keep the order read
  j["target_parameters"] = nullptr;
  j["task_type"] = task_type.empty() ? json(nullptr) : json(task_type);
  j["trainable_token_indices"] = nullptr;
  j["use_bdlora"] = nullptr;
  j["use_dora"] = false;
  j["use_qalora"] = false;
  j["use_rslora"] = use_rslora;
  j["velora_config"] = nullptr;
  return j.dump(2);
}

bool LoraConfig::matches(const std::string& module, int64_t layer, bool is_output_head) const {
  bool hit = false;
  if (all_linear) {
    hit = !is_output_head;
  } else if (!target_regex.empty()) {
    hit = std::regex_match(module, std::regex(target_regex));
  } else {
    for (const std::string& t : target_modules) {
      if (module == t || (module.size() > t.size() && module.compare(module.size() - t.size(), t.size(), t) == 0 &&
                          module[module.size() - t.size() - 1] == '.')) {
        hit = true;
        break;
      }
    }
  }
  if (!hit) return false;
  if (!layers_to_transform.empty()) {
    if (layer < 0) return false;
    return std::find(layers_to_transform.begin(), layers_to_transform.end(), layer) != layers_to_transform.end();
  }
  return true;
}

// PEFT matches pattern keys as regex against the end of the module name: (.*\.)?key$.
static bool pattern_matches(const std::string& key, const std::string& module) {
  try {
    return std::regex_search(module, std::regex("(^|.*\\.)(" + key + ")$"));
  } catch (const std::regex_error&) {
    return false;
  }
}

int64_t LoraConfig::rank_for(const std::string& module) const {
  for (auto& [k, v] : rank_pattern)
    if (pattern_matches(k, module)) return v;
  return r;
}

double LoraConfig::alpha_for(const std::string& module) const {
  for (auto& [k, v] : alpha_pattern)
    if (pattern_matches(k, module)) return v;
  return lora_alpha;
}

double LoraConfig::scale_for(const std::string& module) const {
  double rr = double(rank_for(module));
  double a = alpha_for(module);
  return use_rslora ? a / std::sqrt(rr) : a / rr;
}

}  // namespace lowrank
