// CUDA op tests: every op in src/ops/cuda against the CPU op of the same name (src/ops/cpu)
// on random inputs, in f32 mode and in bf16 mode. Without a CUDA device every test is
// skipped (GTEST_SKIP) with the reason.
//
// Error measure: err = max_i |gpu_i - cpu_i| / max_i |cpu_i| (the error relative to the
// output's scale, so near-zero elements do not dominate). Tolerances:
//   f32  : err ≤ 2e-5 (different summation orders; cuBLASLt without TF32)
//   bf16 : err ≤ 2e-2 (inputs are rounded to bf16 before both sides see them; the GPU stores
//          outputs and intermediates in bf16 (8 mantissa bits: 2^-8 ≈ 4e-3 per rounding) and
//          accumulates in f32; a few roundings in a row stay below 2e-2)
// Backward outputs start from random values on both sides, which checks the += contract.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "train/trainer.h"

using namespace lowrank;
namespace cu = lowrank::ops::cuda;

namespace {

using Vec = std::vector<float>;

constexpr double kTolF32 = 2e-5;
constexpr double kTolBf16 = 2e-2;

template <typename T> constexpr bool is_bf16 = std::is_same_v<T, cu::bf16>;
template <typename T> constexpr double tol() { return is_bf16<T> ? kTolBf16 : kTolF32; }
template <typename T> const char* type_name() { return is_bf16<T> ? "bf16" : "f32"; }

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cu::device_available(&why)) GTEST_SKIP() << "no usable CUDA device (" << why << "): CUDA tests skipped";
  }
};

Vec randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Values exactly representable in T (bf16 rounding when T is bf16).
template <typename T> Vec representable(Vec v) {
  if constexpr (is_bf16<T>)
    for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

// Device buffer of n elements of E.
template <typename E> struct Dev {
  E* p = nullptr;
  int64_t n = 0;
  explicit Dev(int64_t count) : n(count) {
    cu::check(cudaMalloc(&p, sizeof(E) * size_t(std::max<int64_t>(count, 1))), "test cudaMalloc");
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
};

template <typename T> struct DevT : Dev<T> {
  explicit DevT(int64_t n) : Dev<T>(n) {}
  explicit DevT(const Vec& v) : Dev<T>(int64_t(v.size())) { cu::upload<T>(this->p, v.data(), this->n); }
  Vec get() const {
    Vec h(static_cast<size_t>(this->n));
    cu::download<T>(h.data(), this->p, this->n);
    return h;
  }
};

struct DevF : Dev<float> {
  explicit DevF(int64_t n) : Dev<float>(n) { cu::zero(p, sizeof(float) * size_t(n)); }
  explicit DevF(const Vec& v) : Dev<float>(int64_t(v.size())) { cu::upload<float>(p, v.data(), n); }
  Vec get() const {
    Vec h(static_cast<size_t>(n));
    cu::download<float>(h.data(), p, n);
    return h;
  }
};

struct DevI : Dev<int32_t> {
  explicit DevI(const std::vector<int32_t>& v) : Dev<int32_t>(int64_t(v.size())) {
    cu::check(cudaMemcpy(p, v.data(), v.size() * 4, cudaMemcpyHostToDevice), "test upload ids");
  }
};

double rel_err(const Vec& got, const Vec& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); i++) {
    num = std::max(num, double(std::fabs(got[i] - want[i])));
    den = std::max(den, double(std::fabs(want[i])));
  }
  return den > 0 ? num / den : num;
}

#define EXPECT_CLOSE_T(T, got, want, what)                                                           \
  do {                                                                                               \
    ASSERT_EQ((got).size(), (want).size()) << what;                                                  \
    const double e_ = rel_err(got, want);                                                            \
    EXPECT_LE(e_, tol<T>()) << what << " (" << type_name<T>() << "): relative max error " << e_;     \
  } while (0)

// ---- matmul --------------------------------------------------------------------------

