// Tests of the quantized linear kernels (ops/cpu/qmatmul): random blocks of every handled
// GGUF type against the dequantize reference, SIMD vs scalar kernels, threading/shape edge
// cases, and rows of the real TinyLlama file when it is present.
//
// Error bounds checked per output y[n][r] (w = dequantized weights, x̂ = d·q the 8-bit
// activations the kernels actually use, b = activation block of 256 or 32 values):
//  (1) vs the exact f32 product:   |y − Σ w·x| ≤ Σ_b (max_b|x| / 254)·Σ_b|w| + 1e-4·Σ|w·x|
//      (8-bit rounding moves each x by at most half a step, max|x|/254; the second term is
//      float-rounding slack);
//  (2) vs the exact product with the quantized activations: |y − Σ w·x̂| ≤ 2e-5·Σ|w·x̂| + 1e-6,
//      i.e. the integer block sums are exact and only f32 accumulation differs;
//  (3) SIMD vs scalar kernels: |y_simd − y_scalar| ≤ 2e-5·Σ|w·x̂| + 1e-6.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "fixture_util.h"
#include "core/tensor.h"
#include "quants/dequant.h"
#include "io/gguf.h"
#include "ops/cpu/qmatmul.h"

using namespace lowrank;
namespace fs = std::filesystem;

namespace {

const DType kTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q2_K, DType::Q4_K,
                        DType::Q5_K, DType::Q6_K, DType::IQ2_XXS};

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// Random bytes for every block, then sane f16 scales (|d| in [1e-3, 2e-2], dmin ≥ 0).
std::vector<uint8_t> random_blocks(DType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const int64_t be = dtype_block_elems(t), bb = dtype_block_bytes(t);
  const int64_t nblocks = rows * cols / be;
  std::vector<uint8_t> data(size_t(nblocks * bb));
  std::uniform_int_distribution<int> byte(0, 255);
  for (uint8_t& v : data) v = uint8_t(byte(rng));
  std::uniform_real_distribution<float> mag(1e-3f, 2e-2f);
  std::bernoulli_distribution neg(0.3);
  auto scale = [&] { return neg(rng) ? -mag(rng) : mag(rng); };
  for (int64_t b = 0; b < nblocks; b++) {
    uint8_t* blk = data.data() + b * bb;
    switch (t) {
      case DType::Q8_0: case DType::Q4_0: case DType::IQ2_XXS: put_f16(blk, scale()); break;
      case DType::Q2_K: put_f16(blk + 80, scale()); put_f16(blk + 82, mag(rng)); break;
      case DType::Q4_K: case DType::Q5_K: put_f16(blk, scale()); put_f16(blk + 2, mag(rng)); break;
      case DType::Q6_K: put_f16(blk + 208, scale()); break;
      default: ADD_FAILURE() << "unexpected type";
    }
  }
  return data;
}

Matrix make_matrix(DType t, int64_t rows, int64_t cols, const void* data) {
  Matrix W;
  W.dtype = t;
  W.rows = rows;
  W.cols = cols;
  W.data = data;
  return W;
}

// Random activations: mostly N(0,1) with a few large outliers and an all-zero block.
std::vector<float> random_x(int64_t N, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(N * K));
  for (float& v : x) v = nd(rng);
  std::uniform_int_distribution<int64_t> pos(0, N * K - 1);
  for (int i = 0; i < 4; i++) x[size_t(pos(rng))] *= 20.0f;
  if (K >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // row 0: one zero Q8_0 block
  return x;
}

