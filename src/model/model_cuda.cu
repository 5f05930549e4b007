// CudaModel: the forward/backward of model.cpp composed from the CUDA ops (src/ops/cuda).
// The layer code follows Model::forward / Model::backward line by line; see model_cuda.h for
// what differs (stacked adapters with a per-row index, chunked head + loss, recomputation).
#include "model/model_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lowrank {

namespace cu = ops::cuda;

namespace {

// Owned device array of n elements of E (allocated through cu::device_alloc).
template <typename E>
struct DBuf {
  E* p = nullptr;
  int64_t n = 0;
  DBuf() = default;
  DBuf(const DBuf&) = delete;
  DBuf& operator=(const DBuf&) = delete;
  DBuf(DBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; o.n = 0; }
  DBuf& operator=(DBuf&& o) noexcept {
    if (this != &o) { release(); p = o.p; n = o.n; o.p = nullptr; o.n = 0; }
    return *this;
  }
  ~DBuf() { release(); }
  void release() {
    if (p) cu::device_free(p);
    p = nullptr;
    n = 0;
  }
  // (Re)allocates when the size differs; contents undefined.
  void ensure(int64_t count) {
    if (count == n && p) return;
    release();
    p = static_cast<E*>(cu::device_alloc(sizeof(E) * size_t(std::max<int64_t>(count, 1))));
    n = count;
  }
  void zero() { if (p) cu::zero(p, sizeof(E) * size_t(n)); }
};

template <typename E>
void copy_to_device(E* dst, const void* src, size_t bytes) {
  cu::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu::stream()), "copy to device");
}

// Splits qkv (N, 3C) into q, k, v (N, C) each, and the reverse for the gradients.
template <typename T>
__global__ void split_qkv_kernel(T* q, T* k, T* v, const T* qkv, int64_t N, int64_t C) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < N * 3 * C; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / (3 * C), c = e % (3 * C);
    T* dst = c < C ? q : (c < 2 * C ? k : v);
    dst[n * C + c % C] = qkv[e];
  }
}
template <typename T>
__global__ void join_qkv_kernel(T* qkv, const T* q, const T* k, const T* v, int64_t N, int64_t C) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < N * 3 * C; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / (3 * C), c = e % (3 * C);
    const T* src = c < C ? q : (c < 2 * C ? k : v);
    qkv[e] = src[n * C + c % C];
  }
}

unsigned grid_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return unsigned(std::clamp<int64_t>(b, 1, 8192));
}

enum Lin { kQ, kK, kV, kQKV, kO, kFC, kUP, kDOWN, kNumLin };

}  // namespace

struct CudaModel::Impl {
  virtual ~Impl() = default;
  virtual void set_trainable(int slot) = 0;
  virtual double forward_backward(const Batch& batch, float loss_scale) = 0;
  virtual double forward(const Batch& batch) = 0;
  virtual std::vector<float> losses() const = 0;
  virtual void zero_grads() = 0;
  virtual double grad_norm() const = 0;
  virtual void scale_grads(float s) = 0;
  virtual void adamw_step(double lr, double b1, double b2, double eps, double wd) = 0;
  virtual void download_grads(Model& host) const = 0;
  virtual void download_adapter(Model& host) const = 0;
};

namespace {

// The GPU path implements the original llama / GPT-2 block: refuse every part of the model
// description it does not (rather than compute another model).
void check_supported(const ModelConfig& c, const std::string& src) {
  auto no = [&](bool bad, const char* what) {
    if (bad) fail("CUDA model: ", src, ": ", what, " is not implemented on the GPU path (use the CPU)");
  };
  no(c.qk_norm, "q/k norm (Qwen3, Gemma 3)");
  no(c.post_norms, "post-attention / post-FFN norms (Gemma)");
  no(c.norm_offset != 0.f, "(1 + w) RMSNorm (Gemma)");
  no(c.embed_scale != 1.f, "embedding scaling (Gemma)");
  no(c.attn_softcap != 0.f || c.final_softcap != 0.f, "softcapping (Gemma 2)");
  no(c.fused_gate_up, "a fused gate_up projection (Phi-3)");
  no(c.fused_qkv && c.arch != Arch::GPT2, "a fused qkv projection (Phi-3)");
  no(c.gated_ffn && c.act != Activation::SILU, "a GeGLU MLP (Gemma)");
  no(c.q_dim() != c.dim, "a head size other than hidden / heads");
  no(std::fabs(c.attn_scale * std::sqrt(float(c.head_dim)) - 1.f) > 1e-6f, "an attention scale other than 1/sqrt(head_dim)");
  if (c.arch == Arch::LLAMA) {
    no(c.ropes.size() != 1, "per-layer RoPE bases (Gemma 3)");
    no(c.ropes[0].scaling != RopeScaling::NONE || !c.ropes[0].freq_factors.empty() || c.ropes[0].attn_factor != 1.f,
       "RoPE scaling");
    no(c.ropes[0].dim != c.head_dim, "partial rotary embedding");
  }
}

template <typename T>
struct ImplT final : CudaModel::Impl {
  static constexpr bool kBf16 = std::is_same_v<T, cu::bf16>;