template <typename TI, typename TO> void check_gemm(double tolerance) {
  std::mt19937 rng(1);
  const int64_t M = 37, N = 45, K = 70;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      Vec A = representable<TI>(randn(size_t(M * K), rng));
      Vec B = representable<TI>(randn(size_t(K * N), rng));
      Vec C = representable<TO>(randn(size_t(M * N), rng));
      Vec want = C;
      ops::gemm(ta, tb, M, N, K, 0.7f, A.data(), B.data(), 0.5f, want.data());
      DevT<TI> dA(A), dB(B);
      DevT<TO> dC(C);
      cu::gemm<TI, TO>(ta, tb, M, N, K, 0.7f, dA.p, dB.p, 0.5f, dC.p);
      const double e = rel_err(dC.get(), want);
      EXPECT_LE(e, tolerance) << "gemm ta=" << ta << " tb=" << tb;
    }
}

TEST_F(CudaOps, GemmAllTransposes) {
  check_gemm<float, float>(kTolF32);
  check_gemm<cu::bf16, cu::bf16>(kTolBf16);
  check_gemm<cu::bf16, float>(1e-4);  // bf16 inputs, f32 output: only summation order differs
}

template <typename T> void check_linear() {
  std::mt19937 rng(2);
  const int64_t N = 33, in = 48, out = 40;
  Vec x = representable<T>(randn(size_t(N * in), rng));
  Vec W = representable<T>(randn(size_t(out * in), rng, 0.2f));
  Vec bias = representable<T>(randn(size_t(out), rng));
  FloatBuffer wb = FloatBuffer::zeros({out, in});
  std::copy(W.begin(), W.end(), wb.ptr());
  const Matrix Wm = matrix_from_buffer(wb);
  Vec y(size_t(N * out));
  ops::linear_forward(y.data(), x.data(), Wm, bias.data(), N);
  DevT<T> dx(x), dW(W), db(bias), dy(N * out);
  cu::linear_forward<T>(dy.p, dx.p, dW.p, db.p, N, in, out);
  EXPECT_CLOSE_T(T, dy.get(), y, "linear_forward");

  Vec g = representable<T>(randn(size_t(N * out), rng));
  Vec gx0 = representable<T>(randn(size_t(N * in), rng));
  Vec gx = gx0;
  ops::linear_backward_input(gx.data(), g.data(), Wm, N);
  DevT<T> dg(g), dgx(gx0);
  cu::linear_backward_input<T>(dgx.p, dg.p, dW.p, N, in, out);
  EXPECT_CLOSE_T(T, dgx.get(), gx, "linear_backward_input");

  Vec gW0 = randn(size_t(out * in), rng), gb0 = randn(size_t(out), rng);
  Vec gW = gW0, gb = gb0;
  ops::linear_backward_weight(gW.data(), gb.data(), g.data(), x.data(), N, in, out);
  DevF dgW(gW0), dgb(gb0);
  cu::linear_backward_weight<T>(dgW.p, dgb.p, dg.p, dx.p, N, in, out);
  EXPECT_LE(rel_err(dgW.get(), gW), 1e-4) << "linear_backward_weight dW " << type_name<T>();
  EXPECT_LE(rel_err(dgb.get(), gb), 1e-4) << "linear_backward_weight dbias " << type_name<T>();
}

TEST_F(CudaOps, Linear) {
  check_linear<float>();
  check_linear<cu::bf16>();
}

// ---- embedding -------------------------------------------------------------------------

