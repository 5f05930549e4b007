// AdamW on f32 master weights with f32 moments, the same arithmetic as lowrank::AdamW::step
// (torch.optim.AdamW, single-tensor path): decoupled decay, lerp for the first moment,
// bias corrections folded into the step size and the denominator. Optionally writes the
// bf16 compute copy of the updated weights in the same pass.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank::ops::cuda {
namespace {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, bf16* p_copy, int64_t n, float step_size,
                             float bc2_sqrt, float decay, bool use_decay, float b1, float b2, float e) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    float pi = p[i];
    if (use_decay) pi *= decay;
    float mi = m[i], vi = v[i];
    mi += (gi - mi) * (1.f - b1);
    vi = vi * b2 + (1.f - b2) * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + e;
    pi -= step_size * mi / denom;
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (p_copy) p_copy[i] = __float2bfloat16_rn(pi);
  }
}

__global__ void scale_kernel(float* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= s;
}

}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, bf16* p_copy, int64_t n, double lr, double beta1,
                double beta2, double eps, double wd, int64_t t) {
  if (n <= 0) return;
  const float bc1 = float(1.0 - std::pow(beta1, double(t)));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(t))));
  const float step_size = float(lr) / bc1;
  const float decay = float(1.0 - lr * wd);
  unsigned blocks = detail::blocks_for(n, 256);
  if (blocks > 4096) blocks = 4096;
  adamw_kernel<<<blocks, 256, 0, stream()>>>(p, g, m, v, p_copy, n, step_size, bc2_sqrt, decay, wd != 0,
                                             float(beta1), float(beta2), float(eps));
  detail::check_launch("adamw_step");
}

void scale_inplace(float* x, int64_t n, float s) {
  if (n <= 0) return;
  unsigned blocks = detail::blocks_for(n, 256);
  if (blocks > 4096) blocks = 4096;
  scale_kernel<<<blocks, 256, 0, stream()>>>(x, n, s);
  detail::check_launch("scale_inplace");
}

}  // namespace lowrank::ops::cuda
