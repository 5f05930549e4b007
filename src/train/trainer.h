// LoRA (and full) training: AdamW, schedules, clipping, accumulation, checkpoints, logs.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/dataset.h"

namespace lowrank {

struct TrainOptions {
  double lr = 2e-4;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string schedule = "constant";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;          // 0 = off
  int64_t grad_accum = 1;
  int64_t batch = 1;
  int64_t steps = 0;                   // 0 = derive from epochs
  double epochs = 1;
  uint64_t seed = 0;
  int64_t eval_every = 0;              // 0 = only at the end when eval data is given
  int64_t save_every = 0;
  std::string out;                     // output dir
  std::string json_log;                // JSONL file, one object per step
  std::string resume;                  // checkpoint dir to resume from
  bool progress = true;
};

// Learning-rate multiplier at optimizer step `step` (0-based) of `total`.
double lr_factor(const std::string& schedule, int64_t step, int64_t warmup, int64_t total);

// AdamW over a set of (value, grad) arrays, like torch.optim.AdamW.
class AdamW {
 public:
  struct Param { float* value; float* grad; int64_t n; std::string name; };
  void add(float* value, float* grad, int64_t n, std::string name = "");
  // One update; t is incremented first (bias correction uses the new t). Returns false when
  // an updated value is not finite (the update overflowed).
  bool step(double lr, double beta1, double beta2, double eps, double weight_decay);
  double grad_norm() const;
  // The name of the first parameter whose gradient (grads = true) or value holds a NaN/Inf,
  // with the index ("model.layers.0.self_attn.q_proj.lora_A[12]"); "" when all are finite.
  std::string first_non_finite(bool grads) const;
  void scale_grads(float s);
  int64_t t = 0;
  std::vector<Param> params;
  std::vector<std::vector<float>> m, v;  // per param (n)
};

struct TrainResult {
  std::vector<double> losses;  // per optimizer step (mean over accumulated micro-batches)
  double final_eval = -1;
};

// Trains the model's trainable adapter (or all weights when full_finetune) on data.
TrainResult train(Model& model, const std::vector<Example>& data, const std::vector<Example>& eval_data,
                  const TrainOptions& opt, int32_t pad_id,
                  const std::function<void(const std::string& dir)>& save_fn);

// Mean NLL over examples (one forward per example).
double evaluate(Model& model, const std::vector<Example>& data, const std::vector<AdapterUse>& uses);

// Writes an SVG line plot of the loss curve (and eval points if any).
void write_loss_svg(const std::string& path, const std::vector<double>& losses,
                    const std::vector<std::pair<int64_t, double>>& eval_points);

}  // namespace lowrank
