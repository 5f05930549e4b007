#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"
#include "ops/cpu/qmatmul.h"

namespace lowrank {

namespace {

void ensure(std::vector<float>& v, size_t n) {
  if (v.size() != n) v.assign(n, 0.f);
}

// Rows [row0, row0+rows) of the batch that share one adapter list.
struct RowGroup { int64_t row0, rows; const std::vector<AdapterUse>* uses; };

std::vector<RowGroup> group_rows(const std::vector<std::vector<AdapterUse>>& row_adapters, int64_t B, int64_t T) {
  std::vector<RowGroup> groups;
  static const std::vector<AdapterUse> none;
  for (int64_t b = 0; b < B; b++) {
    const std::vector<AdapterUse>* u = b < int64_t(row_adapters.size()) ? &row_adapters[size_t(b)] : &none;
    bool same = !groups.empty() && groups.back().uses->size() == u->size() &&
                std::equal(u->begin(), u->end(), groups.back().uses->begin(),
                           [](const AdapterUse& x, const AdapterUse& y) {
                             return x.adapter == y.adapter && x.scale == y.scale;
                           });
    if (same)
      groups.back().rows += T;
    else
      groups.push_back({b * T, T, u});
  }
  return groups;
}

// splitmix64: a counter-based generator for reproducible dropout masks.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

// ---- adapters -----------------------------------------------------------------------

std::vector<Linear*> Model::linears() {
  std::vector<Linear*> out;
  for (Layer& L : layers) {
    for (Linear* p : {&L.q, &L.k, &L.v, &L.qkv, &L.o, &L.fc, &L.up, &L.down})
      if (!p->module.empty()) out.push_back(p);
  }
  out.push_back(&lm_head);
  return out;
}

void Model::rebuild_lora_links() {
  for (Linear* L : linears()) {
    L->lora.assign(adapters.size(), nullptr);
    for (size_t a = 0; a < adapters.size(); a++) {
      if (!adapters[a]) continue;
      auto it = adapters[a]->targets.find(L->module);
      if (it != adapters[a]->targets.end()) L->lora[a] = &it->second;
    }
  }
}

int Model::add_adapter(std::shared_ptr<Adapter> a) {
  std::map<std::string, Linear*> by_module;
  for (Linear* L : linears()) by_module[L->module] = L;
  for (auto& [module, t] : a->targets) {
    auto it = by_module.find(module);
    if (it == by_module.end())
      fail("adapter ", a->name, ": target module ", module, " does not exist in model ", source);
    const Linear* L = it->second;
    if (t.A.shape != std::vector<int64_t>{t.r, L->in})
      fail("adapter ", a->name, ": ", module, ".lora_A.weight: expected shape ",
           shape_str({t.r, L->in}), " but found ", shape_str(t.A.shape));
    if (t.B.shape != std::vector<int64_t>{L->out, t.r})
      fail("adapter ", a->name, ": ", module, ".lora_B.weight: expected shape ",
           shape_str({L->out, t.r}), " but found ", shape_str(t.B.shape));
    t.in = L->in;
    t.out = L->out;
  }
  int slot = -1;
  for (size_t i = 0; i < adapters.size(); i++)
    if (!adapters[i]) { slot = int(i); break; }
  if (slot < 0) {
    slot = int(adapters.size());
    adapters.push_back(nullptr);
  }
  adapters[size_t(slot)] = std::move(a);
  rebuild_lora_links();
  return slot;
}

void Model::remove_adapter(int slot) {
  if (slot < 0 || slot >= int(adapters.size())) return;
  adapters[size_t(slot)].reset();
  if (trainable_adapter == slot) trainable_adapter = -1;
  rebuild_lora_links();
}

int64_t Model::num_parameters() const {
  int64_t n = wte.rows * wte.cols + wpe.n + norm_f.w.n + norm_f.b.n;
  for (const Layer& L : layers) {
    n += L.norm1.w.n + L.norm1.b.n + L.norm2.w.n + L.norm2.b.n;
    for (const Linear* p : {&L.q, &L.k, &L.v, &L.qkv, &L.o, &L.fc, &L.up, &L.down})
      if (!p->module.empty()) n += p->in * p->out + p->bias.n;
  }
  if (!cfg.tied) n += lm_head.in * lm_head.out;
  return n;
}

// ---- linear with LoRA ---------------------------------------------------------------

void Model::linear_forward(Linear& L, const float* x, float* y, int64_t B, int64_t T,
                           const std::vector<std::vector<AdapterUse>>& row_adapters, bool training,
                           LinearSaved* saved) {
  const int64_t N = B * T;
  const float* bias = L.bias.n ? L.bias.ptr() : nullptr;
  // Decode-sized inference on a quantized base runs the integer-dot kernels (activations
  // quantized per block, as llama.cpp does); training and prefill keep the f32 tile path.
  if (training || N > 16 || !dtype_is_quantized(L.W.dtype) ||
      !ops::quant_linear_forward(y, x, L.W, bias, N))
    ops::linear_forward(y, x, L.W, bias, N);
  if (saved) saved->uses.clear();
  if (L.lora.empty()) return;
  std::vector<float> h_tmp, xd_tmp;
  for (const RowGroup& g : group_rows(row_adapters, B, T)) {
    for (const AdapterUse& use : *g.uses) {
      if (use.adapter < 0 || use.adapter >= int(L.lora.size())) continue;
      LoraTarget* t = L.lora[size_t(use.adapter)];
      if (!t) continue;
      const float s = use.scale * t->scale;
      const float* xin = x + g.row0 * L.in;  // (rows, in)
      LoraSaved local;
      LoraSaved& ls = saved ? saved->uses.emplace_back() : local;
      ls.t = t;
      ls.row0 = g.row0;
      ls.rows = g.rows;
      ls.s = s;
      if (training && t->dropout > 0.f) {
        // Dropout on the input of A: keep with probability 1-p, scaled by 1/(1-p).
        ls.mask.resize(size_t(g.rows * L.in));
        xd_tmp.resize(ls.mask.size());
        const float keep = 1.f / (1.f - t->dropout);
        const uint64_t base = mix64(dropout_seed ^ mix64(dropout_step_++));
        for (size_t i = 0; i < ls.mask.size(); i++) {
          double u = double(mix64(base + i) >> 11) * (1.0 / 9007199254740992.0);
          ls.mask[i] = u < t->dropout ? 0.f : keep;
          xd_tmp[i] = xin[i] * ls.mask[i];
        }
        xin = xd_tmp.data();
      }
      ls.h.resize(size_t(g.rows * t->r));
      // h (rows, r) = x_d (rows, in) · Aᵀ
      ops::gemm(false, true, g.rows, t->r, L.in, 1.f, xin, t->A.ptr(), 0.f, ls.h.data());
      // y (rows, out) += s · h · Bᵀ
      ops::gemm(false, true, g.rows, L.out, t->r, s, ls.h.data(), t->B.ptr(), 1.f, y + g.row0 * L.out);
    }
  }
}

void Model::linear_backward(Linear& L, const float* x, const float* dy, float* dx, int64_t N,
                            LinearSaved& saved) {
  // Frozen path: dx += dy · W.
  if (dx) ops::linear_backward_input(dx, dy, L.W, N);
  if (full_finetune && L.dW.n)
    ops::linear_backward_weight(L.dW.ptr(), L.dbias.n ? L.dbias.ptr() : nullptr, dy, x, N, L.in, L.out);
  std::vector<float> g, gA;
  for (LoraSaved& ls : saved.uses) {
    LoraTarget* t = ls.t;
    const float* dyr = dy + ls.row0 * L.out;  // (rows, out)
    const float* xr = x + ls.row0 * L.in;     // (rows, in)
    g.assign(size_t(ls.rows * t->r), 0.f);
    // g (rows, r) = s · dy · B
    ops::gemm(false, false, ls.rows, t->r, L.out, ls.s, dyr, t->B.ptr(), 0.f, g.data());
    const bool trainable = t->dA.n > 0;  // only the adapter being trained has gradients
    std::vector<float> xd;
    if (!ls.mask.empty()) {
      xd.resize(ls.mask.size());
      for (size_t i = 0; i < xd.size(); i++) xd[i] = xr[i] * ls.mask[i];
      xr = xd.data();
    }
    if (trainable) {
      // dB (out, r) += s · dyᵀ · h ; dA (r, in) += gᵀ · x_d
      ops::gemm(true, false, L.out, t->r, ls.rows, ls.s, dyr, ls.h.data(), 1.f, t->dB.ptr());
      ops::gemm(true, false, t->r, L.in, ls.rows, 1.f, g.data(), xr, 1.f, t->dA.ptr());
    }
    if (dx) {
      float* dxr = dx + ls.row0 * L.in;
      if (ls.mask.empty()) {
        // dx (rows, in) += g · A
        ops::gemm(false, false, ls.rows, L.in, t->r, 1.f, g.data(), t->A.ptr(), 1.f, dxr);
      } else {
        gA.assign(size_t(ls.rows * L.in), 0.f);
        ops::gemm(false, false, ls.rows, L.in, t->r, 1.f, g.data(), t->A.ptr(), 0.f, gA.data());
        for (size_t i = 0; i < gA.size(); i++) dxr[i] += gA[i] * ls.mask[i];
      }
    }
  }
}

void Model::norm_forward(const Norm& n, float* out, float* mean, float* rstd, const float* x, int64_t N) {
  if (cfg.arch == Arch::GPT2)
    ops::layernorm_forward(out, mean, rstd, x, n.w.ptr(), n.b.ptr(), N, cfg.dim, cfg.norm_eps);
  else
    ops::rmsnorm_forward(out, rstd, x, n.w.ptr(), N, cfg.dim, cfg.norm_eps);
}

void Model::norm_backward(Norm& n, float* dx, const float* dout, const float* x, const float* mean,
                          const float* rstd, int64_t N) {
  float* dw = full_finetune && n.dw.n ? n.dw.ptr() : nullptr;
  if (cfg.arch == Arch::GPT2) {
    float* db = full_finetune && n.db.n ? n.db.ptr() : nullptr;
    ops::layernorm_backward(dx, dw, db, dout, x, n.w.ptr(), mean, rstd, N, cfg.dim);
  } else {
    ops::rmsnorm_backward(dx, dw, dout, x, n.w.ptr(), rstd, N, cfg.dim);
  }
}

// ---- forward ------------------------------------------------------------------------

double Model::forward(const Batch& batch, bool training) {
  const ModelConfig& c = cfg;
  const int64_t B = batch.B, T = batch.T, N = B * T, C = c.dim, V = c.vocab, F = c.ffn;
  const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim, HD = H * D, KD = KVH * D;
  if (int64_t(batch.ids.size()) != N) fail("batch: ids size ", batch.ids.size(), " != B*T ", N);
  if (c.arch == Arch::GPT2 && T > c.max_pos)
    fail("sequence length ", T, " exceeds the model's ", c.max_pos, " positions");
  for (int32_t id : batch.ids)
    if (id < 0 || id >= V) fail("token id ", id, " is outside the vocabulary (", V, ")");
  batch_ = batch;
  have_batch_ = true;
  pos_.resize(size_t(N));
  for (int64_t n = 0; n < N; n++) pos_[size_t(n)] = int32_t(n % T);

  resid_.resize(size_t(c.n_layer + 1));
  for (auto& r : resid_) ensure(r, size_t(N * C));
  acts_.resize(size_t(c.n_layer));

  // Embedding (+ learned positions).
  ops::embedding_forward(resid_[0].data(), batch.ids.data(), wte, N);
  if (c.arch == Arch::GPT2)
    for (int64_t n = 0; n < N; n++) {
      float* r = resid_[0].data() + n * C;
      const float* p = wpe.ptr() + pos_[size_t(n)] * C;
      for (int64_t i = 0; i < C; i++) r[i] += p[i];
    }

  std::vector<float> tmp(size_t(N * C));  // (N, C) projection outputs
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = layers[size_t(l)];
    LayerActs& a = acts_[size_t(l)];
    const float* x = resid_[size_t(l)].data();
    ensure(a.ln1, size_t(N * C));
    ensure(a.ln1_mean, size_t(N));
    ensure(a.ln1_rstd, size_t(N));
    norm_forward(L.norm1, a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, N);
    ensure(a.q, size_t(N * HD));
    ensure(a.k, size_t(N * KD));
    ensure(a.v, size_t(N * KD));
    if (c.arch == Arch::GPT2) {
      ensure(a.qkv, size_t(N * 3 * C));
      linear_forward(L.qkv, a.ln1.data(), a.qkv.data(), B, T, batch.row_adapters, training, &a.s_qkv);
      for (int64_t n = 0; n < N; n++) {
        const float* row = a.qkv.data() + n * 3 * C;
        std::memcpy(a.q.data() + n * C, row, size_t(C) * 4);
        std::memcpy(a.k.data() + n * C, row + C, size_t(C) * 4);
        std::memcpy(a.v.data() + n * C, row + 2 * C, size_t(C) * 4);
      }
    } else {
      linear_forward(L.q, a.ln1.data(), a.q.data(), B, T, batch.row_adapters, training, &a.s_q);
      linear_forward(L.k, a.ln1.data(), a.k.data(), B, T, batch.row_adapters, training, &a.s_k);
      linear_forward(L.v, a.ln1.data(), a.v.data(), B, T, batch.row_adapters, training, &a.s_v);
      ops::rope_forward(a.q.data(), pos_.data(), N, H, D, c.rope_theta, c.rope_half);
      ops::rope_forward(a.k.data(), pos_.data(), N, KVH, D, c.rope_theta, c.rope_half);
    }
    ensure(a.att, size_t(B * H * T * T));
    ensure(a.atty, size_t(N * HD));
    ops::attention_forward(a.atty.data(), a.att.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, KVH, D);
    linear_forward(L.o, a.atty.data(), tmp.data(), B, T, batch.row_adapters, training, &a.s_o);
    ensure(a.resid_mid, size_t(N * C));
    ops::residual_forward(a.resid_mid.data(), x, tmp.data(), N * C);
    ensure(a.ln2, size_t(N * C));
    ensure(a.ln2_mean, size_t(N));
    ensure(a.ln2_rstd, size_t(N));
    norm_forward(L.norm2, a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.resid_mid.data(), N);
    ensure(a.fc, size_t(N * F));
    ensure(a.act, size_t(N * F));
    linear_forward(L.fc, a.ln2.data(), a.fc.data(), B, T, batch.row_adapters, training, &a.s_fc);
    if (c.arch == Arch::GPT2) {
      ops::gelu_forward(a.act.data(), a.fc.data(), N * F);
    } else {
      ensure(a.up, size_t(N * F));
      linear_forward(L.up, a.ln2.data(), a.up.data(), B, T, batch.row_adapters, training, &a.s_up);
      ops::swiglu_forward(a.act.data(), a.fc.data(), a.up.data(), N * F);
    }
    linear_forward(L.down, a.act.data(), tmp.data(), B, T, batch.row_adapters, training, &a.s_down);
    ops::residual_forward(resid_[size_t(l + 1)].data(), a.resid_mid.data(), tmp.data(), N * C);
  }
  ensure(lnf_, size_t(N * C));
  ensure(lnf_mean_, size_t(N));
  ensure(lnf_rstd_, size_t(N));
  norm_forward(norm_f, lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), resid_[size_t(c.n_layer)].data(), N);
  if (logits_.size() != size_t(N * V)) logits_.assign(size_t(N * V), 0.f);
  linear_forward(lm_head, lnf_.data(), logits_.data(), B, T, batch.row_adapters, training, &s_head_);
  ensure(losses_, size_t(N));
  const int32_t* targets = batch.targets.empty() ? nullptr : batch.targets.data();
  if (!targets) {
    std::fill(losses_.begin(), losses_.end(), 0.f);
    return 0.0;
  }
  return ops::cross_entropy_forward(losses_.data(), logits_.data(), targets, N, V);
}

