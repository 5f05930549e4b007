#include <sys/stat.h>

#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_model.h"

namespace lowrank::cli {

namespace {

int64_t file_size(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 ? int64_t(st.st_size) : -1;
}

void print_model_summary(const std::string& path) {
  std::unique_ptr<Model> m = load_model(path);
  const ModelConfig& c = m->cfg;
  std::printf("architecture: %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("layers %lld  hidden %lld  heads %lld  kv-heads %lld  head-dim %lld  ffn %lld  vocab %lld\n",
              (long long)c.n_layer, (long long)c.dim, (long long)c.n_head, (long long)c.n_kv_head,
              (long long)c.head_dim, (long long)c.ffn, (long long)c.vocab);
  if (c.arch == Arch::LLAMA)
    for (size_t r = 0; r < c.ropes.size(); r++)
      std::printf("rope%s theta %g  dims %lld  scaling %d (factor %g)\n", c.ropes.size() > 1 ? (r ? " (local)" : " (global)") : "",
                  c.ropes[r].theta, (long long)c.ropes[r].dim, int(c.ropes[r].scaling), c.ropes[r].factor);
  std::printf("norm eps %g  attention scale %g  softcap %g / %g\n", c.norm_eps, c.attn_scale, c.attn_softcap,
              c.final_softcap);
  int64_t windowed = 0;
  for (const LayerSpec& l : c.layers) windowed += l.window > 0;
  if (windowed) std::printf("sliding-window layers: %lld of %lld\n", (long long)windowed, (long long)c.n_layer);
  std::printf("tied embeddings: %s\n", c.tied ? "yes" : "no");
  std::printf("parameters: %lld\n", (long long)m->num_parameters());
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show a model's architecture, parameters and tensors (HF dir, .gguf, .safetensors, PEFT dir)");
  auto path = std::make_shared<std::string>();
  cmd->add_option("path", *path, "HF model dir, PEFT adapter dir, .gguf or .safetensors file")->required();
  cmd->callback([path] {
    const std::string& p = *path;
    auto ends = [&](const char* s) {
      std::string x(s);
      return p.size() >= x.size() && p.compare(p.size() - x.size(), x.size(), x) == 0;
    };
    if (ends(".gguf")) {
      GgufFile f = GgufFile::open(p);
      std::printf("file: %s (%lld bytes, GGUF v%u)\n", p.c_str(), (long long)file_size(p), f.version());
      for (auto& [k, v] : f.metadata()) std::printf("  %s = %s\n", k.c_str(), v.to_string().c_str());
      if (f.tensor("token_embd.weight")) print_model_summary(p);
      std::printf("tensors (%zu):\n", f.tensors().size());
      for (const GgufTensorInfo& t : f.tensors())
        std::printf("  %-40s %-8s ne=%s %zu bytes\n", t.name.c_str(), dtype_name(t.dtype), shape_str(t.ne).c_str(), t.nbytes);
      return;
    }
    if (ends(".safetensors")) {
      SafetensorsFile st = SafetensorsFile::open(p);
      std::printf("file: %s (%lld bytes)\n", p.c_str(), (long long)file_size(p));
      for (const Tensor& t : st.tensors())
        std::printf("  %-60s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str());
      return;
    }
    if (file_exists(p + "/adapter_config.json")) {
      std::printf("PEFT adapter: %s\n", p.c_str());
      std::printf("%s\n", read_text_file(p + "/adapter_config.json").c_str());
      std::string st_path = p + "/adapter_model.safetensors";
      SafetensorsFile st = SafetensorsFile::open(st_path);
      int64_t n = 0;
      for (const Tensor& t : st.tensors()) {
        std::printf("  %-70s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str());
        n += t.numel();
      }
      std::printf("parameters: %lld  file size: %lld bytes\n", (long long)n, (long long)file_size(st_path));
      return;
    }
    if (!file_exists(p + "/config.json")) fail(p, ": not a model dir (no config.json), .gguf or .safetensors file");
    print_model_summary(p);
    std::vector<std::string> files;
    if (file_exists(p + "/model.safetensors")) files.push_back(p + "/model.safetensors");
    int64_t total = 0;
    for (const std::string& f : files) {
      SafetensorsFile st = SafetensorsFile::open(f);
      total += file_size(f);
      std::printf("file: %s (%lld bytes)\n", f.c_str(), (long long)file_size(f));
      for (const Tensor& t : st.tensors())
        std::printf("  %-50s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str());
    }
    if (files.empty()) std::printf("(sharded checkpoint: see model.safetensors.index.json)\n");
    else std::printf("total size: %lld bytes\n", (long long)total);
  });
}

}  // namespace lowrank::cli
