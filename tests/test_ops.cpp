// CPU op tests: forward values against naive double-precision references written here, every
// backward against central finite differences of L = Σ out ⊙ R (R random), and the
// accumulate (+=) contract of the backward functions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "ops/ops.h"

using namespace lowrank;
using namespace lowrank::ops;

namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double dot_loss(const Vec& out, const Vec& R) {  // Σ out ⊙ R in double
  double s = 0.0;
  for (size_t i = 0; i < out.size(); i++) s += double(out[i]) * double(R[i]);
  return s;
}

// Compares the analytic gradient `grad` of loss() w.r.t. `param` with central differences,
// checking about max_checks evenly strided elements. Tolerance: atol + rtol·|numeric|.
void check_grad(const std::string& name, Vec& param, const Vec& grad,
                const std::function<double()>& loss, float eps = 1e-2f, double rtol = 1e-2,
                double atol = 1e-3, size_t max_checks = 400) {
  ASSERT_EQ(param.size(), grad.size()) << name;
  const size_t stride = std::max<size_t>(1, param.size() / max_checks);
  for (size_t i = 0; i < param.size(); i += stride) {
    const float orig = param[i];
    const float up = orig + eps, dn = orig - eps;
    param[i] = up;
    const double lp = loss();
    param[i] = dn;
    const double lm = loss();
    param[i] = orig;
    const double num = (lp - lm) / (double(up) - double(dn));
    ASSERT_NEAR(grad[i], num, atol + rtol * std::fabs(num)) << name << "[" << i << "]";
  }
}

void expect_close(const Vec& got, const std::vector<double>& want, double rtol, double atol,
                  const std::string& name) {
  ASSERT_EQ(got.size(), want.size()) << name;
  for (size_t i = 0; i < got.size(); i++)
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::fabs(want[i])) << name << "[" << i << "]";
}

// A weight matrix of any test dtype built from logical f32 values W (rows, cols).
struct TestMatrix {
  std::vector<uint8_t> storage;  // encoded bytes
  Matrix m;
  Vec logical;                   // (rows, cols) values after encoding (what the op must use)
};

TestMatrix make_matrix(const Vec& W, int64_t rows, int64_t cols, DType dt, bool transposed) {
  TestMatrix t;
  // Element order in storage: (rows, cols), or (cols, rows) when transposed.
  Vec ordered(W.size());
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      ordered[transposed ? c * rows + r : r * cols + c] = W[r * cols + c];
  switch (dt) {
    case DType::F32:
      t.storage.resize(ordered.size() * 4);
      std::memcpy(t.storage.data(), ordered.data(), t.storage.size());
      break;
    case DType::F16:
    case DType::BF16: {
      t.storage.resize(ordered.size() * 2);
      for (size_t i = 0; i < ordered.size(); i++) {
        uint16_t h = dt == DType::F16 ? f32_to_f16(ordered[i]) : f32_to_bf16(ordered[i]);
        std::memcpy(t.storage.data() + 2 * i, &h, 2);
      }
      break;
    }
    case DType::Q8_0: {  // blocks of 32: f16 scale d | int8 q[32], value = d*q
      const size_t nb = ordered.size() / 32;
      t.storage.resize(nb * 34);
      for (size_t b = 0; b < nb; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(ordered[b * 32 + j]));
        const uint16_t dh = f32_to_f16(amax / 127.0f);
        const float d = f16_to_f32(dh);
        uint8_t* blk = t.storage.data() + b * 34;
        std::memcpy(blk, &dh, 2);
        for (int j = 0; j < 32; j++) {
          const float qf = d > 0 ? std::round(ordered[b * 32 + j] / d) : 0.0f;
          blk[2 + j] = uint8_t(int8_t(std::clamp(qf, -127.0f, 127.0f)));
        }
      }
      break;
    }
    default: ADD_FAILURE() << "unsupported test dtype";
  }
  t.m.dtype = dt;
  t.m.rows = rows;
  t.m.cols = cols;
  t.m.transposed = transposed;
  t.m.data = t.storage.data();
  t.logical = t.m.to_f32();
  return t;
}

// Naive reference: y (N, rows) = x (N, cols) · Wᵀ + bias.
std::vector<double> ref_linear(const Vec& x, const Vec& W, const float* bias, int64_t N,
                               int64_t rows, int64_t cols) {
  std::vector<double> y(static_cast<size_t>(N * rows));
  for (int64_t n = 0; n < N; n++)
    for (int64_t r = 0; r < rows; r++) {
      double s = bias ? bias[r] : 0.0;
      for (int64_t c = 0; c < cols; c++) s += double(x[n * cols + c]) * W[r * cols + c];
      y[n * rows + r] = s;
    }
  return y;
}

