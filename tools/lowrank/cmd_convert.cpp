#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>

#include "common.h"
#include "core/error.h"
#include "io/gguf_quantize.h"
#include "model/convert.h"

namespace lowrank::cli {

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Convert a Hugging Face model dir to a GGUF file llama.cpp loads");
  struct Opts { std::string model, out, type = "F16", name; bool pure = false; };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "Hugging Face model dir")->required();
  cmd->add_option("--out", o->out, "Output .gguf file")->required();
  cmd->add_option("--type", o->type,
                  "F32 | F16 | BF16, or a llama.cpp quantization preset (Q8_0, Q4_K_M, Q5_K_M, ...; see quantize)");
  cmd->add_option("--name", o->name, "general.name (default: the directory name)");
  cmd->add_flag("--pure", o->pure, "Quantized presets: one type for every tensor (llama-quantize --pure)");
  cmd->callback([o] {
    if (o->out.size() < 5 || o->out.compare(o->out.size() - 5, 5, ".gguf") != 0)
      fail(o->out, ": --out must be a .gguf file");
    QuantPreset preset;
    if (!quant_preset(o->type, &preset)) fail("--type ", o->type, " is not a known type or preset");
    ConvertOptions c;
    c.name = o->name;
    const DType t = preset.default_type;
    if (t == DType::F32 || t == DType::F16 || t == DType::BF16) {
      c.type = t;
      convert_hf_to_gguf(o->model, o->out, c);
    } else {
      // As llama.cpp: convert (each weight in its stored dtype, lossless), then quantize with
      // the preset's mixture.
      c.source_type = true;
      const std::string tmp = o->out + ".src-" + std::to_string(::getpid()) + ".gguf";
      try {
        convert_hf_to_gguf(o->model, tmp, c);
        QuantizeOptions q;
        q.pure = o->pure;
        quantize_gguf(tmp, o->out, preset, q);
      } catch (...) {
        std::error_code ec;
        std::filesystem::remove(tmp, ec);
        throw;
      }
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
    }
    std::fprintf(stderr, "wrote %s\n", o->out.c_str());
  });
}

}  // namespace lowrank::cli
