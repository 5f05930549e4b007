#include "common.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "lora/peft.h"
#include "model/gguf_model.h"

namespace lowrank::cli {

static bool is_gguf(const std::string& p) {
  return p.size() > 5 && p.compare(p.size() - 5, 5, ".gguf") == 0;
}

Tokenizer load_tokenizer(const std::string& model_path) {
  if (is_gguf(model_path)) return gguf_tokenizer(model_path);
  return Tokenizer::from_hf_dir(model_path);
}

Loaded load_all(const std::string& model_path, const std::vector<std::string>& adapter_args) {
  Loaded l{load_model(model_path), load_tokenizer(model_path), {}};
  for (const std::string& arg : adapter_args) {
    auto [dir, scale] = parse_adapter_arg(arg);
    int slot = l.model->add_adapter(load_peft_adapter(dir));
    l.uses.push_back({slot, scale});
  }
  return l;
}

std::string json_escape(const std::string& s) { return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace lowrank::cli