// Naive causal GQA attention in double: out (B,T,H,D), probs (B,H,T,T).
void ref_attention(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t T, int64_t H,
                   int64_t KVH, int64_t D, std::vector<double>& out, std::vector<double>& probs) {
  out.assign(static_cast<size_t>(B * T * H * D), 0.0);
  probs.assign(static_cast<size_t>(B * H * T * T), 0.0);
  const int64_t G = H / KVH;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++) {
        const int64_t kh = h / G;
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300;
        for (int64_t j = 0; j <= t; j++) {
          double d = 0;
          for (int64_t i = 0; i < D; i++)
            d += double(q[((b * T + t) * H + h) * D + i]) * k[((b * T + j) * KVH + kh) * D + i];
          s[j] = d / std::sqrt(double(D));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= t; j++) {
          const double p = s[j] / sum;
          probs[((b * H + h) * T + t) * T + j] = p;
          for (int64_t i = 0; i < D; i++)
            out[((b * T + t) * H + h) * D + i] += p * v[((b * T + j) * KVH + kh) * D + i];
        }
      }
}

}  // namespace

// ---- gemm ----------------------------------------------------------------------------

TEST(OpsGemm, AllTransposesAndShapes) {
  std::mt19937 rng(1);
  // small shapes run on one thread; the last four are split over threads by columns / rows
  const int64_t shapes[][3] = {{7, 5, 9},     {1, 6, 11},   {6, 1, 11},    {1, 1, 4},
                               {33, 17, 20},  {1, 700, 400}, {700, 1, 400}, {40, 300, 30},
                               {300, 40, 30}};
  for (auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        Vec A = randn(static_cast<size_t>(M * K), rng), B = randn(static_cast<size_t>(K * N), rng), C = randn(static_cast<size_t>(M * N), rng);
        Vec C0 = C;
        const float alpha = 0.7f, beta = -0.3f;
        gemm(ta, tb, M, N, K, alpha, A.data(), B.data(), beta, C.data());
        std::vector<double> want(static_cast<size_t>(M * N));
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t kk = 0; kk < K; kk++) {
              const double a = ta ? A[kk * M + i] : A[i * K + kk];
              const double b = tb ? B[j * K + kk] : B[kk * N + j];
              acc += a * b;
            }
            want[i * N + j] = alpha * acc + beta * C0[i * N + j];
          }
        expect_close(C, want, 1e-5, 1e-5,
                     "gemm M=" + std::to_string(M) + " N=" + std::to_string(N) + " ta=" +
                         std::to_string(ta) + " tb=" + std::to_string(tb));
      }
  }
}

// ---- linear --------------------------------------------------------------------------

TEST(OpsLinear, ForwardAndInputBackwardAllDtypes) {
  std::mt19937 rng(2);
  const int64_t rows = 300, cols = 64;  // several conversion tiles, last one partial
  Vec W = randn(static_cast<size_t>(rows * cols), rng, 0.2f);
  Vec bias = randn(static_cast<size_t>(rows), rng);
  struct Case { DType dt; bool transposed; };
  const Case cases[] = {{DType::F32, false}, {DType::F32, true},  {DType::F16, false},
                        {DType::F16, true},  {DType::BF16, false}, {DType::BF16, true},
                        {DType::Q8_0, false}};
  for (const Case& c : cases) {
    TestMatrix tm = make_matrix(W, rows, cols, c.dt, c.transposed);
    const std::string name = std::string(dtype_name(c.dt)) + (c.transposed ? " transposed" : "");
    for (int64_t N : {1, 5}) {
      Vec x = randn(static_cast<size_t>(N * cols), rng);
      for (const float* b : {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
        Vec y(static_cast<size_t>(N * rows), 123.0f);  // garbage: forward must overwrite
        linear_forward(y.data(), x.data(), tm.m, b, N);
        expect_close(y, ref_linear(x, tm.logical, b, N, rows, cols), 1e-4, 1e-4,
                     name + " forward N=" + std::to_string(N));
      }
      // dx (N, cols) += dy (N, rows) · W, from a nonzero start
      Vec dy = randn(static_cast<size_t>(N * rows), rng);
      Vec dx = randn(static_cast<size_t>(N * cols), rng);
      std::vector<double> want(dx.begin(), dx.end());
      for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < rows; r++)
          for (int64_t k = 0; k < cols; k++)
            want[n * cols + k] += double(dy[n * rows + r]) * tm.logical[r * cols + k];
      linear_backward_input(dx.data(), dy.data(), tm.m, N);
      expect_close(dx, want, 1e-4, 1e-4, name + " backward_input N=" + std::to_string(N));
    }
    // finite differences of L = Σ linear(x) ⊙ R w.r.t. x
    const int64_t N = 3;
    Vec x = randn(static_cast<size_t>(N * cols), rng), R = randn(static_cast<size_t>(N * rows), rng);
    Vec y(static_cast<size_t>(N * rows)), dx(static_cast<size_t>(N * cols), 0.0f);
    auto loss = [&] {
      linear_forward(y.data(), x.data(), tm.m, bias.data(), N);
      return dot_loss(y, R);
    };
    linear_backward_input(dx.data(), R.data(), tm.m, N);
    check_grad(name + " dx", x, dx, loss);
  }
}

