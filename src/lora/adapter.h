// LoRA adapters: separate objects keyed by target module, resident many at a time.
#pragma once
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "lora/lora_config.h"

namespace lowrank {

// ΔW = scale · B·A for one target linear (out, in).
struct LoraTarget {
  std::string module;    // HF module path, e.g. "model.layers.0.self_attn.q_proj"
  int64_t r = 0, in = 0, out = 0;
  float alpha = 0;       // lora_alpha in effect for this target
  float scale = 0;       // alpha / r, or alpha / sqrt(r) with rsLoRA
  float dropout = 0;     // probability on the input of A during training
  FloatBuffer A;         // (r, in)
  FloatBuffer B;         // (out, r)
  FloatBuffer dA, dB;    // gradients, same shapes; allocated only when training
};

struct Adapter {
  std::string name;
  LoraConfig config;
  std::map<std::string, LoraTarget> targets;  // by module path
  // PiSSA: the initial A (r, in) and B (out, r) per module; the base was replaced by its
  // residual W0 - s·B·A, so saving converts to a plain LoRA adapter of rank 2r.
  std::map<std::string, std::pair<FloatBuffer, FloatBuffer>> pissa_initial;
  int64_t num_parameters() const;
  void alloc_grads();
  void zero_grads();
};

// "module.lora_A[i] = nan" for the first non-finite value of any target, "" when all are finite.
std::string first_non_finite(const Adapter& a);

// A plain LoRA adapter equivalent (against the original base) to a trained PiSSA adapter:
// A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r), r and α doubled (α·√2 with rsLoRA) so the
// scale is unchanged. Returns a copy of `a` when it is not a PiSSA adapter.
Adapter pissa_to_lora(const Adapter& a);

}  // namespace lowrank
