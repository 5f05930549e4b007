#include <cstdio>

#include "common.h"

namespace lowrank::cli {

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text like Hugging Face tok(text).input_ids");
  auto model = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  auto no_special = std::make_shared<bool>(false);
  cmd->add_option("--model", *model, "HF model dir or .gguf file")->required();
  cmd->add_flag("--json", *json_out, "Print {\"ids\":[...]} as the last line");
  cmd->add_flag("--no-special", *no_special, "Do not add BOS/EOS special tokens");
  cmd->add_option("text", *text, "Text to tokenize")->required();
  cmd->callback([=] {
    Tokenizer tok = load_tokenizer(*model);
    std::vector<int32_t> ids = tok.encode(*text, !*no_special);
    if (*json_out) {
      std::string s = "{\"ids\":[";
      for (size_t i = 0; i < ids.size(); i++) s += (i ? "," : "") + std::to_string(ids[i]);
      std::printf("%s]}\n", s.c_str());
    } else {
      for (int32_t id : ids) std::printf("%d\t%s\n", id, json_escape(tok.id_to_token(id)).c_str());
    }
  });
}

}  // namespace lowrank::cli
