#include "model/convert.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>

#include "core/error.h"
#include "io/gguf.h"
#include "quants/quantize.h"
#include "model/names.h"
#include "tokenizer/gguf_vocab.h"

namespace lowrank {

namespace {

// Tensors are produced when the file is written, one at a time (an 8B model is never held
// in memory a second time): each is a function giving the f32 values (rows, cols).
struct Writer {
  GgufWriter w;
  const ConvertOptions& opt;

  void tensor(const std::string& name, std::function<std::vector<float>()> values, int64_t rows, int64_t cols,
              DType stored = DType::F32) {
    DType t = rows > 1 ? opt.type : DType::F32;
    if (rows > 1 && opt.source_type)
      t = stored == DType::F16 || stored == DType::BF16 ? stored : DType::F32;
    std::vector<int64_t> ne = rows > 1 ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{cols};
    w.add_tensor_lazy(name, ne, t, dtype_bytes(t, rows * cols), [=](uint8_t* dst) {
      const std::vector<float> v = values();
      if (!quants::quantize_row(t, v.data(), dst, rows * cols))
        fail("convert: writing ", dtype_name(t), " tensors is not supported");
    });
  }
  void tensor(const std::string& name, std::vector<float> v, int64_t rows, int64_t cols) {
    auto shared = std::make_shared<std::vector<float>>(std::move(v));
    tensor(name, [shared] { return *shared; }, rows, cols);
  }
};

}  // namespace

void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out, const ConvertOptions& opt) {
  std::unique_ptr<Model> model = load_hf_model(hf_dir);
  Model& m = *model;
  const ModelConfig& c = m.cfg;
  if (c.family == Family::GPT2) fail(hf_dir, ": converting gpt2 models to GGUF is not supported");
  const std::string arch = gguf_arch_name(c);
  const std::string P = arch + ".";
  const bool gemma = c.family == Family::GEMMA2 || c.family == Family::GEMMA3;
  const std::string cfg_path = hf_dir + "/config.json";

  // What llama.cpp's graph for the architecture cannot express is refused.
  if (gemma && std::fabs(c.attn_scale * std::sqrt(float(c.head_dim)) - 1.f) > 1e-6f)
    fail(cfg_path, ": query_pre_attn_scalar differs from head_dim; llama.cpp's ", arch,
         " uses 1/sqrt(head_dim), so the GGUF would compute another model");
  for (const RopeConfig& r : c.ropes)
    if (r.scaling == RopeScaling::YARN &&
        (r.beta_fast != 32.f || r.beta_slow != 1.f ||
         std::fabs(r.attn_factor - (r.factor <= 1.f ? 1.f : float(0.1 * std::log(double(r.factor)) + 1.0))) > 1e-6f))
      fail(cfg_path, ": rope_scaling yarn with beta_fast/beta_slow/attention_factor other than the defaults: llama.cpp's ",
           arch, " reads none of them");
  if (c.ropes[0].dim != c.head_dim && c.family != Family::PHI3)
    fail(cfg_path, ": partial rotary embedding: not supported for GGUF architecture ", arch);
  if (gemma && c.ropes.size() > 1 && (c.ropes[1].theta != 10000.f || c.ropes[1].scaling != RopeScaling::NONE))
    fail(cfg_path, ": llama.cpp's gemma3 fixes the sliding layers' RoPE base at 10000 without scaling");
  // Sliding windows: llama.cpp applies them only for gemma2/gemma3 (fixed patterns) and phi3.
  int64_t window = 0, max_ctx = c.max_pos;
  for (const LayerSpec& l : c.layers) window = std::max(window, l.window);
  if (window > 0 && !gemma && c.family != Family::PHI3) {
    // llama.cpp's llama/qwen2/qwen3 graphs ignore windows: exact only up to the window.
    max_ctx = std::min(max_ctx, window);
    std::fprintf(stderr, "convert: %s has a sliding window of %lld tokens that llama.cpp's %s ignores; "
                 "context_length is set to %lld so that the GGUF computes the same model\n",
                 cfg_path.c_str(), (long long)window, arch.c_str(), (long long)max_ctx);
  }
  if (gemma) {
    const int64_t pattern = c.family == Family::GEMMA2 ? 2 : 6;
    for (int64_t l = 0; l < c.n_layer; l++) {
      const bool sliding = (l + 1) % pattern != 0;
      if ((c.layers[size_t(l)].window > 0) != sliding || (sliding && c.layers[size_t(l)].window != window))
        fail(cfg_path, ": the sliding-window layers differ from llama.cpp's fixed ", arch, " pattern (every ", pattern,
             "th layer global)");
    }
  }

  Writer wr{GgufWriter(), opt};
  GgufWriter& w = wr.w;
  std::string name = opt.name;
  if (name.empty()) {
    std::string d = hf_dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    const size_t slash = d.rfind('/');
    name = slash == std::string::npos ? d : d.substr(slash + 1);
  }
  // llama.cpp's Phi-3 tokenizer rules key on the name (see tokenizer/gguf_vocab.cpp).
  if (c.family == Family::PHI3 && name.find("phi3") == std::string::npos && name.find("Phi-3") == std::string::npos &&
      name.find("phi-3") == std::string::npos)
    name = "Phi3 " + name;
  w.set_string("general.architecture", arch);
  w.set_string("general.name", name);
  w.set_u32("general.file_type", opt.type == DType::F32 ? 0 : opt.type == DType::BF16 ? 32 : 1);
  w.set_u32(P + "context_length", uint32_t(max_ctx));
  w.set_u32(P + "embedding_length", uint32_t(c.dim));
  w.set_u32(P + "block_count", uint32_t(c.n_layer));
  w.set_u32(P + "feed_forward_length", uint32_t(c.ffn));
  w.set_u32(P + "attention.head_count", uint32_t(c.n_head));
  w.set_u32(P + "attention.head_count_kv", uint32_t(c.n_kv_head));
  w.set_f32(P + "attention.layer_norm_rms_epsilon", c.norm_eps);
  w.set_u32(P + "attention.key_length", uint32_t(c.head_dim));
  w.set_u32(P + "attention.value_length", uint32_t(c.head_dim));
  w.set_f32(P + "rope.freq_base", c.ropes[0].theta);
  w.set_u32(P + "rope.dimension_count", uint32_t(c.ropes[0].dim));
  w.set_u32(P + "vocab_size", uint32_t(c.vocab));
  if (c.ropes[0].scaling == RopeScaling::LINEAR) {
    w.set_string(P + "rope.scaling.type", "linear");
    w.set_f32(P + "rope.scaling.factor", c.ropes[0].factor);
  } else if (c.ropes[0].scaling == RopeScaling::YARN) {
    w.set_string(P + "rope.scaling.type", "yarn");
    w.set_f32(P + "rope.scaling.factor", c.ropes[0].factor);
    w.set_u32(P + "rope.scaling.original_context_length", uint32_t(c.ropes[0].original_max_pos));
  }
  if (gemma || c.family == Family::PHI3)
    if (window > 0) w.set_u32(P + "attention.sliding_window", uint32_t(window));
  if (c.family == Family::GEMMA2) {
    w.set_f32(P + "attn_logit_softcapping", c.attn_softcap);
    w.set_f32(P + "final_logit_softcapping", c.final_softcap);
  } else if (c.attn_softcap != 0.f || c.final_softcap != 0.f) {
    fail(cfg_path, ": softcapping for ", arch, " cannot be written to GGUF");
  }
  gguf_write_tokenizer(w, hf_dir, c.model_type);

  // Tensors: names as llama.cpp's converter writes them.
  const int64_t C = c.dim, D = c.head_dim;
  auto norm_values = [&](const Norm& n) {
    std::vector<float> v(n.w.ptr(), n.w.ptr() + n.w.n);
    if (c.norm_offset != 0.f)  // llama.cpp multiplies by the stored weight: store offset + w
      for (float& x : v) x += c.norm_offset;
    return v;
  };
  wr.tensor("token_embd.weight", [&m] { return m.wte.to_f32(); }, c.vocab, C, m.wte.dtype);
  if (c.ropes[0].scaling == RopeScaling::LLAMA3) {
    // rope_freqs.weight: per pair, the factor that turns the base frequency into the scaled
    // one (llama.cpp divides theta_i by it).
    RopeConfig plain = c.ropes[0];
    plain.scaling = RopeScaling::NONE;
    const std::vector<float> base = plain.inv_freq(), scaled = c.ropes[0].inv_freq();
    std::vector<float> f(base.size());
    for (size_t i = 0; i < base.size(); i++) f[i] = base[i] / scaled[i];
    wr.tensor("rope_freqs.weight", f, 1, int64_t(f.size()));
  }
  const bool permute = gguf_permutes_qk(c);
  for (int64_t l = 0; l < c.n_layer; l++) {
    Layer& L = m.layers[size_t(l)];
    auto put_norm = [&](const Norm& n, Role r) {
      if (!n.present()) return;
      wr.tensor(gguf_layer_tensor(l, r) + ".weight", norm_values(n), 1, n.w.n);
    };
    auto put_linear = [&](const Linear& lin, Role r) {
      if (!lin.present()) return;
      const bool perm = permute && (r == Role::Q || r == Role::K);
      const std::string g = gguf_layer_tensor(l, r);
      const Linear* lp = &lin;
      wr.tensor(g + ".weight", [lp, perm, D] {
        std::vector<float> v = lp->W.to_f32();  // (out, in), HF row order
        if (!perm) return v;
        std::vector<float> pv(v.size());
        for (int64_t j = 0; j < lp->out; j++)
          std::memcpy(pv.data() + gguf_qk_row(j, D) * lp->in, v.data() + j * lp->in, size_t(lp->in) * 4);
        return pv;
      }, lin.out, lin.in, lin.W.dtype);
      if (lin.bias.n) {
        std::vector<float> b(lin.bias.ptr(), lin.bias.ptr() + lin.bias.n), pb = b;
        if (perm)
          for (int64_t j = 0; j < lin.out; j++) pb[size_t(gguf_qk_row(j, D))] = b[size_t(j)];
        wr.tensor(g + ".bias", pb, 1, lin.out);
      }
    };
    put_norm(L.attn_norm, Role::ATTN_NORM);
    put_linear(L.q, Role::Q);
    put_linear(L.k, Role::K);
    put_linear(L.v, Role::V);
    put_linear(L.qkv, Role::QKV);
    put_norm(L.q_norm, Role::Q_NORM);
    put_norm(L.k_norm, Role::K_NORM);
    put_linear(L.o, Role::O);
    put_norm(L.post_attn_norm, Role::POST_ATTN_NORM);
    put_norm(L.ffn_norm, Role::FFN_NORM);
    put_linear(L.gate, Role::GATE);
    put_linear(L.up, Role::UP);
    put_linear(L.gate_up, Role::GATE_UP);
    put_linear(L.down, Role::DOWN);
    put_norm(L.post_ffn_norm, Role::POST_FFN_NORM);
  }
  wr.tensor("output_norm.weight", norm_values(m.norm_f), 1, C);
  if (!c.tied) wr.tensor("output.weight", [&m] { return m.lm_head.W.to_f32(); }, c.vocab, C, m.lm_head.W.dtype);
  w.write(out);
}

}  // namespace lowrank
