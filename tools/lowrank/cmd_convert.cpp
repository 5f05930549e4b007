#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "model/convert.h"

namespace lowrank::cli {

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Convert a Hugging Face model dir to a GGUF file llama.cpp loads");
  struct Opts { std::string model, out, type = "F16", name; };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "Hugging Face model dir")->required();
  cmd->add_option("--out", o->out, "Output .gguf file")->required();
  cmd->add_option("--type", o->type, "Weight type: F32 | F16 | BF16")->check(CLI::IsMember({"F32", "F16", "BF16", "f32", "f16", "bf16"}));
  cmd->add_option("--name", o->name, "general.name (default: the directory name)");
  cmd->callback([o] {
    if (o->out.size() < 5 || o->out.compare(o->out.size() - 5, 5, ".gguf") != 0)
      fail(o->out, ": --out must be a .gguf file");
    ConvertOptions c;
    std::string t = o->type;
    for (char& ch : t) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    c.type = t == "F32" ? DType::F32 : t == "BF16" ? DType::BF16 : DType::F16;
    c.name = o->name;
    convert_hf_to_gguf(o->model, o->out, c);
    std::fprintf(stderr, "wrote %s\n", o->out.c_str());
  });
}

}  // namespace lowrank::cli