  // ---- parameters -----------------------------------------------------------------
  struct LoraDev {
    int64_t r = 0, S = 0;
    DBuf<T> A, B;                 // (S, r, in), (S, out, r) compute copies
    DBuf<float> scale;            // (S) α/r of each slot's target (0 where absent)
    std::vector<float> scale_h;   // host copy
    std::vector<const LoraTarget*> targets;  // per slot, nullptr = not targeted
    // Trainable slot: f32 master weights, gradients and AdamW moments (pointers into the
    // model-wide arenas, so zeroing and the norm are one launch each).
    float *A32 = nullptr, *B32 = nullptr, *dA = nullptr, *dB = nullptr;
    float *mA = nullptr, *vA = nullptr, *mB = nullptr, *vB = nullptr;
  };
  struct LinearDev {
    std::string module;
    int64_t in = 0, out = 0;
    DBuf<T> W_own, bias;
    const T* W = nullptr;                 // W_own.p, or the embedding when tied
    std::unique_ptr<LoraDev> lora;
    bool present() const { return W != nullptr; }
  };
  struct NormDev { DBuf<T> w, b; };
  struct LayerDev {
    NormDev n1, n2;
    LinearDev lin[kNumLin];
  };
  // Per-block activations (all (N, ·) with N = B·T).
  struct Acts {
    DBuf<T> ln1, qkv, q, k, v, atty, resid_mid, ln2, fc, up, act;
    DBuf<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd, lse;
    DBuf<T> h[kNumLin];  // LoRA x·Aᵀ per linear (N, r)
  };

  const ModelConfig cfg;
  const CudaModelOptions opt;
  DBuf<T> wte, wpe;
  std::vector<LayerDev> layers;
  NormDev norm_f;
  LinearDev head;
  int trainable = -1;
  int64_t adam_t = 0;
  int64_t n_slots = 0;
  DBuf<float> arena_w, arena_g, arena_m, arena_v;  // trainable adapter: weights, grads, m, v

  // ---- activations and batch ------------------------------------------------------
  int64_t cap_N = 0;  // activation buffers are sized for this many positions
  std::vector<DBuf<T>> resid;  // L+1 of (N, C)
  std::vector<Acts> acts;      // L (or 1 when recomputing)
  DBuf<T> lnf, dlnf, tmp, dresid, dln, dact, dfc, dup, datty, dq, dk, dv, dqkv, gbuf, logits, hhead;
  DBuf<float> lnf_mean, lnf_rstd, losses_d, tok_scale;
  DBuf<int32_t> ids, targets, pos, idx;
  int64_t cur_B = 0, cur_T = 0;
  bool have_targets = false;

  ImplT(const Model& m, const CudaModelOptions& o) : cfg(m.cfg), opt(o) {
    const ModelConfig& c = cfg;
    check_supported(c, m.source);
    upload_matrix(wte, m.wte);
    if (c.arch == Arch::GPT2) upload_buffer(wpe, m.wpe);
    layers.resize(size_t(c.n_layer));
    for (int64_t l = 0; l < c.n_layer; l++) {
      const Layer& L = m.layers[size_t(l)];
      LayerDev& d = layers[size_t(l)];
      upload_norm(d.n1, L.attn_norm);
      upload_norm(d.n2, L.ffn_norm);
      static const Linear none;
      // GPU slots: fc is the gate of a gated MLP or GPT-2's c_fc; up only exists when gated.
      const Linear* fc = c.gated_ffn ? &L.gate : &L.up;
      const Linear* up = c.gated_ffn ? &L.up : &none;
      const Linear* src[kNumLin] = {&L.q, &L.k, &L.v, &L.qkv, &L.o, fc, up, &L.down};
      for (int i = 0; i < kNumLin; i++)
        if (!src[i]->module.empty()) upload_linear(d.lin[i], *src[i], m);
    }
    upload_norm(norm_f, m.norm_f);
    upload_linear(head, m.lm_head, m);
    cu::scratch_release(3);  // the f32 staging buffer of the uploads
  }