template <typename T> void check_embedding() {
  std::mt19937 rng(3);
  const int64_t V = 50, C = 72, N = 29;
  Vec table = representable<T>(randn(size_t(V * C), rng));
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (auto& i : ids) i = int32_t(rng() % V);
  ids[3] = ids[7];  // repeated ids must accumulate
  FloatBuffer tb = FloatBuffer::zeros({V, C});
  std::copy(table.begin(), table.end(), tb.ptr());
  Vec out(size_t(N * C));
  ops::embedding_forward(out.data(), ids.data(), matrix_from_buffer(tb), N);
  DevT<T> dtab(table), dout(N * C);
  DevI did(ids);
  cu::embedding_forward<T>(dout.p, did.p, dtab.p, N, V, C);
  EXPECT_CLOSE_T(T, dout.get(), out, "embedding_forward");

  Vec g = representable<T>(randn(size_t(N * C), rng));
  Vec dt0 = randn(size_t(V * C), rng), dt = dt0;
  ops::embedding_backward(dt.data(), g.data(), ids.data(), N, C);
  DevT<T> dg(g);
  DevF ddt(dt0);
  cu::embedding_backward<T>(ddt.p, dg.p, did.p, N, C);
  EXPECT_LE(rel_err(ddt.get(), dt), 1e-5) << "embedding_backward " << type_name<T>();

  // position_add: x += wpe[pos]
  std::vector<int32_t> pos(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; n++) pos[size_t(n)] = int32_t(n % 11);
  Vec wpe = representable<T>(randn(size_t(11 * C), rng));
  Vec want = out;
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) want[size_t(n * C + c)] += wpe[size_t(pos[size_t(n)] * C + c)];
  DevT<T> dwpe(wpe);
  DevI dpos(pos);
  cu::position_add<T>(dout.p, dwpe.p, dpos.p, N, C);
  EXPECT_CLOSE_T(T, dout.get(), want, "position_add");
}

TEST_F(CudaOps, Embedding) {
  check_embedding<float>();
  check_embedding<cu::bf16>();
}

// ---- norms ---------------------------------------------------------------------------

template <typename T> void check_norms() {
  std::mt19937 rng(4);
  const int64_t N = 19, C = 200;
  const float eps = 1e-5f;
  Vec x = representable<T>(randn(size_t(N * C), rng, 2.0f));
  Vec w = representable<T>(randn(size_t(C), rng));
  Vec b = representable<T>(randn(size_t(C), rng));
  Vec g = representable<T>(randn(size_t(N * C), rng));
  DevT<T> dx(x), dw(w), db(b), dg(g);
  {  // LayerNorm
    Vec out(size_t(N * C)), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
    ops::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, eps);
    DevT<T> dout(N * C);
    DevF dmean(N), drstd(N);
    cu::layernorm_forward<T>(dout.p, dmean.p, drstd.p, dx.p, dw.p, db.p, N, C, eps);
    EXPECT_CLOSE_T(T, dout.get(), out, "layernorm_forward");
    EXPECT_LE(rel_err(dmean.get(), mean), 1e-5);
    EXPECT_LE(rel_err(drstd.get(), rstd), 1e-5);
    Vec gx0 = representable<T>(randn(size_t(N * C), rng)), gx = gx0;
    Vec gw0 = randn(size_t(C), rng), gb0 = randn(size_t(C), rng), gw = gw0, gb = gb0;
    ops::layernorm_backward(gx.data(), gw.data(), gb.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(),
                            N, C);
    DevT<T> dgx(gx0);
    DevF dgw(gw0), dgb(gb0);
    cu::layernorm_backward<T>(dgx.p, dgw.p, dgb.p, dg.p, dx.p, dw.p, dmean.p, drstd.p, N, C);
    EXPECT_CLOSE_T(T, dgx.get(), gx, "layernorm_backward dx");
    EXPECT_LE(rel_err(dgw.get(), gw), 1e-4) << "layernorm_backward dw";
    EXPECT_LE(rel_err(dgb.get(), gb), 1e-4) << "layernorm_backward db";
  }
  {  // RMSNorm
    Vec out(size_t(N * C)), rstd(static_cast<size_t>(N));
    ops::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    DevT<T> dout(N * C);
    DevF drstd(N);
    cu::rmsnorm_forward<T>(dout.p, drstd.p, dx.p, dw.p, N, C, eps);
    EXPECT_CLOSE_T(T, dout.get(), out, "rmsnorm_forward");
    EXPECT_LE(rel_err(drstd.get(), rstd), 1e-5);
    Vec gx0 = representable<T>(randn(size_t(N * C), rng)), gx = gx0;
    Vec gw0 = randn(size_t(C), rng), gw = gw0;
    ops::rmsnorm_backward(gx.data(), gw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
    DevT<T> dgx(gx0);
    DevF dgw(gw0);
    cu::rmsnorm_backward<T>(dgx.p, dgw.p, dg.p, dx.p, dw.p, drstd.p, N, C);
    EXPECT_CLOSE_T(T, dgx.get(), gx, "rmsnorm_backward dx");
    EXPECT_LE(rel_err(dgw.get(), gw), 1e-4) << "rmsnorm_backward dw";
  }
}

