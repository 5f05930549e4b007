#include "lora/adapter.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/mmap_file.h"
#include "io/safetensors.h"
#include "lora/peft.h"

namespace lowrank {

int64_t Adapter::num_parameters() const {
  int64_t n = 0;
  for (auto& [m, t] : targets) n += t.A.n + t.B.n;
  return n;
}

void Adapter::alloc_grads() {
  for (auto& [m, t] : targets) {
    if (t.dA.n != t.A.n) t.dA = FloatBuffer::zeros(t.A.shape);
    if (t.dB.n != t.B.n) t.dB = FloatBuffer::zeros(t.B.shape);
  }
}

void Adapter::zero_grads() {
  for (auto& [m, t] : targets) {
    if (t.dA.n) std::memset(t.dA.ptr(), 0, size_t(t.dA.n) * 4);
    if (t.dB.n) std::memset(t.dB.ptr(), 0, size_t(t.dB.n) * 4);
  }
}

Adapter pissa_to_lora(const Adapter& a) {
  Adapter out = a;
  if (a.pissa_initial.empty()) return out;
  out.pissa_initial.clear();
  const double alpha_mult = a.config.use_rslora ? std::sqrt(2.0) : 2.0;
  out.config.r = a.config.r * 2;
  out.config.lora_alpha = a.config.lora_alpha * alpha_mult;
  for (auto& [k, v] : out.config.rank_pattern) v *= 2;
  for (auto& [k, v] : out.config.alpha_pattern) v *= alpha_mult;
  out.config.init_lora_weights = "true";
  for (auto& [module, t] : out.targets) {
    const LoraTarget& src = a.targets.at(module);
    const auto& [A0, B0] = a.pissa_initial.at(module);
    const int64_t r = src.r, r2 = 2 * r;
    t.r = r2;
    t.alpha = float(double(src.alpha) * alpha_mult);
    t.A = FloatBuffer::zeros({r2, src.in});
    t.B = FloatBuffer::zeros({src.out, r2});
    t.dA = FloatBuffer();
    t.dB = FloatBuffer();
    std::memcpy(t.A.ptr(), src.A.ptr(), size_t(src.A.n) * 4);
    std::memcpy(t.A.ptr() + src.A.n, A0.ptr(), size_t(A0.n) * 4);
    for (int64_t o = 0; o < src.out; o++)
      for (int64_t k = 0; k < r; k++) {
        t.B.ptr()[o * r2 + k] = src.B.ptr()[o * r + k];
        t.B.ptr()[o * r2 + r + k] = -B0.ptr()[o * r + k];
      }
  }
  return out;
}

static const std::string kPrefix = "base_model.model.";

std::shared_ptr<Adapter> load_peft_adapter(const std::string& dir) {
  std::string cfg_path = dir + "/adapter_config.json";
  auto a = std::make_shared<Adapter>();
  a->name = dir;
  a->config = LoraConfig::from_json(read_text_file(cfg_path), cfg_path);
  std::string st_path = dir + "/adapter_model.safetensors";
  SafetensorsFile st = SafetensorsFile::open(st_path);
  for (const Tensor& t : st.tensors()) {
    const std::string& key = t.name;
    bool is_a = false;
    size_t cut = std::string::npos;
    for (const char* suffix : {".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora_B.default.weight"}) {
      size_t n = std::strlen(suffix);
      if (key.size() > n && key.compare(key.size() - n, n, suffix) == 0) {
        cut = key.size() - n;
        is_a = suffix[6] == 'A';
        break;
      }
    }
    if (cut == std::string::npos || key.compare(0, kPrefix.size(), kPrefix) != 0)
      fail(st_path, ": unexpected tensor ", key, " (expected base_model.model.<module>.lora_A/lora_B.weight)");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(st_path, ": tensor ", key, ": dtype ", dtype_name(t.dtype), " is not a float type");
    if (t.shape.size() != 2) fail(st_path, ": tensor ", key, ": expected 2-D, got shape ", shape_str(t.shape));
    std::string module = key.substr(kPrefix.size(), cut - kPrefix.size());
    LoraTarget& tg = a->targets[module];
    tg.module = module;
    FloatBuffer b = FloatBuffer::zeros(t.shape);
    to_f32(t.dtype, t.data, b.ptr(), b.n);
    for (int64_t i = 0; i < b.n; i++)
      if (!std::isfinite(b.ptr()[i]))
        fail(st_path, ": tensor ", key, " has a non-finite value (", b.ptr()[i], ") at index ", i,
             " (an adapter from a diverged training run?)");
    if (is_a) {
      tg.A = b;
      tg.r = t.shape[0];
      tg.in = t.shape[1];
    } else {
      tg.B = b;
      tg.out = t.shape[0];
    }
  }
  for (auto& [module, tg] : a->targets) {
    if (!tg.A.n) fail(st_path, ": module ", module, " has lora_B but no lora_A");
    if (!tg.B.n) fail(st_path, ": module ", module, " has lora_A but no lora_B");
    if (tg.B.shape[1] != tg.r)
      fail(st_path, ": ", module, ": lora_A has rank ", tg.r, " but lora_B has shape ", shape_str(tg.B.shape));
    int64_t want_r = a->config.rank_for(module);
    if (want_r != tg.r)
      fail(st_path, ": ", module, ": rank ", tg.r, " does not match adapter_config.json (", want_r, ")");
    tg.alpha = float(a->config.alpha_for(module));
    tg.scale = float(a->config.scale_for(module));
    tg.dropout = float(a->config.lora_dropout);
  }
  if (a->targets.empty()) fail(st_path, ": no LoRA tensors");
  return a;
}

std::string first_non_finite(const Adapter& a) {
  for (const auto& [module, t] : a.targets)
    for (const auto* buf : {&t.A, &t.B})
      for (int64_t i = 0; i < buf->n; i++)
        if (!std::isfinite(buf->ptr()[i]))
          return module + (buf == &t.A ? ".lora_A" : ".lora_B") + "[" + std::to_string(i) + "] = " +
                 std::to_string(buf->ptr()[i]);
  return "";
}

void save_peft_adapter(const Adapter& a, const std::string& dir) {
  const std::string bad = first_non_finite(a);
  if (!bad.empty()) fail(dir, ": refusing to write an adapter with non-finite values (", bad, ")");
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail(dir, ": cannot create directory");
  std::vector<TensorToWrite> tensors;
  for (auto& [module, t] : a.targets) {
    tensors.push_back(tensor_f32(kPrefix + module + ".lora_A.weight", t.A.shape, t.A.ptr()));
    tensors.push_back(tensor_f32(kPrefix + module + ".lora_B.weight", t.B.shape, t.B.ptr()));
  }
  safetensors_write(dir + "/adapter_model.safetensors", std::move(tensors));
  std::string cfg = a.config.to_json();
  write_file_atomic(dir + "/adapter_config.json", cfg.data(), cfg.size());
}

std::pair<std::string, float> parse_adapter_arg(const std::string& arg) {
  size_t colon = arg.rfind(':');
  if (colon != std::string::npos && colon + 1 < arg.size()) {
    std::string tail = arg.substr(colon + 1);
    char* end = nullptr;
    float s = std::strtof(tail.c_str(), &end);
    if (end && *end == 0) {
      if (!std::isfinite(s)) fail("--adapter ", arg, ": the scale \"", tail, "\" is not a finite number");
      return {arg.substr(0, colon), s};
    }
  }
  return {arg, 1.0f};
}

}  // namespace lowrank