  void upload_floats(DBuf<T>& dst, const float* src, int64_t n) {
    dst.ensure(n);
    cu::upload<T>(dst.p, src, n);
  }
  void upload_buffer(DBuf<T>& dst, const FloatBuffer& b) {
    if (b.n) upload_floats(dst, b.ptr(), b.n);
  }
  void upload_matrix(DBuf<T>& dst, const Matrix& W) {
    if (W.dtype == DType::F32 && !W.transposed) {
      upload_floats(dst, static_cast<const float*>(W.data), W.rows * W.cols);
      return;
    }
    const std::vector<float> f = W.to_f32();  // (rows, cols) logical, any dtype
    upload_floats(dst, f.data(), W.rows * W.cols);
  }
  void upload_norm(NormDev& d, const Norm& n) {
    upload_buffer(d.w, n.w);
    upload_buffer(d.b, n.b);
  }
  void upload_linear(LinearDev& d, const Linear& L, const Model& m) {
    d.module = L.module;
    d.in = L.in;
    d.out = L.out;
    if (&L == &m.lm_head && L.W.data == m.wte.data && L.W_owned.n == 0) {
      d.W = wte.p;  // tied head
    } else if (L.W_owned.n) {
      upload_floats(d.W_own, L.W_owned.ptr(), L.W_owned.n);
      d.W = d.W_own.p;
    } else {
      upload_matrix(d.W_own, L.W);
      d.W = d.W_own.p;
    }
    upload_buffer(d.bias, L.bias);
    // Resident adapters targeting this linear, stacked by slot (rank zero-padded to the max).
    const int64_t S = int64_t(L.lora.size());
    int64_t r = 0;
    for (const LoraTarget* t : L.lora)
      if (t) r = std::max(r, t->r);
    n_slots = std::max(n_slots, S);
    if (r == 0) return;
    if (r > 64) fail("CUDA model: ", L.module, " has LoRA rank ", r, " (at most 64 on the GPU path)");
    auto lo = std::make_unique<LoraDev>();
    lo->r = r;
    lo->S = S;
    lo->targets.assign(L.lora.begin(), L.lora.end());
    std::vector<float> A(size_t(S * r * L.in), 0.f), B(size_t(S * L.out * r), 0.f);
    lo->scale_h.assign(size_t(S), 0.f);
    for (int64_t s = 0; s < S; s++) {
      const LoraTarget* t = L.lora[size_t(s)];
      if (!t) continue;
      lo->scale_h[size_t(s)] = t->scale;
      // A (t.r, in) into rows [0, t.r) of the slot's (r, in); B (out, t.r) into columns [0, t.r).
      std::memcpy(A.data() + s * r * L.in, t->A.ptr(), size_t(t->r * L.in) * 4);
      for (int64_t o = 0; o < L.out; o++)
        std::memcpy(B.data() + (s * L.out + o) * r, t->B.ptr() + o * t->r, size_t(t->r) * 4);
    }
    upload_floats(lo->A, A.data(), int64_t(A.size()));
    upload_floats(lo->B, B.data(), int64_t(B.size()));
    lo->scale.ensure(S);
    cu::upload<float>(lo->scale.p, lo->scale_h.data(), S);
    d.lora = std::move(lo);
  }

  template <typename F>
  void for_each_linear(F&& f) {
    for (LayerDev& L : layers)
      for (LinearDev& d : L.lin)
        if (d.present()) f(d);
    f(head);
  }

  // ---- trainable adapter ----------------------------------------------------------
  void set_trainable(int slot) override {
    trainable = -1;
    adam_t = 0;
    arena_w.release();
    arena_g.release();
    arena_m.release();
    arena_v.release();
    if (slot < 0) return;
    int64_t total = 0;
    for_each_linear([&](LinearDev& d) {
      if (!d.lora || slot >= d.lora->S || !d.lora->targets[size_t(slot)]) return;
      const LoraTarget* t = d.lora->targets[size_t(slot)];
      if (t->r != d.lora->r)
        fail("CUDA model: training ", d.module, " needs every resident adapter on it to have rank ", t->r);
      if (t->dropout > 0.f) fail("CUDA model: LoRA dropout is not supported on the GPU path (", d.module, ")");
      total += t->A.n + t->B.n;
    });
    if (total == 0) fail("CUDA model: adapter slot ", slot, " targets no linear of this model");
    arena_w.ensure(total);
    arena_g.ensure(total);
    arena_m.ensure(total);
    arena_v.ensure(total);
    arena_g.zero();
    arena_m.zero();
    arena_v.zero();
    std::vector<float> w(static_cast<size_t>(total));
    int64_t off = 0;
    for_each_linear([&](LinearDev& d) {
      if (!d.lora || slot >= d.lora->S || !d.lora->targets[size_t(slot)]) return;
      LoraDev& lo = *d.lora;
      const LoraTarget* t = lo.targets[size_t(slot)];
      std::memcpy(w.data() + off, t->A.ptr(), size_t(t->A.n) * 4);
      lo.A32 = arena_w.p + off;
      lo.dA = arena_g.p + off;
      lo.mA = arena_m.p + off;
      lo.vA = arena_v.p + off;
      off += t->A.n;
      std::memcpy(w.data() + off, t->B.ptr(), size_t(t->B.n) * 4);
      lo.B32 = arena_w.p + off;
      lo.dB = arena_g.p + off;
      lo.mB = arena_m.p + off;
      lo.vB = arena_v.p + off;
      off += t->B.n;
    });
    cu::upload<float>(arena_w.p, w.data(), total);
    trainable = slot;
  }

