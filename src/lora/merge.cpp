#include "lora/merge.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <map>
#include <set>

#include "core/error.h"
#include "core/mmap_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_model.h"
#include "ops/ops.h"
#include "quants/quantize.h"

namespace lowrank {

bool lora_delta(const std::vector<MergeTerm>& terms, const std::string& module, int64_t out, int64_t in,
                std::vector<float>& delta) {
  bool any = false;
  for (const MergeTerm& t : terms) {
    auto it = t.adapter->targets.find(module);
    if (it == t.adapter->targets.end()) continue;
    const LoraTarget& lt = it->second;
    if (lt.A.shape != std::vector<int64_t>{lt.r, in} || lt.B.shape != std::vector<int64_t>{out, lt.r})
      fail("adapter ", t.adapter->name, ": ", module, ": lora_A ", shape_str(lt.A.shape), " / lora_B ",
           shape_str(lt.B.shape), " do not fit the weight (out ", out, ", in ", in, ")");
    if (!any) delta.assign(size_t(out * in), 0.f);
    any = true;
    // Δ (out, in) += scale · s · B (out, r) · A (r, in)
    ops::gemm(false, false, out, in, lt.r, t.scale * lt.scale, lt.B.ptr(), lt.A.ptr(), 1.f, delta.data());
  }
  return any;
}

static void remove_tree(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    std::remove((dir + "/" + n).c_str());
  }
  closedir(d);
  ::rmdir(dir.c_str());
}

static void copy_file(const std::string& from, const std::string& to) {
  std::string data = read_text_file(from);
  write_file_atomic(to, data.data(), data.size());
}

