#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "lora/merge.h"
#include "lora/peft.h"

namespace lowrank::cli {

static bool is_gguf_path(const std::string& p) { return p.size() > 5 && p.compare(p.size() - 5, 5, ".gguf") == 0; }

void add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "Merge adapters into the base weights: W = W0 + s·B·A (HF dir or GGUF)");
  struct Opts { std::string model, out, dtype = "keep"; std::vector<std::string> adapters; };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--adapter", o->adapters, "PEFT adapter DIR[:SCALE]; repeat to merge several")->required();
  cmd->add_option("--out", o->out, "Output HF dir (or .gguf file for a GGUF model)")->required();
  cmd->add_option("--dtype", o->dtype,
                  "GGUF: type of the merged tensors: keep (the base's own, default), f16, f32, bf16, q8_0, q4_k, ...");
  cmd->callback([o] {
    std::vector<std::shared_ptr<Adapter>> keep;
    std::vector<MergeTerm> terms;
    for (const std::string& arg : o->adapters) {
      auto [dir, scale] = parse_adapter_arg(arg);
      keep.push_back(load_peft_adapter(dir));
      terms.push_back({keep.back().get(), scale});
    }
    if (is_gguf_path(o->model)) {
      if (!is_gguf_path(o->out)) fail("--out must be a .gguf file when --model is a GGUF model");
      write_gguf_merged(o->model, o->out, terms, o->dtype);
    } else {
      if (o->dtype != "keep") fail("--dtype applies to GGUF models (a Hugging Face model keeps its tensors' dtypes)");
      if (is_gguf_path(o->out))
        fail("--out ", o->out, ": a merged GGUF needs a GGUF --model; a Hugging Face model merges into a directory");
      write_hf_model(o->model, o->out, terms, nullptr);
    }
    std::fprintf(stderr, "wrote merged model to %s\n", o->out.c_str());
  });
}

void save_full_model_cli(Model& m, const std::string& model_path, const std::string& out) {
  if (is_gguf_path(model_path)) fail("--full training output for GGUF models is not supported");
  std::map<std::string, Model::ParamRef> by_name;
  for (Model::ParamRef& p : m.full_params()) by_name[p.name] = p;
  write_hf_model(model_path, out, {}, [&](const std::string& name, bool& transposed) -> const float* {
    auto it = by_name.find(name);
    if (it == by_name.end()) return nullptr;
    transposed = true;  // linear weights are held (out, in)
    return it->second.value;
  });
}

}  // namespace lowrank::cli
