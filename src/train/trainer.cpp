#include "train/trainer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "io/safetensors.h"

namespace lowrank {

using json = nlohmann::json;

double lr_factor(const std::string& schedule, int64_t step, int64_t warmup, int64_t total) {
  if (warmup > 0 && step < warmup) return double(step) / double(warmup);
  if (schedule == "constant") return 1.0;
  double denom = double(std::max<int64_t>(1, total - warmup));
  double progress = double(step - warmup) / denom;
  if (schedule == "linear") return std::max(0.0, 1.0 - progress);
  if (schedule == "cosine") return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  fail("unknown schedule \"", schedule, "\" (constant, linear, cosine)");
}

void AdamW::add(float* value, float* grad, int64_t n, std::string name) {
  params.push_back({value, grad, n, std::move(name)});
  m.emplace_back(size_t(n), 0.f);
  v.emplace_back(size_t(n), 0.f);
}

double AdamW::grad_norm() const {
  double s = 0;
  for (const Param& p : params)
    for (int64_t i = 0; i < p.n; i++) s += double(p.grad[i]) * double(p.grad[i]);
  return std::sqrt(s);
}

void AdamW::scale_grads(float s) {
  for (const Param& p : params)
    for (int64_t i = 0; i < p.n; i++) p.grad[i] *= s;
}

std::string AdamW::first_non_finite(bool grads) const {
  for (size_t k = 0; k < params.size(); k++) {
    const float* x = grads ? params[k].grad : params[k].value;
    for (int64_t i = 0; i < params[k].n; i++)
      if (!std::isfinite(x[i]))
        return (params[k].name.empty() ? "parameter " + std::to_string(k) : params[k].name) + "[" +
               std::to_string(i) + "] = " + std::to_string(x[i]);
  }
  return "";
}

bool AdamW::step(double lr, double beta1, double beta2, double eps, double wd) {
  t++;
  // Same arithmetic as torch.optim.AdamW (single-tensor path), in f32.
  const float bc1 = float(1.0 - std::pow(beta1, double(t)));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(t))));
  const float step_size = float(lr) / bc1;
  const float decay = float(1.0 - lr * wd);
  const float b1 = float(beta1), b2 = float(beta2), e = float(eps);
  bool finite = true;
  for (size_t k = 0; k < params.size(); k++) {
    const Param& p = params[k];
    float* mk = m[k].data();
    float* vk = v[k].data();
    int bad = 0;
#pragma omp parallel for schedule(static) if (p.n > 65536) reduction(| : bad)
    for (int64_t i = 0; i < p.n; i++) {
      float g = p.grad[i];
      if (wd != 0) p.value[i] *= decay;
      mk[i] += (g - mk[i]) * (1.f - b1);       // lerp, as torch does
      vk[i] = vk[i] * b2 + (1.f - b2) * g * g;
      float denom = std::sqrt(vk[i]) / bc2_sqrt + e;
      p.value[i] -= step_size * mk[i] / denom;
      bad |= !std::isfinite(p.value[i]);
    }
    finite = finite && !bad;
  }
  return finite;
}

double evaluate(Model& model, const std::vector<Example>& data, const std::vector<AdapterUse>& uses) {
  double total = 0;
  int64_t n = 0;
  for (const Example& ex : data) {
    Batch b;
    b.B = 1;
    b.T = int64_t(ex.ids.size());
    b.ids = ex.ids;
    b.targets = ex.targets;
    b.row_adapters = {uses};
    const double sum = model.forward(b, false);
    if (!std::isfinite(sum)) fail("evaluation: the loss is not finite (", sum, "): NaN/Inf weights or activations");
    total += sum;
    n += ex.scored();
  }
  return n ? total / double(n) : 0.0;
}

