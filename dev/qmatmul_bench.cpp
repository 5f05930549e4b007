// Micro-benchmark of quant_linear_forward vs the generic linear_forward (dequantize rows +
// f32 dot) on TinyLlama-shaped matrices with random blocks. Not built by CMake:
//   g++ -std=c++20 -O3 -march=native -fopenmp -Isrc dev/qmatmul_bench.cpp \
//       build-q/liblowrank_core.a -lopenblas -lpcre2-8 -lpng -o /tmp/qmatmul_bench
//   OMP_NUM_THREADS=2 /tmp/qmatmul_bench [filter]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "ops/cpu/qmatmul.h"
#include "ops/ops.h"

using namespace lowrank;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  struct Case { DType t; int64_t rows, cols; const char* name; };
  const Case cases[] = {
      {DType::IQ2_XXS, 2048, 2048, "attn_q/o"}, {DType::IQ2_XXS, 5632, 2048, "ffn_gate/up"},
      {DType::IQ2_XXS, 2048, 5632, "ffn_down"}, {DType::Q2_K, 2048, 5632, "ffn_down q2k"},
      {DType::Q4_K, 256, 2048, "attn_v"},       {DType::Q5_K, 32000, 2048, "output"},
      {DType::Q6_K, 2048, 2048, "q6k"},         {DType::Q8_0, 2048, 2048, "q8_0"},
      {DType::Q4_0, 2048, 2048, "q4_0"},
  };
  std::mt19937 rng(1);
  std::printf("kernels: %s, threads: %d\n", ops::qmm_detail::simd_name(), omp_get_max_threads());
  for (const Case& c : cases) {
    if (!filter.empty() && filter != dtype_name(c.t)) continue;
    const int64_t be = dtype_block_elems(c.t), bb = dtype_block_bytes(c.t);
    std::vector<uint8_t> data(size_t(c.rows * c.cols / be * bb));
    for (auto& b : data) b = uint8_t(rng());
    // Sane f16 scales are not needed for timing; zero them to avoid inf/nan slow paths.
    for (size_t b = 0; b < data.size() / bb; b++) {
      uint8_t* blk = data.data() + b * bb;
      const uint16_t h = f32_to_f16(0.01f);
      switch (c.t) {
        case DType::Q2_K: std::memcpy(blk + 80, &h, 2); std::memcpy(blk + 82, &h, 2); break;
        case DType::Q4_K: case DType::Q5_K: std::memcpy(blk, &h, 2); std::memcpy(blk + 2, &h, 2); break;
        case DType::Q6_K: std::memcpy(blk + 208, &h, 2); break;
        default: std::memcpy(blk, &h, 2); break;
      }
    }
    Matrix W;
    W.dtype = c.t;
    W.rows = c.rows;
    W.cols = c.cols;
    W.data = data.data();
    for (int64_t N : {1, 4, 16}) {
      std::vector<float> x(size_t(N * c.cols)), y(size_t(N * c.rows));
      for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.0f;
      auto time_it = [&](auto&& fn) {
        fn();
        double best = 1e9;
        for (int rep = 0; rep < 7; rep++) {
          const double t0 = now();
          int iters = 0;
          do { fn(); iters++; } while (now() - t0 < 0.05);
          best = std::min(best, (now() - t0) / iters);
        }
        return best;
      };
      const double tq = time_it([&] { ops::quant_linear_forward(y.data(), x.data(), W, nullptr, N); });
      const double ts = time_it([&] { ops::qmm_detail::quant_linear_forward_impl(y.data(), x.data(), W, nullptr, N, false); });
      const double tr = c.rows * c.cols <= 2048 * 5632 ? time_it([&] { ops::linear_forward(y.data(), x.data(), W, nullptr, N); }) : 0.0;
      const double gb = double(data.size()) / 1e9;
      std::printf("%-8s %-13s %5lld x %5lld N=%lld  simd %8.1f us (%5.1f GB/s)  scalar %8.1f us  dequant-path %8.1f us\n",
                  dtype_name(c.t), c.name, (long long)c.rows, (long long)c.cols, (long long)N,
                  tq * 1e6, gb / tq, ts * 1e6, tr * 1e6);
    }
  }
}