TEST(OpsLinear, TiledThreadedPath) {
  // Large enough for the multi-threaded tile path (per-thread dx partial sums included).
  std::mt19937 rng(22);
  const int64_t rows = 520, cols = 512;
  Vec W = randn(static_cast<size_t>(rows * cols), rng, 0.1f), bias = randn(static_cast<size_t>(rows), rng);
  struct Case { DType dt; bool transposed; };
  for (const Case& c : {Case{DType::F16, false}, Case{DType::BF16, true}, Case{DType::Q8_0, false}}) {
    TestMatrix tm = make_matrix(W, rows, cols, c.dt, c.transposed);
    const std::string name = std::string(dtype_name(c.dt)) + (c.transposed ? " transposed" : "");
    for (int64_t N : {1, 4, 6}) {  // row-by-row path (N <= 4) and tile + BLAS path
      Vec x = randn(static_cast<size_t>(N * cols), rng), y(static_cast<size_t>(N * rows));
      linear_forward(y.data(), x.data(), tm.m, bias.data(), N);
      expect_close(y, ref_linear(x, tm.logical, bias.data(), N, rows, cols), 1e-4, 1e-4,
                   name + " threaded forward N=" + std::to_string(N));
      Vec dy = randn(static_cast<size_t>(N * rows), rng), dx = randn(static_cast<size_t>(N * cols), rng);
      std::vector<double> want(dx.begin(), dx.end());
      for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < rows; r++)
          for (int64_t k = 0; k < cols; k++)
            want[n * cols + k] += double(dy[n * rows + r]) * tm.logical[r * cols + k];
      linear_backward_input(dx.data(), dy.data(), tm.m, N);
      expect_close(dx, want, 1e-4, 1e-4, name + " threaded backward_input N=" + std::to_string(N));
    }
  }
}

TEST(OpsLinear, WeightAndBiasBackward) {
  std::mt19937 rng(3);
  const int64_t N = 6, in = 10, out = 7;
  Vec W = randn(static_cast<size_t>(out * in), rng), bias = randn(static_cast<size_t>(out), rng);
  Vec x = randn(static_cast<size_t>(N * in), rng), R = randn(static_cast<size_t>(N * out), rng);
  Vec y(static_cast<size_t>(N * out));
  auto loss = [&] {
    Matrix m;
    m.dtype = DType::F32;
    m.rows = out;
    m.cols = in;
    m.data = W.data();
    linear_forward(y.data(), x.data(), m, bias.data(), N);
    return dot_loss(y, R);
  };
  Vec dW(W.size(), 0.0f), db(bias.size(), 0.0f);
  linear_backward_weight(dW.data(), db.data(), R.data(), x.data(), N, in, out);
  check_grad("dW", W, dW, loss);
  check_grad("dbias", bias, db, loss);
  // accumulates, and a null dbias is skipped
  Vec dW2 = dW;
  linear_backward_weight(dW2.data(), nullptr, R.data(), x.data(), N, in, out);
  for (size_t i = 0; i < dW.size(); i++) ASSERT_NEAR(dW2[i], 2 * dW[i], 1e-5) << i;
  // also check dx by finite differences for the f32 path
  Matrix m;
  m.dtype = DType::F32;
  m.rows = out;
  m.cols = in;
  m.data = W.data();
  Vec dx(x.size(), 0.0f);
  linear_backward_input(dx.data(), R.data(), m, N);
  check_grad("dx", x, dx, loss);
}

TEST(OpsLinear, LargeBiasBackwardParallel) {
  std::mt19937 rng(4);
  const int64_t N = 70, in = 3, out = 1000;  // N*out above the parallel threshold
  Vec dy = randn(static_cast<size_t>(N * out), rng), x = randn(static_cast<size_t>(N * in), rng);
  Vec db(static_cast<size_t>(out), 1.0f);
  linear_backward_weight(nullptr, db.data(), dy.data(), x.data(), N, in, out);
  for (int64_t o = 0; o < out; o++) {
    double s = 1.0;
    for (int64_t n = 0; n < N; n++) s += dy[n * out + o];
    ASSERT_NEAR(db[o], s, 1e-4) << o;
  }
}

// ---- embedding -----------------------------------------------------------------------

