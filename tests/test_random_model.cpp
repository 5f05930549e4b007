// Random-weight models (model/random_model.h): they run forward/backward, their LoRA
// gradients match central finite differences, and the named benchmark shapes are right.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "model/random_model.h"

using namespace lowrank;

namespace {

const char* kTinyGpt2 = R"({"model_type": "gpt2", "vocab_size": 61, "n_embd": 32, "n_layer": 2,
  "n_head": 4, "n_positions": 64, "layer_norm_epsilon": 1e-5})";
const char* kTinyLlama = R"({"model_type": "llama", "vocab_size": 53, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": false})";

Batch random_batch(int64_t B, int64_t T, int64_t V, const std::vector<AdapterUse>& uses, uint64_t seed) {
  Batch b;
  b.B = B;
  b.T = T;
  std::mt19937 rng{uint32_t(seed)};
  std::uniform_int_distribution<int32_t> d(0, int32_t(V - 1));
  for (int64_t i = 0; i < B * T; i++) {
    b.ids.push_back(d(rng));
    b.targets.push_back(i % 5 == 4 ? -1 : d(rng));  // some positions unscored
  }
  b.row_adapters.assign(size_t(B), uses);
  return b;
}

struct Case { const char* name; const char* config; const char* targets; };

class RandomModelGrad : public ::testing::TestWithParam<Case> {};