// Checks quant_linear_forward on W (rows, cols) for the given x (N, cols): bounds (1)–(3).
// Returns the largest observed |y − Σ w·x| / Σ|w·x| for reporting.
double check_against_reference(const Matrix& W, const float* x, int64_t N, const float* bias,
                               const std::string& what) {
  const int64_t rows = W.rows, K = W.cols;
  const int64_t bs = ops::qmm_detail::activation_block(W.dtype);
  EXPECT_GT(bs, 0) << what;
  if (bs <= 0) return 0;

  // Dequantized weights (reference decoder).
  std::vector<float> w(size_t(rows * K));
  dequantize(W.dtype, W.data, w.data(), rows * K);
  // The 8-bit activations the kernels use.
  std::vector<int8_t> q(size_t(N * K));
  std::vector<float> d(size_t(N * K / bs));
  std::vector<int16_t> s(size_t(N * K / 16));
  ops::qmm_detail::quantize_activations(x, N, K, bs, q.data(), d.data(), s.data());

  std::vector<float> y(size_t(N * rows), NAN), ys(size_t(N * rows), NAN);
  EXPECT_TRUE(ops::quant_linear_forward(y.data(), x, W, bias, N)) << what;
  EXPECT_TRUE(ops::qmm_detail::quant_linear_forward_impl(ys.data(), x, W, bias, N, false)) << what;

  double worst = 0;
  int failures = 0;
  for (int64_t n = 0; n < N; n++) {
    for (int64_t r = 0; r < rows; r++) {
      const float* wr = w.data() + r * K;
      const float* xn = x + n * K;
      double exact = 0, abs_wx = 0, quant = 0, abs_wq = 0, qbound = 0;
      for (int64_t b = 0; b < K / bs; b++) {
        double amax = 0, sum_w = 0;
        for (int64_t i = b * bs; i < (b + 1) * bs; i++) {
          const double xq = double(d[size_t(n * (K / bs) + b)]) * q[size_t(n * K + i)];
          exact += double(wr[i]) * xn[i];
          abs_wx += std::fabs(double(wr[i]) * xn[i]);
          quant += double(wr[i]) * xq;
          abs_wq += std::fabs(double(wr[i]) * xq);
          amax = std::max(amax, std::fabs(double(xn[i])));
          sum_w += std::fabs(double(wr[i]));
        }
        qbound += amax / 254.0 * sum_w;
      }
      const double bv = bias ? bias[r] : 0.0;
      exact += bv;
      quant += bv;
      const double got = y[size_t(n * rows + r)], got_s = ys[size_t(n * rows + r)];
      const double bound1 = qbound + 1e-4 * abs_wx + 1e-6;
      const double bound2 = 2e-5 * abs_wq + 1e-6;
      const bool ok = std::fabs(got - exact) <= bound1 && std::fabs(got - quant) <= bound2 &&
                      std::fabs(got_s - quant) <= bound2 && std::fabs(got - got_s) <= bound2;
      if (!ok && ++failures <= 5) {
        ADD_FAILURE() << what << " n=" << n << " r=" << r << ": simd " << got << " scalar "
                      << got_s << " exact " << exact << " (bound " << bound1 << ") with 8-bit x "
                      << quant << " (bound " << bound2 << ")";
      }
      if (abs_wx > 0) worst = std::max(worst, std::fabs(got - exact) / abs_wx);
    }
  }
  return worst;
}

}  // namespace

TEST(QMatmul, RandomBlocksAllTypes) {
  std::cout << "[ INFO     ] kernels: " << ops::qmm_detail::simd_name() << "\n";
  std::mt19937 rng(1234);
  const int64_t shapes[][2] = {{37, 256}, {13, 512}, {70, 1024}, {101, 2048}};  // rows, cols
  for (DType t : kTypes) {
    double worst = 0;
    for (const auto& sh : shapes) {
      const int64_t rows = sh[0], K = sh[1];
      const std::vector<uint8_t> data = random_blocks(t, rows, K, rng);
      const Matrix W = make_matrix(t, rows, K, data.data());
      std::vector<float> bias(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; r++) bias[size_t(r)] = 0.01f * float(r % 7) - 0.02f;
      for (int64_t N : {1, 2, 3, 4, 5, 8}) {
        const std::vector<float> x = random_x(N, K, rng);
        const std::string what = std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
                                 " K=" + std::to_string(K) + " N=" + std::to_string(N);
        worst = std::max(worst, check_against_reference(W, x.data(), N, N == 3 ? bias.data() : nullptr, what));
      }
    }
    std::cout << "[ INFO     ] " << dtype_name(t)
              << ": max |y - exact| / sum|w*x| = " << worst << "\n";
  }
}