TEST(OpsEmbedding, ForwardAndBackward) {
  std::mt19937 rng(5);
  const int64_t V = 11, C = 6, N = 8;
  Vec table = randn(static_cast<size_t>(V * C), rng);
  std::vector<int32_t> ids = {3, 0, 10, 3, 7, 3, 1, 10};  // repeats accumulate
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    TestMatrix tm = make_matrix(table, V, C, dt, false);
    Vec out(static_cast<size_t>(N * C));
    embedding_forward(out.data(), ids.data(), tm.m, N);
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) ASSERT_EQ(out[n * C + c], tm.logical[ids[n] * C + c]);
  }
  Vec R = randn(static_cast<size_t>(N * C), rng), out(static_cast<size_t>(N * C));
  auto loss = [&] {
    Matrix m;
    m.rows = V;
    m.cols = C;
    m.data = table.data();
    embedding_forward(out.data(), ids.data(), m, N);
    return dot_loss(out, R);
  };
  Vec dtable(table.size(), 0.0f);
  embedding_backward(dtable.data(), R.data(), ids.data(), N, C);
  check_grad("dtable", table, dtable, loss);
  // bad ids are rejected
  std::vector<int32_t> bad = {int32_t(V)};
  Matrix m;
  m.rows = V;
  m.cols = C;
  m.data = table.data();
  EXPECT_THROW(embedding_forward(out.data(), bad.data(), m, 1), std::exception);
}

// ---- normalization -------------------------------------------------------------------

TEST(OpsNorm, LayerNorm) {
  std::mt19937 rng(6);
  const int64_t N = 5, C = 12;
  const float eps = 1e-5f;
  Vec x = randn(static_cast<size_t>(N * C), rng, 2.0f), w = randn(static_cast<size_t>(C), rng), b = randn(static_cast<size_t>(C), rng);
  for (auto& e : x) e += 3.0f;  // nonzero mean
  Vec R = randn(static_cast<size_t>(N * C), rng), out(static_cast<size_t>(N * C)), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, eps);
  std::vector<double> want(static_cast<size_t>(N * C));
  for (int64_t n = 0; n < N; n++) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; c++) m += x[n * C + c];
    m /= C;
    for (int64_t c = 0; c < C; c++) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;  // biased, like torch
    const double rs = 1.0 / std::sqrt(v + eps);
    EXPECT_NEAR(mean[n], m, 1e-6);
    EXPECT_NEAR(rstd[n], rs, 1e-5 * rs);
    for (int64_t c = 0; c < C; c++) want[n * C + c] = (x[n * C + c] - m) * rs * w[c] + b[c];
  }
  expect_close(out, want, 1e-5, 1e-5, "layernorm");

  auto loss = [&] {
    Vec m2(static_cast<size_t>(N)), r2(static_cast<size_t>(N));
    layernorm_forward(out.data(), m2.data(), r2.data(), x.data(), w.data(), b.data(), N, C, eps);
    return dot_loss(out, R);
  };
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, eps);
  Vec dx(x.size(), 0.0f), dw(w.size(), 0.0f), db(b.size(), 0.0f);
  layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, C);
  check_grad("ln dx", x, dx, loss, 1e-2f, 2e-2, 2e-3);
  check_grad("ln dw", w, dw, loss);
  check_grad("ln db", b, db, loss);
  // frozen weights: dw/db null, dx accumulates
  Vec dx2 = dx;
  layernorm_backward(dx2.data(), nullptr, nullptr, R.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, C);
  for (size_t i = 0; i < dx.size(); i++) ASSERT_NEAR(dx2[i], 2 * dx[i], 1e-5) << i;
}

TEST(OpsNorm, LayerNormParallelWeightGrad) {
  std::mt19937 rng(7);
  const int64_t N = 64, C = 768;  // above the parallel threshold
  Vec x = randn(static_cast<size_t>(N * C), rng), w = randn(static_cast<size_t>(C), rng), b = randn(static_cast<size_t>(C), rng);
  Vec g = randn(static_cast<size_t>(N * C), rng), out(static_cast<size_t>(N * C)), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  Vec dx(x.size(), 0.0f), dw(static_cast<size_t>(C), 0.0f), db(static_cast<size_t>(C), 0.0f);
  layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, C);
  for (int64_t c = 0; c < C; c++) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; n++) {
      sw += double(g[n * C + c]) * (x[n * C + c] - mean[n]) * rstd[n];
      sb += g[n * C + c];
    }
    ASSERT_NEAR(dw[c], sw, 1e-3) << c;
    ASSERT_NEAR(db[c], sb, 1e-3) << c;
  }
}

