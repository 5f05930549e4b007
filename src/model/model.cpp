// Model: adapter registry, and the drivers of the one block (block.cpp) for training and
// evaluation (whole sequences, activations kept or recomputed per block, the head in chunks of
// rows) and for inference with KV caches (one step over several sequences at once).
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/block.h"
#include "ops/cpu/ops_ext.h"
#include "ops/ops.h"

namespace lowrank {

// ---- structure ------------------------------------------------------------------------------

std::vector<Linear*> Layer::linears() {
  std::vector<Linear*> out;
  for (Linear* p : {&q, &k, &v, &qkv, &o, &gate, &up, &gate_up, &down})
    if (p->present()) out.push_back(p);
  return out;
}

std::vector<Norm*> Layer::norms() {
  std::vector<Norm*> out;
  for (Norm* n : {&attn_norm, &post_attn_norm, &ffn_norm, &post_ffn_norm, &q_norm, &k_norm})
    if (n->present()) out.push_back(n);
  return out;
}

std::vector<Linear*> Model::linears() {
  std::vector<Linear*> out;
  for (Layer& L : layers)
    for (Linear* p : L.linears()) out.push_back(p);
  out.push_back(&lm_head);
  return out;
}

std::vector<Norm*> Model::norms() {
  std::vector<Norm*> out;
  for (Layer& L : layers)
    for (Norm* n : L.norms()) out.push_back(n);
  out.push_back(&norm_f);
  return out;
}

void Model::finish_load() {
  int id = 0;
  for (Linear* L : linears()) L->id = id++;
  for (Norm* n : norms()) n->offset = cfg.norm_offset;
  rebuild_lora_links();
}

std::vector<RowGroup> group_batch_rows(const std::vector<std::vector<AdapterUse>>& row_adapters, int64_t B,
                                       int64_t T) {
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

// ---- adapters -------------------------------------------------------------------------------

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

void Model::check_adapter(const Adapter& a) const {
  std::map<std::string, const Linear*> by_module;
  for (Linear* L : const_cast<Model*>(this)->linears()) by_module[L->module] = L;
  for (auto& [module, t] : a.targets) {
    auto it = by_module.find(module);
    if (it == by_module.end())
      fail("adapter ", a.name, ": target module ", module, " does not exist in model ", source);
    const Linear* L = it->second;
    if (t.A.shape != std::vector<int64_t>{t.r, L->in})
      fail("adapter ", a.name, ": ", module, ".lora_A.weight: expected shape ", shape_str({t.r, L->in}),
           " but found ", shape_str(t.A.shape));
    if (t.B.shape != std::vector<int64_t>{L->out, t.r})
      fail("adapter ", a.name, ": ", module, ".lora_B.weight: expected shape ", shape_str({L->out, t.r}),
           " but found ", shape_str(t.B.shape));
  }
}

int Model::add_adapter(std::shared_ptr<Adapter> a) {
  check_adapter(*a);
  for (auto& [module, t] : a->targets) {
    t.in = t.A.shape[1];
    t.out = t.B.shape[0];
  }
  int slot = -1;
  for (size_t i = 0; i < adapters.size(); i++)
    if (!adapters[i]) {
      slot = int(i);
      break;
    }
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
  Model& m = const_cast<Model&>(*this);
  int64_t n = wte.rows * wte.cols + wpe.n;
  for (Norm* p : m.norms()) n += p->w.n + p->b.n;
  for (Linear* L : m.linears())
    if (L != &m.lm_head) n += L->in * L->out + L->bias.n;
  if (!cfg.tied) n += lm_head.in * lm_head.out;
  return n;
}

// ---- shared pieces of every forward -----------------------------------------------------------

namespace {

inline void ensure(std::vector<float>& v, int64_t n) {
  if (v.size() != size_t(n)) v.resize(size_t(n));
}

// cos/sin tables (N, rot/2) of every rope of cfg for the positions pos (N).
void rope_tables_for(const ModelConfig& c, const std::vector<int32_t>& pos, std::vector<std::vector<float>>& cos,
                     std::vector<std::vector<float>>& sin) {
  const int64_t N = int64_t(pos.size());
  cos.resize(c.ropes.size());
  sin.resize(c.ropes.size());
  for (size_t r = 0; r < c.ropes.size(); r++) {
    const RopeConfig& rc = c.ropes[r];
    const std::vector<float> inv = rc.inv_freq();  // (rot/2)
    const int64_t half = rc.dim / 2;
    ensure(cos[r], N * half);
    ensure(sin[r], N * half);
    ops::rope_tables(cos[r].data(), sin[r].data(), pos.data(), N, inv.data(), half, rc.attn_factor);
  }
}

// Groups rebased to rows [r0, r0 + n) of a forward.
std::vector<RowGroup> slice_groups(const std::vector<RowGroup>& groups, int64_t r0, int64_t n) {
  std::vector<RowGroup> out;
  for (const RowGroup& g : groups) {
    const int64_t a = std::max(g.row0, r0), b = std::min(g.row0 + g.rows, r0 + n);
    if (a < b) out.push_back({a - r0, b - a, g.uses});
  }
  return out;
}

}  // namespace

Model::Model() = default;
Model::~Model() = default;

void Model::embed(const int32_t* ids, const int32_t* pos, int64_t N, float* x) {
  const int64_t C = cfg.dim;
  ops::embedding_forward(x, ids, wte, N);
  if (cfg.embed_scale != 1.f) {
    const float s = cfg.embed_scale;
    for (int64_t i = 0; i < N * C; i++) x[i] *= s;
  }
  if (cfg.learned_pos)
    for (int64_t n = 0; n < N; n++) {
      const float* p = wpe.ptr() + int64_t(pos[n]) * C;
      float* r = x + n * C;
      for (int64_t i = 0; i < C; i++) r[i] += p[i];
    }
}

// ---- training and evaluation --------------------------------------------------------------------

double Model::train_forward(const Batch& batch, bool training, bool fused, float loss_scale) {
  const ModelConfig& c = cfg;
  const int64_t B = batch.B, T = batch.T, N = B * T, C = c.dim;
  if (B <= 0 || T <= 0) fail("forward: empty batch");
  if (int64_t(batch.ids.size()) != N) fail("forward: batch has ", batch.ids.size(), " ids for B·T = ", N);
  if (!batch.targets.empty() && int64_t(batch.targets.size()) != N)
    fail("forward: batch has ", batch.targets.size(), " targets for B·T = ", N);
  if (c.learned_pos && T > c.max_pos) fail("sequence length ", T, " exceeds the model's ", c.max_pos, " positions");
  batch_ = batch;
  have_batch_ = training;
  fused_head_ = fused;
  groups_ = group_batch_rows(batch_.row_adapters, B, T);
  pos_.resize(size_t(N));
  for (int64_t n = 0; n < N; n++) pos_[size_t(n)] = int32_t(n % T);
  if (c.arch == Arch::LLAMA) rope_tables_for(c, pos_, cos_, sin_);
  if (training) dropout_step_++;

  ctx_ = std::make_unique<BlockCtx>();
  BlockCtx& ctx = *ctx_;
  ctx.N = N;
  ctx.groups = &groups_;
  ctx.training = training;
  ctx.cos = &cos_;
  ctx.sin = &sin_;
  for (int64_t b = 0; b < B; b++) ctx.segs.push_back({b * T, T, 0, nullptr});
  if (training) {
    // below[l]: something under layer l gets gradients (the embeddings count when fully
    // fine-tuning), so layer l must pass a gradient to its input.
    ctx.below.assign(size_t(c.n_layer + 1), 0);
    ctx.below[0] = full_finetune;
    for (int64_t l = 0; l < c.n_layer; l++) {
      bool t = full_finetune;
      for (Linear* L : layers[size_t(l)].linears()) t = t || linear_trainable(*L);
      ctx.below[size_t(l + 1)] = ctx.below[size_t(l)] || t;
    }
  }

  // Block inputs: all kept when training (the backward reads them), two buffers otherwise.
  const int64_t nl = c.n_layer;
  const size_t nres = training ? size_t(nl + 1) : 2;
  resid_.resize(nres);
  for (auto& r : resid_) ensure(r, N * C);
  const size_t nacts = training && !checkpoint_activations ? size_t(nl) : 1;
  while (acts_.size() < nacts) acts_.push_back(std::make_unique<BlockActs>());
  acts_.resize(nacts);
  embed(batch_.ids.data(), pos_.data(), N, resid_[0].data());
  for (int64_t l = 0; l < nl; l++) {
    const float* x = resid_[training ? size_t(l) : size_t(l % 2)].data();
    float* out = resid_[training ? size_t(l + 1) : size_t((l + 1) % 2)].data();
    block_forward(l, x, out, ctx, *acts_[nacts == 1 ? 0 : size_t(l)]);
  }
  acts_layer_ = nl - 1;  // the layer whose activations acts_[0] holds (checkpointing)
  const float* last = resid_[training ? size_t(nl) : size_t(nl % 2)].data();
  ensure(lnf_, N * C);
  ensure(lnf_rstd_, N);
  ensure(lnf_mean_, N);
  norm_forward(norm_f, lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), last, N, C);
  const double total = head_chunks(fused, loss_scale);
  if (fused) backward_blocks();
  return total;
}

const std::vector<float>& Model::logits() const {
  if (!logits_kept_) fail("logits(): the last forward kept no logits (set Model::keep_logits before it)");
  return logits_;
}

double Model::forward(const Batch& batch, bool training) { return train_forward(batch, training, false, 0.f); }

double Model::forward_backward(const Batch& batch, float loss_scale) {
  return train_forward(batch, true, true, loss_scale);
}

void Model::backward(float loss_scale) {
  if (!have_batch_) fail("backward called without a training forward");
  if (fused_head_) fail("backward: forward_backward already ran the backward");
  head_chunks(true, loss_scale);
  backward_blocks();
  have_batch_ = false;
}

double Model::head_chunks(bool backward, float loss_scale) {
  const ModelConfig& c = cfg;
  const int64_t N = batch_.B * batch_.T, C = c.dim, V = c.vocab;
  const int32_t* targets = batch_.targets.empty() ? nullptr : batch_.targets.data();
  if (backward && !targets) fail("backward: the batch has no targets");
  // Rows per chunk: about 2^24 logits (64 MB), at least 64 rows for BLAS efficiency.
  const int64_t rows_per = std::min<int64_t>(N, std::max<int64_t>(64, (int64_t(1) << 24) / V));
  losses_.assign(size_t(N), 0.f);
  ce_max_.resize(size_t(N));
  ce_sum_.resize(size_t(N));
  if (!backward) {
    logits_kept_ = keep_logits;
    if (keep_logits) ensure(logits_, N * V);
  }
  bool layers_need = full_finetune;
  for (Linear* L : linears())
    if (L != &lm_head && linear_trainable(*L)) layers_need = true;
  if (backward && layers_need) ensure(dlnf_, N * C);
  ensure(chunk_, rows_per * V);
  double total = 0;
  std::vector<float> dloss;
  LinearSaved saved;
  for (int64_t r0 = 0; r0 < N; r0 += rows_per) {
    const int64_t rows = std::min(rows_per, N - r0);
    float* lg = chunk_.data();  // (rows, V)
    const std::vector<RowGroup> cg = slice_groups(groups_, r0, rows);
    linear_forward(lm_head, lnf_.data() + r0 * C, lg, rows, cg, backward, backward ? &saved : nullptr);
    if (c.final_softcap > 0) ops::softcap_forward(lg, rows * V, c.final_softcap);
    if (keep_logits && !backward) std::memcpy(logits_.data() + r0 * V, lg, size_t(rows * V) * 4);
    if (!targets) continue;
    total += ops::cross_entropy_forward_stats(losses_.data() + r0, ce_max_.data() + r0, ce_sum_.data() + r0, lg,
                                              targets + r0, rows, V);
    if (!backward) continue;
    if (c.final_softcap > 0) {
      ensure(chunk2_, rows_per * V);
      std::memcpy(chunk2_.data(), lg, size_t(rows * V) * 4);  // capped logits, for the tanh derivative
    }
    dloss.assign(size_t(rows), loss_scale);
    ops::cross_entropy_backward_stats(lg, targets + r0, dloss.data(), ce_max_.data() + r0, ce_sum_.data() + r0, rows, V);
    if (c.final_softcap > 0) ops::softcap_backward(lg, chunk2_.data(), rows * V, c.final_softcap);
    linear_backward(lm_head, lnf_.data() + r0 * C, lg, layers_need ? dlnf_.data() + r0 * C : nullptr, rows, saved,
                    false);
  }
  return total;
}

void Model::backward_blocks() {
  const ModelConfig& c = cfg;
  const int64_t N = batch_.B * batch_.T, C = c.dim, nl = c.n_layer;
  const std::vector<char>& below = ctx_->below;
  if (!below[size_t(nl)]) return;  // only the head is trained
  ensure(bw_.d0, N * C);
  ensure(bw_.d1, N * C);
  float* dcur = bw_.d0.data();
  float* dnext = bw_.d1.data();
  norm_backward(norm_f, dcur, dlnf_.data(), resid_[size_t(nl)].data(), lnf_mean_.data(), lnf_rstd_.data(), N, C, false);
  const BlockCtx& ctx = *ctx_;
  for (int64_t l = nl - 1; l >= 0; l--) {
    BlockActs& a = *acts_[checkpoint_activations ? 0 : size_t(l)];
    if (checkpoint_activations && acts_layer_ != l) {
      // Recompute this block's activations from its saved input (same dropout masks).
      ensure(bw_.recompute, N * C);
      block_forward(l, resid_[size_t(l)].data(), bw_.recompute.data(), ctx, a);
      acts_layer_ = l;
    }
    float* dx = below[size_t(l)] ? dnext : nullptr;
    block_backward(l, resid_[size_t(l)].data(), dcur, dx, ctx, a);
    if (!dx) break;
    std::swap(dcur, dnext);
  }
  if (full_finetune) {
    // d wpe[pos] += d x0 ; d wte[ids] += embed_scale · d x0
    if (c.learned_pos)
      for (int64_t n = 0; n < N; n++) {
        float* d = dwpe.ptr() + pos_[size_t(n)] * C;
        const float* g = dcur + n * C;
        for (int64_t i = 0; i < C; i++) d[i] += g[i];
      }
    if (c.embed_scale != 1.f)
      for (int64_t i = 0; i < N * C; i++) dcur[i] *= c.embed_scale;
    ops::embedding_backward(dwte.ptr(), dcur, batch_.ids.data(), N, C);
  }
}

// ---- inference with KV caches ---------------------------------------------------------------------

KVCache Model::new_cache(int64_t capacity) const {
  KVCache kv;
  kv.capacity = capacity;
  kv.k.resize(size_t(cfg.n_layer));
  kv.v.resize(size_t(cfg.n_layer));
  for (int64_t l = 0; l < cfg.n_layer; l++) {
    kv.k[size_t(l)].assign(size_t(capacity * cfg.kv_dim()), 0.f);
    kv.v[size_t(l)].assign(size_t(capacity * cfg.kv_dim()), 0.f);
  }
  return kv;
}

std::vector<float> Model::forward_step(const std::vector<SeqStep>& seqs) {
  const ModelConfig& c = cfg;
  const int64_t S = int64_t(seqs.size()), C = c.dim, V = c.vocab;
  if (S == 0) fail("forward_step: no sequences");
  int64_t N = 0;
  for (const SeqStep& s : seqs) {
    if (s.n <= 0 || !s.ids) fail("forward_step: a sequence has no tokens");
    if (!s.cache) fail("forward_step: a sequence has no KV cache");
    if (s.cache->len + s.n > s.cache->capacity)
      fail("KV cache full: ", s.cache->len + s.n, " > ", s.cache->capacity, " positions");
    if (int64_t(s.cache->k.size()) != c.n_layer) fail("forward_step: the KV cache is not for this model");
    if (c.learned_pos && s.cache->len + s.n > c.max_pos)
      fail("sequence length ", s.cache->len + s.n, " exceeds the model's ", c.max_pos, " positions");
    for (int64_t i = 0; i < s.n; i++)
      if (s.ids[i] < 0 || s.ids[i] >= V) fail("token id ", s.ids[i], " is outside the vocabulary (", V, ")");
    N += s.n;
  }
  InferState& st = infer_;
  st.ids.resize(size_t(N));
  st.pos.resize(size_t(N));
  st.groups.clear();
  BlockCtx ctx;
  ctx.N = N;
  ctx.training = false;
  int64_t row = 0;
  static const std::vector<AdapterUse> none;
  for (const SeqStep& s : seqs) {
    for (int64_t i = 0; i < s.n; i++) {
      st.ids[size_t(row + i)] = s.ids[i];
      st.pos[size_t(row + i)] = int32_t(s.cache->len + i);
    }
    st.groups.push_back({row, s.n, s.adapters ? s.adapters : &none});
    ctx.segs.push_back({row, s.n, s.cache->len, s.cache});
    row += s.n;
  }
  if (c.arch == Arch::LLAMA) rope_tables_for(c, st.pos, st.cos, st.sin);
  ctx.groups = &st.groups;
  ctx.cos = &st.cos;
  ctx.sin = &st.sin;
  if (!st.acts) st.acts = std::make_unique<BlockActs>();
  ensure(st.x, N * C);
  ensure(st.y, N * C);
  embed(st.ids.data(), st.pos.data(), N, st.x.data());
  for (int64_t l = 0; l < c.n_layer; l++) {
    block_forward(l, st.x.data(), st.y.data(), ctx, *st.acts);
    std::swap(st.x, st.y);
  }
  for (const SeqStep& s : seqs) s.cache->len += s.n;
  // Only each sequence's last position reaches the head.
  std::vector<float> last(size_t(S * C)), ln(size_t(S * C)), rstd(static_cast<size_t>(S)), mean(static_cast<size_t>(S));
  std::vector<RowGroup> head_groups;
  row = 0;
  for (int64_t s = 0; s < S; s++) {
    row += seqs[size_t(s)].n;
    std::memcpy(last.data() + s * C, st.x.data() + (row - 1) * C, size_t(C) * 4);
    head_groups.push_back({s, 1, st.groups[size_t(s)].uses});
  }
  norm_forward(norm_f, ln.data(), mean.data(), rstd.data(), last.data(), S, C);
  std::vector<float> logits(size_t(S * V));  // (S, V)
  linear_forward(lm_head, ln.data(), logits.data(), S, head_groups, false, nullptr);
  if (c.final_softcap > 0) ops::softcap_forward(logits.data(), S * V, c.final_softcap);
  return logits;
}

std::vector<float> Model::forward_cached(const std::vector<int32_t>& ids, KVCache& cache,
                                         const std::vector<AdapterUse>& uses) {
  if (ids.empty()) fail("forward_cached: no tokens");
  return forward_step({SeqStep{ids.data(), int64_t(ids.size()), &cache, &uses}});
}

std::vector<float> Model::forward_decode_batch(const std::vector<int32_t>& ids, const std::vector<KVCache*>& caches,
                                               const std::vector<std::vector<AdapterUse>>& rows) {
  const size_t S = ids.size();
  if (S == 0) fail("forward_decode_batch: no sequences");
  if (caches.size() != S || rows.size() != S)
    fail("forward_decode_batch: ", S, " ids but ", caches.size(), " caches and ", rows.size(), " adapter lists");
  std::vector<SeqStep> steps;
  for (size_t s = 0; s < S; s++) steps.push_back({&ids[s], 1, caches[s], &rows[s]});
  return forward_step(steps);
}

}  // namespace lowrank