// ---- backward -----------------------------------------------------------------------

void Model::backward(float loss_scale) {
  if (!have_batch_) fail("backward called without a forward");
  const Batch& batch = batch_;
  const ModelConfig& c = cfg;
  const int64_t B = batch.B, T = batch.T, N = B * T, C = c.dim, V = c.vocab, F = c.ffn;
  const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim, HD = H * D, KD = KVH * D;
  std::vector<float> dloss(size_t(N), loss_scale);
  // logits (N, V) become dlogits in place.
  ops::cross_entropy_backward_inplace(logits_.data(), batch.targets.data(), dloss.data(), N, V);
  std::vector<float> dlnf(size_t(N * C), 0.f);
  linear_backward(lm_head, lnf_.data(), logits_.data(), dlnf.data(), N, s_head_);
  std::vector<float> dresid(size_t(N * C), 0.f);  // (N, C) gradient of the residual stream
  norm_backward(norm_f, dresid.data(), dlnf.data(), resid_[size_t(c.n_layer)].data(), lnf_mean_.data(),
                lnf_rstd_.data(), N);
  std::vector<float> dln(size_t(N * C));   // (N, C)
  std::vector<float> dact(size_t(N * F));  // (N, F)
  std::vector<float> dfc(size_t(N * F));   // (N, F)
  std::vector<float> dup(size_t(N * F));   // (N, F)
  std::vector<float> datty(size_t(N * HD));
  std::vector<float> dq(size_t(N * HD)), dk(size_t(N * KD)), dv(size_t(N * KD));
  std::vector<float> dqkv;
  for (int64_t l = c.n_layer - 1; l >= 0; l--) {
    Layer& L = layers[size_t(l)];
    LayerActs& a = acts_[size_t(l)];
    // MLP: resid_out = resid_mid + down(act(fc(ln2(resid_mid))))
    std::fill(dact.begin(), dact.end(), 0.f);
    linear_backward(L.down, a.act.data(), dresid.data(), dact.data(), N, a.s_down);
    std::fill(dfc.begin(), dfc.end(), 0.f);
    std::fill(dln.begin(), dln.end(), 0.f);
    if (c.arch == Arch::GPT2) {
      ops::gelu_backward(dfc.data(), dact.data(), a.fc.data(), N * F);
    } else {
      std::fill(dup.begin(), dup.end(), 0.f);
      ops::swiglu_backward(dfc.data(), dup.data(), dact.data(), a.fc.data(), a.up.data(), N * F);
      linear_backward(L.up, a.ln2.data(), dup.data(), dln.data(), N, a.s_up);
    }
    linear_backward(L.fc, a.ln2.data(), dfc.data(), dln.data(), N, a.s_fc);
    norm_backward(L.norm2, dresid.data(), dln.data(), a.resid_mid.data(), a.ln2_mean.data(), a.ln2_rstd.data(), N);
    // Attention: resid_mid = resid_in + o(attn(q, k, v))
    std::fill(datty.begin(), datty.end(), 0.f);
    linear_backward(L.o, a.atty.data(), dresid.data(), datty.data(), N, a.s_o);
    std::fill(dq.begin(), dq.end(), 0.f);
    std::fill(dk.begin(), dk.end(), 0.f);
    std::fill(dv.begin(), dv.end(), 0.f);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), datty.data(), a.q.data(), a.k.data(), a.v.data(),
                            a.att.data(), B, T, H, KVH, D);
    std::fill(dln.begin(), dln.end(), 0.f);
    if (c.arch == Arch::GPT2) {
      dqkv.resize(size_t(N * 3 * C));
      for (int64_t n = 0; n < N; n++) {
        float* row = dqkv.data() + n * 3 * C;
        std::memcpy(row, dq.data() + n * C, size_t(C) * 4);
        std::memcpy(row + C, dk.data() + n * C, size_t(C) * 4);
        std::memcpy(row + 2 * C, dv.data() + n * C, size_t(C) * 4);
      }
      linear_backward(L.qkv, a.ln1.data(), dqkv.data(), dln.data(), N, a.s_qkv);
    } else {
      ops::rope_backward(dq.data(), pos_.data(), N, H, D, c.rope_theta, c.rope_half);
      ops::rope_backward(dk.data(), pos_.data(), N, KVH, D, c.rope_theta, c.rope_half);
      linear_backward(L.q, a.ln1.data(), dq.data(), dln.data(), N, a.s_q);
      linear_backward(L.k, a.ln1.data(), dk.data(), dln.data(), N, a.s_k);
      linear_backward(L.v, a.ln1.data(), dv.data(), dln.data(), N, a.s_v);
    }
    norm_backward(L.norm1, dresid.data(), dln.data(), resid_[size_t(l)].data(), a.ln1_mean.data(),
                  a.ln1_rstd.data(), N);
  }
  if (full_finetune) {
    ops::embedding_backward(dwte.ptr(), dresid.data(), batch.ids.data(), N, C);
    if (c.arch == Arch::GPT2)
      for (int64_t n = 0; n < N; n++) {
        float* d = dwpe.ptr() + pos_[size_t(n)] * C;
        const float* g = dresid.data() + n * C;
        for (int64_t i = 0; i < C; i++) d[i] += g[i];
      }
  }
}