TEST(OpsNorm, RMSNorm) {
  std::mt19937 rng(8);
  const int64_t N = 4, C = 16;
  const float eps = 1e-6f;
  Vec x = randn(static_cast<size_t>(N * C), rng), w = randn(static_cast<size_t>(C), rng), R = randn(static_cast<size_t>(N * C), rng);
  Vec out(static_cast<size_t>(N * C)), rstd(static_cast<size_t>(N));
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  std::vector<double> want(static_cast<size_t>(N * C));
  for (int64_t n = 0; n < N; n++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += double(x[n * C + c]) * x[n * C + c];
    const double rs = 1.0 / std::sqrt(ss / C + eps);
    EXPECT_NEAR(rstd[n], rs, 1e-5 * rs);
    for (int64_t c = 0; c < C; c++) want[n * C + c] = x[n * C + c] * rs * w[c];
  }
  expect_close(out, want, 1e-5, 1e-6, "rmsnorm");
  auto loss = [&] {
    Vec r2(static_cast<size_t>(N));
    rmsnorm_forward(out.data(), r2.data(), x.data(), w.data(), N, C, eps);
    return dot_loss(out, R);
  };
  Vec dx(x.size(), 0.0f), dw(w.size(), 0.0f);
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  check_grad("rms dx", x, dx, loss, 1e-2f, 2e-2, 2e-3);
  check_grad("rms dw", w, dw, loss);
  Vec dx2 = dx;
  rmsnorm_backward(dx2.data(), nullptr, R.data(), x.data(), w.data(), rstd.data(), N, C);
  for (size_t i = 0; i < dx.size(); i++) ASSERT_NEAR(dx2[i], 2 * dx[i], 1e-5) << i;
}

// ---- rope ----------------------------------------------------------------------------

TEST(OpsRope, ForwardMatchesHFFormula) {
  std::mt19937 rng(9);
  const int64_t N = 6, H = 3, D = 16;
  const float theta = 10000.0f;
  std::vector<int32_t> pos = {0, 1, 2, 7, 100, 2047};
  for (bool half : {true, false}) {
    Vec x = randn(static_cast<size_t>(N * H * D), rng), y = x;
    rope_forward(y.data(), pos.data(), N, H, D, theta, half);
    std::vector<double> want(x.size());
    for (int64_t n = 0; n < N; n++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < D / 2; i++) {
          // HF: inv_freq = 1/(theta ** (arange(0, D, 2).float() / D)) in float32
          const float inv = 1.0f / float(std::pow(double(theta), double(float(2 * i) / float(D))));
          const float ang = float(pos[n]) * inv;
          const double c = std::cos(double(ang)), s = std::sin(double(ang));
          const int64_t base = (n * H + h) * D;
          const int64_t i1 = half ? i : 2 * i, i2 = half ? i + D / 2 : 2 * i + 1;
          want[base + i1] = x[base + i1] * c - x[base + i2] * s;
          want[base + i2] = x[base + i2] * c + x[base + i1] * s;
        }
    expect_close(y, want, 1e-6, 1e-6, half ? "rope half" : "rope pairwise");
    // position 0 is the identity
    for (int64_t i = 0; i < H * D; i++) ASSERT_EQ(y[i], x[i]);
  }
}

TEST(OpsRope, BackwardInvertsAndMatchesFiniteDifferences) {
  std::mt19937 rng(10);
  const int64_t N = 5, H = 2, D = 8;
  std::vector<int32_t> pos = {3, 0, 9, 4, 31};
  for (bool half : {true, false}) {
    Vec x = randn(static_cast<size_t>(N * H * D), rng), y = x;
    rope_forward(y.data(), pos.data(), N, H, D, 500000.0f, half);
    rope_backward(y.data(), pos.data(), N, H, D, 500000.0f, half);
    for (size_t i = 0; i < x.size(); i++) ASSERT_NEAR(y[i], x[i], 1e-5) << i;

    Vec R = randn(x.size(), rng), out(x.size());
    auto loss = [&] {
      out = x;
      rope_forward(out.data(), pos.data(), N, H, D, 500000.0f, half);
      return dot_loss(out, R);
    };
    Vec dx = R;  // rope_backward maps dout to dx in place
    rope_backward(dx.data(), pos.data(), N, H, D, 500000.0f, half);
    check_grad(half ? "rope half dx" : "rope pairwise dx", x, dx, loss);
  }
}

TEST(OpsRope, TableGrowsAndThetaChanges) {
  // The cached cos/sin table must give identical results whatever was computed before.
  const int64_t H = 1, D = 4;
  std::vector<int32_t> p1 = {5}, p2 = {9000};
  Vec a = {1, 2, 3, 4}, b = a, c = a;
  rope_forward(a.data(), p1.data(), 1, H, D, 10000.0f, true);
  rope_forward(c.data(), p2.data(), 1, H, D, 10000.0f, true);  // grows the table
  rope_forward(b.data(), p1.data(), 1, H, D, 10000.0f, true);
  for (int i = 0; i < 4; i++) EXPECT_EQ(a[i], b[i]);
  Vec d = {1, 2, 3, 4};
  rope_forward(d.data(), p1.data(), 1, H, D, 100.0f, true);  // different theta
  EXPECT_NE(d[1], a[1]);  // element 1 pairs with frequency index 1, which depends on theta
}