  void zero_grads() override { arena_g.zero(); }
  double grad_norm() const override { return arena_g.p ? std::sqrt(cu::sum_squares(arena_g.p, arena_g.n)) : 0.0; }
  void scale_grads(float s) override {
    if (arena_g.p) cu::scale_inplace(arena_g.p, arena_g.n, s);
  }

  void adamw_step(double lr, double b1, double b2, double eps, double wd) override {
    if (trainable < 0) fail("CUDA model: adamw_step without a trainable adapter");
    adam_t++;
    const int s = trainable;
    for_each_linear([&](LinearDev& d) {
      if (!d.lora || !d.lora->A32) return;
      LoraDev& lo = *d.lora;
      const int64_t nA = lo.r * d.in, nB = d.out * lo.r;
      T* Ac = lo.A.p + int64_t(s) * nA;  // this slot's compute copies
      T* Bc = lo.B.p + int64_t(s) * nB;
      if constexpr (kBf16) {
        cu::adamw_step(lo.A32, lo.dA, lo.mA, lo.vA, Ac, nA, lr, b1, b2, eps, wd, adam_t);
        cu::adamw_step(lo.B32, lo.dB, lo.mB, lo.vB, Bc, nB, lr, b1, b2, eps, wd, adam_t);
      } else {
        cu::adamw_step(lo.A32, lo.dA, lo.mA, lo.vA, nullptr, nA, lr, b1, b2, eps, wd, adam_t);
        cu::adamw_step(lo.B32, lo.dB, lo.mB, lo.vB, nullptr, nB, lr, b1, b2, eps, wd, adam_t);
        cu::check(cudaMemcpyAsync(Ac, lo.A32, size_t(nA) * 4, cudaMemcpyDeviceToDevice, cu::stream()), "A copy");
        cu::check(cudaMemcpyAsync(Bc, lo.B32, size_t(nB) * 4, cudaMemcpyDeviceToDevice, cu::stream()), "B copy");
      }
    });
  }

  void download_pairs(Model& host, bool grads) const {
    if (trainable < 0) fail("CUDA model: no trainable adapter");
    Adapter& a = *host.adapters.at(size_t(trainable));
    if (grads) {
      bool missing = false;
      for (auto& [name, t] : a.targets) missing |= t.dA.n == 0;
      if (missing) a.alloc_grads();
    }
    auto visit = [&](const LinearDev& d) {
      if (!d.lora || !d.lora->A32) return;
      auto it = a.targets.find(d.module);
      if (it == a.targets.end()) fail("CUDA model: host adapter lost target ", d.module);
      LoraTarget& t = it->second;
      cu::download<float>(grads ? t.dA.ptr() : t.A.ptr(), grads ? d.lora->dA : d.lora->A32, t.A.n);
      cu::download<float>(grads ? t.dB.ptr() : t.B.ptr(), grads ? d.lora->dB : d.lora->B32, t.B.n);
    };
    for (const LayerDev& L : layers)
      for (const LinearDev& d : L.lin)
        if (d.present()) visit(d);
    visit(head);
  }
  void download_grads(Model& host) const override { download_pairs(host, true); }
  void download_adapter(Model& host) const override { download_pairs(host, false); }

  // ---- buffers ----------------------------------------------------------------------
  int64_t head_chunk() const {
    if (opt.loss_chunk > 0) return opt.loss_chunk;
    const int64_t bytes = int64_t(128) << 20;
    return std::max<int64_t>(64, bytes / (cfg.vocab * int64_t(sizeof(T))));
  }

  int64_t lora_rank(const LinearDev& d) const { return d.lora ? d.lora->r : 0; }

  void alloc_acts(Acts& a, int64_t N, int l) {
    const ModelConfig& c = cfg;
    const int64_t C = c.dim, F = c.ffn, HD = c.n_head * c.head_dim, KD = c.n_kv_head * c.head_dim;
    a.ln1.ensure(N * C);
    a.ln1_mean.ensure(N);
    a.ln1_rstd.ensure(N);
    if (c.arch == Arch::GPT2) a.qkv.ensure(N * 3 * C);
    a.q.ensure(N * HD);
    a.k.ensure(N * KD);
    a.v.ensure(N * KD);
    a.atty.ensure(N * HD);
    a.lse.ensure(N * c.n_head);
    a.resid_mid.ensure(N * C);
    a.ln2.ensure(N * C);
    a.ln2_mean.ensure(N);
    a.ln2_rstd.ensure(N);
    a.fc.ensure(N * F);
    if (c.arch != Arch::GPT2) a.up.ensure(N * F);
    a.act.ensure(N * F);
    // LoRA h: the max rank of this linear over all layers when shared (recompute).
    for (int i = 0; i < kNumLin; i++) {
      int64_t r = 0;
      if (l >= 0) {
        r = lora_rank(layers[size_t(l)].lin[i]);
      } else {
        for (const LayerDev& L : layers) r = std::max(r, lora_rank(L.lin[i]));
      }
      if (r) a.h[i].ensure(N * r);
    }
  }

