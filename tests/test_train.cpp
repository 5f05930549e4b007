// Trainer behaviour: bit-exact resume, gradient accumulation, schedules, data masking.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/mmap_file.h"
#include "fixture_util.h"
#include "lora/peft.h"
#include "model/model.h"
#include "train/dataset.h"
#include "train/trainer.h"

using namespace lowrank;

namespace {

std::string llama_dir() { return fixtures_dir() + "/tiny-llama/model"; }

std::vector<Example> some_examples(const Tokenizer& tok) {
  nlohmann::json e = fixture_expected("tiny-llama");
  std::vector<Example> out;
  for (const auto& t : e["base"]["texts"]) {
    Example ex;
    ex.ids = tok.encode(t["text"].get<std::string>());
    ex.targets.assign(ex.ids.size(), -1);
    for (size_t i = 0; i + 1 < ex.ids.size(); i++) ex.targets[i] = ex.ids[i + 1];
    out.push_back(ex);
  }
  return out;
}

LoraConfig qv_config() {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = 0.1;
  c.target_modules = {"q_proj", "v_proj"};
  return c;
}

TEST(Train, ResumeIsBitExact) {
  Tokenizer tok = Tokenizer::from_hf_dir(llama_dir());
  std::vector<Example> data = some_examples(tok);
  TrainOptions o;
  o.lr = 5e-3;
  o.steps = 6;
  o.batch = 2;
  o.seed = 7;
  o.save_every = 3;
  o.weight_decay = 0.01;
  o.schedule = "cosine";
  o.warmup_steps = 2;
  o.progress = false;
  o.out = temp_dir("resume");
  // Uninterrupted run, saving a checkpoint at step 3.
  auto m1 = load_hf_model(llama_dir());
  auto a1 = m1->create_adapter(qv_config(), 7);
  m1->trainable_adapter = m1->add_adapter(a1);
  TrainResult r1 = train(*m1, data, {}, o, 0, [&](const std::string& dir) { save_peft_adapter(*a1, dir); });
  ASSERT_TRUE(file_exists(o.out + "/checkpoint-3/trainer_state.json"));
  // Resume from step 3 in a fresh model.
  auto m2 = load_hf_model(llama_dir());
  auto a2 = load_peft_adapter(o.out + "/checkpoint-3");
  m2->trainable_adapter = m2->add_adapter(a2);
  TrainOptions o2 = o;
  o2.resume = o.out + "/checkpoint-3";
  o2.out = temp_dir("resume2");
  TrainResult r2 = train(*m2, data, {}, o2, 0, [&](const std::string& dir) { save_peft_adapter(*a2, dir); });
  ASSERT_EQ(r2.losses.size(), r1.losses.size());
  for (size_t s = 0; s < r1.losses.size(); s++) EXPECT_EQ(r1.losses[s], r2.losses[s]) << "step " << s;
  for (auto& [module, t] : a1->targets) {
    const LoraTarget& u = a2->targets.at(module);
    EXPECT_EQ(std::memcmp(t.A.ptr(), u.A.ptr(), size_t(t.A.n) * 4), 0) << module;
    EXPECT_EQ(std::memcmp(t.B.ptr(), u.B.ptr(), size_t(t.B.n) * 4), 0) << module;
  }
  EXPECT_TRUE(file_exists(o.out + "/loss.svg"));
}

TEST(Train, GradAccumulationEqualsBigBatch) {
  Tokenizer tok = Tokenizer::from_hf_dir(llama_dir());
  std::vector<Example> data = some_examples(tok);
  // Same-length examples so that a batch's token-mean equals the mean of per-batch means.
  for (Example& ex : data) {
    ex.ids.resize(12);
    ex.targets.resize(12);
    ex.targets.back() = -1;
  }
  auto grads = [&](int64_t batch, int64_t accum) {
    auto m = load_hf_model(llama_dir());
    LoraConfig c = qv_config();
    c.lora_dropout = 0;
    auto a = m->create_adapter(c, 3);
    for (auto& [k, t] : a->targets)
      for (int64_t i = 0; i < t.B.n; i++) t.B.ptr()[i] = 0.01f * float(i % 7);
    m->trainable_adapter = m->add_adapter(a);
    a->alloc_grads();
    m->zero_grads();
    std::vector<size_t> order = {0, 1, 2, 3};
    for (int64_t k = 0; k < accum; k++) {
      Batch b;
      make_batch(data, order, size_t(k * batch), batch, 0, b);
      b.row_adapters.assign(size_t(b.B), {{m->trainable_adapter, 1.f}});
      int64_t n = 0;
      for (int32_t t : b.targets) n += t >= 0;
      m->forward(b, true);
      m->backward(float(1.0 / (double(n) * double(accum))));
    }
    std::vector<float> g;
    for (auto& [k, t] : a->targets) g.insert(g.end(), t.dA.ptr(), t.dA.ptr() + t.dA.n);
    return g;
  };
  std::vector<float> big = grads(4, 1), acc = grads(1, 4);
  ASSERT_EQ(big.size(), acc.size());
  for (size_t i = 0; i < big.size(); i++) EXPECT_NEAR(big[i], acc[i], 1e-5 + 1e-4 * std::fabs(big[i]));
}

TEST(Train, Schedules) {
  EXPECT_DOUBLE_EQ(lr_factor("constant", 5, 0, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor("constant", 1, 4, 10), 0.25);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 0, 0, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 5, 0, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 7, 2, 12), 0.5);
  EXPECT_NEAR(lr_factor("cosine", 5, 0, 10), 0.5, 1e-12);
  EXPECT_NEAR(lr_factor("cosine", 10, 0, 10), 0.0, 1e-12);
  EXPECT_THROW(lr_factor("bogus", 1, 0, 10), Error);
}

