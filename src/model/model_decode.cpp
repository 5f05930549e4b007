// Batched single-token decode over independent sequences, each with its own KV cache and
// adapter list (the serving path). Mirrors Model::forward_cached with T = 1 per sequence; the
// linears run once over all S rows, so the base weights are read once per step for the whole
// batch and the per-row adapters are applied by the grouped LoRA path of linear_forward.
#include <cstring>

#include "core/error.h"
#include "model/model.h"
#include "ops/ops.h"

namespace lowrank {

std::vector<float> Model::forward_decode_batch(const std::vector<int32_t>& ids, const std::vector<KVCache*>& caches,
                                               const std::vector<std::vector<AdapterUse>>& rows) {
  const ModelConfig& c = cfg;
  const int64_t S = int64_t(ids.size()), C = c.dim, V = c.vocab, F = c.ffn;
  const int64_t H = c.n_head, KVH = c.n_kv_head, D = c.head_dim, HD = H * D, KD = KVH * D;
  if (S == 0) fail("forward_decode_batch: no sequences");
  if (int64_t(caches.size()) != S || int64_t(rows.size()) != S)
    fail("forward_decode_batch: ", S, " ids but ", caches.size(), " caches and ", rows.size(), " adapter lists");
  std::vector<int32_t> pos(static_cast<size_t>(S));  // (S)
  for (int64_t s = 0; s < S; s++) {
    const KVCache& kv = *caches[size_t(s)];
    if (kv.len + 1 > kv.capacity) fail("KV cache full: ", kv.len + 1, " > ", kv.capacity, " positions");
    if (c.arch == Arch::GPT2 && kv.len + 1 > c.max_pos)
      fail("sequence length ", kv.len + 1, " exceeds the model's ", c.max_pos, " positions");
    if (ids[size_t(s)] < 0 || ids[size_t(s)] >= V)
      fail("token id ", ids[size_t(s)], " is outside the vocabulary (", V, ")");
    pos[size_t(s)] = int32_t(kv.len);
  }
  std::vector<float> x(size_t(S * C)), ln(size_t(S * C)), tmp(size_t(S * C));  // (S, C)
  std::vector<float> mean(static_cast<size_t>(S)), rstd(static_cast<size_t>(S));  // (S)
  std::vector<float> q, k, v, qkv, up, atty(size_t(S * HD));                      // (S, ·)
  std::vector<float> fc(size_t(S * F)), act(size_t(S * F));                      // (S, F)
  if (c.arch == Arch::GPT2) {
    qkv.resize(size_t(S * 3 * C));
  } else {
    q.resize(size_t(S * HD));
    k.resize(size_t(S * KD));
    v.resize(size_t(S * KD));
    up.resize(size_t(S * F));
  }
  ops::embedding_forward(x.data(), ids.data(), wte, S);
  if (c.arch == Arch::GPT2)
    for (int64_t s = 0; s < S; s++)
      for (int64_t i = 0; i < C; i++) x[size_t(s * C + i)] += wpe.ptr()[pos[size_t(s)] * C + i];
  // The linears see the S sequences as S batch rows of one token each.
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = layers[size_t(l)];
    norm_forward(L.norm1, ln.data(), mean.data(), rstd.data(), x.data(), S);
    const float* qp;  // row s of the queries at qp + s*qs
    int64_t qs;
    if (c.arch == Arch::GPT2) {
      linear_forward(L.qkv, ln.data(), qkv.data(), S, 1, rows, false, nullptr);
      for (int64_t s = 0; s < S; s++) {
        KVCache& kv = *caches[size_t(s)];
        std::memcpy(kv.k[size_t(l)].data() + kv.len * KD, qkv.data() + s * 3 * C + C, size_t(C) * 4);
        std::memcpy(kv.v[size_t(l)].data() + kv.len * KD, qkv.data() + s * 3 * C + 2 * C, size_t(C) * 4);
      }
      qp = qkv.data();
      qs = 3 * C;
    } else {
      linear_forward(L.q, ln.data(), q.data(), S, 1, rows, false, nullptr);
      linear_forward(L.k, ln.data(), k.data(), S, 1, rows, false, nullptr);
      linear_forward(L.v, ln.data(), v.data(), S, 1, rows, false, nullptr);
      ops::rope_forward(q.data(), pos.data(), S, H, D, c.rope_theta, c.rope_half);
      ops::rope_forward(k.data(), pos.data(), S, KVH, D, c.rope_theta, c.rope_half);
      for (int64_t s = 0; s < S; s++) {
        KVCache& kv = *caches[size_t(s)];
        std::memcpy(kv.k[size_t(l)].data() + kv.len * KD, k.data() + s * KD, size_t(KD) * 4);
        std::memcpy(kv.v[size_t(l)].data() + kv.len * KD, v.data() + s * KD, size_t(KD) * 4);
      }
      qp = q.data();
      qs = HD;
    }
    for (int64_t s = 0; s < S; s++) {
      const KVCache& kv = *caches[size_t(s)];
      ops::attention_decode(atty.data() + s * HD, qp + s * qs, kv.k[size_t(l)].data(), kv.v[size_t(l)].data(),
                            kv.len + 1, H, KVH, D);
    }
    linear_forward(L.o, atty.data(), tmp.data(), S, 1, rows, false, nullptr);
    for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    norm_forward(L.norm2, ln.data(), mean.data(), rstd.data(), x.data(), S);
    linear_forward(L.fc, ln.data(), fc.data(), S, 1, rows, false, nullptr);
    if (c.arch == Arch::GPT2) {
      ops::gelu_forward(act.data(), fc.data(), S * F);
    } else {
      linear_forward(L.up, ln.data(), up.data(), S, 1, rows, false, nullptr);
      ops::swiglu_forward(act.data(), fc.data(), up.data(), S * F);
    }
    linear_forward(L.down, act.data(), tmp.data(), S, 1, rows, false, nullptr);
    for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
  }
  for (KVCache* kv : caches) kv->len += 1;
  norm_forward(norm_f, ln.data(), mean.data(), rstd.data(), x.data(), S);
  std::vector<float> logits(size_t(S * V));  // (S, V)
  linear_forward(lm_head, ln.data(), logits.data(), S, 1, rows, false, nullptr);
  return logits;
}

}  // namespace lowrank