  void ensure_capacity(int64_t N) {
    if (N == cap_N) return;
    const ModelConfig& c = cfg;
    const int64_t C = c.dim, F = c.ffn, HD = c.n_head * c.head_dim, KD = c.n_kv_head * c.head_dim;
    resid.resize(size_t(c.n_layer + 1));
    for (auto& r : resid) r.ensure(N * C);
    acts.resize(opt.recompute ? 1 : size_t(c.n_layer));
    for (size_t l = 0; l < acts.size(); l++) alloc_acts(acts[l], N, opt.recompute ? -1 : int(l));
    lnf.ensure(N * C);
    lnf_mean.ensure(N);
    lnf_rstd.ensure(N);
    dlnf.ensure(N * C);
    tmp.ensure(N * C);
    dresid.ensure(N * C);
    dln.ensure(N * C);
    dact.ensure(N * F);
    dfc.ensure(N * F);
    if (c.arch != Arch::GPT2) dup.ensure(N * F);
    datty.ensure(N * HD);
    dq.ensure(N * HD);
    dk.ensure(N * KD);
    dv.ensure(N * KD);
    if (c.arch == Arch::GPT2) dqkv.ensure(N * 3 * C);
    gbuf.ensure(N * 64);
    const int64_t R = std::min(N, head_chunk());
    logits.ensure(R * c.vocab);
    if (head.lora) hhead.ensure(N * head.lora->r);
    losses_d.ensure(N);
    tok_scale.ensure(N);
    ids.ensure(N);
    targets.ensure(N);
    pos.ensure(N);
    idx.ensure(N);
    cap_N = N;
  }

  // Validates the batch on the host (ids, targets, adapters) and copies it to the device.
  void load_batch(const Batch& batch, bool training) {
    const ModelConfig& c = cfg;
    const int64_t B = batch.B, T_ = batch.T, N = B * T_;
    if (N <= 0) fail("batch: empty");
    if (int64_t(batch.ids.size()) != N) fail("batch: ids size ", batch.ids.size(), " != B*T ", N);
    if (c.arch == Arch::GPT2 && T_ > c.max_pos)
      fail("sequence length ", T_, " exceeds the model's ", c.max_pos, " positions");
    for (const LayerSpec& l : c.layers)
      if (l.window > 0 && T_ > l.window)
        fail("CUDA model: sequence length ", T_, " exceeds the sliding window ", l.window, " (not implemented on the GPU)");
    for (int32_t id : batch.ids)
      if (id < 0 || id >= c.vocab) fail("token id ", id, " is outside the vocabulary (", c.vocab, ")");
    have_targets = !batch.targets.empty();
    if (have_targets) {
      if (int64_t(batch.targets.size()) != N) fail("batch: targets size ", batch.targets.size(), " != B*T ", N);
      for (int32_t t : batch.targets)
        if (t >= c.vocab) fail("target ", t, " is >= vocab size ", c.vocab);
    }
    if (training && !have_targets) fail("CUDA model: training needs targets");
    ensure_capacity(N);
    cur_B = B;
    cur_T = T_;
    std::vector<int32_t> p(static_cast<size_t>(N)), ix(static_cast<size_t>(N), -1);
    std::vector<float> ts(static_cast<size_t>(N), 1.f);
    for (int64_t n = 0; n < N; n++) p[size_t(n)] = int32_t(n % T_);
    for (int64_t b = 0; b < B; b++) {
      if (b >= int64_t(batch.row_adapters.size())) break;
      const auto& uses = batch.row_adapters[size_t(b)];
      if (uses.size() > 1) fail("CUDA model: row ", b, " uses ", uses.size(), " adapters (at most one per row here)");
      if (uses.empty()) continue;
      const AdapterUse& u = uses[0];
      if (u.adapter < 0 || u.adapter >= n_slots) continue;
      if (training && trainable >= 0 && u.adapter != trainable)
        fail("CUDA model: training rows may use only the trainable adapter (row ", b, " uses slot ", u.adapter, ")");
      for (int64_t t = 0; t < T_; t++) {
        ix[size_t(b * T_ + t)] = u.adapter;
        ts[size_t(b * T_ + t)] = u.scale;
      }
    }
    copy_to_device(ids.p, batch.ids.data(), size_t(N) * 4);
    if (have_targets) copy_to_device(targets.p, batch.targets.data(), size_t(N) * 4);
    copy_to_device(pos.p, p.data(), size_t(N) * 4);
    copy_to_device(idx.p, ix.data(), size_t(N) * 4);
    copy_to_device(tok_scale.p, ts.data(), size_t(N) * 4);
    cu::synchronize();  // the host vectors above go out of scope
  }