TEST(Train, AdamWMatchesClosedFormFirstStep) {
  // First AdamW step: p -= lr*wd*p, then p -= lr * g / (|g| + eps) (bias-corrected).
  float p[3] = {1.f, -2.f, 0.5f}, g[3] = {0.1f, -3.f, 0.f};
  AdamW opt;
  opt.add(p, g, 3);
  opt.step(0.01, 0.9, 0.999, 1e-8, 0.1);
  EXPECT_NEAR(p[0], 1.f * (1 - 0.001f) - 0.01f * 0.1f / (0.1f + 1e-8f), 1e-6);
  EXPECT_NEAR(p[1], -2.f * (1 - 0.001f) + 0.01f, 1e-6);
  EXPECT_NEAR(p[2], 0.5f * (1 - 0.001f), 1e-7);
}

TEST(Dataset, PromptCompletionMasksThePrompt) {
  Tokenizer tok = Tokenizer::from_hf_dir(llama_dir());
  std::string path = temp_dir("data") + "/pc.jsonl";
  std::ofstream(path) << "{\"prompt\":\"Review: great coffee.\\nSentiment:\",\"completion\":\" positive\"}\n";
  std::vector<Example> d = load_jsonl(path, tok, 0);
  ASSERT_EQ(d.size(), 1u);
  std::vector<int32_t> p = tok.encode("Review: great coffee.\nSentiment:");
  const Example& ex = d[0];
  // Nothing is scored before the last prompt token; from there every next token is.
  for (size_t t = 0; t + 1 < p.size(); t++) EXPECT_EQ(ex.targets[t], -1) << t;
  for (size_t t = p.size() - 1; t + 1 < ex.ids.size(); t++) EXPECT_EQ(ex.targets[t], ex.ids[t + 1]) << t;
  EXPECT_EQ(ex.ids.back(), tok.eos_id());
  EXPECT_GT(ex.scored(), 0);
}

TEST(Dataset, PackingFillsRowsWithoutCrossingExamples) {
  std::vector<Example> d(3);
  for (int k = 0; k < 3; k++) {
    d[size_t(k)].ids = {k * 10 + 1, k * 10 + 2, k * 10 + 3, k * 10 + 4, k * 10 + 5};
    d[size_t(k)].targets = {k * 10 + 2, k * 10 + 3, k * 10 + 4, k * 10 + 5, -1};
  }
  std::vector<Example> p = pack_examples(d, 4, 0);
  ASSERT_EQ(p.size(), 4u);  // 15 tokens -> rows of 4, 4, 4, 3
  EXPECT_EQ(p[0].ids, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(p[1].ids, (std::vector<int32_t>{5, 11, 12, 13}));
  EXPECT_EQ(p[1].targets[0], -1);  // 5 is the last token of example 0: it predicts nothing
  EXPECT_EQ(p[1].targets[1], 12);
}

TEST(Dataset, BadLinesNameFileAndLine) {
  Tokenizer tok = Tokenizer::from_hf_dir(llama_dir());
  std::string dir = temp_dir("bad");
  std::ofstream(dir + "/a.jsonl") << "{\"text\":\"ok\"}\n\n";
  try {
    load_jsonl(dir + "/a.jsonl", tok, 0);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.jsonl:2"), std::string::npos) << e.what();
  }
  std::ofstream(dir + "/b.jsonl") << "{\"txt\":\"ok\"}\n";
  EXPECT_THROW(load_jsonl(dir + "/b.jsonl", tok, 0), Error);
}

TEST(Train, FullFinetuneUpdatesWeightsAndLowersLoss) {
  Tokenizer tok = Tokenizer::from_hf_dir(llama_dir());
  std::vector<Example> data = some_examples(tok);
  auto m = load_hf_model(llama_dir());
  m->enable_full_finetune();
  std::vector<float> w0 = m->layers[0].q.W.to_f32();
  TrainOptions o;
  o.lr = 1e-3;
  o.steps = 8;
  o.batch = 4;
  o.progress = false;
  TrainResult r = train(*m, data, {}, o, 0, nullptr);
  EXPECT_LT(r.losses.back(), r.losses.front());
  std::vector<float> w1 = m->layers[0].q.W.to_f32();
  EXPECT_NE(std::memcmp(w0.data(), w1.data(), w0.size() * 4), 0);
}

}  // namespace
