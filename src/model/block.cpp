// The one transformer block of every family (see model/config.h for the data flow), its
// backward, and the adapted linear and norm layers it is built from. Training, evaluation,
// cached prefill/decode and batched serving all run through block_forward; what differs is
// where attention reads keys and values (BlockCtx::segs) and whether activations are kept.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/block.h"
#include "ops/cpu/ops_ext.h"
#include "ops/cpu/qmatmul.h"
#include "ops/ops.h"

namespace lowrank {

namespace {

inline void ensure(std::vector<float>& v, int64_t n) {
  if (v.size() != size_t(n)) v.resize(size_t(n));
}

// splitmix64: a counter-based generator for reproducible dropout masks.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// dst rows (N, w) <- columns [c0, c0 + w) of src rows (N, ws); or the reverse (scatter).
void copy_cols(float* dst, const float* src, int64_t N, int64_t w, int64_t ws, int64_t c0) {
  for (int64_t n = 0; n < N; n++) std::memcpy(dst + n * w, src + n * ws + c0, size_t(w) * 4);
}
void put_cols(float* dst, const float* src, int64_t N, int64_t w, int64_t ws, int64_t c0) {
  for (int64_t n = 0; n < N; n++) std::memcpy(dst + n * ws + c0, src + n * w, size_t(w) * 4);
}

}  // namespace

// ---- linear with LoRA -------------------------------------------------------------------

void Model::linear_forward(Linear& L, const float* x, float* y, int64_t N, const std::vector<RowGroup>& groups,
                           bool training, LinearSaved* saved) {
  const float* bias = L.bias.n ? L.bias.ptr() : nullptr;
  // Decode-sized inference on a quantized base runs the integer-dot kernels (activations
  // quantized per block, as llama.cpp does); training and prefill keep the f32 tile path.
  if (training || N > 16 || !dtype_is_quantized(L.W.dtype) || !ops::quant_linear_forward(y, x, L.W, bias, N))
    ops::linear_forward(y, x, L.W, bias, N);
  if (saved) saved->uses.clear();
  if (L.lora.empty()) return;
  std::vector<float> xd_tmp;
  int use_index = 0;
  for (const RowGroup& g : groups) {
    if (!g.uses) continue;
    for (const AdapterUse& use : *g.uses) {
      use_index++;
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
        // Dropout on the input of A: keep with probability 1-p, scaled by 1/(1-p). The mask is
        // a function of (seed, forward, linear, rows), so a recomputed block draws it again.
        ls.mask.resize(size_t(g.rows * L.in));
        xd_tmp.resize(ls.mask.size());
        const float keep = 1.f / (1.f - t->dropout);
        const uint64_t base =
            mix64(dropout_seed ^ mix64(dropout_step_ * 0x100000001b3ull + uint64_t(L.id) * 1024 + uint64_t(use_index)));
        for (size_t i = 0; i < ls.mask.size(); i++) {
          double u = double(mix64(base + uint64_t(g.row0 * L.in) + i) >> 11) * (1.0 / 9007199254740992.0);
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

bool Model::linear_trainable(const Linear& L) const {
  if (!L.present()) return false;
  if (full_finetune && L.dW.n) return true;
  return trainable_adapter >= 0 && size_t(trainable_adapter) < L.lora.size() && L.lora[size_t(trainable_adapter)];
}

void Model::linear_backward(Linear& L, const float* x, const float* dy, float* dx, int64_t N, LinearSaved& saved,
                            bool accumulate) {
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
        // dx += (g · A) ⊙ mask
        std::vector<float>& gA = bw_.xd;
        gA.resize(size_t(ls.rows * L.in));
        ops::gemm(false, false, ls.rows, L.in, t->r, 1.f, g.data(), t->A.ptr(), 0.f, gA.data());
        for (size_t i = 0; i < gA.size(); i++) dxr[i] += gA[i] * ls.mask[i];
      }
    }
  }
}

// ---- norms --------------------------------------------------------------------------------

void Model::norm_forward(const Norm& n, float* out, float* mean, float* rstd, const float* x, int64_t N, int64_t C) {
  if (cfg.norm == NormKind::LAYER)
    ops::layernorm_forward(out, mean, rstd, x, n.w.ptr(), n.b.n ? n.b.ptr() : nullptr, N, C, cfg.norm_eps);
  else
    ops::rmsnorm_forward_off(out, rstd, x, n.w.ptr(), n.offset, N, C, cfg.norm_eps);
}

void Model::norm_backward(Norm& n, float* dx, const float* dout, const float* x, const float* mean, const float* rstd,
                          int64_t N, int64_t C, bool accumulate) {
  float* dw = n.dw.n ? n.dw.ptr() : nullptr;
  if (cfg.norm == NormKind::LAYER)
    ops::layernorm_backward_ex(dx, dw, n.db.n ? n.db.ptr() : nullptr, dout, x, n.w.ptr(), mean, rstd, N, C, accumulate);
  else
    ops::rmsnorm_backward_off(dx, dw, dout, x, n.w.ptr(), n.offset, rstd, N, C, accumulate);
}

// ---- the block ------------------------------------------------------------------------------

Model::Keep Model::keep_for(int64_t l, const BlockCtx& ctx) const {
  // The same analysis as block_backward, from what can get gradients (before the forward).
  const ModelConfig& c = cfg;
  const Layer& L = layers[size_t(l)];
  const bool ff = full_finetune;
  const bool t_qkv = ff || linear_trainable(L.q) || linear_trainable(L.k) || linear_trainable(L.v) ||
                     linear_trainable(L.qkv);
  const bool t_o = ff || linear_trainable(L.o);
  const bool t_mlp_in = ff || linear_trainable(L.gate) || linear_trainable(L.up) || linear_trainable(L.gate_up);
  const bool t_down = ff || linear_trainable(L.down);
  const bool in_grad = ctx.below.empty() || ctx.below[size_t(l)];
  const bool mid_grad = in_grad || t_qkv || t_o, mlp_inner = mid_grad || t_mlp_in, att_grad = in_grad || t_qkv;
  Keep k;
  k.a = t_qkv;
  k.qk = att_grad;
  k.att = t_o;
  k.o = c.post_norms && mid_grad;
  k.h = mid_grad;
  k.b = t_mlp_in;
  k.gate_up = mlp_inner;
  k.act = t_down;
  k.f = c.post_norms && (mlp_inner || t_down);
  return k;
}

Model::BlockActs* Model::shared_acts() {
  if (!shared_acts_) shared_acts_ = std::make_unique<BlockActs>();
  return shared_acts_.get();
}

void Model::block_forward(int64_t l, const float* x, float* out, const BlockCtx& ctx, BlockActs& a) {
  const ModelConfig& c = cfg;
  Layer& L = layers[size_t(l)];
  const LayerSpec& spec = c.layers[size_t(l)];
  const int64_t N = ctx.N, C = c.dim, F = c.ffn, H = c.n_head, KVH = c.n_kv_head, D = c.head_dim;
  const int64_t HD = c.q_dim(), KD = c.kv_dim();
  const std::vector<RowGroup>& G = *ctx.groups;
  const bool tr = ctx.training;
  auto sv = [&](LinearSaved& s) { return tr ? &s : nullptr; };
  // Buffers the backward reads are kept in a (this layer's); the rest live in the shared
  // scratch, reused by every layer (what is kept depends on what gets gradients).
  const Keep keep = ctx.training ? keep_for(l, ctx) : Keep::all();
  BlockActs& S = *shared_acts();
  auto pick = [](bool k, std::vector<float>& own, std::vector<float>& sh) -> std::vector<float>& { return k ? own : sh; };
  std::vector<float>& B_a = pick(keep.a, a.a, S.a);
  std::vector<float>& B_qkv = S.qkv;
  std::vector<float>& B_q_raw = pick(keep.qk, a.q_raw, S.q_raw);
  std::vector<float>& B_k_raw = pick(keep.qk, a.k_raw, S.k_raw);
  std::vector<float>& B_q = pick(keep.qk, a.q, S.q);
  std::vector<float>& B_k = pick(keep.qk, a.k, S.k);
  std::vector<float>& B_v = pick(keep.qk, a.v, S.v);
  std::vector<float>& B_lse = a.lse;
  std::vector<float>& B_att = pick(keep.att, a.att, S.att);
  std::vector<float>& B_o = pick(keep.o, a.o, S.o);
  std::vector<float>& B_po = S.po;
  std::vector<float>& B_h = pick(keep.h, a.h, S.h);
  std::vector<float>& B_b = pick(keep.b, a.b, S.b);
  std::vector<float>& B_gu = S.gu;
  std::vector<float>& B_gate = pick(keep.gate_up, a.gate, S.gate);
  std::vector<float>& B_up = pick(keep.gate_up, a.up, S.up);
  std::vector<float>& B_act = pick(keep.act, a.act, S.act);
  std::vector<float>& B_f = pick(keep.f, a.f, S.f);

  // a = attn_norm(x)
  ensure(B_a, N * C);
  ensure(a.a_rstd, N);
  ensure(a.a_mean, N);
  norm_forward(L.attn_norm, B_a.data(), a.a_mean.data(), a.a_rstd.data(), x, N, C);
  // q, k, v
  ensure(B_q, N * HD);
  ensure(B_k, N * KD);
  ensure(B_v, N * KD);
  if (c.fused_qkv) {
    ensure(B_qkv, N * (HD + 2 * KD));
    linear_forward(L.qkv, B_a.data(), B_qkv.data(), N, G, tr, sv(a.s_qkv));
    copy_cols(B_q.data(), B_qkv.data(), N, HD, HD + 2 * KD, 0);
    copy_cols(B_k.data(), B_qkv.data(), N, KD, HD + 2 * KD, HD);
    copy_cols(B_v.data(), B_qkv.data(), N, KD, HD + 2 * KD, HD + KD);
  } else {
    linear_forward(L.q, B_a.data(), B_q.data(), N, G, tr, sv(a.s_q));
    linear_forward(L.k, B_a.data(), B_k.data(), N, G, tr, sv(a.s_k));
    linear_forward(L.v, B_a.data(), B_v.data(), N, G, tr, sv(a.s_v));
  }
  if (c.qk_norm) {
    // RMSNorm over each head's D values (rows of (N·H, D)), weights (D) shared by the heads.
    B_q_raw = B_q;
    B_k_raw = B_k;
    ensure(a.qn_rstd, N * H);
    ensure(a.kn_rstd, N * KVH);
    norm_forward(L.q_norm, B_q.data(), nullptr, a.qn_rstd.data(), B_q_raw.data(), N * H, D);
    norm_forward(L.k_norm, B_k.data(), nullptr, a.kn_rstd.data(), B_k_raw.data(), N * KVH, D);
  }
  if (c.arch == Arch::LLAMA) {
    const RopeConfig& rope = c.ropes[size_t(spec.rope)];
    const float* cs = (*ctx.cos)[size_t(spec.rope)].data();
    const float* sn = (*ctx.sin)[size_t(spec.rope)].data();
    ops::rope_apply(B_q.data(), N, H, D, rope.dim, cs, sn, false);
    ops::rope_apply(B_k.data(), N, KVH, D, rope.dim, cs, sn, false);
  }
  // attention, per sequence; cached sequences first append their new k/v rows
  ensure(B_att, N * HD);
  if (tr) ensure(B_lse, 2 * H * N);
  ops::AttnShape shape{H, KVH, D, c.attn_scale, c.attn_softcap, spec.window};
  std::vector<ops::AttnSeq> segs;
  segs.reserve(ctx.segs.size());
  for (const AttnSegment& s : ctx.segs) {
    ops::AttnSeq q{};
    q.q = B_q.data() + s.row0 * HD;
    q.out = B_att.data() + s.row0 * HD;
    q.lse = tr ? B_lse.data() + 2 * s.row0 * H : nullptr;
    q.start = s.start;
    q.n = s.n;
    if (s.cache) {
      float* kc = s.cache->k[size_t(l)].data();
      float* vc = s.cache->v[size_t(l)].data();
      std::memcpy(kc + s.start * KD, B_k.data() + s.row0 * KD, size_t(s.n * KD) * 4);
      std::memcpy(vc + s.start * KD, B_v.data() + s.row0 * KD, size_t(s.n * KD) * 4);
      q.k = kc;
      q.v = vc;
    } else {
      q.k = B_k.data() + s.row0 * KD;
      q.v = B_v.data() + s.row0 * KD;
    }
    segs.push_back(q);
  }
  ops::attention_flash_forward(segs.data(), int64_t(segs.size()), HD, HD, KD, shape);
  // h = x + [post_attn_norm](o_proj(att))
  ensure(B_o, N * C);
  ensure(B_h, N * C);
  linear_forward(L.o, B_att.data(), B_o.data(), N, G, tr, sv(a.s_o));
  if (c.post_norms) {
    ensure(B_po, N * C);
    ensure(a.po_rstd, N);
    norm_forward(L.post_attn_norm, B_po.data(), nullptr, a.po_rstd.data(), B_o.data(), N, C);
    ops::residual_forward(B_h.data(), x, B_po.data(), N * C);
  } else {
    ops::residual_forward(B_h.data(), x, B_o.data(), N * C);
  }
  // b = ffn_norm(h); f = down(act(...))
  ensure(B_b, N * C);
  ensure(a.b_rstd, N);
  ensure(a.b_mean, N);
  norm_forward(L.ffn_norm, B_b.data(), a.b_mean.data(), a.b_rstd.data(), B_h.data(), N, C);
  ensure(B_up, N * F);
  ensure(B_act, N * F);
  if (c.gated_ffn) {
    ensure(B_gate, N * F);
    if (c.fused_gate_up) {
      ensure(B_gu, N * 2 * F);
      linear_forward(L.gate_up, B_b.data(), B_gu.data(), N, G, tr, sv(a.s_gate_up));
      copy_cols(B_gate.data(), B_gu.data(), N, F, 2 * F, 0);
      copy_cols(B_up.data(), B_gu.data(), N, F, 2 * F, F);
    } else {
      linear_forward(L.gate, B_b.data(), B_gate.data(), N, G, tr, sv(a.s_gate));
      linear_forward(L.up, B_b.data(), B_up.data(), N, G, tr, sv(a.s_up));
    }
    if (c.act == Activation::SILU) ops::swiglu_forward(B_act.data(), B_gate.data(), B_up.data(), N * F);
    else ops::geglu_forward(B_act.data(), B_gate.data(), B_up.data(), N * F);
  } else {
    linear_forward(L.up, B_b.data(), B_up.data(), N, G, tr, sv(a.s_up));
    ops::gelu_forward(B_act.data(), B_up.data(), N * F);
  }
  ensure(B_f, N * C);
  linear_forward(L.down, B_act.data(), B_f.data(), N, G, tr, sv(a.s_down));
  if (c.post_norms) {
    ensure(a.pf_rstd, N);
    norm_forward(L.post_ffn_norm, B_po.data(), nullptr, a.pf_rstd.data(), B_f.data(), N, C);
    ops::residual_forward(out, B_h.data(), B_po.data(), N * C);
  } else {
    ops::residual_forward(out, B_h.data(), B_f.data(), N * C);
  }
}

void Model::block_backward(int64_t l, const float* x, const float* dout, float* dx, const BlockCtx& ctx,
                           BlockActs& a) {
  const ModelConfig& c = cfg;
  Layer& L = layers[size_t(l)];
  const LayerSpec& spec = c.layers[size_t(l)];
  const int64_t N = ctx.N, C = c.dim, F = c.ffn, H = c.n_head, KVH = c.n_kv_head, D = c.head_dim;
  const int64_t HD = c.q_dim(), KD = c.kv_dim();
  const bool ff = full_finetune;
  // What gets gradients in this block (LoRA of the trained adapter, or everything when
  // fully fine-tuning); dx != null means a layer below needs the input gradient.
  const bool t_qkv = ff || (c.fused_qkv ? linear_trainable(L.qkv, a.s_qkv)
                                        : linear_trainable(L.q, a.s_q) || linear_trainable(L.k, a.s_k) ||
                                              linear_trainable(L.v, a.s_v));
  const bool t_o = ff || linear_trainable(L.o, a.s_o);
  const bool t_mlp_in = ff || (c.fused_gate_up ? linear_trainable(L.gate_up, a.s_gate_up)
                                               : linear_trainable(L.up, a.s_up) ||
                                                     (c.gated_ffn && linear_trainable(L.gate, a.s_gate)));
  const bool t_down = ff || linear_trainable(L.down, a.s_down);
  const bool in_grad = dx != nullptr;
  const bool mid_grad = in_grad || t_qkv || t_o;  // gradient needed at h (into the attention branch)
  const bool mlp_inner = mid_grad || t_mlp_in;    // gradient needed inside the MLP
  BlockActs& S = *shared_acts();                   // gradient scratch, shared by the layers

  ensure(S.d_h, N * C);
  std::memcpy(S.d_h.data(), dout, size_t(N * C) * 4);  // residual: d h = d out + (MLP branch)
  // ---- MLP branch: out = h + [post_ffn_norm](down(act(...)))
  if (mlp_inner || t_down) {
    const float* d_f = dout;
    if (c.post_norms) {
      ensure(S.d_f, N * C);
      norm_backward(L.post_ffn_norm, S.d_f.data(), dout, a.f.data(), nullptr, a.pf_rstd.data(), N, C, false);
      d_f = S.d_f.data();
    }
    ensure(S.d_act, N * F);
    linear_backward(L.down, a.act.data(), d_f, mlp_inner ? S.d_act.data() : nullptr, N, a.s_down, false);
    if (mlp_inner) {
      ensure(S.d_up, N * F);
      float* d_b = nullptr;
      if (mid_grad) {
        ensure(S.d_b, N * C);
        d_b = S.d_b.data();
      }
      if (c.gated_ffn) {
        ensure(S.d_gate, N * F);
        if (c.act == Activation::SILU)
          ops::swiglu_backward_set(S.d_gate.data(), S.d_up.data(), S.d_act.data(), a.gate.data(), a.up.data(), N * F);
        else
          ops::geglu_backward_set(S.d_gate.data(), S.d_up.data(), S.d_act.data(), a.gate.data(), a.up.data(), N * F);
        if (c.fused_gate_up) {
          ensure(S.d_gu, N * 2 * F);
          put_cols(S.d_gu.data(), S.d_gate.data(), N, F, 2 * F, 0);
          put_cols(S.d_gu.data(), S.d_up.data(), N, F, 2 * F, F);
          linear_backward(L.gate_up, a.b.data(), S.d_gu.data(), d_b, N, a.s_gate_up, false);
        } else {
          linear_backward(L.up, a.b.data(), S.d_up.data(), d_b, N, a.s_up, false);
          linear_backward(L.gate, a.b.data(), S.d_gate.data(), d_b, N, a.s_gate, true);
        }
      } else {
        ops::gelu_backward_set(S.d_up.data(), S.d_act.data(), a.up.data(), N * F);
        linear_backward(L.up, a.b.data(), S.d_up.data(), d_b, N, a.s_up, false);
      }
      if (mid_grad)
        norm_backward(L.ffn_norm, S.d_h.data(), S.d_b.data(), a.h.data(), a.b_mean.data(), a.b_rstd.data(), N, C, true);
    }
  }
  if (!mid_grad) return;
  // ---- attention branch: h = x + [post_attn_norm](o(att))
  const float* d_o = S.d_h.data();
  if (c.post_norms) {
    ensure(S.d_o, N * C);
    norm_backward(L.post_attn_norm, S.d_o.data(), S.d_h.data(), a.o.data(), nullptr, a.po_rstd.data(), N, C, false);
    d_o = S.d_o.data();
  }
  const bool att_grad = in_grad || t_qkv;
  ensure(S.d_att, N * HD);
  linear_backward(L.o, a.att.data(), d_o, att_grad ? S.d_att.data() : nullptr, N, a.s_o, false);
  if (att_grad) {
    ensure(S.d_q, N * HD);
    ensure(S.d_k, N * KD);
    ensure(S.d_v, N * KD);
    ops::AttnShape shape{H, KVH, D, c.attn_scale, c.attn_softcap, spec.window};
    std::vector<ops::AttnSeqGrad> segs;
    for (const AttnSegment& s : ctx.segs) {
      if (s.cache) fail("block backward: attention against a KV cache has no backward");
      ops::AttnSeqGrad g{};
      g.q = a.q.data() + s.row0 * HD;
      g.k = a.k.data() + s.row0 * KD;
      g.v = a.v.data() + s.row0 * KD;
      g.out = a.att.data() + s.row0 * HD;
      g.dout = S.d_att.data() + s.row0 * HD;
      g.lse = a.lse.data() + 2 * s.row0 * H;
      g.dq = S.d_q.data() + s.row0 * HD;
      g.dk = S.d_k.data() + s.row0 * KD;
      g.dv = S.d_v.data() + s.row0 * KD;
      g.start = 0;
      g.n = s.n;
      segs.push_back(g);
    }
    ops::attention_flash_backward(segs.data(), int64_t(segs.size()), HD, HD, KD, shape);
    if (c.arch == Arch::LLAMA) {
      const RopeConfig& rope = c.ropes[size_t(spec.rope)];
      const float* cs = (*ctx.cos)[size_t(spec.rope)].data();
      const float* sn = (*ctx.sin)[size_t(spec.rope)].data();
      ops::rope_apply(S.d_q.data(), N, H, D, rope.dim, cs, sn, true);
      ops::rope_apply(S.d_k.data(), N, KVH, D, rope.dim, cs, sn, true);
    }
    if (c.qk_norm) {
      // Through the norms: d_q, d_k become the gradients of q_raw, k_raw.
      std::vector<float> g = S.d_q;
      norm_backward(L.q_norm, S.d_q.data(), g.data(), a.q_raw.data(), nullptr, a.qn_rstd.data(), N * H, D, false);
      g = S.d_k;
      norm_backward(L.k_norm, S.d_k.data(), g.data(), a.k_raw.data(), nullptr, a.kn_rstd.data(), N * KVH, D, false);
    }
    float* d_a = nullptr;
    if (in_grad) {
      ensure(S.d_a, N * C);
      d_a = S.d_a.data();
    }
    if (c.fused_qkv) {
      ensure(S.d_qkv, N * (HD + 2 * KD));
      put_cols(S.d_qkv.data(), S.d_q.data(), N, HD, HD + 2 * KD, 0);
      put_cols(S.d_qkv.data(), S.d_k.data(), N, KD, HD + 2 * KD, HD);
      put_cols(S.d_qkv.data(), S.d_v.data(), N, KD, HD + 2 * KD, HD + KD);
      linear_backward(L.qkv, a.a.data(), S.d_qkv.data(), d_a, N, a.s_qkv, false);
    } else {
      linear_backward(L.q, a.a.data(), S.d_q.data(), d_a, N, a.s_q, false);
      linear_backward(L.k, a.a.data(), S.d_k.data(), d_a, N, a.s_k, true);
      linear_backward(L.v, a.a.data(), S.d_v.data(), d_a, N, a.s_v, true);
    }
    if (in_grad) {
      std::memcpy(dx, S.d_h.data(), size_t(N * C) * 4);
      norm_backward(L.attn_norm, dx, d_a, x, a.a_mean.data(), a.a_rstd.data(), N, C, true);
    }
  }
}

}  // namespace lowrank