  // ---- layers -----------------------------------------------------------------------
  // y (n, out) = x·Wᵀ + b + Σ LoRA, rows [row0, row0+n) of the batch; h (n, r) saved.
  void lin_fwd(const LinearDev& d, const T* x, T* y, int64_t n, int64_t row0, T* h) {
    cu::linear_forward<T>(y, x, d.W, d.bias.p, n, d.in, d.out);
    if (!d.lora) return;
    const LoraDev& lo = *d.lora;
    // h = tok_scale · x·A[idx]ᵀ ; y += slot_scale · h·B[idx]ᵀ
    cu::lora_shrink<T>(h, x, lo.A.p, false, idx.p + row0, nullptr, tok_scale.p + row0, n, d.in, lo.r);
    cu::lora_expand<T>(y, h, lo.B.p, false, idx.p + row0, lo.scale.p, nullptr, n, d.out, lo.r);
  }

  // dx (n, in) (+)= dy·W + LoRA; dA/dB of the trainable slot +=. overwrite: dx = instead of +=.
  void lin_bwd(const LinearDev& d, const T* x, const T* dy, T* dx, int64_t n, int64_t row0, const T* h,
               bool overwrite) {
    if (dx) cu::gemm<T, T>(false, false, n, d.in, d.out, 1.f, dy, d.W, overwrite ? 0.f : 1.f, dx);
    if (!d.lora) return;
    const LoraDev& lo = *d.lora;
    T* g = gbuf.p;  // (n, r)
    // g = slot_scale · tok_scale · dy·B[idx]
    cu::lora_shrink<T>(g, dy, lo.B.p, true, idx.p + row0, lo.scale.p, tok_scale.p + row0, n, d.out, lo.r);
    if (lo.dA) {
      // Every row uses the trainable slot or none (load_batch checks), and h, g are zero on
      // rows without it: dB (out, r) += s·dyᵀ·h ; dA (r, in) += gᵀ·x.
      const float s = lo.scale_h[size_t(trainable)];
      cu::gemm<T, float>(true, false, d.out, lo.r, n, s, dy, h, 1.f, lo.dB);
      cu::gemm<T, float>(true, false, lo.r, d.in, n, 1.f, g, x, 1.f, lo.dA);
    }
    if (dx) cu::lora_expand<T>(dx, g, lo.A.p, true, idx.p + row0, nullptr, nullptr, n, d.in, lo.r);
  }

  void norm_fwd(const NormDev& nd, T* out, float* mean, float* rstd, const T* x, int64_t N) {
    if (cfg.arch == Arch::GPT2)
      cu::layernorm_forward<T>(out, mean, rstd, x, nd.w.p, nd.b.p, N, cfg.dim, cfg.norm_eps);
    else
      cu::rmsnorm_forward<T>(out, rstd, x, nd.w.p, N, cfg.dim, cfg.norm_eps);
  }
  void norm_bwd(const NormDev& nd, T* dx, const T* dout, const T* x, const float* mean, const float* rstd,
                int64_t N) {
    if (cfg.arch == Arch::GPT2)
      cu::layernorm_backward<T>(dx, nullptr, nullptr, dout, x, nd.w.p, mean, rstd, N, cfg.dim);
    else
      cu::rmsnorm_backward<T>(dx, nullptr, dout, x, nd.w.p, rstd, N, cfg.dim);
  }

  Acts& acts_for(int64_t l) { return acts[opt.recompute ? 0 : size_t(l)]; }

