// lowrank bench: timings and memory of the engine on real model shapes with random weights
// (or a real model with --model), for comparison with bench/torch_step.py.
//
// Modes:
//   forward         inference forward (logits + loss) over B×T tokens
//   lora            LoRA training step: zero grads + forward + backward + AdamW (frozen base)
//   full            full fine-tuning step (all weights trainable)
//   merged-latency  forward (and decode) latency: base, adapter unmerged, merged, unmerged again
//   swap            remove_adapter + add_adapter of a loaded adapter (µs), adapter load time
//   sizes           parameter counts, adapter file size vs model file size
// --decode N adds a greedy KV-cache decode of N tokens after a T-token prompt (forward/lora/full;
// always on the base model, no adapter applied); the prompt is random ids, or the first T ids of
// --prompt-ids FILE (bench/llamacpp.sh gives both engines the same prompt that way).
#include <cblas.h>
#include <omp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common.h"
#include "model/names.h"
#include "core/error.h"
#include "core/json_error.h"
#include "io/safetensors.h"
#include "lora/peft.h"
#include "model/random_model.h"
#include "train/trainer.h"

namespace lowrank::cli {

namespace {

using json = nlohmann::json;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double min_of(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

// A field of /proc/self/status in kB (VmHWM = peak resident set, VmRSS = current).
int64_t proc_status_kb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::atoll(line.c_str() + n + 1);
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;  // kB on Linux
}
double mib(int64_t kb) { return double(kb) / 1024.0; }

// CPU seconds: all CPUs busy (from /proc/stat) and this process (all threads). Their
// difference over a run is CPU time other processes took; as a fraction of wall × cores it
// says how much the machine was shared during the measurement.
struct CpuSample { double busy = 0, self = 0, wall = 0; };
CpuSample cpu_sample() {
  CpuSample c;
  std::ifstream f("/proc/stat");
  std::string cpu;
  double v[10] = {0};
  f >> cpu;
  for (double& x : v) f >> x;
  const double hz = double(sysconf(_SC_CLK_TCK));
  double total = 0;
  for (double x : v) total += x;
  total -= v[8] + v[9];  // guest time is already counted in user/nice
  c.busy = (total - v[3] - v[4]) / hz;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  c.self = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  c.wall = now_s();
  return c;
}
double foreign_frac(const CpuSample& a, const CpuSample& b) {
  const double wall = b.wall - a.wall, ncpu = double(sysconf(_SC_NPROCESSORS_ONLN));
  if (wall <= 0) return 0;
  return std::max(0.0, ((b.busy - a.busy) - (b.self - a.self)) / (wall * ncpu));
}

double loadavg1() {
  std::ifstream f("/proc/loadavg");
  double x = -1;
  f >> x;
  return x;
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? int64_t(st.st_size) : -1;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      size_t c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  return "unknown";
}

std::vector<double> ms(const std::vector<double>& s) {
  std::vector<double> out;
  for (double x : s) out.push_back(x * 1e3);
  return out;
}

struct Opts {
  std::string shape = "gpt2-124m", model, mode = "lora", targets, out_dir, init, prompt_ids;
  int64_t batch = 1, seq = 256, steps = 5, warmup = 1, decode = 0, decode_reps = 1, r = 8, swaps = 2000;
  double alpha = 16, lr = 1e-4;
  uint64_t seed = 0;
  bool json = false, untie = false, write_model = false;
};

LoraConfig make_lora_config(const Opts& o, const Model& m) {
  LoraConfig c;
  c.r = o.r;
  c.lora_alpha = o.alpha;
  c.lora_dropout = 0.0;  // dropout off: the PyTorch reference has none either
  c.init_lora_weights = o.init.empty() ? "true" : o.init;
  std::string targets = o.targets;
  if (targets.empty()) targets = m.cfg.arch == Arch::GPT2 ? "c_attn" : "q_proj,v_proj";
  if (targets == "all-linear") {
    c.all_linear = true;
  } else if (targets.rfind("re:", 0) == 0) {
    c.target_regex = targets.substr(3);
  } else {
    std::stringstream ss(targets);
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.empty()) c.target_modules.push_back(item);
  }
  c.fan_in_fan_out = m.cfg.arch == Arch::GPT2;
  c.base_model_name_or_path = o.model.empty() ? o.shape : o.model;
  c.base_model_class = m.cfg.architecture;
  c.parent_library = "transformers.models." + m.cfg.model_type + ".modeling_" + m.cfg.model_type;
  return c;
}

std::string targets_label(const Opts& o, const Model& m) {
  if (!o.targets.empty()) return o.targets;
  return m.cfg.arch == Arch::GPT2 ? "c_attn" : "q_proj,v_proj";
}

// Random ids and next-token targets (every position scored), like the PyTorch script.
Batch make_batch(int64_t B, int64_t T, int64_t V, uint64_t seed, const std::vector<AdapterUse>& uses) {
  Batch b;
  b.B = B;
  b.T = T;
  std::mt19937_64 rng(seed + 12345);
  std::uniform_int_distribution<int32_t> d(0, int32_t(V - 1));
  b.ids.resize(size_t(B * T));
  b.targets.resize(size_t(B * T));
  for (auto& x : b.ids) x = d(rng);
  for (auto& x : b.targets) x = d(rng);
  b.row_adapters.assign(size_t(B), uses);
  return b;
}

// Parameters of the model and where they live, for the file-size report: (name, shape, data).
struct NamedTensor { std::string name; std::vector<int64_t> shape; const float* data; };
std::vector<NamedTensor> model_tensors(Model& m) {
  std::vector<NamedTensor> t;
  const bool gpt2 = m.cfg.arch == Arch::GPT2;
  auto mat = [&](const std::string& name, const Matrix& W) {
    if (W.dtype != DType::F32) fail("sizes: --write-model needs f32 weights");
    t.push_back({name, W.transposed ? std::vector<int64_t>{W.cols, W.rows} : std::vector<int64_t>{W.rows, W.cols},
                 static_cast<const float*>(W.data)});
  };
  auto vec = [&](const std::string& name, const FloatBuffer& b) {
    if (b.n) t.push_back({name, b.shape, b.ptr()});
  };
  mat(hf_embed_module(m.cfg) + ".weight", m.wte);
  if (m.wpe.n) vec("transformer.wpe.weight", m.wpe);
  for (Layer& L : m.layers) {
    for (Norm* n : L.norms()) {
      vec(n->name + ".weight", n->w);
      vec(n->name + ".bias", n->b);
    }
  }
  for (Linear* L : m.linears()) {
    if (L == &m.lm_head && m.cfg.tied) continue;
    mat(L->module + ".weight", L->W);
    vec(L->module + ".bias", L->bias);
  }
  vec(m.norm_f.name + ".weight", m.norm_f.w);
  vec(m.norm_f.name + ".bias", m.norm_f.b);
  (void)gpt2;
  return t;
}

struct DecodeResult { double prefill_s = 0, decode_s = 0; int64_t n = 0; std::vector<int32_t> tokens; };

// Greedy decode: prefill `prompt`, then n tokens one at a time with the KV cache.
DecodeResult run_decode(Model& m, const std::vector<int32_t>& prompt, int64_t n, const std::vector<AdapterUse>& uses) {
  DecodeResult r;
  r.n = n;
  KVCache cache = m.new_cache(int64_t(prompt.size()) + n);
  double t0 = now_s();
  std::vector<float> logits = m.forward_cached(prompt, cache, uses);
  double t1 = now_s();
  for (int64_t i = 0; i < n; i++) {
    int32_t tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    r.tokens.push_back(tok);
    logits = m.forward_cached({tok}, cache, uses);
  }
  double t2 = now_s();
  r.prefill_s = t1 - t0;
  r.decode_s = t2 - t1;
  return r;
}

// --prompt-ids FILE: a JSON array of token ids, or an object with "ids" (`lowrank tokenize
// --json`); the decode prompt is its first T ids.
std::vector<int32_t> read_prompt_ids(const std::string& path, int64_t T, int64_t V) {
  std::ifstream f(path);
  if (!f) fail(path, ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": not JSON: ", json_error_text(e));
  }
  const json& a = j.is_object() && j.contains("ids") ? j["ids"] : j;
  if (!a.is_array()) fail(path, ": expected a JSON array of token ids or an object with \"ids\"");
  std::vector<int32_t> ids;
  for (const json& x : a) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= V)
      fail(path, ": token ids must be integers in [0, ", V, ")");
    ids.push_back(x.get<int32_t>());
  }
  if (int64_t(ids.size()) < T) fail(path, ": ", ids.size(), " ids, fewer than --seq ", T);
  ids.resize(size_t(T));
  return ids;
}

