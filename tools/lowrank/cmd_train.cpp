#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "lora/peft.h"
#include "train/trainer.h"

namespace lowrank::cli {

// Checks, before any work, that `dir` can be the output: an existing writable directory, or
// a new one whose parent is a writable directory. Nothing is created here, so a run that
// fails on its inputs leaves nothing behind.
static void check_output_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) fail(dir, ": --out exists and is not a directory");
    if (::access(dir.c_str(), W_OK) != 0) fail(dir, ": --out directory is not writable");
    return;
  }
  std::string parent = dir;
  while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
  size_t slash = parent.rfind('/');
  parent = slash == std::string::npos ? "." : slash == 0 ? "/" : parent.substr(0, slash);
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail(dir, ": the parent directory of --out (", parent, ") does not exist");
  if (::access(parent.c_str(), W_OK) != 0) fail(dir, ": cannot create --out: ", parent, " is not writable");
}

// What a run computes, as JSON: every option except those that only change how it reports or
// whether it resumes. Written to OUT/train_args.json; an --out that already holds a run is
// reused only for the same command (or --resume from inside it, or --overwrite).
static nlohmann::json run_signature(const std::string& model, const std::string& data, const std::string& eval_data,
                                    const std::string& adapter, const std::string& targets, const std::string& init,
                                    int64_t r, int64_t seq_len, double alpha, double dropout, bool rslora, bool full,
                                    bool pack, const std::vector<int64_t>& layers, const TrainOptions& t) {
  return {{"model", model},       {"data", data},
          {"eval_data", eval_data}, {"adapter", adapter},
          {"targets", targets},   {"init", init},
          {"r", r},               {"seq_len", seq_len},
          {"alpha", alpha},       {"dropout", dropout},
          {"rslora", rslora},     {"full", full},
          {"pack", pack},         {"layers", layers},
          {"lr", t.lr},           {"weight_decay", t.weight_decay},
          {"schedule", t.schedule}, {"warmup_steps", t.warmup_steps},
          {"max_grad_norm", t.max_grad_norm}, {"grad_accum", t.grad_accum},
          {"batch", t.batch},     {"steps", t.steps},
          {"epochs", t.epochs},   {"seed", t.seed},
          {"eval_every", t.eval_every}, {"save_every", t.save_every}};
}

