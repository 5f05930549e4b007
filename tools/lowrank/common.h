// Shared pieces of the lowrank command line.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace lowrank::cli {

// A loaded model with its tokenizer and the adapters named on the command line.
struct Loaded {
  std::unique_ptr<Model> model;
  Tokenizer tok;
  std::vector<AdapterUse> uses;  // the stacked adapters every row uses
};

Tokenizer load_tokenizer(const std::string& model_path);
// Loads model + tokenizer (HF dir or .gguf) and attaches each "DIR[:SCALE]" adapter.
Loaded load_all(const std::string& model_path, const std::vector<std::string>& adapter_args);

std::string json_escape(const std::string& s);

// Flag value checks: a finite number in [lo, hi] (NaN and ±inf fail, which CLI::Range alone
// lets through), for integer and floating-point options alike.
CLI::Validator in_range(double lo, double hi);
// Upper bound for --seq-len / --max-tokens style sizes (tokens in one sequence).
constexpr double kMaxSeqLen = 1 << 20;
// Registers each subcommand on app.
void add_tokenize(CLI::App& app);
void add_eval(CLI::App& app);
void add_generate(CLI::App& app);
void add_inspect(CLI::App& app);
void add_train(CLI::App& app);
void add_merge(CLI::App& app);
void add_export(CLI::App& app);
void add_bench(CLI::App& app);
void add_serve(CLI::App& app);
void add_convert(CLI::App& app);
void add_quantize(CLI::App& app);  // quantize and quant-bench

}  // namespace lowrank::cli

namespace lowrank::cli {
// Writes a GGUF LoRA adapter for the GGUF base model at model_path (see cmd_export.cpp).
void export_gguf_adapter_cli(const std::string& model_path, const Adapter& a, const std::string& out);
// Writes a fully fine-tuned model as a HF dir beside the source's layout (see cmd_merge.cpp).
void save_full_model_cli(Model& m, const std::string& model_path, const std::string& out);
}  // namespace lowrank::cli