// ---- attention -----------------------------------------------------------------------

namespace {

void attention_case(int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D, uint32_t seed,
                    size_t max_checks) {
  std::mt19937 rng(seed);
  const size_t nq = static_cast<size_t>(B * T * H * D), nk = static_cast<size_t>(B * T * KVH * D);
  Vec q = randn(nq, rng), k = randn(nk, rng), v = randn(nk, rng), R = randn(nq, rng);
  Vec out(nq), att(static_cast<size_t>(B * H * T * T), 7.0f);
  attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KVH, D);
  std::vector<double> ref_out, ref_p;
  ref_attention(q, k, v, B, T, H, KVH, D, ref_out, ref_p);
  const std::string tag = "B" + std::to_string(B) + " T" + std::to_string(T) + " H" +
                          std::to_string(H) + " KVH" + std::to_string(KVH);
  expect_close(out, ref_out, 1e-4, 1e-5, "attention out " + tag);
  expect_close(att, ref_p, 1e-4, 1e-6, "attention probs " + tag);  // upper triangle exactly 0 too
  for (size_t i = 0; i < att.size(); i++) {
    if (ref_p[i] == 0.0) {
      ASSERT_EQ(att[i], 0.0f) << i;
    }
  }

  auto loss = [&] {
    Vec a2(att.size());
    attention_forward(out.data(), a2.data(), q.data(), k.data(), v.data(), B, T, H, KVH, D);
    return dot_loss(out, R);
  };
  Vec dq(nq, 0.0f), dk(nk, 0.0f), dv(nk, 0.0f);
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                     att.data(), B, T, H, KVH, D);
  check_grad("attn dq " + tag, q, dq, loss, 1e-2f, 1e-2, 1e-3, max_checks);
  check_grad("attn dk " + tag, k, dk, loss, 1e-2f, 1e-2, 1e-3, max_checks);
  check_grad("attn dv " + tag, v, dv, loss, 1e-2f, 1e-2, 1e-3, max_checks);
  // accumulation
  Vec dq2 = dq, dk2 = dk, dv2 = dv;
  attention_backward(dq2.data(), dk2.data(), dv2.data(), R.data(), q.data(), k.data(), v.data(),
                     att.data(), B, T, H, KVH, D);
  for (size_t i = 0; i < nq; i++) ASSERT_NEAR(dq2[i], 2 * dq[i], 1e-4 + 1e-5 * std::fabs(dq[i]));
  for (size_t i = 0; i < nk; i++) ASSERT_NEAR(dk2[i], 2 * dk[i], 1e-4 + 1e-5 * std::fabs(dk[i]));
  for (size_t i = 0; i < nk; i++) ASSERT_NEAR(dv2[i], 2 * dv[i], 1e-4 + 1e-5 * std::fabs(dv[i]));

  // decode: the last query row of each batch against that batch's cache equals forward's row
  attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KVH, D);
  for (int64_t b = 0; b < B; b++) {
    Vec dout(static_cast<size_t>(H * D));
    attention_decode(dout.data(), q.data() + (b * T + T - 1) * H * D, k.data() + b * T * KVH * D,
                     v.data() + b * T * KVH * D, T, H, KVH, D);
    for (int64_t i = 0; i < H * D; i++)
      ASSERT_NEAR(dout[i], out[(b * T + T - 1) * H * D + i], 1e-5) << tag << " decode " << i;
  }
}

}  // namespace

TEST(OpsAttention, GQASmall) { attention_case(2, 7, 4, 2, 8, 11, 400); }
TEST(OpsAttention, MHASmall) { attention_case(2, 6, 3, 3, 4, 12, 400); }
TEST(OpsAttention, GQAMultiBlock) { attention_case(2, 70, 4, 2, 8, 13, 150); }   // T > row block
TEST(OpsAttention, MHAMultiBlock) { attention_case(1, 130, 2, 2, 4, 14, 150); }  // 3 row blocks
TEST(OpsAttention, GQAThreaded) { attention_case(2, 96, 4, 2, 16, 15, 16); }      // threaded path

