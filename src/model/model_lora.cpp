// Model-side adapter life-cycle: creating adapters, merge/unmerge, full fine-tuning state.
#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "model/model.h"
#include "model/names.h"
#include "ops/ops.h"

extern "C" void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s, float* u,
                        const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork, int* iwork, int* info);

namespace lowrank {

void make_owned(Linear& L);

// PiSSA init of one target: W (out, in) = Ũ S Ṽᵀ; A = sqrt(S_r/s)·Ṽ_rᵀ, B = Ũ_r·sqrt(S_r/s);
// the base becomes the residual W - s·B·A.
static void pissa_init(Linear& L, LoraTarget& t) {
  make_owned(L);
  const int m = int(L.in), n = int(L.out), k = std::min(m, n);
  if (t.r > k) fail("pissa: rank ", t.r, " exceeds min(out, in) = ", k, " for ", L.module);
  // Row-major W (out, in) is column-major Wᵀ (in, out): Wᵀ = U S VT, so W = VTᵀ S Uᵀ.
  std::vector<float> a(L.W_owned.ptr(), L.W_owned.ptr() + L.W_owned.n), s(static_cast<size_t>(k)), u(size_t(m) * size_t(k)),
      vt(size_t(k) * size_t(n));
  std::vector<int> iwork(size_t(8 * k));
  int lwork = -1, info = 0;
  float wq = 0;
  const char jobz = 'S';
  sgesdd_(&jobz, &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &k, &wq, &lwork, iwork.data(), &info);
  lwork = int(wq) + 1;
  std::vector<float> work(static_cast<size_t>(lwork));
  sgesdd_(&jobz, &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &k, work.data(), &lwork, iwork.data(), &info);
  if (info != 0) fail("pissa: SVD of ", L.module, " failed (info ", info, ")");
  for (int64_t i = 0; i < t.r; i++) {
    const float sq = std::sqrt(s[size_t(i)] / t.scale);
    for (int64_t j = 0; j < L.in; j++) t.A.ptr()[i * L.in + j] = sq * u[size_t(j + i * m)];
    for (int64_t o = 0; o < L.out; o++) t.B.ptr()[o * t.r + i] = sq * vt[size_t(i + o * k)];
  }
  // W_res (out, in) = W - s · B · A
  ops::gemm(false, false, L.out, L.in, t.r, -t.scale, t.B.ptr(), t.A.ptr(), 1.f, L.W_owned.ptr());
}

std::shared_ptr<Adapter> Model::create_adapter(const LoraConfig& lc, uint64_t seed) {
  auto a = std::make_shared<Adapter>();
  a->config = lc;
  a->name = "new";
  std::mt19937_64 rng(seed);
  for (Linear* L : linears()) {
    if (!lc.matches(L->module, L->layer, L == &lm_head)) continue;
    LoraTarget t;
    t.module = L->module;
    t.r = lc.rank_for(L->module);
    t.in = L->in;
    t.out = L->out;
    t.alpha = float(lc.alpha_for(L->module));
    t.scale = float(lc.scale_for(L->module));
    t.dropout = float(lc.lora_dropout);
    t.A = FloatBuffer::zeros({t.r, L->in});
    t.B = FloatBuffer::zeros({L->out, t.r});
    const std::string& init = lc.init_lora_weights;
    if (init == "true") {
      // Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)); B = 0.
      std::uniform_real_distribution<float> u(-1.f / std::sqrt(float(L->in)), 1.f / std::sqrt(float(L->in)));
      for (int64_t i = 0; i < t.A.n; i++) t.A.ptr()[i] = u(rng);
    } else if (init == "gaussian") {
      std::normal_distribution<float> g(0.f, 1.f / float(t.r));
      for (int64_t i = 0; i < t.A.n; i++) t.A.ptr()[i] = g(rng);
    } else if (init == "false") {
      // PEFT: A kaiming, B random too (non-identity start); keep A kaiming and B small normal.
      std::uniform_real_distribution<float> u(-1.f / std::sqrt(float(L->in)), 1.f / std::sqrt(float(L->in)));
      for (int64_t i = 0; i < t.A.n; i++) t.A.ptr()[i] = u(rng);
      std::normal_distribution<float> g(0.f, 1.f);
      for (int64_t i = 0; i < t.B.n; i++) t.B.ptr()[i] = g(rng);
    } else if (init.rfind("pissa", 0) == 0) {  // "pissa" and "pissa_niter_K": exact SVD
      pissa_init(*L, t);
      FloatBuffer A0 = FloatBuffer::zeros(t.A.shape), B0 = FloatBuffer::zeros(t.B.shape);
      std::memcpy(A0.ptr(), t.A.ptr(), size_t(t.A.n) * 4);
      std::memcpy(B0.ptr(), t.B.ptr(), size_t(t.B.n) * 4);
      a->pissa_initial[L->module] = {A0, B0};
    } else {
      fail("init_lora_weights \"", init, "\" is not supported (true, false, gaussian, pissa)");
    }
    a->targets[L->module] = std::move(t);
  }
  if (a->targets.empty()) fail("LoRA target_modules match no linear layer of the model");
  return a;
}

// Makes W an owned, writable f32 (out, in) matrix (copying from mmap/quantized storage).
void make_owned(Linear& L) {
  if (L.W_owned.n) return;
  L.W_owned = FloatBuffer::zeros({L.out, L.in});
  L.W.rows_f32(0, L.out, L.W_owned.ptr());
  L.W = matrix_from_buffer(L.W_owned);
}

void Model::merge_adapter(int slot, float scale) {
  if (slot < 0 || slot >= int(adapters.size()) || !adapters[size_t(slot)]) fail("merge: no adapter in slot ", slot);
  for (Linear* L : linears()) {
    LoraTarget* t = L->lora.size() > size_t(slot) ? L->lora[size_t(slot)] : nullptr;
    if (!t) continue;
    if (L == &lm_head && cfg.tied) fail("merge: cannot merge into the tied lm_head");
    if (!L->merged) {
      // The stored matrix (mmapped, quantized, transposed...) is kept as it is, so unmerging
      // restores exactly the weights and the compute path of the unmerged model.
      L->unmerged = L->W;
      L->W_owned = FloatBuffer();
      make_owned(*L);
      L->merged = true;
    }
    // W (out, in) += s · B (out, r) · A (r, in)
    ops::gemm(false, false, L->out, L->in, t->r, scale * t->scale, t->B.ptr(), t->A.ptr(), 1.f, L->W_owned.ptr());
  }
}

void Model::unmerge_all() {
  for (Linear* L : linears()) {
    if (!L->merged) continue;
    L->W = L->unmerged;
    L->unmerged = Matrix();
    L->W_owned = FloatBuffer();
    L->merged = false;
  }
}

void Model::enable_full_finetune() {
  if (full_finetune) return;
  if (cfg.tied) fail("--full with tied embeddings is not supported yet");
  full_finetune = true;
  // Embedding table becomes owned f32 with a gradient.
  {
    FloatBuffer w = FloatBuffer::zeros({wte.rows, wte.cols});
    wte.rows_f32(0, wte.rows, w.ptr());
    wte = matrix_from_buffer(w);
    dwte = FloatBuffer::zeros({wte.rows, wte.cols});
  }
  if (wpe.n) dwpe = FloatBuffer::zeros(wpe.shape);
  for (Linear* L : linears()) {
    make_owned(*L);
    L->dW = FloatBuffer::zeros({L->out, L->in});
    if (L->bias.n) L->dbias = FloatBuffer::zeros({L->out});
  }
  for (Norm* n : norms()) {
    n->dw = FloatBuffer::zeros({n->w.n});
    if (n->b.n) n->db = FloatBuffer::zeros({n->b.n});
  }
}

std::vector<Model::ParamRef> Model::full_params() {
  std::vector<ParamRef> p;
  if (!full_finetune) return p;
  p.push_back({hf_embed_module(cfg) + ".weight", const_cast<float*>(static_cast<const float*>(wte.data)), dwte.ptr(),
               dwte.n});
  if (dwpe.n) p.push_back({"transformer.wpe.weight", wpe.ptr(), dwpe.ptr(), wpe.n});
  for (Linear* L : linears()) {
    p.push_back({L->module + ".weight", L->W_owned.ptr(), L->dW.ptr(), L->W_owned.n});
    if (L->bias.n) p.push_back({L->module + ".bias", L->bias.ptr(), L->dbias.ptr(), L->bias.n});
  }
  for (Norm* n : norms()) {
    p.push_back({n->name + ".weight", n->w.ptr(), n->dw.ptr(), n->w.n});
    if (n->b.n) p.push_back({n->name + ".bias", n->b.ptr(), n->db.ptr(), n->b.n});
  }
  return p;
}

void Model::zero_grads() {
  for (auto& a : adapters)
    if (a) a->zero_grads();
  for (ParamRef& p : full_params()) std::memset(p.grad, 0, size_t(p.n) * 4);
}

}  // namespace lowrank