TEST_F(CudaOps, Norms) {
  check_norms<float>();
  check_norms<cu::bf16>();
}

// ---- rope ----------------------------------------------------------------------------

template <typename T> void check_rope() {
  std::mt19937 rng(5);
  const int64_t N = 23, H = 3, D = 64;
  std::vector<int32_t> pos(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; n++) pos[size_t(n)] = int32_t((n * 37) % 2000);
  DevI dpos(pos);
  for (int half = 0; half < 2; half++) {
    Vec x = representable<T>(randn(size_t(N * H * D), rng));
    Vec want = x;
    ops::rope_forward(want.data(), pos.data(), N, H, D, 10000.f, half);
    DevT<T> dxv(x);
    cu::rope_forward<T>(dxv.p, dpos.p, N, H, D, 10000.f, half);
    EXPECT_CLOSE_T(T, dxv.get(), want, "rope_forward half=" << half);
    Vec back = want;
    ops::rope_backward(back.data(), pos.data(), N, H, D, 10000.f, half);
    DevT<T> dback(want);
    cu::rope_backward<T>(dback.p, dpos.p, N, H, D, 10000.f, half);
    EXPECT_CLOSE_T(T, dback.get(), back, "rope_backward half=" << half);
  }
}

TEST_F(CudaOps, Rope) {
  check_rope<float>();
  check_rope<cu::bf16>();
}

// ---- attention -------------------------------------------------------------------------

template <typename T> void check_attention(int64_t B, int64_t Tn, int64_t H, int64_t KVH, int64_t D) {
  std::mt19937 rng(unsigned(6 + Tn + D));
  const int64_t HD = H * D, KD = KVH * D, N = B * Tn;
  Vec q = representable<T>(randn(size_t(N * HD), rng));
  Vec k = representable<T>(randn(size_t(N * KD), rng));
  Vec v = representable<T>(randn(size_t(N * KD), rng));
  Vec out(size_t(N * HD)), att(size_t(B * H * Tn * Tn));
  ops::attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, Tn, H, KVH, D);
  DevT<T> dq(q), dk(k), dv(v), dout(N * HD);
  DevF dlse(B * H * Tn);
  cu::attention_forward<T>(dout.p, dlse.p, dq.p, dk.p, dv.p, B, Tn, H, KVH, D);
  const std::string what = "attention B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                           " H=" + std::to_string(H) + " KVH=" + std::to_string(KVH) + " D=" + std::to_string(D);
  EXPECT_CLOSE_T(T, dout.get(), out, what << " forward");
  // lse against a direct f64 computation.
  Vec lse_ref(size_t(B * H * Tn));
  const double scale = 1.0 / std::sqrt(double(D));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < Tn; i++) {
        std::vector<double> s(size_t(i + 1));
        double mx = -1e300;
        for (int64_t j = 0; j <= i; j++) {
          double acc = 0;
          for (int64_t d = 0; d < D; d++)
            acc += double(q[size_t((b * Tn + i) * HD + h * D + d)]) *
                   double(k[size_t((b * Tn + j) * KD + (h / (H / KVH)) * D + d)]);
          s[size_t(j)] = acc * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double sum = 0;
        for (double x : s) sum += std::exp(x - mx);
        lse_ref[size_t((b * H + h) * Tn + i)] = float(mx + std::log(sum));
      }
  EXPECT_LE(rel_err(dlse.get(), lse_ref), 1e-5) << what << " lse";

  // Backward, with the CPU forward's output as "out" on both sides in f32 mode; in bf16 mode
  // the GPU's own (bf16) output, as a model would use it.
  Vec g = representable<T>(randn(size_t(N * HD), rng));
  Vec gq0 = representable<T>(randn(size_t(N * HD), rng)), gk0 = representable<T>(randn(size_t(N * KD), rng)),
      gv0 = representable<T>(randn(size_t(N * KD), rng));
  Vec gq = gq0, gk = gk0, gv = gv0;
  ops::attention_backward(gq.data(), gk.data(), gv.data(), g.data(), q.data(), k.data(), v.data(), att.data(), B, Tn,
                          H, KVH, D);
  DevT<T> dg(g), dgq(gq0), dgk(gk0), dgv(gv0);
  cu::attention_backward<T>(dgq.p, dgk.p, dgv.p, dg.p, dq.p, dk.p, dv.p, dout.p, dlse.p, B, Tn, H, KVH, D);
  EXPECT_CLOSE_T(T, dgq.get(), gq, what << " dq");
  EXPECT_CLOSE_T(T, dgk.get(), gk, what << " dk");
  EXPECT_CLOSE_T(T, dgv.get(), gv, what << " dv");
}