TEST(OpsAttention, DecodeLargeCache) {
  // Decode against a cache big enough for the threaded path, GQA and MHA, vs naive.
  std::mt19937 rng(15);
  const int64_t cfg[][4] = {{300, 8, 2, 16}, {200, 4, 4, 32}};  // T, H, KVH, D
  for (auto& c : cfg) {
    const int64_t T = c[0], H = c[1], KVH = c[2], D = c[3];
    Vec q = randn(static_cast<size_t>(H * D), rng), kc = randn(static_cast<size_t>(T * KVH * D), rng);
    Vec vc = randn(static_cast<size_t>(T * KVH * D), rng), out(static_cast<size_t>(H * D));
    attention_decode(out.data(), q.data(), kc.data(), vc.data(), T, H, KVH, D);
    for (int64_t h = 0; h < H; h++) {
      const int64_t kh = h / (H / KVH);
      std::vector<double> s(static_cast<size_t>(T));
      double mx = -1e300, sum = 0;
      for (int64_t t = 0; t < T; t++) {
        double d = 0;
        for (int64_t i = 0; i < D; i++) d += double(q[h * D + i]) * kc[(t * KVH + kh) * D + i];
        s[t] = d / std::sqrt(double(D));
        mx = std::max(mx, s[t]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t i = 0; i < D; i++) {
        double o = 0;
        for (int64_t t = 0; t < T; t++) o += s[t] / sum * vc[(t * KVH + kh) * D + i];
        ASSERT_NEAR(out[h * D + i], o, 1e-5) << "h=" << h << " i=" << i;
      }
    }
  }
}

// ---- activations ---------------------------------------------------------------------

TEST(OpsActivation, GeluForwardAndBackward) {
  std::mt19937 rng(16);
  Vec x = randn(200, rng, 3.0f);
  x.push_back(0.0f);
  x.push_back(-30.0f);
  x.push_back(30.0f);
  x.push_back(1e-6f);
  Vec out(x.size());
  gelu_forward(out.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); i++) {
    const double xi = x[i];
    const double want = 0.5 * xi * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (xi + 0.044715 * xi * xi * xi)));
    ASSERT_NEAR(out[i], want, 1e-6 + 1e-6 * std::fabs(want)) << "x=" << xi;
  }
  Vec R = randn(x.size(), rng);
  auto loss = [&] {
    gelu_forward(out.data(), x.data(), int64_t(x.size()));
    return dot_loss(out, R);
  };
  Vec dx(x.size(), 0.0f);
  gelu_backward(dx.data(), R.data(), x.data(), int64_t(x.size()));
  check_grad("gelu dx", x, dx, loss, 1e-3f);
}

TEST(OpsActivation, GeluLargeParallel) {
  std::mt19937 rng(17);
  const int64_t n = 100003;
  Vec x = randn(static_cast<size_t>(n), rng, 4.0f), out(static_cast<size_t>(n)), dx(static_cast<size_t>(n), 1.0f), g(static_cast<size_t>(n), 1.0f);
  gelu_forward(out.data(), x.data(), n);
  gelu_backward(dx.data(), g.data(), x.data(), n);
  for (int64_t i = 0; i < n; i++) {
    const double xi = x[i];
    const double th = std::tanh(std::sqrt(2.0 / M_PI) * (xi + 0.044715 * xi * xi * xi));
    ASSERT_NEAR(out[i], 0.5 * xi * (1 + th), 2e-6 + 2e-6 * std::fabs(xi)) << i;
    const double d = 0.5 * (1 + th) +
                     0.5 * xi * (1 - th * th) * std::sqrt(2.0 / M_PI) * (1 + 3 * 0.044715 * xi * xi);
    ASSERT_NEAR(dx[i], 1.0 + d, 1e-5 + 1e-5 * std::fabs(d)) << i;
  }
}

TEST(OpsActivation, SwiGLU) {
  std::mt19937 rng(18);
  const int64_t n = 150;
  Vec gate = randn(static_cast<size_t>(n), rng, 3.0f), up = randn(static_cast<size_t>(n), rng), out(static_cast<size_t>(n));
  swiglu_forward(out.data(), gate.data(), up.data(), n);
  for (int64_t i = 0; i < n; i++) {
    const double g = gate[i];
    ASSERT_NEAR(out[i], g / (1 + std::exp(-g)) * up[i], 1e-6 + 1e-6 * std::fabs(out[i]));
  }
  Vec R = randn(static_cast<size_t>(n), rng);
  auto loss = [&] {
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    return dot_loss(out, R);
  };
  Vec dg(static_cast<size_t>(n), 0.0f), du(static_cast<size_t>(n), 0.0f);
  swiglu_backward(dg.data(), du.data(), R.data(), gate.data(), up.data(), n);
  check_grad("swiglu dgate", gate, dg, loss, 1e-3f);
  check_grad("swiglu dup", up, du, loss, 1e-3f);
}