TEST_P(RandomModelGrad, LoraGradsMatchFiniteDifferences) {
  const Case& cs = GetParam();
  ModelConfig cfg = config_from_hf_json(cs.config, cs.name);
  RandomModelOptions ro;
  ro.seed = 7;
  ro.std = 0.2f;  // large enough that gradients are well above f32 rounding of the loss
  auto m = make_random_model(cfg, ro);
  LoraConfig lc;
  lc.r = 4;
  lc.lora_alpha = 8;
  lc.init_lora_weights = "false";  // B ≠ 0 so dA ≠ 0
  lc.target_modules = {cs.targets};
  auto a = m->create_adapter(lc, 3);
  for (auto& [k, t] : a->targets)
    for (int64_t i = 0; i < t.B.n; i++) t.B.ptr()[i] *= 0.1f;
  const int slot = m->add_adapter(a);
  m->trainable_adapter = slot;
  a->alloc_grads();
  Batch b = random_batch(2, 9, cfg.vocab, {{slot, 1.f}}, 11);

  const double loss = m->forward(b, true);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 0.0);
  m->zero_grads();
  m->forward(b, true);
  m->backward(1.f);  // gradient of Σ losses

  // Central differences in double on the elements with the largest gradients of the first
  // and last target's A and B, plus one fixed element each.
  int checked = 0;
  std::vector<LoraTarget*> ts{&a->targets.begin()->second, &a->targets.rbegin()->second};
  for (LoraTarget* t : ts) {
    for (int which = 0; which < 2; which++) {
      FloatBuffer& P = which ? t->B : t->A;
      FloatBuffer& G = which ? t->dB : t->dA;
      int64_t imax = 0;
      for (int64_t i = 1; i < G.n; i++)
        if (std::fabs(G.ptr()[i]) > std::fabs(G.ptr()[imax])) imax = i;
      for (int64_t i : {imax, G.n / 3}) {
        const float orig = P.ptr()[i];
        const float eps = 1e-2f;
        P.ptr()[i] = orig + eps;
        const double lp = m->forward(b, false);
        P.ptr()[i] = orig - eps;
        const double lm = m->forward(b, false);
        P.ptr()[i] = orig;
        const double fd = (lp - lm) / (2.0 * double(eps));
        const double g = G.ptr()[i];
        EXPECT_NEAR(g, fd, 3e-3 + 2e-2 * std::fabs(fd))
            << cs.name << " " << t->module << (which ? ".B[" : ".A[") << i << "]";
        if (i == imax) {
          EXPECT_GT(std::fabs(g), 1e-3) << "gradient too small to be a meaningful check";
        }
        checked++;
      }
    }
  }
  EXPECT_EQ(checked, 8);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RandomModelGrad,
                         ::testing::Values(Case{"gpt2", kTinyGpt2, "c_attn"},
                                           Case{"llama", kTinyLlama, "v_proj"}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(RandomModel, DeterministicAndCachedDecodeMatchesForward) {
  ModelConfig cfg = config_from_hf_json(kTinyLlama, "tiny");
  RandomModelOptions ro;
  ro.seed = 5;
  ro.std = 0.3f;
  auto m1 = make_random_model(cfg, ro), m2 = make_random_model(cfg, ro);
  std::vector<float> w1 = m1->layers[1].down.W.to_f32(), w2 = m2->layers[1].down.W.to_f32();
  EXPECT_EQ(w1, w2);
  ro.seed = 6;
  auto m3 = make_random_model(cfg, ro);
  EXPECT_NE(w1, m3->layers[1].down.W.to_f32());

  Batch b = random_batch(1, 12, cfg.vocab, {}, 2);
  m1->keep_logits = true;
  m1->forward(b, false);
  const std::vector<float> full(m1->logits().end() - cfg.vocab, m1->logits().end());
  KVCache kv = m1->new_cache(12);
  std::vector<float> last = m1->forward_cached(std::vector<int32_t>(b.ids.begin(), b.ids.begin() + 7), kv, {});
  for (int64_t t = 7; t < 12; t++) last = m1->forward_cached({b.ids[size_t(t)]}, kv, {});
  ASSERT_EQ(last.size(), full.size());
  for (size_t i = 0; i < full.size(); i++) EXPECT_NEAR(last[i], full[i], 1e-4) << i;
}

TEST(RandomModel, GptConv1dLayoutAndFullFinetuneRun) {
  ModelConfig cfg = config_from_hf_json(kTinyGpt2, "tiny");
  RandomModelOptions ro;
  ro.untie = true;
  auto m = make_random_model(cfg, ro);
  EXPECT_FALSE(m->cfg.tied);
  EXPECT_TRUE(m->layers[0].qkv.W.transposed);
  EXPECT_EQ(m->layers[0].qkv.W.rows, 3 * cfg.dim);
  m->enable_full_finetune();
  Batch b = random_batch(2, 8, cfg.vocab, {}, 4);
  m->zero_grads();
  const double loss = m->forward(b, true);
  // Near-uniform logits at std 0.02: loss per scored position ≈ log V.
  int64_t scored = 0;
  for (int32_t t : b.targets) scored += t >= 0;
  EXPECT_NEAR(loss / double(scored), std::log(double(cfg.vocab)), 0.2);
  m->backward(1.f);
  double gsum = 0;
  for (Model::ParamRef& p : m->full_params())
    for (int64_t i = 0; i < p.n; i++) gsum += std::fabs(p.grad[i]);
  EXPECT_GT(gsum, 0.0);
  EXPECT_TRUE(std::isfinite(gsum));
}

TEST(RandomModel, NamedShapes) {
  ModelConfig g = shape_config("gpt2-124m");
  EXPECT_EQ(g.arch, Arch::GPT2);
  EXPECT_EQ(g.dim, 768);
  EXPECT_EQ(g.n_layer, 12);
  EXPECT_EQ(g.ffn, 3072);
  EXPECT_EQ(g.vocab, 50257);
  EXPECT_TRUE(g.tied);
  ModelConfig t = shape_config("tinyllama-1.1b");
  EXPECT_EQ(t.arch, Arch::LLAMA);
  EXPECT_EQ(t.dim, 2048);
  EXPECT_EQ(t.n_layer, 22);
  EXPECT_EQ(t.n_kv_head, 4);
  EXPECT_EQ(t.head_dim, 64);
  EXPECT_EQ(t.ffn, 5632);
  EXPECT_FALSE(t.tied);
  // Parameter counts as Hugging Face reports them (computed from the shapes).
  auto count = [](const ModelConfig& c) {
    const int64_t C = c.dim, F = c.ffn, KD = c.n_kv_head * c.head_dim, HD = c.n_head * c.head_dim;
    int64_t n = c.vocab * C;
    if (c.arch == Arch::GPT2) {
      n += c.max_pos * C + 2 * C + c.n_layer * (4 * C + (3 * C * C + 3 * C) + (C * C + C) + (F * C + F) + (C * F + C));
    } else {
      n += C + c.n_layer * (2 * C + HD * C + 2 * KD * C + C * HD + 3 * F * C);
      if (!c.tied) n += c.vocab * C;
    }
    return n;
  };
  EXPECT_EQ(count(g), 124439808);
  EXPECT_EQ(count(t), 1100048384);
  EXPECT_THROW(shape_config("no-such-shape"), Error);
}

}  // namespace