TEST_F(CudaOps, AttentionF32) {
  check_attention<float>(2, 67, 4, 2, 32);    // partial tiles, GQA 2:1
  check_attention<float>(1, 150, 4, 1, 64);   // several tiles, MQA
  check_attention<float>(2, 40, 2, 2, 128);   // MHA, D 128
  check_attention<float>(1, 1, 2, 1, 64);     // single token
}

TEST_F(CudaOps, AttentionBf16) {
  check_attention<cu::bf16>(2, 67, 4, 2, 32);
  check_attention<cu::bf16>(1, 150, 4, 1, 64);
  check_attention<cu::bf16>(2, 40, 2, 2, 128);
}

// ---- activations -----------------------------------------------------------------------

template <typename T> void check_activations() {
  std::mt19937 rng(7);
  const int64_t n = 10007;
  Vec x = representable<T>(randn(size_t(n), rng, 2.0f));
  Vec u = representable<T>(randn(size_t(n), rng));
  Vec g = representable<T>(randn(size_t(n), rng));
  Vec d0 = representable<T>(randn(size_t(n), rng)), d1 = representable<T>(randn(size_t(n), rng));
  DevT<T> dx(x), du(u), dg(g);
  {
    Vec out(static_cast<size_t>(n));
    ops::gelu_forward(out.data(), x.data(), n);
    DevT<T> dout(n);
    cu::gelu_forward<T>(dout.p, dx.p, n);
    EXPECT_CLOSE_T(T, dout.get(), out, "gelu_forward");
    Vec gx = d0;
    ops::gelu_backward(gx.data(), g.data(), x.data(), n);
    DevT<T> dgx(d0);
    cu::gelu_backward<T>(dgx.p, dg.p, dx.p, n);
    EXPECT_CLOSE_T(T, dgx.get(), gx, "gelu_backward");
  }
  {
    Vec out(static_cast<size_t>(n));
    ops::swiglu_forward(out.data(), x.data(), u.data(), n);
    DevT<T> dout(n);
    cu::swiglu_forward<T>(dout.p, dx.p, du.p, n);
    EXPECT_CLOSE_T(T, dout.get(), out, "swiglu_forward");
    Vec ga = d0, gb = d1;
    ops::swiglu_backward(ga.data(), gb.data(), g.data(), x.data(), u.data(), n);
    DevT<T> dga(d0), dgb(d1);
    cu::swiglu_backward<T>(dga.p, dgb.p, dg.p, dx.p, du.p, n);
    EXPECT_CLOSE_T(T, dga.get(), ga, "swiglu_backward dgate");
    EXPECT_CLOSE_T(T, dgb.get(), gb, "swiglu_backward dup");
  }
  {
    Vec out(static_cast<size_t>(n));
    ops::residual_forward(out.data(), x.data(), u.data(), n);
    DevT<T> dout(n);
    cu::residual_forward<T>(dout.p, dx.p, du.p, n);
    EXPECT_CLOSE_T(T, dout.get(), out, "residual_forward");
    Vec ga = d0, gb = d1;
    ops::residual_backward(ga.data(), gb.data(), g.data(), n);
    DevT<T> dga(d0), dgb(d1);
    cu::residual_backward<T>(dga.p, dgb.p, dg.p, n);
    EXPECT_CLOSE_T(T, dga.get(), ga, "residual_backward da");
    EXPECT_CLOSE_T(T, dgb.get(), gb, "residual_backward db");
  }
}

TEST_F(CudaOps, Activations) {
  check_activations<float>();
  check_activations<cu::bf16>();
}

