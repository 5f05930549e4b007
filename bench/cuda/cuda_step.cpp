// cuda_step: timings of the CUDA engine on real model shapes with random weights, printed as
// one JSON line (the counterpart of bench/cuda/peft_step.py; bench/cuda/run.sh runs both).
//
//   cuda_step --mode train --shape gpt2-124m --batch 8 --seq 1024 --targets c_attn
//       LoRA training step: zero grads + forward + backward + AdamW (bf16 compute, f32
//       master A/B and optimizer state, frozen base). tok/s, peak device memory, model FLOPs.
//   cuda_step --mode mixed --shape tinyllama-1.1b --rows 32 --seq 256 --adapters 8
//       Inference forward of a batch whose rows use `adapters` distinct adapters (gathered
//       LoRA path), against the same forward with no adapter at all (the cost of a merged
//       single adapter: W' = W + sBA has the base's shape). Prints both times and the ratio.
//   cuda_step --mode gemm
//       The card's bf16 GEMM rate through our cuBLASLt path (8192³), the MFU denominator.
//
// Options: --dtype bf16|f32, --recompute, --r 8, --alpha 16, --steps 10, --warmup 3,
// --seed 0, --lr 1e-4. --targets: comma-separated module names, or all-linear.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/model_cuda.h"
#include "model/random_model.h"
#include "ops/cuda/ops_cuda.h"

using namespace lowrank;
using json = nlohmann::json;
namespace cu = lowrank::ops::cuda;

namespace {

struct Options {
  std::string mode = "train", shape = "gpt2-124m", targets, dtype = "bf16";
  int64_t batch = 8, seq = 1024, rows = 32, adapters = 8, r = 8, steps = 10, warmup = 3;
  double alpha = 16, lr = 1e-4;
  uint64_t seed = 0;
  bool recompute = false;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) out.push_back(x);
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail("option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--mode") o.mode = val();
    else if (a == "--shape") o.shape = val();
    else if (a == "--targets") o.targets = val();
    else if (a == "--dtype") o.dtype = val();
    else if (a == "--batch") o.batch = std::stoll(val());
    else if (a == "--seq") o.seq = std::stoll(val());
    else if (a == "--rows") o.rows = std::stoll(val());
    else if (a == "--adapters") o.adapters = std::stoll(val());
    else if (a == "--r") o.r = std::stoll(val());
    else if (a == "--alpha") o.alpha = std::stod(val());
    else if (a == "--lr") o.lr = std::stod(val());
    else if (a == "--steps") o.steps = std::stoll(val());
    else if (a == "--warmup") o.warmup = std::stoll(val());
    else if (a == "--seed") o.seed = std::stoull(val());
    else if (a == "--recompute") o.recompute = true;
    else if (a == "--help" || a == "-h") {
      std::puts("usage: cuda_step --mode train|mixed|gemm [--shape S] [--batch B] [--seq T] [--targets LIST]\n"
                "       [--r R] [--alpha A] [--dtype bf16|f32] [--recompute] [--rows N] [--adapters K]\n"
                "       [--steps N] [--warmup N] [--seed S] [--lr LR]");
      std::exit(0);
    } else {
      fail("unknown option ", a, " (see --help)");
    }
  }
  if (o.dtype != "bf16" && o.dtype != "f32") fail("--dtype must be bf16 or f32");
  return o;
}

LoraConfig lora_config(const Options& o, const ModelConfig& cfg) {
  LoraConfig lc;
  lc.r = o.r;
  lc.lora_alpha = o.alpha;
  std::string t = o.targets;
  if (t.empty()) t = cfg.arch == Arch::GPT2 ? "c_attn" : "q_proj,v_proj";
  if (t == "all-linear") lc.all_linear = true;
  else lc.target_modules = split(t);
  return lc;
}

// Random next-token batch: targets are the following ids, the last position of each row -1
// (what HF computes from labels = input_ids).
Batch make_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Batch b;
  b.B = B;
  b.T = T;
  std::mt19937_64 rng(seed);
  b.ids.resize(size_t(B * T));
  for (auto& id : b.ids) id = int32_t(rng() % uint64_t(V));
  b.targets.resize(size_t(B * T));
  for (int64_t r = 0; r < B; r++)
    for (int64_t t = 0; t < T; t++) b.targets[size_t(r * T + t)] = t + 1 < T ? b.ids[size_t(r * T + t + 1)] : -1;
  return b;
}