void print_env_text(const Opts& o, const Model& m) {
  std::printf("lowrank bench: %s (%s), mode %s, batch %lld x seq %lld, threads %d, cpu %s\n",
              o.model.empty() ? o.shape.c_str() : o.model.c_str(), m.cfg.model_type.c_str(), o.mode.c_str(),
              (long long)o.batch, (long long)o.seq, omp_get_max_threads(), cpu_model().c_str());
}

void run_bench(Opts o) {
  const double load_start = loadavg1();
  const double t_build0 = now_s();
  std::unique_ptr<Model> mp;
  bool untied = false;
  if (!o.model.empty()) {
    mp = load_model(o.model);
  } else {
    ModelConfig cfg = shape_config(o.shape);
    RandomModelOptions ro;
    ro.seed = o.seed;
    // --full does not support tied embeddings: give the lm_head its own matrix.
    ro.untie = o.untie || (o.mode == "full" && cfg.tied);
    untied = ro.untie && cfg.tied;
    mp = make_random_model(cfg, ro);
  }
  Model& m = *mp;
  m.keep_logits = o.mode == "merged-latency";  // compares the merged model's logits
  const double build_s = now_s() - t_build0;
  const int64_t rss_model_kb = proc_status_kb("VmRSS");
  const CpuSample cpu0 = cpu_sample();  // after the build: the measured part
  const int64_t B = o.batch, T = o.seq, N = B * T;
  if (!o.json) print_env_text(o, m);

  json out;
  out["impl"] = "lowrank";
  out["shape"] = o.model.empty() ? o.shape : o.model;
  out["arch"] = m.cfg.model_type;
  out["mode"] = o.mode;
  out["batch"] = B;
  out["seq"] = T;
  out["threads"] = omp_get_max_threads();
  out["cpu"] = cpu_model();
  out["openblas_core"] = openblas_get_corename();  // the kernel set OpenBLAS picked (OPENBLAS_CORETYPE)
  out["params"] = m.num_parameters();
  out["untied_lm_head"] = untied;
  out["build_s"] = build_s;
  out["rss_model_mb"] = mib(rss_model_kb);

  std::vector<AdapterUse> uses;
  std::shared_ptr<Adapter> adapter;
  AdamW opt;
  int64_t trainable = 0;

  auto finish = [&] {
    out["peak_rss_mb"] = mib(proc_status_kb("VmHWM"));
    out["loadavg_start"] = load_start;
    out["foreign_cpu_frac"] = foreign_frac(cpu0, cpu_sample());
    out["loadavg_end"] = loadavg1();
    const char* tun = std::getenv("GLIBC_TUNABLES");
    out["glibc_tunables"] = tun ? tun : "";
    if (o.json) {
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("%s\n", out.dump(2).c_str());
    }
    std::fflush(stdout);
  };

  if (o.mode == "sizes") {
    LoraConfig lc = make_lora_config(o, m);
    adapter = m.create_adapter(lc, o.seed);
    trainable = adapter->num_parameters();
    out["targets"] = targets_label(o, m);
    out["r"] = o.r;
    out["lora_targets"] = adapter->targets.size();
    out["trainable_params"] = trainable;
    out["trainable_frac"] = double(trainable) / double(m.num_parameters());
    out["param_reduction_x"] = double(m.num_parameters()) / double(trainable);
    std::string dir = o.out_dir.empty() ? "/tmp/lowrank-bench-" + std::to_string(::getpid()) : o.out_dir;
    ::mkdir(dir.c_str(), 0755);
    std::string adir = dir + "/adapter";
    save_peft_adapter(*adapter, adir);
    const int64_t st = file_size(adir + "/adapter_model.safetensors"), cj = file_size(adir + "/adapter_config.json");
    out["adapter_dir"] = adir;
    out["adapter_safetensors_bytes"] = st;
    out["adapter_config_bytes"] = cj;
    out["adapter_bytes"] = st + cj;
    // Model f32 file: the tensor bytes (exact for safetensors up to its JSON header).
    int64_t model_data = 0;
    for (const NamedTensor& t : model_tensors(m)) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      model_data += n * 4;
    }
    out["model_f32_tensor_bytes"] = model_data;
    if (o.write_model) {
      std::vector<TensorToWrite> tw;
      for (const NamedTensor& t : model_tensors(m)) tw.push_back(tensor_f32(t.name, t.shape, t.data));
      std::string mpath = dir + "/model.safetensors";
      safetensors_write(mpath, std::move(tw));
      out["model_file"] = mpath;
      out["model_file_bytes"] = file_size(mpath);
      model_data = file_size(mpath);
    }
    out["model_to_adapter_size_x"] = double(model_data) / double(st + cj);
    if (o.out_dir.empty()) std::filesystem::remove_all(dir);  // our own temporary directory
    finish();
    return;
  }

  if (o.mode == "swap") {
    LoraConfig lc = make_lora_config(o, m);
    adapter = m.create_adapter(lc, o.seed);
    std::string dir = o.out_dir.empty() ? "/tmp/lowrank-bench-" + std::to_string(::getpid()) : o.out_dir;
    ::mkdir(dir.c_str(), 0755);
    std::string adir = dir + "/adapter";
    save_peft_adapter(*adapter, adir);
    out["targets"] = targets_label(o, m);
    out["r"] = o.r;
    out["adapter_bytes"] = file_size(adir + "/adapter_model.safetensors") + file_size(adir + "/adapter_config.json");
    std::vector<double> load_s;
    std::shared_ptr<Adapter> loaded;
    for (int i = 0; i < 20; i++) {
      double t0 = now_s();
      loaded = load_peft_adapter(adir);
      load_s.push_back(now_s() - t0);
    }
    // A resident adapter in slot 0 (as when serving), then swap a second one in and out.
    int keep = m.add_adapter(adapter);
    (void)keep;
    std::vector<double> add_s, rm_s, swap_s;
    for (int64_t i = 0; i < o.swaps; i++) {
      double t0 = now_s();
      int slot = m.add_adapter(loaded);
      double t1 = now_s();
      m.remove_adapter(slot);
      double t2 = now_s();
      add_s.push_back(t1 - t0);
      rm_s.push_back(t2 - t1);
      swap_s.push_back(t2 - t0);
    }
    out["swaps"] = o.swaps;
    out["load_adapter_ms"] = median(ms(load_s));
    out["add_adapter_us"] = median(ms(add_s)) * 1e3;
    out["remove_adapter_us"] = median(ms(rm_s)) * 1e3;
    out["swap_us"] = median(ms(swap_s)) * 1e3;
    out["swap_us_min"] = min_of(ms(swap_s)) * 1e3;
    if (o.out_dir.empty()) std::filesystem::remove_all(dir);  // our own temporary directory
    finish();
    return;
  }

  if (o.mode == "merged-latency") {
    LoraConfig lc = make_lora_config(o, m);
    if (o.init.empty()) lc.init_lora_weights = "false";  // B ≠ 0, so the merge changes W
    adapter = m.create_adapter(lc, o.seed);
    // Keep the update small (realistic relative size) so logits stay comparable.
    for (auto& [k, t] : adapter->targets)
      for (int64_t i = 0; i < t.B.n; i++) t.B.ptr()[i] *= 1e-3f;
    const int slot = m.add_adapter(adapter);
    out["targets"] = targets_label(o, m);
    out["r"] = o.r;
    const std::vector<AdapterUse> with{{slot, 1.f}}, none;
    Batch bb = make_batch(B, T, m.cfg.vocab, o.seed, none), ba = make_batch(B, T, m.cfg.vocab, o.seed, with);
    std::vector<int32_t> prompt(bb.ids.begin(), bb.ids.begin() + T);
    auto fwd = [&](const Batch& b) {
      double t0 = now_s();
      m.forward(b, false);
      return now_s() - t0;
    };
    auto per_tok = [&](const std::vector<AdapterUse>& u) {
      DecodeResult d = run_decode(m, prompt, o.decode, u);
      return d.decode_s / double(std::max<int64_t>(1, d.n));
    };
    std::vector<float> logits_adapter;
    // Phase 1: base weights as built (GPT-2: Conv1D layout) vs the adapter applied on the fly.
    std::vector<double> base_s, adapter_s, base_tok, adapter_tok;
    for (int64_t i = 0; i < o.warmup; i++) { fwd(bb); fwd(ba); }
    for (int64_t i = 0; i < o.steps; i++) {
      base_s.push_back(fwd(bb));
      adapter_s.push_back(fwd(ba));
    }
    logits_adapter = m.logits();
    if (o.decode > 0)
      for (int64_t i = 0; i < o.decode_reps; i++) {
        base_tok.push_back(per_tok(none));
        adapter_tok.push_back(per_tok(with));
      }
    // Phase 2: merged (adapter folded into W) vs unmerged again (same owned f32 layout).
    std::vector<double> merged_s, unmerged_s, merge_s, unmerge_s, merged_tok, unmerged_tok;
    float max_diff = 0;
    for (int64_t i = 0; i < o.warmup + o.steps; i++) {
      double t0 = now_s();
      m.merge_adapter(slot, 1.f);
      double t1 = now_s();
      double fm = fwd(bb);
      if (i == 0) {
        const std::vector<float>& lm = m.logits();
        for (size_t j = 0; j < lm.size(); j++) max_diff = std::max(max_diff, std::fabs(lm[j] - logits_adapter[j]));
      }
      if (o.decode > 0 && i >= o.warmup && i - o.warmup < o.decode_reps) merged_tok.push_back(per_tok(none));
      double t2 = now_s();
      m.unmerge_all();
      double t3 = now_s();
      double fu = fwd(bb);
      if (o.decode > 0 && i >= o.warmup && i - o.warmup < o.decode_reps) unmerged_tok.push_back(per_tok(none));
      if (i >= o.warmup) {
        merged_s.push_back(fm);
        unmerged_s.push_back(fu);
        merge_s.push_back(t1 - t0);
        unmerge_s.push_back(t3 - t2);
      }
    }
    out["steps"] = o.steps;
    out["base_fwd_ms"] = median(ms(base_s));
    out["adapter_unmerged_fwd_ms"] = median(ms(adapter_s));
    out["merged_fwd_ms"] = median(ms(merged_s));
    out["base_owned_fwd_ms"] = median(ms(unmerged_s));
    out["merged_over_base"] = median(merged_s) / median(base_s);
    out["merged_over_base_owned"] = median(merged_s) / median(unmerged_s);
    out["adapter_over_base"] = median(adapter_s) / median(base_s);
    out["merge_ms"] = median(ms(merge_s));
    out["unmerge_ms"] = median(ms(unmerge_s));
    out["merged_vs_adapter_logits_max_abs_diff"] = max_diff;
    out["base_fwd_ms_all"] = ms(base_s);
    out["merged_fwd_ms_all"] = ms(merged_s);
    if (o.decode > 0) {
      out["decode_tokens"] = o.decode;
      out["base_decode_ms_per_tok"] = median(ms(base_tok));
      out["adapter_decode_ms_per_tok"] = median(ms(adapter_tok));
      out["merged_decode_ms_per_tok"] = median(ms(merged_tok));
      out["base_owned_decode_ms_per_tok"] = median(ms(unmerged_tok));
      out["merged_over_base_decode"] = median(merged_tok) / median(base_tok);
    }
    finish();
    return;
  }

  if (o.mode != "forward" && o.mode != "lora" && o.mode != "full")
    fail("--mode must be forward, lora, full, merged-latency, swap or sizes");

  if (o.mode == "lora") {
    LoraConfig lc = make_lora_config(o, m);
    adapter = m.create_adapter(lc, o.seed);
    const int slot = m.add_adapter(adapter);
    m.trainable_adapter = slot;
    adapter->alloc_grads();
    for (auto& [name, t] : adapter->targets) {
      opt.add(t.A.ptr(), t.dA.ptr(), t.A.n);
      opt.add(t.B.ptr(), t.dB.ptr(), t.B.n);
    }
    uses.push_back({slot, 1.f});
    trainable = adapter->num_parameters();
    out["targets"] = targets_label(o, m);
    out["r"] = o.r;
    out["lora_targets"] = adapter->targets.size();
  } else if (o.mode == "full") {
    m.enable_full_finetune();
    for (Model::ParamRef& p : m.full_params()) {
      opt.add(p.value, p.grad, p.n);
      trainable += p.n;
    }
  }
  out["trainable_params"] = trainable;
  out["trainable_frac"] = double(trainable) / double(m.num_parameters());
  out["grad_bytes"] = trainable * 4;
  out["optimizer_bytes"] = trainable * 8;  // AdamW m and v
  out["grad_optimizer_bytes"] = trainable * 12;
  out["rss_setup_mb"] = mib(proc_status_kb("VmRSS"));

  Batch batch = make_batch(B, T, m.cfg.vocab, o.seed, uses);
  const bool train = o.mode != "forward";
  std::vector<double> fwd_s, bwd_s, opt_s, fb_s, step_s;
  double loss = 0;
  for (int64_t i = 0; i < o.warmup + o.steps; i++) {
    double t0 = now_s();
    if (train) m.zero_grads();
    loss = m.forward(batch, train) / double(N);
    double t1 = now_s();
    if (train) m.backward(1.f / float(N));
    double t2 = now_s();
    if (train) opt.step(o.lr, 0.9, 0.999, 1e-8, 0.0);
    double t3 = now_s();
    if (i < o.warmup) continue;
    fwd_s.push_back(t1 - t0);
    bwd_s.push_back(t2 - t1);
    opt_s.push_back(t3 - t2);
    fb_s.push_back(t2 - t0);
    step_s.push_back(t3 - t0);
  }
  out["steps"] = o.steps;
  out["warmup"] = o.warmup;
  if (o.steps > 0) {
    out["loss"] = loss;
    out["fwd_ms"] = median(ms(fwd_s));
    if (train) {
      out["bwd_ms"] = median(ms(bwd_s));
      out["opt_ms"] = median(ms(opt_s));
      out["fwd_bwd_ms"] = median(ms(fb_s));
      out["fwd_bwd_tokens_per_s"] = double(N) / median(fb_s);
      out["fwd_bwd_ms_all"] = ms(fb_s);
    }
    out["ms_per_step"] = median(ms(step_s));
    out["ms_per_step_min"] = min_of(ms(step_s));
    out["tokens_per_s"] = double(N) / median(step_s);
    out["step_ms_all"] = ms(step_s);
  }
  out["peak_rss_train_mb"] = mib(proc_status_kb("VmHWM"));

  if (o.decode > 0) {
    std::vector<int32_t> prompt(batch.ids.begin(), batch.ids.begin() + T);
    if (!o.prompt_ids.empty()) prompt = read_prompt_ids(o.prompt_ids, T, m.cfg.vocab);
    out["prompt"] = o.prompt_ids.empty() ? "random ids" : o.prompt_ids;
    std::vector<double> pre, dec;
    std::vector<int32_t> toks;
    // Decode runs on the base model (no adapter applied), like the PyTorch script.
    const std::vector<AdapterUse> base;
    run_decode(m, std::vector<int32_t>(prompt.begin(), prompt.begin() + std::min<int64_t>(T, 8)), 2, base);  // warm-up
    for (int64_t i = 0; i < o.decode_reps; i++) {
      DecodeResult d = run_decode(m, prompt, o.decode, base);
      pre.push_back(d.prefill_s);
      dec.push_back(d.decode_s);
      toks = d.tokens;
    }
    out["decode_tokens"] = o.decode;
    out["prefill_ms"] = median(ms(pre));
    out["prefill_tok_s"] = double(T) / median(pre);
    out["decode_tok_s"] = double(o.decode) / median(dec);
    out["decode_ms_per_tok"] = median(ms(dec)) / double(o.decode);
    out["decode_first_tokens"] = std::vector<int32_t>(toks.begin(), toks.begin() + std::min<size_t>(8, toks.size()));
    out["decode_ids"] = toks;
    out["prefill_ms_all"] = ms(pre);
    out["decode_tok_s_all"] = [&] {
      std::vector<double> v;
      for (double d : dec) v.push_back(double(o.decode) / d);
      return v;
    }();
  }
  finish();
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark forward / LoRA / full training steps, decode, merge and swap");
  auto o = std::make_shared<Opts>();
  cmd->add_option("--shape", o->shape, "gpt2-124m | tinyllama-1.1b | path to a config.json (random f32 weights)");
  cmd->add_option("--model", o->model, "Benchmark a real model (HF dir or .gguf) instead of --shape");
  cmd->add_option("--mode", o->mode, "forward | lora | full | merged-latency | swap | sizes")
      ->check(CLI::IsMember({"forward", "lora", "full", "merged-latency", "swap", "sizes"}));
  cmd->add_option("--batch", o->batch, "Sequences per step");
  cmd->add_option("--seq", o->seq, "Tokens per sequence (and decode prompt length)");
  cmd->add_option("--steps", o->steps, "Timed steps (medians are reported)");
  cmd->add_option("--warmup", o->warmup, "Untimed warm-up steps");
  cmd->add_option("--decode", o->decode, "Greedy decode N tokens after a --seq prompt with the KV cache");
  cmd->add_option("--decode-reps", o->decode_reps, "Repeat the decode measurement (median)");
  cmd->add_option("--prompt-ids", o->prompt_ids,
                  "Decode prompt: the first --seq ids of this JSON file (an array of ids, or `lowrank tokenize "
                  "--json` output) instead of random ids");
  cmd->add_option("--targets", o->targets, "LoRA target_modules (default c_attn for GPT-2, q_proj,v_proj for llama)");
  cmd->add_option("--r", o->r, "LoRA rank");
  cmd->add_option("--alpha", o->alpha, "lora_alpha");
  cmd->add_option("--init", o->init, "init_lora_weights (default true; merged-latency: false)");
  cmd->add_option("--lr", o->lr, "AdamW learning rate");
  cmd->add_option("--seed", o->seed, "Seed for weights, adapter and tokens");
  cmd->add_option("--swaps", o->swaps, "swap mode: add/remove repetitions");
  cmd->add_option("--out-dir", o->out_dir, "sizes/swap: where adapter (and model) files are written");
  cmd->add_flag("--untie", o->untie, "Give a tied model its own lm_head (automatic with --mode full)");
  cmd->add_flag("--write-model", o->write_model, "sizes: also write the model as f32 safetensors and stat it");
  cmd->add_flag("--json", o->json, "One JSON line on stdout");
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace lowrank::cli
