// Next-token choice from logits: greedy (temperature 0) or temperature / top-k / top-p
// sampling with a caller-owned generator (deterministic for a given seed).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace lowrank {

struct SampleOptions {
  float temperature = 0.f;  // 0 = greedy (arg max)
  int top_k = 0;            // 0 = whole vocabulary
  float top_p = 1.f;        // nucleus mass kept (1 = all)
};

// logits (V) -> token id.
int32_t sample_token(const float* logits, int64_t V, const SampleOptions& o, std::mt19937_64& rng);

}  // namespace lowrank