// ---- loss ----------------------------------------------------------------------------

template <typename T> void check_loss() {
  std::mt19937 rng(8);
  const int64_t N = 13, V = 5003;
  Vec logits = representable<T>(randn(size_t(N * V), rng, 3.0f));
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (auto& t : targets) t = int32_t(rng() % V);
  targets[2] = -1;  // ignored
  Vec dloss = randn(size_t(N), rng);
  Vec losses(static_cast<size_t>(N));
  const double total = ops::cross_entropy_forward(losses.data(), logits.data(), targets.data(), N, V);
  DevT<T> dlog(logits);
  DevI dt(targets);
  DevF dl(N), ddl(dloss);
  cu::cross_entropy_forward<T>(dl.p, dlog.p, dt.p, N, V);
  // Losses are computed from the same (representable) logits in f32 on both sides.
  EXPECT_LE(rel_err(dl.get(), losses), 1e-5) << "cross_entropy_forward " << type_name<T>();
  EXPECT_NEAR(cu::sum(dl.p, N), total, 1e-5 * std::fabs(total));
  Vec grad = logits;
  ops::cross_entropy_backward_inplace(grad.data(), targets.data(), dloss.data(), N, V);
  cu::cross_entropy_backward_inplace<T>(dlog.p, dt.p, ddl.p, N, V);
  EXPECT_CLOSE_T(T, dlog.get(), grad, "cross_entropy_backward_inplace");
  // Fused: loss and gradient (uniform dloss) in one pass.
  Vec grad2 = logits;
  Vec ones(size_t(N), 0.25f);
  ops::cross_entropy_backward_inplace(grad2.data(), targets.data(), ones.data(), N, V);
  DevT<T> dlog2(logits);
  DevF dl2(N);
  cu::cross_entropy_fused<T>(dl2.p, dlog2.p, dt.p, 0.25f, N, V);
  EXPECT_LE(rel_err(dl2.get(), losses), 1e-5) << "cross_entropy_fused loss";
  EXPECT_CLOSE_T(T, dlog2.get(), grad2, "cross_entropy_fused dlogits");
}

TEST_F(CudaOps, CrossEntropy) {
  check_loss<float>();
  check_loss<cu::bf16>();
}

// ---- AdamW -------------------------------------------------------------------------------

TEST_F(CudaOps, AdamWMatchesCpu) {
  std::mt19937 rng(9);
  const int64_t n = 3001;
  Vec p = randn(size_t(n), rng), pc = p;
  AdamW opt;
  Vec gcpu(static_cast<size_t>(n));
  opt.add(pc.data(), gcpu.data(), n);
  DevF dp(p), dg(n), dm(n), dv(n);
  Dev<cu::bf16> dcopy(n);
  for (int step = 1; step <= 4; step++) {
    Vec g = randn(size_t(n), rng, 0.1f);
    gcpu = g;
    opt.step(1e-2, 0.9, 0.999, 1e-8, 0.1);
    cu::upload<float>(dg.p, g.data(), n);
    cu::adamw_step(dp.p, dg.p, dm.p, dv.p, dcopy.p, n, 1e-2, 0.9, 0.999, 1e-8, 0.1, step);
  }
  EXPECT_LE(rel_err(dp.get(), pc), 1e-6) << "adamw params";
  EXPECT_LE(rel_err(dm.get(), opt.m[0]), 1e-6) << "adamw m";
  EXPECT_LE(rel_err(dv.get(), opt.v[0]), 1e-6) << "adamw v";
  Vec copy(static_cast<size_t>(n));
  cu::download<cu::bf16>(copy.data(), dcopy.p, n);
  EXPECT_LE(rel_err(copy, pc), 4e-3) << "adamw bf16 copy";
  double ss = 0;
  for (float x : pc) ss += double(x) * x;
  EXPECT_NEAR(cu::sum_squares(dp.p, n), ss, 1e-5 * ss);
  cu::scale_inplace(dp.p, n, 0.5f);
  EXPECT_NEAR(cu::sum_squares(dp.p, n), 0.25 * ss, 1e-5 * ss);
}

// ---- LoRA gathered shrink / expand -----------------------------------------------------