  void block_forward(int64_t l, const T* x, T* out) {
    const ModelConfig& c = cfg;
    const int64_t B = cur_B, T_ = cur_T, N = B * T_, C = c.dim, F = c.ffn;
    const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim;
    LayerDev& L = layers[size_t(l)];
    Acts& a = acts_for(l);
    norm_fwd(L.n1, a.ln1.p, a.ln1_mean.p, a.ln1_rstd.p, x, N);
    if (c.arch == Arch::GPT2) {
      lin_fwd(L.lin[kQKV], a.ln1.p, a.qkv.p, N, 0, a.h[kQKV].p);
      split_qkv_kernel<T><<<grid_for(N * 3 * C), 256, 0, cu::stream()>>>(a.q.p, a.k.p, a.v.p, a.qkv.p, N, C);
      cu::detail::check_launch("split_qkv");
    } else {
      lin_fwd(L.lin[kQ], a.ln1.p, a.q.p, N, 0, a.h[kQ].p);
      lin_fwd(L.lin[kK], a.ln1.p, a.k.p, N, 0, a.h[kK].p);
      lin_fwd(L.lin[kV], a.ln1.p, a.v.p, N, 0, a.h[kV].p);
      cu::rope_forward<T>(a.q.p, pos.p, N, H, D, c.ropes[0].theta, true);
      cu::rope_forward<T>(a.k.p, pos.p, N, KVH, D, c.ropes[0].theta, true);
    }
    cu::attention_forward<T>(a.atty.p, a.lse.p, a.q.p, a.k.p, a.v.p, B, T_, H, KVH, D);
    lin_fwd(L.lin[kO], a.atty.p, tmp.p, N, 0, a.h[kO].p);
    cu::residual_forward<T>(a.resid_mid.p, x, tmp.p, N * C);
    norm_fwd(L.n2, a.ln2.p, a.ln2_mean.p, a.ln2_rstd.p, a.resid_mid.p, N);
    lin_fwd(L.lin[kFC], a.ln2.p, a.fc.p, N, 0, a.h[kFC].p);
    if (c.arch == Arch::GPT2) {
      cu::gelu_forward<T>(a.act.p, a.fc.p, N * F);
    } else {
      lin_fwd(L.lin[kUP], a.ln2.p, a.up.p, N, 0, a.h[kUP].p);
      cu::swiglu_forward<T>(a.act.p, a.fc.p, a.up.p, N * F);
    }
    lin_fwd(L.lin[kDOWN], a.act.p, tmp.p, N, 0, a.h[kDOWN].p);
    cu::residual_forward<T>(out, a.resid_mid.p, tmp.p, N * C);
  }

  // dresid (N, C): gradient of the block output in, of the block input out.
  void block_backward(int64_t l, const T* x) {
    const ModelConfig& c = cfg;
    const int64_t B = cur_B, T_ = cur_T, N = B * T_, C = c.dim, F = c.ffn;
    const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim;
    LayerDev& L = layers[size_t(l)];
    Acts& a = acts_for(l);
    // MLP: resid_out = resid_mid + down(act(fc(ln2(resid_mid))))
    lin_bwd(L.lin[kDOWN], a.act.p, dresid.p, dact.p, N, 0, a.h[kDOWN].p, true);
    dfc.zero();
    if (c.arch == Arch::GPT2) {
      cu::gelu_backward<T>(dfc.p, dact.p, a.fc.p, N * F);
      lin_bwd(L.lin[kFC], a.ln2.p, dfc.p, dln.p, N, 0, a.h[kFC].p, true);
    } else {
      dup.zero();
      cu::swiglu_backward<T>(dfc.p, dup.p, dact.p, a.fc.p, a.up.p, N * F);
      lin_bwd(L.lin[kUP], a.ln2.p, dup.p, dln.p, N, 0, a.h[kUP].p, true);
      lin_bwd(L.lin[kFC], a.ln2.p, dfc.p, dln.p, N, 0, a.h[kFC].p, false);
    }
    norm_bwd(L.n2, dresid.p, dln.p, a.resid_mid.p, a.ln2_mean.p, a.ln2_rstd.p, N);
    // Attention: resid_mid = resid_in + o(attn(q, k, v))
    lin_bwd(L.lin[kO], a.atty.p, dresid.p, datty.p, N, 0, a.h[kO].p, true);
    dq.zero();
    dk.zero();
    dv.zero();
    cu::attention_backward<T>(dq.p, dk.p, dv.p, datty.p, a.q.p, a.k.p, a.v.p, a.atty.p, a.lse.p, B, T_, H, KVH, D);
    if (c.arch == Arch::GPT2) {
      join_qkv_kernel<T><<<grid_for(N * 3 * C), 256, 0, cu::stream()>>>(dqkv.p, dq.p, dk.p, dv.p, N, C);
      cu::detail::check_launch("join_qkv");
      lin_bwd(L.lin[kQKV], a.ln1.p, dqkv.p, dln.p, N, 0, a.h[kQKV].p, true);
    } else {
      cu::rope_backward<T>(dq.p, pos.p, N, H, D, c.ropes[0].theta, true);
      cu::rope_backward<T>(dk.p, pos.p, N, KVH, D, c.ropes[0].theta, true);
      lin_bwd(L.lin[kQ], a.ln1.p, dq.p, dln.p, N, 0, a.h[kQ].p, true);
      lin_bwd(L.lin[kK], a.ln1.p, dk.p, dln.p, N, 0, a.h[kK].p, false);
      lin_bwd(L.lin[kV], a.ln1.p, dv.p, dln.p, N, 0, a.h[kV].p, false);
    }
    norm_bwd(L.n1, dresid.p, dln.p, x, a.ln1_mean.p, a.ln1_rstd.p, N);
  }