void write_hf_model(const std::string& src_dir, const std::string& out_dir, const std::vector<MergeTerm>& terms,
                    const std::function<const float*(const std::string&, bool&)>& replace) {
  std::string cfg_text = read_text_file(src_dir + "/config.json");
  bool gpt2 = false;
  try {
    gpt2 = nlohmann::json::parse(cfg_text).value("model_type", std::string()) == "gpt2";
  } catch (const std::exception&) {
    fail(src_dir, "/config.json: not valid JSON");
  }
  std::string tmp = out_dir + ".tmp";
  remove_tree(tmp);
  if (::mkdir(tmp.c_str(), 0755) != 0) fail(tmp, ": cannot create directory");
  try {
    std::set<std::string> used;
    DIR* d = opendir(src_dir.c_str());
    if (!d) fail(src_dir, ": cannot read directory");
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) names.push_back(e->d_name);
    closedir(d);
    for (const std::string& n : names) {
      std::string from = src_dir + "/" + n;
      struct stat st;
      if (n == "." || n == ".." || ::stat(from.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) {
        SafetensorsFile sf = SafetensorsFile::open(from);
        std::vector<TensorToWrite> out;
        for (const Tensor& t : sf.tensors()) {
          TensorToWrite w;
          w.name = t.name;
          w.dtype = t.dtype;
          w.shape = t.shape;
          bool transposed = false;
          const float* rep = replace ? replace(t.name, transposed) : nullptr;
          std::vector<float> delta;
          const std::string suffix = ".weight";
          bool is_weight = t.name.size() > suffix.size() &&
                           t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
                           t.shape.size() == 2;
          std::string module = is_weight ? t.name.substr(0, t.name.size() - suffix.size()) : "";
          bool conv1d = gpt2 && module.find(".h.") != std::string::npos;
          int64_t out_f = conv1d ? t.shape[1] : (is_weight ? t.shape[0] : 0);
          int64_t in_f = conv1d ? t.shape[0] : (is_weight ? t.shape[1] : 0);
          bool merged = is_weight && lora_delta(terms, module == "transformer.wte" ? "lm_head" : module, out_f, in_f, delta);
          if (!rep && !merged) {
            const uint8_t* p = static_cast<const uint8_t*>(t.data);
            w.bytes.assign(p, p + t.nbytes);
          } else {
            std::vector<float> v(size_t(t.numel()));
            if (rep) {
              // Replacement values are (out, in) when transposed is set for Conv1D tensors.
              if (transposed && conv1d)
                for (int64_t i = 0; i < in_f; i++)
                  for (int64_t o = 0; o < out_f; o++) v[size_t(i * out_f + o)] = rep[o * in_f + i];
              else
                std::memcpy(v.data(), rep, v.size() * 4);
            } else {
              to_f32(t.dtype, t.data, v.data(), t.numel());
            }
            if (merged) {
              if (conv1d)  // storage (in, out): add Δᵀ
                for (int64_t i = 0; i < in_f; i++)
                  for (int64_t o = 0; o < out_f; o++) v[size_t(i * out_f + o)] += delta[size_t(o * in_f + i)];
              else
                for (size_t i = 0; i < v.size(); i++) v[i] += delta[i];
              used.insert(module);
            }
            w = tensor_convert(t.name, t.shape, v.data(), t.dtype);
          }
          out.push_back(std::move(w));
        }
        safetensors_write(tmp + "/" + n, std::move(out), sf.metadata());
      } else {
        copy_file(from, tmp + "/" + n);
      }
    }
    for (const MergeTerm& t : terms)
      for (auto& [module, lt] : t.adapter->targets)
        if (!used.count(module))
          fail("adapter ", t.adapter->name, ": target ", module, " has no weight tensor ", module,
               ".weight in ", src_dir, " (tied lm_head cannot be merged)");
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  remove_tree(out_dir + ".old");
  if (file_exists(out_dir)) std::rename(out_dir.c_str(), (out_dir + ".old").c_str());
  if (std::rename(tmp.c_str(), out_dir.c_str()) != 0) fail(out_dir, ": cannot rename the finished directory into place");
  remove_tree(out_dir + ".old");
}

namespace {

// "blk.N.attn_q" / "blk.N.attn_k" (whose rows llama.cpp's converter permutes for "llama").
bool is_qk_tensor(const std::string& base) {
  const size_t dot = base.rfind('.');
  const std::string tail = dot == std::string::npos ? base : base.substr(dot + 1);
  return tail == "attn_q" || tail == "attn_k";
}

}  // namespace

// The type an adapted tensor of type t is written in by default: its own when this engine can
// encode it, else the nearest type with an encoder and at least as many bits (the IQ codebook
// types need an importance matrix llama.cpp's quantizer takes from calibration data).
DType merged_type_for(DType t) {
  if (quants::can_quantize(t)) return t;
  switch (t) {
    case DType::IQ1_S: case DType::IQ1_M: case DType::IQ2_XXS: case DType::IQ2_XS: case DType::IQ2_S: return DType::Q2_K;
    case DType::IQ3_XXS: case DType::IQ3_S: return DType::Q3_K;
    default: return DType::Q8_0;
  }
}

void write_gguf_merged(const std::string& src, const std::string& out, const std::vector<MergeTerm>& terms,
                       const std::string& dtype) {
  GgufFile f = GgufFile::open(src);
  const ModelConfig cfg = config_from_gguf(f);
  const bool permuted = gguf_permutes_qk(cfg);
  DType forced = DType::F32;
  const bool keep = dtype.empty() || dtype == "keep";
  if (!keep) {
    std::string up = dtype;
    for (char& c : up) c = char(std::toupper(static_cast<unsigned char>(c)));
    if (!dtype_from_name(up.c_str(), &forced) || !quants::can_quantize(forced))
      fail("merge: --dtype ", dtype, " is not a type this engine writes (keep, f32, f16, bf16, q8_0, q4_k, ...)");
  }
  GgufWriter w;
  for (auto& [k, v] : f.metadata()) w.set_raw(k, v);
  std::set<std::string> used;
  std::map<DType, DType> fallbacks;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned;
  for (const GgufTensorInfo& t : f.tensors()) {
    std::string base = t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0
                           ? t.name.substr(0, t.name.size() - 7) : "";
    std::string module = base.empty() ? "" : gguf_to_hf_module(cfg, base);
    std::vector<float> delta;
    if (module.empty() || t.ne.size() != 2 || !lora_delta(terms, module, t.ne[1], t.ne[0], delta)) {
      w.add_tensor(t.name, t.ne, t.ggml_type, t.data, t.nbytes);
      continue;
    }
    used.insert(module);
    const int64_t out_f = t.ne[1], in_f = t.ne[0];
    std::vector<float> v(size_t(out_f * in_f));
    to_f32(t.dtype, t.data, v.data(), out_f * in_f);
    const bool qk = permuted && is_qk_tensor(base);
    for (int64_t j = 0; j < out_f; j++) {  // HF row j of Δ goes to GGUF row gguf_qk_row(j) for permuted q/k
      int64_t row = qk ? gguf_qk_row(j, cfg.head_dim) : j;
      for (int64_t i = 0; i < in_f; i++) v[size_t(row * in_f + i)] += delta[size_t(j * in_f + i)];
    }
    for (float x : v)
      if (!std::isfinite(x)) fail("merge: ", t.name, " has a non-finite value after adding the adapter");
    DType to = keep ? merged_type_for(t.dtype) : forced;
    if (keep && to != t.dtype) fallbacks[t.dtype] = to;
    if (dtype_block_elems(to) > 1 && in_f % dtype_block_elems(to) != 0)
      fail("merge: ", t.name, ": rows of ", in_f, " values are not whole ", dtype_name(to), " blocks; use --dtype f16");
    auto bytes = std::make_shared<std::vector<uint8_t>>(dtype_bytes(to, out_f * in_f));
    // llama-quantize's default quantizer (on these weights the uniform-importance search of
    // --uniform-imatrix measured worse for Q2_K: +7.4 % vs +3.3 % perplexity over the F16 merge)
    if (!quants::quantize_row(to, v.data(), bytes->data(), out_f * in_f))
      fail("merge: cannot encode ", t.name, " as ", dtype_name(to));
    owned.push_back(bytes);
    w.add_tensor(t.name, t.ne, to, bytes->data(), bytes->size());
  }
  for (const MergeTerm& t : terms)
    for (auto& [module, lt] : t.adapter->targets)
      if (!used.count(module)) fail("adapter ", t.adapter->name, ": target ", module, " has no tensor in ", src);
  for (auto [from, to] : fallbacks)
    std::fprintf(stderr, "merge: %s tensors are written as %s (no %s encoder without an importance matrix)\n",
                 dtype_name(from), dtype_name(to), dtype_name(from));
  w.write(out);
}

void write_gguf_adapter(const std::string& base_gguf, const Adapter& a, const std::string& out, bool f16) {
  GgufFile f = GgufFile::open(base_gguf);
  const std::string arch = f.get_string("general.architecture", "");
  const ModelConfig cfg = config_from_gguf(f);
  const bool permuted = gguf_permutes_qk(cfg);
  // One alpha for the whole adapter: llama.cpp scales each tensor by alpha / r_target.
  // Choose alpha so that alpha / r equals the PEFT scale of the first target; fold any other
  // target's ratio into its B.
  const LoraTarget& first = a.targets.begin()->second;
  const float alpha = first.scale * float(first.r);
  GgufWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.type", "adapter");
  w.set_string("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", alpha);
  for (auto& [module, t] : a.targets) {
    std::string base = hf_to_gguf_tensor(cfg, module);
    if (base.empty() || !f.tensor(base + ".weight"))
      fail("adapter ", a.name, ": target ", module, " has no GGUF tensor in ", base_gguf);
    const GgufTensorInfo* bt = f.tensor(base + ".weight");
    if (bt->ne.size() != 2 || bt->ne[0] != t.in || bt->ne[1] != t.out)
      fail("adapter ", a.name, ": target ", module, " (out ", t.out, ", in ", t.in, ") does not fit ", base,
           ".weight ne ", shape_str(bt->ne));
    const float fold = t.scale / (alpha / float(t.r));
    const bool qk = permuted && is_qk_tensor(base);
    std::vector<float> B(size_t(t.B.n));
    for (int64_t j = 0; j < t.out; j++) {
      int64_t row = qk ? gguf_qk_row(j, cfg.head_dim) : j;
      for (int64_t k = 0; k < t.r; k++) B[size_t(row * t.r + k)] = t.B.ptr()[j * t.r + k] * fold;
    }
    // lora_a: ne = [n_in, r] (A is (r, in) row-major); lora_b: ne = [r, n_out] (B (out, r)).
    if (f16) {
      w.add_tensor_f16(base + ".weight.lora_a", {t.in, t.r}, t.A.ptr());
      w.add_tensor_f16(base + ".weight.lora_b", {t.r, t.out}, B.data());
    } else {
      w.add_tensor_f32(base + ".weight.lora_a", {t.in, t.r}, t.A.ptr());
      w.add_tensor_f32(base + ".weight.lora_b", {t.r, t.out}, B.data());
    }
  }
  w.write(out);
}

}  // namespace lowrank