// Extreme codes: all-ones bytes (largest magnitudes, all IQ2 signs negative etc.) and
// activations that hit ±127 everywhere, to exercise int16/int32 ranges.
TEST(QMatmul, ExtremeValues) {
  std::mt19937 rng(7);
  for (DType t : kTypes) {
    for (uint8_t fill : {uint8_t(0xff), uint8_t(0x80), uint8_t(0x00)}) {
      const int64_t rows = 5, K = 2048;
      std::vector<uint8_t> data = random_blocks(t, rows, K, rng);
      // Overwrite everything except the f16 scales with the fill byte.
      std::vector<uint8_t> saved = data;
      std::fill(data.begin(), data.end(), fill);
      const int64_t bb = dtype_block_bytes(t);
      for (int64_t b = 0; b < int64_t(data.size()) / bb; b++) {
        uint8_t* blk = data.data() + b * bb;
        const uint8_t* src = saved.data() + b * bb;
        switch (t) {
          case DType::Q2_K: std::memcpy(blk + 80, src + 80, 4); break;
          case DType::Q6_K: std::memcpy(blk + 208, src + 208, 2); break;
          case DType::Q4_K: case DType::Q5_K: std::memcpy(blk, src, 4); break;
          default: std::memcpy(blk, src, 2); break;
        }
      }
      const Matrix W = make_matrix(t, rows, K, data.data());
      for (int64_t N : {1, 4}) {
        std::vector<float> x(size_t(N * K));
        for (int64_t i = 0; i < N * K; i++) x[size_t(i)] = (i % 3 == 0) ? -5.0f : 5.0f;
        check_against_reference(W, x.data(), N, nullptr,
                                std::string(dtype_name(t)) + " fill=" + std::to_string(fill));
      }
    }
  }
}

TEST(QMatmul, LongRowsAndThreadChunks) {
  // K = 5632 (TinyLlama ffn_down), rows not a multiple of any chunk, 1 and 2 threads, and a
  // call from inside a parallel region (runs serially there).
  std::mt19937 rng(99);
  for (DType t : {DType::IQ2_XXS, DType::Q2_K, DType::Q8_0}) {
    const int64_t rows = 173, K = 5632;
    const std::vector<uint8_t> data = random_blocks(t, rows, K, rng);
    const Matrix W = make_matrix(t, rows, K, data.data());
    const std::vector<float> x = random_x(3, K, rng);
    std::vector<float> y1(size_t(3 * rows)), y2(size_t(3 * rows)), y3(size_t(3 * rows));
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    ASSERT_TRUE(ops::quant_linear_forward(y1.data(), x.data(), W, nullptr, 3));
    omp_set_num_threads(2);
    ASSERT_TRUE(ops::quant_linear_forward(y2.data(), x.data(), W, nullptr, 3));
    bool ok3 = false;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      ok3 = ops::quant_linear_forward(y3.data(), x.data(), W, nullptr, 3);
    }
    EXPECT_TRUE(ok3);
    omp_set_num_threads(saved);
    // Each output is computed by one thread with the same code: results are identical.
    EXPECT_EQ(y1, y2) << dtype_name(t);
    EXPECT_EQ(y1, y3) << dtype_name(t);
    check_against_reference(W, x.data(), 3, nullptr, std::string(dtype_name(t)) + " K=5632");
  }
}