// ---- inference with KV cache ------------------------------------------------------------

KVCache Model::new_cache(int64_t capacity) const {
  KVCache kv;
  kv.capacity = capacity;
  kv.k.resize(size_t(cfg.n_layer));
  kv.v.resize(size_t(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; l++) {
    kv.k[size_t(l)].assign(size_t(capacity * cfg.n_kv_head * cfg.head_dim), 0.f);
    kv.v[size_t(l)].assign(size_t(capacity * cfg.n_kv_head * cfg.head_dim), 0.f);
  }
  return kv;
}

std::vector<float> Model::forward_cached(const std::vector<int32_t>& ids, KVCache& cache,
                                         const std::vector<AdapterUse>& uses) {
  const ModelConfig& c = cfg;
  const int64_t T = int64_t(ids.size()), C = c.dim, V = c.vocab, F = c.ffn;
  const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim, HD = H * D, KD = KVH * D;
  const int64_t start = cache.len;
  if (T == 0) fail("forward_cached: no tokens");
  if (start + T > cache.capacity) fail("KV cache full: ", start + T, " > ", cache.capacity, " positions");
  if (c.arch == Arch::GPT2 && start + T > c.max_pos)
    fail("sequence length ", start + T, " exceeds the model's ", c.max_pos, " positions");
  for (int32_t id : ids)
    if (id < 0 || id >= V) fail("token id ", id, " is outside the vocabulary (", V, ")");
  std::vector<std::vector<AdapterUse>> rows{uses};
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; t++) pos[size_t(t)] = int32_t(start + t);
  std::vector<float> x(size_t(T * C)), ln(size_t(T * C)), tmp(size_t(T * C));
  std::vector<float> mean(static_cast<size_t>(T)), rstd(static_cast<size_t>(T));
  std::vector<float> q(size_t(T * HD)), k(size_t(T * KD)), v(size_t(T * KD)), atty(size_t(T * HD));
  std::vector<float> qkv, fc(size_t(T * F)), up, act(size_t(T * F));
  ops::embedding_forward(x.data(), ids.data(), wte, T);
  if (c.arch == Arch::GPT2)
    for (int64_t t = 0; t < T; t++)
      for (int64_t i = 0; i < C; i++) x[size_t(t * C + i)] += wpe.ptr()[pos[size_t(t)] * C + i];
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = layers[size_t(l)];
    norm_forward(L.norm1, ln.data(), mean.data(), rstd.data(), x.data(), T);
    if (c.arch == Arch::GPT2) {
      qkv.resize(size_t(T * 3 * C));
      linear_forward(L.qkv, ln.data(), qkv.data(), 1, T, rows, false, nullptr);
      for (int64_t t = 0; t < T; t++) {
        std::memcpy(q.data() + t * C, qkv.data() + t * 3 * C, size_t(C) * 4);
        std::memcpy(k.data() + t * C, qkv.data() + t * 3 * C + C, size_t(C) * 4);
        std::memcpy(v.data() + t * C, qkv.data() + t * 3 * C + 2 * C, size_t(C) * 4);
      }
    } else {
      linear_forward(L.q, ln.data(), q.data(), 1, T, rows, false, nullptr);
      linear_forward(L.k, ln.data(), k.data(), 1, T, rows, false, nullptr);
      linear_forward(L.v, ln.data(), v.data(), 1, T, rows, false, nullptr);
      ops::rope_forward(q.data(), pos.data(), T, H, D, c.rope_theta, c.rope_half);
      ops::rope_forward(k.data(), pos.data(), T, KVH, D, c.rope_theta, c.rope_half);
    }
    float* kc = cache.k[size_t(l)].data();
    float* vc = cache.v[size_t(l)].data();
    std::memcpy(kc + start * KD, k.data(), size_t(T * KD) * 4);
    std::memcpy(vc + start * KD, v.data(), size_t(T * KD) * 4);
    for (int64_t t = 0; t < T; t++)
      ops::attention_decode(atty.data() + t * HD, q.data() + t * HD, kc, vc, start + t + 1, H, KVH, D);
    linear_forward(L.o, atty.data(), tmp.data(), 1, T, rows, false, nullptr);
    for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    norm_forward(L.norm2, ln.data(), mean.data(), rstd.data(), x.data(), T);
    linear_forward(L.fc, ln.data(), fc.data(), 1, T, rows, false, nullptr);
    if (c.arch == Arch::GPT2) {
      ops::gelu_forward(act.data(), fc.data(), T * F);
    } else {
      up.resize(size_t(T * F));
      linear_forward(L.up, ln.data(), up.data(), 1, T, rows, false, nullptr);
      ops::swiglu_forward(act.data(), fc.data(), up.data(), T * F);
    }
    linear_forward(L.down, act.data(), tmp.data(), 1, T, rows, false, nullptr);
    for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
  }
  cache.len = start + T;
  // Only the last position's logits are needed.
  const float* last = x.data() + (T - 1) * C;
  norm_forward(norm_f, ln.data(), mean.data(), rstd.data(), last, 1);
  std::vector<float> logits(static_cast<size_t>(V));
  linear_forward(lm_head, ln.data(), logits.data(), 1, 1, rows, false, nullptr);
  return logits;
}

}  // namespace lowrank
