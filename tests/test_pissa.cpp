// PiSSA initialisation (init_lora_weights = "pissa"): A, B from the top-r SVD of W0 and the
// base replaced by its residual, so the adapted model starts exactly at the base model; after
// training, pissa_to_lora gives a rank-2r LoRA adapter for the *original* base that reproduces
// the trained PiSSA model.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "fixture_util.h"
#include "lora/peft.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"
#include "train/trainer.h"

using namespace lowrank;

namespace {

Batch one_row(const std::vector<int32_t>& ids, int adapter_slot) {
  Batch b;
  b.B = 1;
  b.T = int64_t(ids.size()) - 1;
  b.ids.assign(ids.begin(), ids.end() - 1);
  b.targets.assign(ids.begin() + 1, ids.end());
  b.row_adapters.resize(1);
  if (adapter_slot >= 0) b.row_adapters[0].push_back({adapter_slot, 1.f});
  return b;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); i++) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

LoraConfig pissa_config(std::vector<std::string> targets, bool rslora) {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = 0;
  c.use_rslora = rslora;
  c.target_modules = std::move(targets);
  c.init_lora_weights = "pissa";
  return c;
}

// Init: the residual base plus the PiSSA adapter is the original base (up to f32 rounding of
// W - s·B·A + s·B·A), and the adapter carries the top singular directions (‖s·B·A‖ > 0).
void check_init_equals_base(const std::string& model_name, std::vector<std::string> targets, bool rslora) {
  const std::string dir = fixtures_dir() + "/" + model_name + "/model";
  Tokenizer tok = Tokenizer::from_hf_dir(dir);
  std::vector<int32_t> ids = tok.encode("Once upon a time there was a little robot who loved to paint.");
  auto base = load_hf_model(dir);
  base->keep_logits = true;
  base->forward(one_row(ids, -1), false);
  std::vector<float> ref = base->logits();

  auto m = load_hf_model(dir);
  m->keep_logits = true;
  auto a = m->create_adapter(pissa_config(targets, rslora), 0);
  ASSERT_FALSE(a->pissa_initial.empty());
  int slot = m->add_adapter(a);
  m->forward(one_row(ids, slot), false);
  EXPECT_LT(max_abs_diff(m->logits(), ref), 2e-5 * std::max(1.0, max_abs(ref))) << model_name;
  // Without the adapter, the residual model is a different model (the top directions are gone).
  m->forward(one_row(ids, -1), false);
  EXPECT_GT(max_abs_diff(m->logits(), ref), 1e-3) << model_name;
}

}  // namespace

TEST(Pissa, InitReproducesBaseLlama) { check_init_equals_base("tiny-llama", {"q_proj", "v_proj", "down_proj"}, false); }
TEST(Pissa, InitReproducesBaseGpt2FusedConv1D) { check_init_equals_base("tiny-gpt2", {"c_attn", "c_fc"}, true); }

TEST(Pissa, TrainedAdapterConvertsToLoraOnOriginalBase) {
  const std::string dir = fixtures_dir() + "/tiny-llama/model";
  Tokenizer tok = Tokenizer::from_hf_dir(dir);
  std::vector<int32_t> ids = tok.encode("The quick brown fox jumps over the lazy dog, and then it rests in the sun.");
  auto m = load_hf_model(dir);
  m->keep_logits = true;
  auto a = m->create_adapter(pissa_config({"q_proj", "k_proj", "v_proj", "o_proj"}, false), 3);
  m->trainable_adapter = m->add_adapter(a);
  Example ex;
  ex.ids = ids;
  ex.targets.assign(ids.size(), -1);
  for (size_t i = 0; i + 1 < ids.size(); i++) ex.targets[i] = ids[i + 1];
  TrainOptions o;
  o.lr = 5e-3;
  o.steps = 5;
  o.batch = 1;
  o.progress = false;
  o.out = temp_dir("pissa");
  TrainResult r = train(*m, {ex}, {}, o, 0, [](const std::string&) {});
  ASSERT_EQ(r.losses.size(), 5u);
  EXPECT_LT(r.losses.back(), r.losses.front());
  m->forward(one_row(ids, m->trainable_adapter), false);
  std::vector<float> trained = m->logits();

  // Convert, write as PEFT, reload, and apply to a fresh (original) base.
  Adapter lora = pissa_to_lora(*a);
  EXPECT_EQ(lora.config.r, 8);
  EXPECT_DOUBLE_EQ(lora.config.lora_alpha, 16.0);
  EXPECT_TRUE(lora.pissa_initial.empty());
  save_peft_adapter(lora, o.out + "/converted");
  auto reloaded = load_peft_adapter(o.out + "/converted");
  for (const auto& [module, t] : reloaded->targets) {
    EXPECT_EQ(t.r, 8) << module;
    EXPECT_FLOAT_EQ(t.scale, a->targets.at(module).scale) << module;
  }
  auto base = load_hf_model(dir);
  base->keep_logits = true;
  int slot = base->add_adapter(reloaded);
  base->forward(one_row(ids, slot), false);
  EXPECT_LT(max_abs_diff(base->logits(), trained), 2e-5 * std::max(1.0, max_abs(trained)));
  // And the training did move the model away from the base.
  base->forward(one_row(ids, -1), false);
  EXPECT_GT(max_abs_diff(base->logits(), trained), 1e-3);
}

TEST(Pissa, RankAboveMatrixSizeIsAnError) {
  const std::string dir = fixtures_dir() + "/tiny-llama/model";
  auto m = load_hf_model(dir);
  m->keep_logits = true;
  LoraConfig c = pissa_config({"q_proj"}, false);
  c.r = 100000;
  EXPECT_THROW(m->create_adapter(c, 0), Error);
}
