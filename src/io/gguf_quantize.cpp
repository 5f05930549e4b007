#include "io/gguf_quantize.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>

#include "core/error.h"
#include "quants/dequant.h"
#include "quants/quantize.h"

namespace lowrank {
namespace {

// LLAMA_FTYPE_* values (llama.h).
enum Ftype : uint32_t {
  ALL_F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, Q5_0 = 8, Q5_1 = 9, Q2_K = 10, Q3_K_S = 11,
  Q3_K_M = 12, Q3_K_L = 13, Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17, Q6_K = 18,
  IQ4_NL = 25, IQ4_XS = 30, BF16 = 32, TQ1_0 = 36, TQ2_0 = 37, MXFP4_MOE = 38,
};

struct PresetRow {
  const char* name;
  uint32_t ftype;
  DType type;
};
const PresetRow kPresets[] = {
    {"F32", ALL_F32, DType::F32},     {"F16", F16, DType::F16},         {"BF16", BF16, DType::BF16},
    {"Q8_0", Q8_0, DType::Q8_0},      {"Q4_0", Q4_0, DType::Q4_0},      {"Q4_1", Q4_1, DType::Q4_1},
    {"Q5_0", Q5_0, DType::Q5_0},      {"Q5_1", Q5_1, DType::Q5_1},      {"Q2_K", Q2_K, DType::Q2_K},
    {"Q3_K_S", Q3_K_S, DType::Q3_K},  {"Q3_K_M", Q3_K_M, DType::Q3_K},  {"Q3_K_L", Q3_K_L, DType::Q3_K},
    {"Q4_K_S", Q4_K_S, DType::Q4_K},  {"Q4_K_M", Q4_K_M, DType::Q4_K},  {"Q5_K_S", Q5_K_S, DType::Q5_K},
    {"Q5_K_M", Q5_K_M, DType::Q5_K},  {"Q6_K", Q6_K, DType::Q6_K},      {"IQ4_NL", IQ4_NL, DType::IQ4_NL},
    {"IQ4_XS", IQ4_XS, DType::IQ4_XS},  {"TQ1_0", TQ1_0, DType::TQ1_0},  {"TQ2_0", TQ2_0, DType::TQ2_0},
    {"MXFP4_MOE", MXFP4_MOE, DType::MXFP4},
};
// llama-quantize's aliases.
const std::pair<const char*, const char*> kAliases[] = {{"Q3_K", "Q3_K_M"}, {"Q4_K", "Q4_K_M"}, {"Q5_K", "Q5_K_M"}};

std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

enum class Category { TOKEN_EMBD, ATTN_Q, ATTN_V, ATTN_K, ATTN_QKV, ATTN_KV_B, ATTN_OUTPUT, FFN_UP, FFN_GATE, FFN_DOWN, OUTPUT, OTHER };

// tensor_get_category of llama-quant.cpp.
Category category_of(const std::string& n) {
  if (n == "output.weight") return Category::OUTPUT;
  if (n == "token_embd.weight" || n == "per_layer_token_embd.weight") return Category::TOKEN_EMBD;
  if (contains(n, "attn_qkv.weight")) return Category::ATTN_QKV;
  if (contains(n, "attn_kv_b.weight")) return Category::ATTN_KV_B;
  if (contains(n, "attn_v.weight")) return Category::ATTN_V;
  if (contains(n, "attn_k.weight")) return Category::ATTN_K;
  if (contains(n, "attn_q.weight")) return Category::ATTN_Q;
  if (contains(n, "attn_output.weight")) return Category::ATTN_OUTPUT;
  if (contains(n, "ffn_up")) return Category::FFN_UP;
  if (contains(n, "ffn_gate")) return Category::FFN_GATE;
  if (contains(n, "ffn_down")) return Category::FFN_DOWN;
  return Category::OTHER;
}
bool is_attn_v_like(Category c) {
  return c == Category::ATTN_V || c == Category::ATTN_QKV || c == Category::ATTN_KV_B;
}

// ggml_n_dims: 1 + the index of the last dimension larger than 1.
int n_dims(const std::vector<int64_t>& ne) {
  int n = 1;
  for (size_t i = 1; i < ne.size(); i++)
    if (ne[i] > 1) n = int(i) + 1;
  return n;
}

// tensor_allows_quantization of llama-quant.cpp (quantize_output_tensor on, no only_copy).
bool allows_quantization(const std::string& name, const std::vector<int64_t>& ne) {
  if (n_dims(ne) < 2) return false;
  if (!ends_with(name, "weight")) return false;
  static const char* const kNever[] = {
      "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
      "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
      "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
      "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
      "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
      "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
      "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
      "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
  };
  for (const char* s : kNever)
    if (contains(name, s)) return false;
  return name != "position_embd.weight" && name != "token_types.weight";
}

int layer_of(const std::string& name) {
  int l = -1;
  if (std::sscanf(name.c_str(), "blk.%d.", &l) != 1) return -1;
  return l;
}

struct State {
  QuantModelInfo hp;
  int n_attention_wv = 0, i_attention_wv = 0;
  int n_ffn_down = 0, i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
  bool tied = true;  // no output.weight: token_embd doubles as the output matrix
  bool has_imatrix = false;
};

int n_gqa(const QuantModelInfo& h) { return h.n_head_kv > 0 ? h.n_head / h.n_head_kv : 0; }

bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

// The layer index of a per-layer tensor: the running count, or (mixture-of-experts models)
// the number in its name.
int layer_index(const State& s, int counter, const std::string& path, const std::string& name) {
  if (s.hp.n_expert <= 1) return counter;
  const int l = layer_of(name);
  if (l < 0 || l >= s.hp.n_layer) fail(path, ": tensor '", name, "': cannot tell its layer (block_count ", s.hp.n_layer, ")");
  return l;
}

// llama_tensor_get_type_impl for the presets above (the IQ1/IQ2/IQ3, Q2_K_S, Q1_0/Q2_0 and NVFP4
// mixtures are not among them: the first need an importance matrix, the last have no codec here).
DType mixture_type(State& s, DType t, const std::string& path, const std::string& name,
                   const std::vector<int64_t>& ne, uint32_t ftype, Category cat) {
  const bool falcon = s.hp.arch == "falcon";
  if (cat == Category::OUTPUT || (s.tied && cat == Category::TOKEN_EMBD)) {
    if (ftype == MXFP4_MOE || falcon || ne[0] % dtype_block_elems(t) != 0) return DType::Q8_0;
    return t != DType::Q8_0 ? DType::Q6_K : t;
  }
  if (ftype == MXFP4_MOE) {  // expert tensors (3-D) MXFP4, everything else Q8_0
    const bool expert_role = cat == Category::FFN_UP || cat == Category::FFN_GATE || cat == Category::FFN_DOWN;
    const bool expert = ne.size() > 2 && ne[2] > 1;
    return expert && (s.hp.arch != "bailingmoe3" || expert_role) ? DType::MXFP4 : DType::Q8_0;
  }
  if (cat == Category::TOKEN_EMBD) return (ftype == TQ1_0 || ftype == TQ2_0) ? DType::Q4_K : t;
  if (is_attn_v_like(cat)) {
    if (ftype == Q2_K) t = n_gqa(s.hp) >= 4 ? DType::Q4_K : DType::Q3_K;
    else if (ftype == Q3_K_M) t = s.i_attention_wv < 2 ? DType::Q5_K : DType::Q4_K;
    else if (ftype == Q3_K_L) t = DType::Q5_K;
    else if ((ftype == IQ4_NL || ftype == IQ4_XS) && n_gqa(s.hp) >= 4) t = DType::Q5_K;
    else if ((ftype == Q4_K_M || ftype == Q5_K_M) && use_more_bits(s.i_attention_wv, s.n_attention_wv)) t = DType::Q6_K;
    else if (ftype == Q4_K_S && s.i_attention_wv < 4) t = DType::Q5_K;
    const bool is_70b = s.hp.arch == "llama" && s.hp.n_layer == 80 && s.hp.n_head != s.hp.n_head_kv;
    if (is_70b && (t == DType::Q3_K || t == DType::Q4_K)) t = DType::Q5_K;
    if (s.hp.n_expert == 8) t = DType::Q8_0;
    s.i_attention_wv++;
    return t;
  }
  if (cat == Category::ATTN_K) return s.hp.n_expert == 8 ? DType::Q8_0 : t;
  if (cat == Category::ATTN_Q) return t;
  if (cat == Category::FFN_DOWN) {
    const int i = layer_index(s, s.i_ffn_down, path, name), n = s.n_ffn_down;
    if (ftype == Q2_K) t = DType::Q3_K;
    else if (ftype == Q3_K_M) t = i < n / 16 ? DType::Q5_K : (!falcon || use_more_bits(i, n)) ? DType::Q4_K : DType::Q3_K;
    else if (ftype == Q3_K_L) t = falcon ? DType::Q4_K : DType::Q5_K;
    else if (ftype == Q4_K_M) {
      if (falcon) t = i < n / 16 ? DType::Q6_K : use_more_bits(i, n) ? DType::Q5_K : DType::Q4_K;
      else if (use_more_bits(i, n)) t = DType::Q6_K;
    } else if (i < n / 8 && (ftype == IQ4_NL || ftype == IQ4_XS) && !s.has_imatrix) t = DType::Q5_K;
    else if (ftype == Q5_K_M && use_more_bits(i, n)) t = DType::Q6_K;
    else if (ftype == Q4_K_S && !falcon && i < n / 8) t = DType::Q5_K;
    else if ((ftype == Q4_0 || ftype == Q5_0) && s.has_imatrix && i < n / 8) t = ftype == Q4_0 ? DType::Q4_1 : DType::Q5_1;
    s.i_ffn_down++;
    return t;
  }
  if (cat == Category::ATTN_OUTPUT) {
    if (!falcon) {
      if (s.hp.n_expert == 8) {
        if (ftype == Q2_K || ftype == Q3_K_S || ftype == Q3_K_M || ftype == IQ4_NL || ftype == Q4_K_S ||
            ftype == Q4_K_M || ftype == IQ4_XS)
          t = DType::Q5_K;
      } else {
        if (ftype == Q2_K) t = DType::Q3_K;
        else if (ftype == Q3_K_M) t = DType::Q4_K;
        else if (ftype == Q3_K_L) t = DType::Q5_K;
      }
    } else if (ftype == Q3_K_L) {
      t = DType::Q4_K;
    }
    return t;
  }
  if (cat == Category::FFN_GATE) {
    (void)layer_index(s, s.i_ffn_gate, path, name);
    s.i_ffn_gate++;
    return t;
  }
  if (cat == Category::FFN_UP) {
    (void)layer_index(s, s.i_ffn_up, path, name);
    s.i_ffn_up++;
    return t;
  }
  return t;
}

// tensor_type_fallback: a type whose block does not divide the row length.
DType fallback_type(const std::string& path, const std::string& name, int64_t ncols, DType t, bool* fell) {
  *fell = false;
  if (ncols % dtype_block_elems(t) == 0) return t;
  *fell = true;
  DType r;
  switch (t) {
    case DType::IQ1_S: case DType::IQ1_M: case DType::IQ2_XXS: case DType::IQ2_XS: case DType::IQ2_S:
    case DType::IQ3_XXS: case DType::IQ3_S: case DType::IQ4_XS: r = DType::IQ4_NL; break;
    case DType::Q2_K: case DType::Q3_K: case DType::TQ1_0: case DType::TQ2_0: r = DType::Q4_0; break;
    case DType::Q4_K: r = DType::Q5_0; break;
    case DType::Q5_K: r = DType::Q5_1; break;
    case DType::Q6_K: r = DType::Q8_0; break;
    default:
      fail(path, ": tensor '", name, "': row length ", ncols, " is not a multiple of the ", dtype_name(t),
           " block size ", dtype_block_elems(t), " and llama.cpp defines no fallback type for ", dtype_name(t));
  }
  if (ncols % dtype_block_elems(r) != 0) r = DType::F16;
  return r;
}

// weight_name_comparer of llama-model-loader.h: by layer number (non-layer tensors first),
// then by name.
bool weight_order(const std::string& a, const std::string& b) {
  const int la = layer_of(a), lb = layer_of(b);
  if (la != lb) return la < lb;
  return a < b;
}

}  // namespace

bool quant_preset(const std::string& name, QuantPreset* out) {
  std::string n = upper(name);
  for (const auto& [a, b] : kAliases)
    if (n == a) n = b;
  for (const PresetRow& r : kPresets) {
    if (n == r.name) {
      *out = QuantPreset{r.name, r.ftype, r.type};
      return true;
    }
  }
  return false;
}

std::vector<std::string> quant_preset_names() {
  std::vector<std::string> v;
  for (const PresetRow& r : kPresets) v.push_back(r.name);
  return v;
}

QuantModelInfo quant_model_info(const GgufFile& f) {
  QuantModelInfo h;
  h.arch = f.get_string("general.architecture", "");
  const std::string p = h.arch + ".";
  h.n_layer = int(f.get_int(p + "block_count", 0));
  // Head counts are per-layer arrays in some families; the rules read layer 0's.
  auto first = [&](const std::string& key, int64_t def) -> int64_t {
    const GgufValue* v = f.find(key);
    if (!v) return def;
    if (v->is_array()) {
      const std::vector<int32_t> a = f.get_int_array(key);
      return a.empty() ? def : a[0];
    }
    return f.get_int(key, def);
  };
  h.n_head = int(first(p + "attention.head_count", 0));
  h.n_head_kv = int(first(p + "attention.head_count_kv", h.n_head));
  h.n_expert = int(f.get_int(p + "expert_count", 0));
  return h;
}

std::vector<TensorQuantPlan> plan_quantization(std::vector<TensorQuantPlan> ts, const QuantModelInfo& info,
                                               const QuantPreset& p, bool pure, const std::string& path,
                                               bool has_imatrix) {
  State s;
  s.hp = info;
  s.has_imatrix = has_imatrix;
  for (const TensorQuantPlan& t : ts) {
    const Category c = category_of(t.name);
    if (is_attn_v_like(c)) s.n_attention_wv++;
    if (c == Category::OUTPUT) s.tied = false;
  }
  s.n_ffn_down = s.hp.n_layer;
  std::vector<size_t> order(ts.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return weight_order(ts[a].name, ts[b].name); });
  const bool quantized_mix = dtype_is_quantized(p.default_type);
  for (size_t i : order) {
    TensorQuantPlan& tp = ts[i];
    tp.to = tp.from;
    tp.fallback = false;
    if (tp.ne.empty() || !allows_quantization(tp.name, tp.ne)) continue;
    DType nt = p.default_type;
    if (quantized_mix) {
      if (!pure) nt = mixture_type(s, nt, path, tp.name, tp.ne, p.ftype, category_of(tp.name));
      nt = fallback_type(path, tp.name, tp.ne[0], nt, &tp.fallback);
    }
    tp.to = nt;
  }
  return ts;
}

