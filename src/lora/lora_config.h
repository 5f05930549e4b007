// LoraConfig with PEFT's field names and meanings (adapter_config.json).
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lowrank {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules;  // suffix-matched list
  std::string target_regex;                 // set when target_modules was a single string
  bool all_linear = false;                  // target_modules == "all-linear"
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  std::string bias = "none";
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::vector<int64_t> layers_to_transform;  // empty = all
  std::string init_lora_weights = "true";   // "true", "false", "gaussian", "pissa"
  std::string base_model_name_or_path;
  std::string base_model_class;              // auto_mapping.base_model_class
  std::string parent_library;                // auto_mapping.parent_library
  std::string task_type;                     // null when empty

  // Parses adapter_config.json; unknown keys ignored; unsupported values rejected.
  static LoraConfig from_json(const std::string& text, const std::string& path);
  // PEFT-compatible JSON (sorted keys, 2-space indent).
  std::string to_json() const;

  // Whether module (full path, e.g. "model.layers.3.mlp.up_proj") is targeted.
  // linear_name is the last component; is_output_head excludes the lm_head from all-linear.
  bool matches(const std::string& module, int64_t layer, bool is_output_head) const;
  int64_t rank_for(const std::string& module) const;
  double alpha_for(const std::string& module) const;
  double scale_for(const std::string& module) const;
};

}  // namespace lowrank
