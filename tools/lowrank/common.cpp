#include "common.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

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

CLI::Validator in_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& v) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double x = std::strtod(v.c_str(), &end);
        if (end == v.c_str() || *end != 0) return "\"" + v + "\" is not a number";
        if (!std::isfinite(x) || x < lo || x > hi) {
          std::ostringstream os;
          os << v << " is outside [" << lo << ", " << hi << "]";
          return os.str();
        }
        return "";
      },
      "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

std::string json_escape(const std::string& s) { return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace lowrank::cli
