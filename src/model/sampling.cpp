#include "model/sampling.h"

#include <cmath>

#include "core/error.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>

namespace lowrank {

int32_t sample_token(const float* logits, int64_t V, const SampleOptions& o, std::mt19937_64& rng) {
  for (int64_t i = 0; i < V; i++)
    if (!std::isfinite(logits[i]))
      fail("the model produced a non-finite logit (", logits[i], " for token ", i,
           "): its weights or an adapter hold NaN/Inf values");
  if (o.temperature <= 0.f) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  const size_t k = o.top_k > 0 ? std::min<size_t>(size_t(o.top_k), idx.size()) : idx.size();
  std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(k), idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  idx.resize(k);
  std::vector<double> p(k);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (size_t i = 0; i < k; i++) sum += p[i] = std::exp((logits[idx[i]] - mx) / o.temperature);
  for (double& x : p) x /= sum;
  if (o.top_p < 1.f) {
    double c = 0;
    size_t keep = k;
    for (size_t i = 0; i < k; i++) {
      c += p[i];
      if (c >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    p.resize(keep);
    idx.resize(keep);
  }
  std::discrete_distribution<size_t> d(p.begin(), p.end());
  return idx[d(rng)];
}

}  // namespace lowrank