  void embed_and_blocks() {
    const ModelConfig& c = cfg;
    const int64_t N = cur_B * cur_T;
    cu::embedding_forward<T>(resid[0].p, ids.p, wte.p, N, c.vocab, c.dim);
    if (c.arch == Arch::GPT2) cu::position_add<T>(resid[0].p, wpe.p, pos.p, N, c.dim);
    for (int64_t l = 0; l < c.n_layer; l++) block_forward(l, resid[size_t(l)].p, resid[size_t(l + 1)].p);
    norm_fwd(norm_f, lnf.p, lnf_mean.p, lnf_rstd.p, resid[size_t(c.n_layer)].p, N);
  }

  // Head + loss on row chunks; with grad, each chunk's dlogits go straight into dlnf.
  void head_and_loss(bool grad, float loss_scale) {
    const ModelConfig& c = cfg;
    const int64_t N = cur_B * cur_T, C = c.dim, V = c.vocab;
    const int64_t R = std::min(N, head_chunk());
    const int64_t r = head.lora ? head.lora->r : 0;
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      T* hh = r ? hhead.p + r0 * r : nullptr;
      lin_fwd(head, lnf.p + r0 * C, logits.p, n, r0, hh);
      if (!have_targets) continue;
      if (grad) {
        cu::cross_entropy_fused<T>(losses_d.p + r0, logits.p, targets.p + r0, loss_scale, n, V);
        lin_bwd(head, lnf.p + r0 * C, logits.p, dlnf.p + r0 * C, n, r0, hh, true);
      } else {
        cu::cross_entropy_forward<T>(losses_d.p + r0, logits.p, targets.p + r0, n, V);
      }
    }
  }

  double forward_backward(const Batch& batch, float loss_scale) override {
    load_batch(batch, true);
    const ModelConfig& c = cfg;
    const int64_t N = cur_B * cur_T;
    embed_and_blocks();
    head_and_loss(true, loss_scale);
    dresid.zero();
    norm_bwd(norm_f, dresid.p, dlnf.p, resid[size_t(c.n_layer)].p, lnf_mean.p, lnf_rstd.p, N);
    for (int64_t l = c.n_layer - 1; l >= 0; l--) {
      if (opt.recompute) block_forward(l, resid[size_t(l)].p, tmp.p);  // refills the shared acts
      block_backward(l, resid[size_t(l)].p);
    }
    return cu::sum(losses_d.p, N);
  }

  double forward(const Batch& batch) override {
    load_batch(batch, false);
    embed_and_blocks();
    head_and_loss(false, 0.f);
    if (!have_targets) {
      cu::synchronize();
      return 0.0;
    }
    return cu::sum(losses_d.p, cur_B * cur_T);
  }

  std::vector<float> losses() const override {
    const int64_t N = cur_B * cur_T;
    std::vector<float> h(static_cast<size_t>(N), 0.f);
    if (have_targets && N > 0) cu::download<float>(h.data(), losses_d.p, N);
    return h;
  }
};

}  // namespace

CudaModel::CudaModel(const Model& host, const CudaModelOptions& opt) {
  std::string why;
  if (!cu::device_available(&why)) fail("CUDA model: no usable CUDA device (", why, ")");
  if (opt.bf16)
    impl_ = std::make_unique<ImplT<cu::bf16>>(host, opt);
  else
    impl_ = std::make_unique<ImplT<float>>(host, opt);
}
CudaModel::~CudaModel() = default;

void CudaModel::set_trainable(int slot) { impl_->set_trainable(slot); }
double CudaModel::forward_backward(const Batch& b, float s) { return impl_->forward_backward(b, s); }
double CudaModel::forward(const Batch& b) { return impl_->forward(b); }
std::vector<float> CudaModel::losses() const { return impl_->losses(); }
void CudaModel::zero_grads() { impl_->zero_grads(); }
double CudaModel::grad_norm() const { return impl_->grad_norm(); }
void CudaModel::scale_grads(float s) { impl_->scale_grads(s); }
void CudaModel::adamw_step(double lr, double b1, double b2, double eps, double wd) {
  impl_->adamw_step(lr, b1, b2, eps, wd);
}
void CudaModel::download_grads(Model& host) const { impl_->download_grads(host); }
void CudaModel::download_adapter(Model& host) const { impl_->download_adapter(host); }
size_t CudaModel::bytes_in_use() { return cu::device_bytes_in_use(); }
size_t CudaModel::bytes_peak() { return cu::device_bytes_peak(); }
void CudaModel::reset_peak() { cu::reset_peak(); }

}  // namespace lowrank
