#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"
#include "ops/cpu/ops_ext.h"
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

bool Model::linear_trainable(const Linear& L, const LinearSaved& saved) const {
  if (full_finetune && L.dW.n) return true;
  for (const LoraSaved& ls : saved.uses)
    if (ls.t->dA.n > 0) return true;
  return false;
}

void Model::linear_backward(Linear& L, const float* x, const float* dy, float* dx, int64_t N,
                            LinearSaved& saved, bool accumulate) {
  // Frozen path: dx (+)= dy · W.
  if (dx) ops::linear_backward_input_ex(dx, dy, L.W, N, accumulate);
  if (full_finetune && L.dW.n)
    ops::linear_backward_weight(L.dW.ptr(), L.dbias.n ? L.dbias.ptr() : nullptr, dy, x, N, L.in, L.out);
  std::vector<float>& g = bw_.g;
  for (LoraSaved& ls : saved.uses) {
    LoraTarget* t = ls.t;
    const bool trainable = t->dA.n > 0;  // only the adapter being trained has gradients
    if (!trainable && !dx) continue;
    const float* dyr = dy + ls.row0 * L.out;  // (rows, out)
    const float* xr = x + ls.row0 * L.in;     // (rows, in)
    g.resize(size_t(ls.rows * t->r));
    // g (rows, r) = s · dy · B
    ops::gemm(false, false, ls.rows, t->r, L.out, ls.s, dyr, t->B.ptr(), 0.f, g.data());
    if (!ls.mask.empty()) {
      bw_.xd.resize(ls.mask.size());
      for (size_t i = 0; i < bw_.xd.size(); i++) bw_.xd[i] = xr[i] * ls.mask[i];
      xr = bw_.xd.data();
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
        std::vector<float>& gA = bw_.gA;
        gA.resize(size_t(ls.rows * L.in));
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
                          const float* rstd, int64_t N, bool accumulate) {
  float* dw = full_finetune && n.dw.n ? n.dw.ptr() : nullptr;
  if (cfg.arch == Arch::GPT2) {
    float* db = full_finetune && n.db.n ? n.db.ptr() : nullptr;
    ops::layernorm_backward_ex(dx, dw, db, dout, x, n.w.ptr(), mean, rstd, N, cfg.dim, accumulate);
  } else {
    ops::rmsnorm_backward_ex(dx, dw, dout, x, n.w.ptr(), rstd, N, cfg.dim, accumulate);
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

  if (fwd_tmp_.size() != size_t(N * C)) fwd_tmp_.resize(size_t(N * C));
  float* tmp = fwd_tmp_.data();  // (N, C) projection outputs
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = layers[size_t(l)];
    LayerActs& a = acts_[size_t(l)];
    const float* x = resid_[size_t(l)].data();
    ensure(a.ln1, size_t(N * C));
    ensure(a.ln1_mean, size_t(N));
    ensure(a.ln1_rstd, size_t(N));
    norm_forward(L.norm1, a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, N);
    const float *qp, *kp, *vp;  // q (N, H*D) rows every qs; k, v (N, KVH*D) rows every ks
    int64_t qs, ks;
    if (c.arch == Arch::GPT2) {
      // q, k, v stay inside qkv (N, 3C) and are read with row stride 3C.
      ensure(a.qkv, size_t(N * 3 * C));
      linear_forward(L.qkv, a.ln1.data(), a.qkv.data(), B, T, batch.row_adapters, training, &a.s_qkv);
      qp = a.qkv.data();
      kp = qp + C;
      vp = qp + 2 * C;
      qs = ks = 3 * C;
    } else {
      ensure(a.q, size_t(N * HD));
      ensure(a.k, size_t(N * KD));
      ensure(a.v, size_t(N * KD));
      linear_forward(L.q, a.ln1.data(), a.q.data(), B, T, batch.row_adapters, training, &a.s_q);
      linear_forward(L.k, a.ln1.data(), a.k.data(), B, T, batch.row_adapters, training, &a.s_k);
      linear_forward(L.v, a.ln1.data(), a.v.data(), B, T, batch.row_adapters, training, &a.s_v);
      ops::rope_forward(a.q.data(), pos_.data(), N, H, D, c.rope_theta, c.rope_half);
      ops::rope_forward(a.k.data(), pos_.data(), N, KVH, D, c.rope_theta, c.rope_half);
      qp = a.q.data();
      kp = a.k.data();
      vp = a.v.data();
      qs = HD;
      ks = KD;
    }
    ensure(a.att, size_t(B * H * T * T));
    ensure(a.atty, size_t(N * HD));
    ops::attention_forward_ex(a.atty.data(), a.att.data(), qp, kp, vp, qs, ks, B, T, H, KVH, D);
    linear_forward(L.o, a.atty.data(), tmp, B, T, batch.row_adapters, training, &a.s_o);
    ensure(a.resid_mid, size_t(N * C));
    ops::residual_forward(a.resid_mid.data(), x, tmp, N * C);
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
    linear_forward(L.down, a.act.data(), tmp, B, T, batch.row_adapters, training, &a.s_down);
    ops::residual_forward(resid_[size_t(l + 1)].data(), a.resid_mid.data(), tmp, N * C);
  }
  ensure(lnf_, size_t(N * C));
  ensure(lnf_mean_, size_t(N));
  ensure(lnf_rstd_, size_t(N));
  norm_forward(norm_f, lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), resid_[size_t(c.n_layer)].data(), N);
  if (logits_.size() != size_t(N * V)) logits_.resize(size_t(N * V));  // fully overwritten
  linear_forward(lm_head, lnf_.data(), logits_.data(), B, T, batch.row_adapters, training, &s_head_);
  ensure(losses_, size_t(N));
  const int32_t* targets = batch.targets.empty() ? nullptr : batch.targets.data();
  ce_stats_ = false;
  if (!targets) {
    std::fill(losses_.begin(), losses_.end(), 0.f);
    return 0.0;
  }
  ce_max_.resize(size_t(N));
  ce_sum_.resize(size_t(N));
  const double total =
      ops::cross_entropy_forward_stats(losses_.data(), ce_max_.data(), ce_sum_.data(), logits_.data(), targets, N, V);
  ce_stats_ = true;
  return total;
}

// ---- backward -----------------------------------------------------------------------

namespace {

// v.size() == n afterwards; contents unspecified (every user overwrites before reading).
inline float* scratch(std::vector<float>& v, int64_t n) {
  if (v.size() != size_t(n)) v.resize(size_t(n));
  return v.data();
}

}  // namespace

void Model::backward(float loss_scale) {
  if (!have_batch_) fail("backward called without a forward");
  const Batch& batch = batch_;
  const ModelConfig& c = cfg;
  const int64_t B = batch.B, T = batch.T, N = B * T, C = c.dim, V = c.vocab, F = c.ffn;
  const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim, HD = H * D, KD = KVH * D;
  const bool gpt2 = c.arch == Arch::GPT2;
  const int64_t nl = c.n_layer;

  // Which parameters get gradients, per layer: the attention inputs (q, k, v / qkv, norm1),
  // o, the MLP inputs (fc, up, norm2) and down. below[l]: anything trainable under layer l
  // (the embeddings count as under layer 0), i.e. layer l must pass a gradient to its input.
  struct LayerNeeds { bool qkv, o, mlp_in, down; };
  std::vector<LayerNeeds> tr(static_cast<size_t>(nl));
  std::vector<char> below(size_t(nl + 1));
  below[0] = full_finetune;
  for (int64_t l = 0; l < nl; l++) {
    Layer& L = layers[size_t(l)];
    LayerActs& a = acts_[size_t(l)];
    LayerNeeds& t = tr[size_t(l)];
    const bool norms = full_finetune;
    t.qkv = norms || (gpt2 ? linear_trainable(L.qkv, a.s_qkv)
                           : linear_trainable(L.q, a.s_q) || linear_trainable(L.k, a.s_k) ||
                                 linear_trainable(L.v, a.s_v));
    t.o = linear_trainable(L.o, a.s_o);
    t.mlp_in = norms || linear_trainable(L.fc, a.s_fc) || (!gpt2 && linear_trainable(L.up, a.s_up));
    t.down = linear_trainable(L.down, a.s_down);
    below[size_t(l + 1)] = below[size_t(l)] || t.qkv || t.o || t.mlp_in || t.down;
  }

  BackwardScratch& w = bw_;
  float* dloss = scratch(w.dloss, N);
  std::fill(dloss, dloss + N, loss_scale);
  // logits (N, V) become dlogits in place.
  if (ce_stats_)
    ops::cross_entropy_backward_stats(logits_.data(), batch.targets.data(), dloss, ce_max_.data(),
                                      ce_sum_.data(), N, V);
  else
    ops::cross_entropy_backward_inplace(logits_.data(), batch.targets.data(), dloss, N, V);
  ce_stats_ = false;  // logits_ now holds dlogits
  const bool need_layers = below[size_t(nl)];
  float* dlnf = need_layers || full_finetune ? scratch(w.dlnf, N * C) : nullptr;
  linear_backward(lm_head, lnf_.data(), logits_.data(), dlnf, N, s_head_, false);
  if (!need_layers && !full_finetune) return;
  // (N, C) gradient of the residual stream, overwritten by the final norm's backward.
  float* dresid = scratch(w.dresid, N * C);
  norm_backward(norm_f, dresid, dlnf, resid_[size_t(nl)].data(), lnf_mean_.data(), lnf_rstd_.data(), N, false);
  float* dln = scratch(w.dln, N * C);
  for (int64_t l = nl - 1; l >= 0; l--) {
    Layer& L = layers[size_t(l)];
    LayerActs& a = acts_[size_t(l)];
    const LayerNeeds& t = tr[size_t(l)];
    const bool in_grad = below[size_t(l)];                     // gradient to the layer input
    const bool mid_grad = in_grad || t.qkv || t.o;             // gradient to resid_mid
    const bool att_grad = in_grad || t.qkv;                    // gradient through attention
    if (!mid_grad && !t.mlp_in && !t.down) break;              // nothing trainable from here down
    // MLP: resid_out = resid_mid + down(act(fc(ln2(resid_mid))))
    const bool mlp_inner = mid_grad || t.mlp_in;
    float* dact = mlp_inner ? scratch(w.dact, N * F) : nullptr;
    linear_backward(L.down, a.act.data(), dresid, dact, N, a.s_down, false);
    if (mlp_inner) {
      float* dfc = scratch(w.dfc, N * F);
      float* dln_mlp = mid_grad ? dln : nullptr;
      if (gpt2) {
        ops::gelu_backward_set(dfc, dact, a.fc.data(), N * F);
        linear_backward(L.fc, a.ln2.data(), dfc, dln_mlp, N, a.s_fc, false);
      } else {
        float* dup = scratch(w.dup, N * F);
        ops::swiglu_backward_set(dfc, dup, dact, a.fc.data(), a.up.data(), N * F);
        linear_backward(L.up, a.ln2.data(), dup, dln_mlp, N, a.s_up, false);
        linear_backward(L.fc, a.ln2.data(), dfc, dln_mlp, N, a.s_fc, true);
      }
      if (mid_grad)
        norm_backward(L.norm2, dresid, dln, a.resid_mid.data(), a.ln2_mean.data(), a.ln2_rstd.data(), N, true);
    }
    if (!mid_grad) break;  // only this layer's MLP was trainable and nothing below it
    // Attention: resid_mid = resid_in + o(attn(q, k, v))
    float* datty = att_grad ? scratch(w.datty, N * HD) : nullptr;
    linear_backward(L.o, a.atty.data(), dresid, datty, N, a.s_o, false);
    if (!att_grad) break;
    float* dln_att = in_grad ? dln : nullptr;
    if (gpt2) {
      // dq, dk, dv are written straight into dqkv (N, 3C) with row stride 3C.
      float* dqkv = scratch(w.dqkv, N * 3 * C);
      const float* qkv = a.qkv.data();
      ops::attention_backward_ex(dqkv, dqkv + C, dqkv + 2 * C, datty, qkv, qkv + C, qkv + 2 * C, a.att.data(),
                                 3 * C, 3 * C, B, T, H, KVH, D, false);
      linear_backward(L.qkv, a.ln1.data(), dqkv, dln_att, N, a.s_qkv, false);
    } else {
      float* dq = scratch(w.dq, N * HD);
      float* dk = scratch(w.dk, N * KD);
      float* dv = scratch(w.dv, N * KD);
      ops::attention_backward_ex(dq, dk, dv, datty, a.q.data(), a.k.data(), a.v.data(), a.att.data(), HD, KD,
                                 B, T, H, KVH, D, false);
      ops::rope_backward(dq, pos_.data(), N, H, D, c.rope_theta, c.rope_half);
      ops::rope_backward(dk, pos_.data(), N, KVH, D, c.rope_theta, c.rope_half);
      linear_backward(L.q, a.ln1.data(), dq, dln_att, N, a.s_q, false);
      linear_backward(L.k, a.ln1.data(), dk, dln_att, N, a.s_k, true);
      linear_backward(L.v, a.ln1.data(), dv, dln_att, N, a.s_v, true);
    }
    if (!in_grad) break;
    norm_backward(L.norm1, dresid, dln, resid_[size_t(l)].data(), a.ln1_mean.data(), a.ln1_rstd.data(), N, true);
  }
  if (full_finetune) {
    ops::embedding_backward(dwte.ptr(), dresid, batch.ids.data(), N, C);
    if (gpt2)
      for (int64_t n = 0; n < N; n++) {
        float* d = dwpe.ptr() + pos_[size_t(n)] * C;
        const float* g = dresid + n * C;
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
  std::vector<float> q, k, v, atty(size_t(T * HD));
  if (c.arch != Arch::GPT2) {
    q.resize(size_t(T * HD));
    k.resize(size_t(T * KD));
    v.resize(size_t(T * KD));
  }
  std::vector<float> qkv, fc(size_t(T * F)), up, act(size_t(T * F));
  ops::embedding_forward(x.data(), ids.data(), wte, T);
  if (c.arch == Arch::GPT2)
    for (int64_t t = 0; t < T; t++)
      for (int64_t i = 0; i < C; i++) x[size_t(t * C + i)] += wpe.ptr()[pos[size_t(t)] * C + i];
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = layers[size_t(l)];
    norm_forward(L.norm1, ln.data(), mean.data(), rstd.data(), x.data(), T);
    float* kc = cache.k[size_t(l)].data();
    float* vc = cache.v[size_t(l)].data();
    const float* qp;  // (T, H*D) rows every qs
    int64_t qs;
    if (c.arch == Arch::GPT2) {
      // q stays inside qkv (row stride 3C); k and v rows go straight to the cache.
      qkv.resize(size_t(T * 3 * C));
      linear_forward(L.qkv, ln.data(), qkv.data(), 1, T, rows, false, nullptr);
      for (int64_t t = 0; t < T; t++) {
        std::memcpy(kc + (start + t) * KD, qkv.data() + t * 3 * C + C, size_t(C) * 4);
        std::memcpy(vc + (start + t) * KD, qkv.data() + t * 3 * C + 2 * C, size_t(C) * 4);
      }
      qp = qkv.data();
      qs = 3 * C;
    } else {
      linear_forward(L.q, ln.data(), q.data(), 1, T, rows, false, nullptr);
      linear_forward(L.k, ln.data(), k.data(), 1, T, rows, false, nullptr);
      linear_forward(L.v, ln.data(), v.data(), 1, T, rows, false, nullptr);
      ops::rope_forward(q.data(), pos.data(), T, H, D, c.rope_theta, c.rope_half);
      ops::rope_forward(k.data(), pos.data(), T, KVH, D, c.rope_theta, c.rope_half);
      std::memcpy(kc + start * KD, k.data(), size_t(T * KD) * 4);
      std::memcpy(vc + start * KD, v.data(), size_t(T * KD) * 4);
      qp = q.data();
      qs = HD;
    }
    if (T == 1)
      ops::attention_decode(atty.data(), qp, kc, vc, start + 1, H, KVH, D);
    else
      ops::attention_prefill(atty.data(), qp, qs, kc, vc, start, T, H, KVH, D);
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
