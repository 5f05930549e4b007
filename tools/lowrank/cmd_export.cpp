#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "lora/merge.h"
#include "lora/peft.h"

namespace lowrank::cli {

void export_gguf_adapter_cli(const std::string& model_path, const Adapter& a, const std::string& out) {
  if (model_path.size() < 5 || model_path.compare(model_path.size() - 5, 5, ".gguf") != 0)
    fail("GGUF adapter export needs the GGUF base model (--model MODEL.gguf), got ", model_path);
  write_gguf_adapter(model_path, a, out, false);
}

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Export a PEFT adapter as a GGUF LoRA adapter for llama.cpp");
  struct Opts { std::string model, adapter, format = "gguf", out, dtype = "f32"; };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "The GGUF base model")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT adapter dir")->required();
  cmd->add_option("--format", o->format, "Output format")->check(CLI::IsMember({"gguf"}));
  cmd->add_option("--dtype", o->dtype, "Tensor type: f32 | f16")->check(CLI::IsMember({"f32", "f16"}));
  cmd->add_option("--out", o->out, "Output .gguf adapter file")->required();
  cmd->callback([o] {
    auto a = load_peft_adapter(o->adapter);
    if (o->model.size() < 5 || o->model.compare(o->model.size() - 5, 5, ".gguf") != 0)
      fail("--model must be the GGUF base model the adapter will be used with, got ", o->model);
    write_gguf_adapter(o->model, *a, o->out, o->dtype == "f16");
    std::fprintf(stderr, "wrote GGUF LoRA adapter to %s\n", o->out.c_str());
  });
}

}  // namespace lowrank::cli