TEST(QMatmul, UnhandledShapesAndTypes) {
  std::vector<float> wf(64 * 4, 0.5f), x(64 * 2, 1.0f), y(8, -1.0f);
  Matrix F = make_matrix(DType::F32, 4, 64, wf.data());
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), F, nullptr, 2));
  F.dtype = DType::F16;
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), F, nullptr, 2));
  std::mt19937 rng(3);
  const std::vector<uint8_t> q = random_blocks(DType::Q8_0, 4, 64, rng);
  Matrix Q = make_matrix(DType::Q8_0, 4, 64, q.data());
  Q.transposed = true;
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), Q, nullptr, 2));
  Q.transposed = false;
  Matrix Qbad = Q;
  Qbad.rows = 8;
  Qbad.cols = 32 + 16;  // not a multiple of the block size
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), Qbad, nullptr, 2));
  Matrix Kbad = make_matrix(DType::Q4_K, 1, 128, q.data());  // not a multiple of 256
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), Kbad, nullptr, 1));
  Matrix empty;
  empty.dtype = DType::Q8_0;
  EXPECT_FALSE(ops::quant_linear_forward(y.data(), x.data(), empty, nullptr, 1));
  for (float v : y) EXPECT_EQ(v, -1.0f);  // untouched
  // N = 0: handled, nothing written.
  EXPECT_TRUE(ops::quant_linear_forward(y.data(), x.data(), Q, nullptr, 0));
  for (float v : y) EXPECT_EQ(v, -1.0f);
  // Bias only on a zero input.
  std::vector<float> zeros(64 * 2, 0.0f), bias = {1, 2, 3, 4};
  ASSERT_TRUE(ops::quant_linear_forward(y.data(), zeros.data(), Q, bias.data(), 2));
  for (int n = 0; n < 2; n++)
    for (int r = 0; r < 4; r++) EXPECT_EQ(y[size_t(n * 4 + r)], bias[size_t(r)]);
}

// ---------------------------------------------------------------- real model (optional)


TEST(QMatmul, TinyLlamaRows) {
  const std::string path = tinyllama_path();
  if (path.empty()) {
    GTEST_SKIP() << "tinyllama-1.1b-chat-v1.0.IQ2_XXS.gguf not found in $LOWRANK_CACHE or "
                    "$HOME/.cache/lowrank; run scripts/fetch-tinyllama to download it";
  }
  GgufFile f = GgufFile::open(path);
  std::mt19937 rng(5);
  // Every quantized 2-D tensor type present, plus ffn_down (K = 5632) of each type.
  std::map<std::string, int> seen;
  int checked = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (!dtype_is_quantized(t.dtype) || t.ne.size() < 2) continue;
    const bool down = t.name.find("ffn_down") != std::string::npos;
    const std::string key = std::string(dtype_name(t.dtype)) + (down ? "/down" : "");
    if (seen[key]++) continue;
    const Matrix M = f.matrix(t.name);
    // Rows 0..4, some in the middle and the last 3, each as a small contiguous Matrix.
    for (int64_t r0 : {int64_t(0), M.rows / 2 - 1, M.rows - 3}) {
      const int64_t nr = r0 == 0 ? 5 : 3;
      Matrix S = M;
      S.rows = nr;
      S.data = static_cast<const uint8_t*>(M.data) + dtype_bytes(M.dtype, r0 * M.cols);
      for (int64_t N : {1, 3}) {
        const std::vector<float> x = random_x(N, M.cols, rng);
        const double worst = check_against_reference(
            S, x.data(), N, nullptr, t.name + " rows " + std::to_string(r0) + " N=" + std::to_string(N));
        if (r0 == 0 && N == 1)
          std::cout << "[ INFO     ] " << t.name << " " << dtype_name(t.dtype) << " [" << M.rows
                    << " x " << M.cols << "]: max |y - exact| / sum|w*x| = " << worst << "\n";
      }
    }
    checked++;
  }
  EXPECT_GE(checked, 4);  // IQ2_XXS, Q2_K (+ down), Q4_K, Q5_K
}