namespace {

std::string fmt_time(double s) {
  char buf[32];
  int64_t t = int64_t(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else std::snprintf(buf, sizeof buf, "%02lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

struct DataCursor {
  uint64_t seed = 0;
  int64_t epoch = 0;
  size_t pos = 0;
  std::vector<size_t> order;
  void shuffle(size_t n) {
    order.resize(n);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(seed * 1000003ull + uint64_t(epoch));
    std::shuffle(order.begin(), order.end(), rng);
  }
};

void save_optimizer(const std::string& path, const AdamW& opt) {
  std::vector<TensorToWrite> t;
  for (size_t k = 0; k < opt.params.size(); k++) {
    t.push_back(tensor_f32("m." + std::to_string(k), {opt.params[k].n}, opt.m[k].data()));
    t.push_back(tensor_f32("v." + std::to_string(k), {opt.params[k].n}, opt.v[k].data()));
  }
  safetensors_write(path, std::move(t), {{"format", "lowrank-adamw"}});
}

void load_optimizer(const std::string& path, AdamW& opt) {
  SafetensorsFile st = SafetensorsFile::open(path);
  for (size_t k = 0; k < opt.params.size(); k++) {
    for (int which = 0; which < 2; which++) {
      const Tensor& t = st.get((which ? "v." : "m.") + std::to_string(k));
      if (t.numel() != opt.params[k].n || t.dtype != DType::F32)
        fail(path, ": optimizer state ", t.name, " has ", t.numel(), " values, expected ", opt.params[k].n,
             " (checkpoint from a different adapter?)");
      std::memcpy((which ? opt.v : opt.m)[k].data(), t.data, size_t(t.numel()) * 4);
    }
  }
}

}  // namespace

TrainResult train(Model& model, const std::vector<Example>& data, const std::vector<Example>& eval_data,
                  const TrainOptions& o, int32_t pad_id, const std::function<void(const std::string&)>& save_fn) {
  if (data.empty()) fail("no training data");
  if (o.batch <= 0 || o.grad_accum <= 0) fail("--batch and --grad-accum must be positive");
  AdamW opt;
  std::vector<AdapterUse> uses;
  if (model.trainable_adapter >= 0) {
    Adapter& a = *model.adapters[size_t(model.trainable_adapter)];
    a.alloc_grads();
    for (auto& [name, t] : a.targets) {
      opt.add(t.A.ptr(), t.dA.ptr(), t.A.n, name + ".lora_A");
      opt.add(t.B.ptr(), t.dB.ptr(), t.B.n, name + ".lora_B");
    }
    uses.push_back({model.trainable_adapter, 1.f});
  }
  for (Model::ParamRef& p : model.full_params()) opt.add(p.value, p.grad, p.n, p.name);
  if (opt.params.empty()) fail("nothing to train: no trainable adapter and not --full");

  const int64_t per_step = o.batch * o.grad_accum;
  const int64_t total = o.steps > 0 ? o.steps
                                    : std::max<int64_t>(1, int64_t(std::ceil(o.epochs * double(data.size()) / double(per_step))));
  DataCursor cur;
  cur.seed = o.seed;
  int64_t start_step = 0;
  TrainResult res;
  std::vector<std::pair<int64_t, double>> eval_points;
  model.dropout_seed = o.seed;
  model.dropout_step_ = 0;
  if (!o.resume.empty()) {
    std::string sp = o.resume + "/trainer_state.json";
    json st;
    try {
      st = json::parse(read_text_file(sp));
      start_step = st.at("step").get<int64_t>();
      opt.t = st.at("adam_t").get<int64_t>();
      cur.epoch = st.at("epoch").get<int64_t>();
      cur.pos = st.at("pos").get<size_t>();
      cur.seed = st.at("seed").get<uint64_t>();
      model.dropout_seed = st.at("dropout_seed").get<uint64_t>();
      model.dropout_step_ = st.at("dropout_step").get<uint64_t>();
      res.losses = st.at("losses").get<std::vector<double>>();
    } catch (const json::exception& e) {
      fail(sp, ": bad trainer state: ", json_error_text(e));
    }
    load_optimizer(o.resume + "/optimizer.safetensors", opt);
  }
  cur.shuffle(data.size());

  std::FILE* log = nullptr;
  if (!o.json_log.empty()) {
    log = std::fopen(o.json_log.c_str(), o.resume.empty() ? "w" : "a");
    if (!log) fail(o.json_log, ": cannot open for writing");
  }
  const bool tty = isatty(2);
  // Non-finite loss, gradients or weights stop the run before anything non-finite is saved:
  // the message names the step and the tensor, and the last checkpoint written stays intact.
  std::string last_checkpoint = o.resume;
  auto diverged = [&](int64_t step, const std::string& what) {
    if (o.progress && tty) std::fprintf(stderr, "\n");
    std::string msg = "training diverged at step " + std::to_string(step + 1) + ": " + what +
                      "; nothing was written for this step (try a lower --lr)";
    if (!last_checkpoint.empty()) msg += "; the last good checkpoint is " + last_checkpoint;
    if (log) {
      std::fprintf(log, "{\"step\":%lld,\"error\":%s}\n", (long long)(step + 1), json(msg).dump().c_str());
      std::fclose(log);
    }
    throw Error(msg);
  };
  auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_done = 0;
  Batch batch;
  for (int64_t step = start_step; step < total; step++) {
    model.zero_grads();
    double loss = 0;
    int64_t step_tokens = 0;
    for (int64_t micro = 0; micro < o.grad_accum; micro++) {
      if (cur.pos >= data.size()) {
        cur.epoch++;
        cur.pos = 0;
        cur.shuffle(data.size());
      }
      make_batch(data, cur.order, cur.pos, o.batch, pad_id, batch);
      cur.pos += size_t(o.batch);
      batch.row_adapters.assign(size_t(batch.B), uses);
      int64_t ntok = 0;
      for (int32_t t : batch.targets) ntok += t >= 0;
      if (ntok == 0) continue;
      // Forward and backward in one pass (the head's logits become gradients chunk by chunk).
      const double sum = model.forward_backward(batch, float(1.0 / (double(ntok) * double(o.grad_accum))));
      if (!std::isfinite(sum))
        diverged(step, "the loss is " + std::to_string(sum / double(ntok)) + " (not finite)");
      loss += sum / double(ntok) / double(o.grad_accum);
      step_tokens += batch.B * batch.T;
    }
    double norm = opt.grad_norm();
    // Checked before clipping: clipping an infinite norm would hide it (and turn it into NaN).
    if (!std::isfinite(norm)) diverged(step, "the gradient is not finite (" + opt.first_non_finite(true) + ")");
    if (o.max_grad_norm > 0 && norm > o.max_grad_norm) opt.scale_grads(float(o.max_grad_norm / (norm + 1e-6)));
    double lr = o.lr * lr_factor(o.schedule, step, o.warmup_steps, total);
    if (!opt.step(lr, o.beta1, o.beta2, o.eps, o.weight_decay))
      diverged(step, "the update made a weight non-finite (" + opt.first_non_finite(false) + ")");
    res.losses.push_back(loss);
    tokens_done += step_tokens;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double tok_s = elapsed > 0 ? double(tokens_done) / elapsed : 0;
    double eta = elapsed / double(step + 1 - start_step) * double(total - step - 1);
    if (log) {
      std::fprintf(log, "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.6g,\"tokens\":%lld,\"tok_s\":%.1f,\"elapsed_s\":%.3f}\n",
                   (long long)(step + 1), loss, lr, norm, (long long)step_tokens, tok_s, elapsed);
      std::fflush(log);
    }
    if (o.progress) {
      int width = 24, filled = int(double(width) * double(step + 1) / double(total));
      std::string bar(size_t(filled), '#');
      bar += std::string(size_t(width - filled), '.');
      char line[256];
      std::snprintf(line, sizeof line, "step %lld/%lld [%s] loss %.4f lr %.2e %.0f tok/s ETA %s",
                    (long long)(step + 1), (long long)total, bar.c_str(), loss, lr, tok_s, fmt_time(eta).c_str());
      if (tty) std::fprintf(stderr, "\r%s\033[K", line);
      else if ((step + 1) % std::max<int64_t>(1, total / 20) == 0 || step + 1 == total) std::fprintf(stderr, "%s\n", line);
    }
    bool last = step + 1 == total;
    if (!eval_data.empty() && ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || last)) {
      double el = evaluate(model, eval_data, uses);
      eval_points.push_back({step + 1, el});
      res.final_eval = el;
      if (log) {
        std::fprintf(log, "{\"step\":%lld,\"eval_loss\":%.9g}\n", (long long)(step + 1), el);
        std::fflush(log);
      }
      if (o.progress) std::fprintf(stderr, "%seval loss %.4f at step %lld\n", tty ? "\n" : "", el, (long long)(step + 1));
    }
    if (o.save_every > 0 && (step + 1) % o.save_every == 0 && !o.out.empty()) {
      std::string dir = o.out + "/checkpoint-" + std::to_string(step + 1);
      std::string tmp = dir + ".tmp";
      ::mkdir(o.out.c_str(), 0755);
      ::mkdir(tmp.c_str(), 0755);
      save_fn(tmp);
      save_optimizer(tmp + "/optimizer.safetensors", opt);
      json st = {{"step", step + 1},        {"adam_t", opt.t},
                 {"epoch", cur.epoch},      {"pos", cur.pos},
                 {"seed", cur.seed},        {"dropout_seed", model.dropout_seed},
                 {"dropout_step", model.dropout_step_}, {"losses", res.losses}};
      std::string s = st.dump(2);
      write_file_atomic(tmp + "/trainer_state.json", s.data(), s.size());
      if (file_exists(dir)) {  // replace an older checkpoint of the same step
        std::string old = dir + ".old";
        std::error_code ec;
        std::filesystem::remove_all(old, ec);
        if (std::rename(dir.c_str(), old.c_str()) != 0) fail(dir, ": cannot move the older checkpoint aside");
        if (std::rename(tmp.c_str(), dir.c_str()) != 0) fail(dir, ": cannot rename checkpoint directory");
        std::filesystem::remove_all(old, ec);  // never a shell: paths may hold any character
      } else if (std::rename(tmp.c_str(), dir.c_str()) != 0) {
        fail(dir, ": cannot rename checkpoint directory");
      }
      last_checkpoint = dir;
    }
  }
  if (o.progress && tty) std::fprintf(stderr, "\n");
  if (log) std::fclose(log);
  if (!o.out.empty()) write_loss_svg(o.out + "/loss.svg", res.losses, eval_points);
  return res;
}

void write_loss_svg(const std::string& path, const std::vector<double>& losses,
                    const std::vector<std::pair<int64_t, double>>& evals) {
  const double W = 640, H = 400, L = 60, R = 20, T = 30, B = 50;
  double lo = 1e300, hi = -1e300;
  for (double x : losses) lo = std::min(lo, x), hi = std::max(hi, x);
  for (auto& e : evals) lo = std::min(lo, e.second), hi = std::max(hi, e.second);
  if (losses.empty()) lo = 0, hi = 1;
  if (hi - lo < 1e-9) hi = lo + 1;
  double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const double n = double(std::max<size_t>(losses.size(), 2));
  auto X = [&](double step) { return L + (W - L - R) * (step - 1) / (n - 1); };
  auto Y = [&](double v) { return T + (H - T - B) * (hi - v) / (hi - lo); };
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
  s += buf;
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">training loss</text>\n", W / 2);
  s += buf;
  for (int i = 0; i <= 4; i++) {
    double v = lo + (hi - lo) * i / 4;
    std::snprintf(buf, sizeof buf, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                  L, Y(v), W - R, Y(v), L - 5, Y(v) + 4, v);
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">step (1..%zu)</text>\n", (W + L) / 2, H - 15, losses.size());
  s += buf;
  s += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (size_t i = 0; i < losses.size(); i++) {
    std::snprintf(buf, sizeof buf, "%.1f,%.1f ", X(double(i + 1)), Y(losses[i]));
    s += buf;
  }
  s += "\"/>\n";
  for (auto& e : evals) {
    std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/>\n", X(double(e.first)), Y(e.second));
    s += buf;
  }
  if (!evals.empty()) s += "<text x=\"70\" y=\"45\" fill=\"#d62728\">● eval loss</text>\n";
  s += "</svg>\n";
  write_file_atomic(path, s.data(), s.size());
}

}  // namespace lowrank