// Model FLOPs of one LoRA training step (frozen base): matmuls forward 2·N·P, backward dX
// only 2·N·P; causal attention forward 2·B·H·D·T² (QKᵀ and PV over half the square),
// backward twice that. LoRA's rank-r products are left out (they are < 1%).
double train_flops(const ModelConfig& c, int64_t B, int64_t T) {
  const double N = double(B * T);
  const double C = double(c.dim), F = double(c.ffn), HD = double(c.n_head * c.head_dim),
               KD = double(c.n_kv_head * c.head_dim);
  const double per_layer = C * HD + 2 * C * KD + HD * C + (c.arch == Arch::GPT2 ? 2 : 3) * C * F;
  const double P = per_layer * double(c.n_layer) + C * double(c.vocab);
  const double attn_fwd = 2.0 * double(B) * double(c.n_head * c.head_dim) * double(T) * double(T) * double(c.n_layer);
  return 4.0 * N * P + 3.0 * attn_fwd;
}

std::string device_name() {
  cudaDeviceProp p{};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) return "?";
  return p.name;
}

size_t driver_used_bytes() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return total_b - free_b;
}

void run_gemm(json& out) {
  const int64_t n = 8192;
  cu::bf16 *a = nullptr, *b = nullptr, *c = nullptr;
  a = static_cast<cu::bf16*>(cu::device_alloc(size_t(n * n) * 2));
  b = static_cast<cu::bf16*>(cu::device_alloc(size_t(n * n) * 2));
  c = static_cast<cu::bf16*>(cu::device_alloc(size_t(n * n) * 2));
  cu::zero(a, size_t(n * n) * 2);
  cu::zero(b, size_t(n * n) * 2);
  for (int i = 0; i < 3; i++) cu::gemm<cu::bf16, cu::bf16>(false, true, n, n, n, 1.f, a, b, 0.f, c);
  cu::synchronize();
  std::vector<double> t;
  for (int i = 0; i < 20; i++) {
    const double t0 = now_s();
    cu::gemm<cu::bf16, cu::bf16>(false, true, n, n, n, 1.f, a, b, 0.f, c);
    cu::synchronize();
    t.push_back(now_s() - t0);
  }
  const double s = median(t);
  out["gemm_shape"] = "8192x8192x8192 bf16 (f32 accumulate)";
  out["gemm_ms"] = s * 1e3;
  out["bf16_gemm_tflops"] = 2.0 * double(n) * n * n / s / 1e12;
  cu::device_free(a);
  cu::device_free(b);
  cu::device_free(c);
}

void run_train(const Options& o, json& out) {
  const ModelConfig cfg = shape_config(o.shape);
  RandomModelOptions ro;
  ro.seed = o.seed;
  auto model = make_random_model(cfg, ro);
  auto adapter = model->create_adapter(lora_config(o, cfg), o.seed + 1);
  const int slot = model->add_adapter(adapter);
  CudaModelOptions co;
  co.bf16 = o.dtype == "bf16";
  co.recompute = o.recompute;
  CudaModel gm(*model, co);
  const int64_t trainable = adapter->num_parameters();
  model.reset();  // host weights are no longer needed (the adapter object is kept)
  gm.set_trainable(slot);
  Batch batch = make_batch(o.batch, o.seq, cfg.vocab, o.seed + 2);
  batch.row_adapters.assign(size_t(o.batch), {AdapterUse{slot, 1.f}});
  int64_t n_targets = 0;
  for (int32_t t : batch.targets) n_targets += t >= 0;
  const float scale = 1.f / float(n_targets);
  std::vector<double> times, losses;
  for (int64_t s = 0; s < o.warmup + o.steps; s++) {
    cu::synchronize();
    const double t0 = now_s();
    gm.zero_grads();
    const double loss = gm.forward_backward(batch, scale) * scale;
    gm.adamw_step(o.lr, 0.9, 0.999, 1e-8, 0.0);
    cu::synchronize();
    const double dt = now_s() - t0;
    if (s >= o.warmup) times.push_back(dt);
    losses.push_back(loss);
  }
  const double step = median(times);
  const double flops = train_flops(cfg, o.batch, o.seq);
  out["trainable_params"] = trainable;
  out["step_ms"] = step * 1e3;
  out["step_ms_min"] = *std::min_element(times.begin(), times.end()) * 1e3;
  out["tok_per_s"] = double(o.batch * o.seq) / step;
  out["model_flops_per_step"] = flops;
  out["achieved_tflops"] = flops / step / 1e12;
  out["peak_bytes"] = CudaModel::bytes_peak();
  out["peak_gib"] = double(CudaModel::bytes_peak()) / double(1ull << 30);
  out["driver_used_bytes"] = driver_used_bytes();
  out["loss_first"] = losses.front();
  out["loss_last"] = losses.back();
}