TEST(OpsActivation, Residual) {
  std::mt19937 rng(19);
  const int64_t n = 40;
  Vec a = randn(static_cast<size_t>(n), rng), b = randn(static_cast<size_t>(n), rng), out(static_cast<size_t>(n)), R = randn(static_cast<size_t>(n), rng);
  residual_forward(out.data(), a.data(), b.data(), n);
  for (int64_t i = 0; i < n; i++) ASSERT_EQ(out[i], a[i] + b[i]);
  auto loss = [&] {
    residual_forward(out.data(), a.data(), b.data(), n);
    return dot_loss(out, R);
  };
  Vec da(static_cast<size_t>(n), 0.0f), db(static_cast<size_t>(n), 0.0f);
  residual_backward(da.data(), db.data(), R.data(), n);
  check_grad("residual da", a, da, loss);
  check_grad("residual db", b, db, loss);
  residual_backward(da.data(), db.data(), R.data(), n);
  for (int64_t i = 0; i < n; i++) ASSERT_EQ(da[i], 2 * R[i]);
}

// ---- loss ----------------------------------------------------------------------------

TEST(OpsLoss, CrossEntropy) {
  std::mt19937 rng(20);
  const int64_t N = 5, V = 37;
  Vec logits = randn(static_cast<size_t>(N * V), rng, 2.0f);
  for (int64_t i = 0; i < V; i++) logits[3 * V + i] += 1000.0f;  // stability: huge offsets
  std::vector<int32_t> targets = {4, -1, 36, 0, 17};              // row 1 ignored
  Vec losses(static_cast<size_t>(N));
  const double total = cross_entropy_forward(losses.data(), logits.data(), targets.data(), N, V);
  double want_total = 0;
  for (int64_t n = 0; n < N; n++) {
    if (targets[n] < 0) {
      EXPECT_EQ(losses[n], 0.0f);
      continue;
    }
    double mx = -1e300, s = 0;
    for (int64_t i = 0; i < V; i++) mx = std::max(mx, double(logits[n * V + i]));
    for (int64_t i = 0; i < V; i++) s += std::exp(logits[n * V + i] - mx);
    const double l = mx + std::log(s) - logits[n * V + targets[n]];
    EXPECT_NEAR(losses[n], l, 1e-5 * std::max(1.0, l)) << n;
    want_total += l;
  }
  EXPECT_NEAR(total, want_total, 1e-4);

  // L = Σ_n losses[n] * dloss[n]
  Vec dloss = randn(static_cast<size_t>(N), rng);
  auto loss = [&] {
    Vec l2(static_cast<size_t>(N));
    cross_entropy_forward(l2.data(), logits.data(), targets.data(), N, V);
    return dot_loss(l2, dloss);
  };
  Vec grad = logits;
  cross_entropy_backward_inplace(grad.data(), targets.data(), dloss.data(), N, V);
  for (int64_t i = 0; i < V; i++) ASSERT_EQ(grad[1 * V + i], 0.0f);  // ignored row
  for (int64_t n = 0; n < N; n++) {
    if (targets[n] < 0) continue;
    double s = 0;  // softmax − onehot sums to zero
    for (int64_t i = 0; i < V; i++) s += grad[n * V + i];
    EXPECT_NEAR(s, 0.0, 1e-5);
  }
  check_grad("ce dlogits", logits, grad, loss, 1e-2f, 1e-2, 1e-4);
}

TEST(OpsLoss, CrossEntropyLargeVocabParallel) {
  std::mt19937 rng(21);
  const int64_t N = 4, V = 50257;
  Vec logits = randn(static_cast<size_t>(N * V), rng, 3.0f);
  std::vector<int32_t> targets = {0, 50256, -1, 12345};
  Vec losses(static_cast<size_t>(N));
  cross_entropy_forward(losses.data(), logits.data(), targets.data(), N, V);
  Vec ones(static_cast<size_t>(N), 1.0f), grad = logits;
  cross_entropy_backward_inplace(grad.data(), targets.data(), ones.data(), N, V);
  for (int64_t n = 0; n < N; n++) {
    if (targets[n] < 0) continue;
    double mx = -1e300, s = 0;
    for (int64_t i = 0; i < V; i++) mx = std::max(mx, double(logits[n * V + i]));
    for (int64_t i = 0; i < V; i++) s += std::exp(logits[n * V + i] - mx);
    EXPECT_NEAR(losses[n], mx + std::log(s) - logits[n * V + targets[n]], 1e-4);
    for (int64_t i = 0; i < V; i += 997) {
      const double p = std::exp(logits[n * V + i] - mx) / s - (i == targets[n] ? 1.0 : 0.0);
      ASSERT_NEAR(grad[n * V + i], p, 1e-7 + 1e-5 * std::fabs(p)) << n << "," << i;
    }
  }
  std::vector<int32_t> bad = {int32_t(V)};
  EXPECT_THROW(cross_entropy_forward(losses.data(), logits.data(), bad.data(), 1, V), std::exception);
}
