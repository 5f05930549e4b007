// Private to src/model: what one call of the transformer block needs (BlockCtx) and what it
// keeps for the backward (BlockActs). Shapes: N rows (tokens of the forward), C = hidden,
// HD = H·D, KD = KVH·D, F = FFN size.
#pragma once
#include <vector>

#include "model/model.h"

namespace lowrank {

// Where attention reads keys and values from, per sequence of the forward.
struct AttnSegment {
  int64_t row0 = 0, n = 0;   // rows of the forward
  int64_t start = 0;         // position of the first row
  KVCache* cache = nullptr;  // null: the rows' own fresh k/v (training/eval, start = 0)
};

struct Model::BlockCtx {
  int64_t N = 0;
  const std::vector<RowGroup>* groups = nullptr;  // adapter lists by rows
  bool training = false;                          // save activations for the backward
  const std::vector<std::vector<float>>* cos = nullptr;  // per rope: (N, rot/2)
  const std::vector<std::vector<float>>* sin = nullptr;
  std::vector<AttnSegment> segs;
  std::vector<char> below;  // training: (n_layer) something under layer l gets gradients; empty = all
};

struct Model::BlockActs {
  std::vector<float> a, a_rstd, a_mean;   // (N, C), (N), (N): attn_norm(x)
  std::vector<float> qkv;                 // (N, HD + 2·KD) fused projection output
  std::vector<float> q_raw, k_raw;        // (N, HD), (N, KD) before q/k norm
  std::vector<float> qn_rstd, kn_rstd;    // (N·H), (N·KVH)
  std::vector<float> q, k, v;             // (N, HD), (N, KD), (N, KD) after norm + RoPE
  std::vector<float> lse;                 // per segment (H, n, 2) row max and 1/Σexp, concatenated: (2·H·N)
  std::vector<float> att;                 // (N, HD) attention output
  std::vector<float> o;                   // (N, C) o_proj output
  std::vector<float> po, po_rstd;         // (N, C), (N) post_attn_norm(o)
  std::vector<float> h;                   // (N, C) x + attention branch
  std::vector<float> b, b_rstd, b_mean;   // (N, C), (N), (N): ffn_norm(h)
  std::vector<float> gu;                  // (N, 2F) fused gate_up output
  std::vector<float> gate, up;            // (N, F)
  std::vector<float> act;                 // (N, F)
  std::vector<float> f;                   // (N, C) down output
  std::vector<float> pf_rstd;             // (N) post_ffn_norm
  LinearSaved s_q, s_k, s_v, s_qkv, s_o, s_gate, s_up, s_gate_up, s_down;
  // Backward scratch (used in the model's shared BlockActs only).
  std::vector<float> d_f, d_act, d_gate, d_up, d_gu, d_b, d_h, d_o, d_att, d_q, d_k, d_v, d_qkv, d_a;
};

}  // namespace lowrank