void run_mixed(const Options& o, json& out) {
  const ModelConfig cfg = shape_config(o.shape);
  RandomModelOptions ro;
  ro.seed = o.seed;
  auto model = make_random_model(cfg, ro);
  Batch batch = make_batch(o.rows, o.seq, cfg.vocab, o.seed + 2);
  CudaModelOptions co;
  co.bf16 = o.dtype == "bf16";
  auto time_forward = [&](CudaModel& gm) {
    std::vector<double> t;
    for (int64_t s = 0; s < o.warmup + o.steps; s++) {
      cu::synchronize();
      const double t0 = now_s();
      gm.forward(batch);  // ends with a synchronizing loss sum
      if (s >= o.warmup) t.push_back(now_s() - t0);
    }
    return median(t);
  };
  double merged = 0, mixed = 0, single = 0;
  {
    CudaModel gm(*model, co);  // no adapter: the merged single-adapter cost
    merged = time_forward(gm);
  }
  std::mt19937 rng(unsigned(o.seed + 3));
  std::normal_distribution<float> g(0.f, 0.01f);
  std::vector<int> slots;
  for (int64_t k = 0; k < o.adapters; k++) {
    auto a = model->create_adapter(lora_config(o, cfg), o.seed + 10 + uint64_t(k));
    for (auto& [name, t] : a->targets)
      for (int64_t i = 0; i < t.B.n; i++) t.B.ptr()[i] = g(rng);
    a->name = "a";
    a->name += std::to_string(k);
    slots.push_back(model->add_adapter(a));
  }
  {
    CudaModel gm(*model, co);
    batch.row_adapters.assign(size_t(o.rows), {});
    for (int64_t r = 0; r < o.rows; r++) batch.row_adapters[size_t(r)] = {AdapterUse{slots[size_t(r) % slots.size()], 1.f}};
    mixed = time_forward(gm);
    for (int64_t r = 0; r < o.rows; r++) batch.row_adapters[size_t(r)] = {AdapterUse{slots[0], 1.f}};
    single = time_forward(gm);
  }
  out["rows"] = o.rows;
  out["adapters"] = o.adapters;
  out["merged_ms"] = merged * 1e3;
  out["mixed_ms"] = mixed * 1e3;
  out["single_unmerged_ms"] = single * 1e3;
  out["mixed_over_merged"] = mixed / merged;
  out["tok_per_s_mixed"] = double(o.rows * o.seq) / mixed;
  out["peak_bytes"] = CudaModel::bytes_peak();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    std::string why;
    if (!cu::device_available(&why)) {
      std::fprintf(stderr, "cuda_step: no usable CUDA device (%s)\n", why.c_str());
      return 3;
    }
    json out;
    out["impl"] = "lowrank-cuda";
    out["mode"] = o.mode;
    out["device"] = device_name();
    if (o.mode != "gemm") {
      out["shape"] = o.shape;
      out["dtype"] = o.dtype;
      out["seq"] = o.seq;
      out["r"] = o.r;
      out["targets"] = o.targets.empty() ? "default" : o.targets;
      out["steps"] = o.steps;
    }
    if (o.mode == "train") {
      out["batch"] = o.batch;
      out["recompute"] = o.recompute;
      run_train(o, out);
    } else if (o.mode == "mixed") {
      run_mixed(o, out);
    } else if (o.mode == "gemm") {
      run_gemm(out);
    } else {
      fail("--mode must be train, mixed or gemm");
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_step: %s\n", e.what());
    return 2;
  }
}
