// Per-shape GEMM throughput of the engine's linear ops (ops::linear_forward = x·Wᵀ and
// ops::linear_backward_input = dy·W, accumulate) for the TinyLlama / GPT-2 step shapes,
// to see which products fall short of the BLAS kernel's speed.
// Build: g++ -O2 -std=c++20 -fopenmp -Isrc -I/usr/include/x86_64-linux-gnu/openblas-pthread \
//          bench/gemm_shapes.cpp build-bench/liblowrank_core.a -lopenblas -lpcre2-8 -lpng -o /tmp/gemm_shapes
// Run:   OMP_NUM_THREADS=2 /tmp/gemm_shapes [tokens=256]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ops/ops.h"

using namespace lowrank;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
static double best_of(int n, F f) {
  f();
  double best = 1e30;
  for (int i = 0; i < n; i++) {
    double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? std::atoll(argv[1]) : 256;
  struct Shape { const char* name; int64_t out, in; };
  const Shape shapes[] = {
      {"tinyllama q/o (2048x2048)", 2048, 2048}, {"tinyllama k/v (256x2048)", 256, 2048},
      {"tinyllama gate/up (5632x2048)", 5632, 2048}, {"tinyllama down (2048x5632)", 2048, 5632},
      {"tinyllama lm_head (32000x2048)", 32000, 2048}, {"gpt2 c_attn (2304x768)", 2304, 768},
      {"gpt2 c_fc (3072x768)", 3072, 768}, {"gpt2 mlp.c_proj (768x3072)", 768, 3072},
      {"gpt2 lm_head (50257x768)", 50257, 768},
  };
  std::printf("threads %d, N = %lld rows\n", omp_get_max_threads(), (long long)N);
  std::printf("%-32s %12s %12s %12s %12s\n", "weight", "fwd ms", "fwd GFLOPS", "dx ms", "dx GFLOPS");
  for (const Shape& s : shapes) {
    FloatBuffer W = FloatBuffer::zeros({s.out, s.in});
    for (int64_t i = 0; i < W.n; i++) W.ptr()[i] = float((i * 2654435761u) % 1000) * 1e-4f;
    Matrix M = matrix_from_buffer(W);
    std::vector<float> x(size_t(N * s.in), 0.01f), y(size_t(N * s.out)), dy(size_t(N * s.out), 0.02f),
        dx(size_t(N * s.in));
    const double flops = 2.0 * double(N) * double(s.in) * double(s.out);
    const int reps = flops > 5e9 ? 3 : 7;
    double tf = best_of(reps, [&] { ops::linear_forward(y.data(), x.data(), M, nullptr, N); });
    double tb = best_of(reps, [&] { ops::linear_backward_input(dx.data(), dy.data(), M, N); });
    std::printf("%-32s %12.2f %12.1f %12.2f %12.1f\n", s.name, tf * 1e3, flops / tf * 1e-9, tb * 1e3,
                flops / tb * 1e-9);
  }
  return 0;
}