template <typename T> void check_lora(int64_t r) {
  std::mt19937 rng(unsigned(10 + r));
  const int64_t S = 3, N = 21, in = 96, out = 80;
  Vec x = representable<T>(randn(size_t(N * in), rng));
  Vec A = representable<T>(randn(size_t(S * r * in), rng, 0.1f));   // (S, r, in)
  Vec Bm = representable<T>(randn(size_t(S * out * r), rng, 0.1f)); // (S, out, r)
  Vec y0 = representable<T>(randn(size_t(N * out), rng));
  Vec slot_scale = {0.5f, 2.0f, 1.25f};
  Vec tok_scale(static_cast<size_t>(N));
  std::vector<int32_t> idx(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; n++) {
    idx[size_t(n)] = int32_t(n % 4) - 1;  // -1, 0, 1, 2, -1, ...
    tok_scale[size_t(n)] = 1.0f + 0.1f * float(n % 3);
  }
  // CPU reference per row with ops::gemm: h = x·Aᵀ ; y += s·h·Bᵀ ; g = s·dy·B ; dx += g·A.
  Vec h(size_t(N * r), 0.f), y = y0;
  Vec dy = representable<T>(randn(size_t(N * out), rng));
  Vec g(size_t(N * r), 0.f), dx0 = representable<T>(randn(size_t(N * in), rng)), dx = dx0;
  for (int64_t n = 0; n < N; n++) {
    const int s = idx[size_t(n)];
    if (s < 0) continue;
    const float sc = slot_scale[size_t(s)] * tok_scale[size_t(n)];
    ops::gemm(false, true, 1, r, in, 1.f, x.data() + n * in, A.data() + s * r * in, 0.f, h.data() + n * r);
    ops::gemm(false, true, 1, out, r, sc, h.data() + n * r, Bm.data() + s * out * r, 1.f, y.data() + n * out);
    ops::gemm(false, false, 1, r, out, sc, dy.data() + n * out, Bm.data() + s * out * r, 0.f, g.data() + n * r);
    ops::gemm(false, false, 1, in, r, 1.f, g.data() + n * r, A.data() + s * r * in, 1.f, dx.data() + n * in);
  }
  DevT<T> dxv(x), dA(A), dB(Bm), dh(N * r), dyv(y0), ddy(dy), dg(N * r), ddx(dx0);
  DevF dss(slot_scale), dts(tok_scale);
  DevI didx(idx);
  cu::lora_shrink<T>(dh.p, dxv.p, dA.p, false, didx.p, nullptr, nullptr, N, in, r);
  EXPECT_CLOSE_T(T, dh.get(), h, "lora_shrink r=" << r);
  // Expand from the CPU's h so that only this op's error is measured.
  DevT<T> dhc(representable<T>(h));
  cu::lora_expand<T>(dyv.p, dhc.p, dB.p, false, didx.p, dss.p, dts.p, N, out, r);
  EXPECT_CLOSE_T(T, dyv.get(), y, "lora_expand r=" << r);
  cu::lora_shrink<T>(dg.p, ddy.p, dB.p, true, didx.p, dss.p, dts.p, N, out, r);
  EXPECT_CLOSE_T(T, dg.get(), g, "lora_shrink (w_kr) r=" << r);
  DevT<T> dgc(representable<T>(g));
  cu::lora_expand<T>(ddx.p, dgc.p, dA.p, true, didx.p, nullptr, nullptr, N, in, r);
  EXPECT_CLOSE_T(T, ddx.get(), dx, "lora_expand (w_rm) r=" << r);
}

TEST_F(CudaOps, LoraGathered) {
  for (int64_t r : {4, 8, 16, 40, 64}) {
    check_lora<float>(r);
    check_lora<cu::bf16>(r);
  }
}

TEST_F(CudaOps, ConvertRoundTrip) {
  std::mt19937 rng(11);
  Vec x = randn(1000, rng);
  DevT<cu::bf16> b(x);
  Vec back = b.get();
  for (size_t i = 0; i < x.size(); i++) EXPECT_EQ(back[i], bf16_to_f32(f32_to_bf16(x[i])));
}

}  // namespace
