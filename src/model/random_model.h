// Models with random f32 weights built from a ModelConfig alone (no files): for benchmarks
// and tests that need real shapes (GPT-2 124M, TinyLlama 1.1B) without downloading weights.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/config.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace lowrank {

// Named shapes: "gpt2-124m" (HF gpt2) and "tinyllama-1.1b" (TinyLlama-1.1B: 22 layers,
// C 2048, 32 heads / 4 kv heads, F 5632, V 32000, untied). Anything else is read as a path
// to a HF config.json (or a directory holding one). Throws lowrank::Error when unknown.
ModelConfig shape_config(const std::string& name_or_path);

struct RandomModelOptions {
  uint64_t seed = 0;
  float std = 0.02f;         // weights ~ uniform with this standard deviation (GPT-2 init scale)
  bool untie = false;        // give a tied config its own lm_head matrix (cfg.tied becomes false)
  bool gpt2_conv1d = true;   // GPT-2 linears stored (in, out) like HF Conv1D checkpoints
};

// Builds a Model with random f32 weights: linears and embeddings uniform(±std·√3), norm
// weights 1, norm/linear biases small random. Deterministic for a given seed (independent of
// the thread count). Module names follow the HF checkpoints, so PEFT target names apply.
std::unique_ptr<Model> make_random_model(const ModelConfig& cfg, const RandomModelOptions& opt = {});

// The model's weights as HF safetensors tensors with the family's names (Conv1D weights in
// their (in, out) layout), converted to dtype (F32, F16 or BF16). Needs f32 weights (random or
// owned models); the tied head is not repeated.
std::vector<TensorToWrite> hf_weight_tensors(Model& m, DType dtype = DType::F32);
// Writes a HF model dir: config_json as config.json, the weights as model.safetensors (and
// copies tokenizer.json / tokenizer_config.json from tokenizer_dir when given).
void write_hf_model_dir(Model& m, const std::string& config_json, const std::string& dir, DType dtype = DType::F32,
                        const std::string& tokenizer_dir = "");

}  // namespace lowrank