// Refuses an --out directory that holds something other than a previous run of this command.
static void check_out_reusable(const std::string& out, const nlohmann::json& sig, const std::string& resume,
                               bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(out, ec) || fs::is_empty(out, ec) || overwrite) return;
  if (!resume.empty()) {
    // Resuming from a checkpoint inside --out continues that run.
    fs::path o = fs::weakly_canonical(out, ec), r = fs::weakly_canonical(resume, ec);
    auto [oe, re] = std::mismatch(o.begin(), o.end(), r.begin(), r.end());
    if (oe == o.end()) return;
  }
  const std::string args = out + "/train_args.json";
  if (fs::is_regular_file(args, ec)) {
    nlohmann::json prev;
    try {
      prev = nlohmann::json::parse(read_text_file(args));
    } catch (const nlohmann::json::exception&) {
      prev = nullptr;
    }
    if (prev == sig) return;  // the same command again (e.g. after an interruption)
    fail(out, ": --out holds a training run with other settings (", args,
         "); pass --overwrite to replace it, or choose another directory");
  }
  std::string names;
  int shown = 0;
  for (const auto& e : fs::directory_iterator(out, ec)) {
    if (shown++ == 3) {
      names += ", ...";
      break;
    }
    names += (names.empty() ? "" : ", ") + e.path().filename().string();
  }
  fail(out, ": --out is not empty (", names, ") and is not a previous run of this command; pass --overwrite to "
       "replace what it holds, or choose another directory");
}

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a LoRA adapter (or all weights with --full); writes a PEFT dir");
  struct Opts {
    std::string model, data, eval_data, adapter, out, targets = "q_proj,v_proj", init = "true", gguf_out;
    int64_t r = 8, seq_len = 512;
    double alpha = 16, dropout = -1;
    bool rslora = false, full = false, pack = false, no_progress = false, overwrite = false, checkpoint_acts = false;
    std::vector<int64_t> layers;
    TrainOptions t;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--data", o->data, "Training JSONL")->required();
  cmd->add_option("--out", o->out, "Output PEFT adapter dir")->required();
  cmd->add_option("--adapter", o->adapter, "Continue training this PEFT adapter");
  cmd->add_option("--r", o->r, "LoRA rank (new adapters)")->check(in_range(1, 65536));
  cmd->add_option("--alpha", o->alpha, "lora_alpha (new adapters)")->check(in_range(-1e6, 1e6));
  cmd->add_option("--dropout", o->dropout, "lora_dropout (default: the adapter's, or 0.05 for new ones)")->check(in_range(0, 0.999));
  cmd->add_option("--targets", o->targets, "target_modules: comma list of names, \"all-linear\", or re:<regex>");
  cmd->add_option("--layers", o->layers, "layers_to_transform")->delimiter(',');
  cmd->add_flag("--rslora", o->rslora, "rsLoRA scaling α/√r");
  cmd->add_option("--init", o->init, "init_lora_weights: true | gaussian | false | pissa");
  cmd->add_flag("--full", o->full, "Train all weights instead of an adapter (comparison baseline)");
  cmd->add_option("--steps", o->t.steps, "Optimizer steps (0 = use --epochs)")->check(in_range(0, 1e9));
  cmd->add_option("--epochs", o->t.epochs, "Epochs when --steps is 0")->check(in_range(1e-6, 1e6));
  cmd->add_option("--batch", o->t.batch, "Sequences per micro-batch")->check(in_range(1, 1 << 20));
  cmd->add_option("--grad-accum", o->t.grad_accum, "Micro-batches per optimizer step")->check(in_range(1, 1 << 20));
  cmd->add_option("--lr", o->t.lr, "Peak learning rate")->check(in_range(0, 1e6));
  cmd->add_option("--schedule", o->t.schedule, "constant | linear | cosine")->check(CLI::IsMember({"constant", "linear", "cosine"}));
  cmd->add_option("--warmup-steps", o->t.warmup_steps, "Linear warm-up steps")->check(in_range(0, 1e9));
  cmd->add_option("--weight-decay", o->t.weight_decay, "AdamW decoupled weight decay")->check(in_range(0, 100));
  cmd->add_option("--max-grad-norm", o->t.max_grad_norm, "Clip the global gradient norm (0 = off)")->check(in_range(0, 1e12));
  cmd->add_option("--seed", o->t.seed, "Seed for init, data order and dropout");
  cmd->add_option("--seq-len", o->seq_len, "Truncate (or pack) to this many tokens")->check(in_range(2, kMaxSeqLen));
  cmd->add_flag("--pack", o->pack, "Pack examples into full rows of --seq-len tokens");
  cmd->add_option("--eval-data", o->t.eval_every == 0 ? o->eval_data : o->eval_data, "Held-out JSONL for eval loss");
  cmd->add_option("--eval-every", o->t.eval_every, "Evaluate every N steps (and at the end)")->check(in_range(0, 1e9));
  cmd->add_option("--save-every", o->t.save_every, "Write a resumable checkpoint every N steps")->check(in_range(0, 1e9));
  cmd->add_option("--resume", o->t.resume, "Resume from a checkpoint dir (OUT/checkpoint-N)");
  cmd->add_option("--json-log", o->t.json_log, "Write one JSON object per step to this file");
  cmd->add_option("--gguf-out", o->gguf_out, "Also write a GGUF LoRA adapter (GGUF base models)");
  cmd->add_flag("--no-progress", o->no_progress, "No progress bar");
  cmd->add_flag("--overwrite", o->overwrite, "Write into a non-empty --out that holds another run");
  cmd->add_flag("--checkpoint-activations", o->checkpoint_acts,
                "Keep only each block's input and recompute the block in the backward (less memory, ~1/3 more compute)");
  cmd->callback([o] {
    // Everything that can be checked before the (long) training run is checked first.
    const bool gguf_model = o->model.size() > 5 && o->model.compare(o->model.size() - 5, 5, ".gguf") == 0;
    if (!o->gguf_out.empty() && !gguf_model)
      fail("--gguf-out needs a GGUF base model (--model X.gguf); for a Hugging Face model use the PEFT dir at --out");
    if (!o->gguf_out.empty() && o->full) fail("--gguf-out writes a LoRA adapter and cannot be combined with --full");
    if (o->full && gguf_model) fail("--full training of a GGUF model is not supported (its weights are quantized)");
    const bool pissa = !o->full && o->adapter.empty() && o->t.resume.empty() && o->init.rfind("pissa", 0) == 0;
    if (pissa && o->t.save_every > 0)
      fail("--init pissa cannot be combined with --save-every: PiSSA changes the base weights, so checkpoints "
           "are not resumable; train without checkpoints");
    check_output_dir(o->out);
    const nlohmann::json sig = run_signature(o->model, o->data, o->eval_data, o->adapter, o->targets, o->init, o->r,
                                             o->seq_len, o->alpha, o->dropout, o->rslora, o->full, o->pack,
                                             o->layers, o->t);
    check_out_reusable(o->out, sig, o->t.resume, o->overwrite);

    Loaded l = load_all(o->model, {});
    Model& m = *l.model;
    m.checkpoint_activations = o->checkpoint_acts;
    std::vector<Example> data = load_jsonl(o->data, l.tok, o->seq_len);
    int32_t pad = l.tok.pad_id() >= 0 ? l.tok.pad_id() : (l.tok.eos_id() >= 0 ? l.tok.eos_id() : 0);
    if (o->pack) data = pack_examples(data, o->seq_len, pad);
    std::vector<Example> eval_data;
    if (!o->eval_data.empty()) eval_data = load_jsonl(o->eval_data, l.tok, o->seq_len);

    TrainOptions t = o->t;
    t.out = o->out;
    t.progress = !o->no_progress;
    std::shared_ptr<Adapter> adapter;
    if (!o->full) {
      std::string from = !t.resume.empty() ? t.resume : o->adapter;
      if (!from.empty()) {
        adapter = load_peft_adapter(from);
        if (o->dropout >= 0) {
          adapter->config.lora_dropout = o->dropout;
          for (auto& [k, tg] : adapter->targets) tg.dropout = float(o->dropout);
        }
      } else {
        LoraConfig c;
        c.r = o->r;
        c.lora_alpha = o->alpha;
        c.lora_dropout = o->dropout >= 0 ? o->dropout : 0.05;
        c.use_rslora = o->rslora;
        c.init_lora_weights = o->init;
        c.layers_to_transform = o->layers;
        if (o->targets == "all-linear") c.all_linear = true;
        else if (o->targets.rfind("re:", 0) == 0) c.target_regex = o->targets.substr(3);
        else {
          std::stringstream ss(o->targets);
          std::string item;
          while (std::getline(ss, item, ','))
            if (!item.empty()) c.target_modules.push_back(item);
        }
        c.fan_in_fan_out = m.cfg.arch == Arch::GPT2;
        c.base_model_name_or_path = o->model;
        c.base_model_class = m.cfg.architecture;
        c.parent_library = "transformers.models." + m.cfg.model_type + ".modeling_" + m.cfg.model_type;
        adapter = m.create_adapter(c, t.seed);
      }
      m.trainable_adapter = m.add_adapter(adapter);
      std::fprintf(stderr, "trainable parameters: %lld of %lld (%.4f%%)\n", (long long)adapter->num_parameters(),
                   (long long)m.num_parameters(), 100.0 * double(adapter->num_parameters()) / double(m.num_parameters()));
    } else {
      m.enable_full_finetune();
    }
    const bool created = ::mkdir(o->out.c_str(), 0755) == 0;
    if (!created && errno != EEXIST) fail(o->out, ": cannot create the --out directory (", std::strerror(errno), ")");
    {
      const std::string s = sig.dump(2) + "\n";
      write_file_atomic(o->out + "/train_args.json", s.data(), s.size());
    }
    auto save = [&](const std::string& dir) {
      if (adapter) save_peft_adapter(*adapter, dir);
    };
    TrainResult res;
    try {
      res = train(m, data, eval_data, t, pad, save);
    } catch (...) {
      // A run that produced nothing leaves no --out behind (checkpoints of earlier steps stay).
      if (created) {
        std::error_code ec;
        std::filesystem::remove(o->out + "/train_args.json", ec);
        std::filesystem::remove(o->out, ec);  // only succeeds when empty
      }
      throw;
    }
    if (adapter) {
      // A PiSSA adapter only makes sense on the residual base; what is written is the
      // equivalent rank-2r LoRA adapter for the original base (as PEFT's conversion does).
      const Adapter& out = adapter->pissa_initial.empty() ? *adapter : pissa_to_lora(*adapter);
      if (!adapter->pissa_initial.empty())
        std::fprintf(stderr, "pissa: writing the equivalent LoRA adapter of rank %lld for the original base\n",
                     (long long)out.config.r);
      save_peft_adapter(out, o->out);
      if (!o->gguf_out.empty()) export_gguf_adapter_cli(o->model, out, o->gguf_out);
      std::fprintf(stderr, "wrote adapter to %s (loss %.4f -> %.4f)\n", o->out.c_str(), res.losses.front(), res.losses.back());
    } else {
      save_full_model_cli(m, o->model, o->out);
      std::fprintf(stderr, "wrote model to %s (loss %.4f -> %.4f)\n", o->out.c_str(), res.losses.front(), res.losses.back());
    }
  });
}

}  // namespace lowrank::cli