std::vector<TensorQuantPlan> plan_quantization(const GgufFile& f, const QuantPreset& p, bool pure, bool has_imatrix) {
  std::vector<TensorQuantPlan> ts;
  for (const GgufTensorInfo& t : f.tensors()) ts.push_back(TensorQuantPlan{t.name, t.ne, t.dtype, t.dtype, false});
  return plan_quantization(std::move(ts), quant_model_info(f), p, pure, f.path(), has_imatrix);
}

QuantizeStats quantize_gguf(const std::string& in, const std::string& out, const QuantPreset& p,
                            const QuantizeOptions& opt) {
  GgufFile f = GgufFile::open(in);
  const std::vector<TensorQuantPlan> plan = plan_quantization(f, p, opt.pure, opt.uniform_imatrix);
  GgufWriter w;
  for (const auto& [key, v] : f.metadata()) w.set_raw(key, v);
  w.set_u32("general.quantization_version", 2);  // GGML_QNT_VERSION
  w.set_u32("general.file_type", p.ftype);
  for (const char* k : {"split.no", "split.count", "split.tensors.count"}) w.remove(k);
  QuantizeStats st;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> keep;  // requantized data until write()
  const int nthreads = opt.threads > 0 ? opt.threads : omp_get_max_threads();
  for (size_t i = 0; i < plan.size(); i++) {
    const TensorQuantPlan& tp = plan[i];
    const GgufTensorInfo& t = f.tensors()[i];
    st.tensors++;
    st.elements += t.n_elements;
    st.bytes_in += t.nbytes;
    st.fallbacks += tp.fallback;
    if (tp.to == tp.from) {
      w.add_tensor(t.name, t.ne, t.ggml_type, t.data, t.nbytes);
      st.copied++;
      st.bytes_out += t.nbytes;
      continue;
    }
    if (!dtype_is_weight(tp.from)) {
      fail(in, ": tensor '", t.name, "' of type ", dtype_name(tp.from), " cannot be converted to ", dtype_name(tp.to));
    }
    if (!quants::can_quantize(tp.to)) fail(out, ": tensor '", t.name, "': no encoder for ", dtype_name(tp.to));
    const int64_t cols = t.ne[0], rows = t.n_elements / std::max<int64_t>(1, cols);
    const size_t in_row = dtype_bytes(tp.from, cols), out_row = dtype_bytes(tp.to, cols);
    auto buf = std::make_shared<std::vector<uint8_t>>(out_row * size_t(rows));  // (rows, out_row)
    const std::vector<float> ones(opt.uniform_imatrix ? size_t(cols) : 0, 1.0f);  // (cols) importance
    const uint8_t* src = static_cast<const uint8_t*>(t.data);
    constexpr int64_t kChunk = 16;  // rows per task
    const int64_t nchunks = (rows + kChunk - 1) / kChunk;
    bool ok = true;
    int64_t bad_row = rows;  // first row holding a NaN or infinity (llama.cpp refuses those too)
#pragma omp parallel num_threads(nthreads) reduction(&& : ok) reduction(min : bad_row)
    {
      std::vector<float> tmp(size_t(kChunk * cols));  // (kChunk, cols)
#pragma omp for schedule(dynamic)
      for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * kChunk, n = std::min(kChunk, rows - r0);
        ok = ok && quants::dequantize_row(tp.from, src + size_t(r0) * in_row, tmp.data(), n * cols) &&
             quants::quantize_rows(tp.to, tmp.data(), buf->data() + size_t(r0) * out_row, n, cols,
                                   opt.uniform_imatrix ? ones.data() : nullptr);
        for (int64_t i = 0; i < n * cols; i++) {
          if (!std::isfinite(tmp[size_t(i)])) {
            bad_row = std::min(bad_row, r0 + i / cols);
            break;
          }
        }
      }
    }
    if (!ok) fail(in, ": tensor '", t.name, "': conversion from ", dtype_name(tp.from), " to ", dtype_name(tp.to), " failed");
    if (bad_row < rows) {
      fail(in, ": tensor '", t.name, "': row ", bad_row, " holds a NaN or infinite value; refusing to quantize it to ",
           dtype_name(tp.to));
    }
    w.add_tensor(t.name, t.ne, tp.to, buf->data(), buf->size());
    keep.push_back(buf);
    st.requantized++;
    st.bytes_out += buf->size();
  }
  w.write(out);
  return st;
}

}  // namespace lowrank
