// End-to-end comparisons against Hugging Face transformers + PEFT numbers (../shared/fixtures/hf).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fixture_util.h"
#include "io/safetensors.h"
#include "lora/merge.h"
#include "lora/peft.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/trainer.h"

using namespace lowrank;
using json = nlohmann::json;

namespace {

constexpr double kNllTol = 1e-4;

Batch single(const std::vector<int32_t>& ids, std::vector<AdapterUse> uses = {}) {
  Batch b;
  b.B = 1;
  b.T = int64_t(ids.size());
  b.ids = ids;
  b.targets.assign(ids.size(), -1);
  for (size_t t = 0; t + 1 < ids.size(); t++) b.targets[t] = ids[t + 1];
  b.row_adapters = {uses};
  return b;
}

double mean_nll(Model& m, const std::vector<int32_t>& ids, std::vector<AdapterUse> uses = {}) {
  return m.forward(single(ids, uses), false) / double(ids.size() - 1);
}

std::vector<int32_t> greedy(Model& m, const std::vector<int32_t>& prompt, int n, std::vector<AdapterUse> uses = {}) {
  KVCache c = m.new_cache(int64_t(prompt.size()) + n);
  std::vector<float> logits = m.forward_cached(prompt, c, uses);
  std::vector<int32_t> out;
  for (int i = 0; i < n; i++) {
    int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    if (i + 1 < n) logits = m.forward_cached({next}, c, uses);
  }
  return out;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

class Fixture : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return fixtures_dir() + "/" + GetParam(); }
  std::vector<std::string> adapter_names(const json& e) const {
    std::vector<std::string> v;
    for (auto it = e["adapters"].begin(); it != e["adapters"].end(); ++it) v.push_back(it.key());
    return v;
  }
};

TEST_P(Fixture, TokenizerMatchesHF) {
  json e = fixture_expected(GetParam());
  Tokenizer tok = Tokenizer::from_hf_dir(dir() + "/model");
  for (const json& t : e["base"]["texts"]) EXPECT_EQ(tok.encode(t["text"].get<std::string>()), ids_of(t["ids"]));
  EXPECT_EQ(tok.encode(e["base"]["greedy"]["prompt"].get<std::string>()), ids_of(e["base"]["greedy"]["prompt_ids"]));
}

TEST_P(Fixture, BaseNllLogitsAndGreedy) {
  json e = fixture_expected(GetParam());
  auto m = load_hf_model(dir() + "/model");
  m->keep_logits = true;
  for (const json& t : e["base"]["texts"]) {
    std::vector<int32_t> ids = ids_of(t["ids"]);
    EXPECT_NEAR(mean_nll(*m, ids), t["nll"].get<double>(), kNllTol) << t["text"];
    // Per-position argmax and logsumexp of the logits.
    const std::vector<float>& lg = m->logits();
    const int64_t V = m->cfg.vocab;
    for (size_t p = 0; p < ids.size(); p++) {
      const float* row = lg.data() + p * V;
      int64_t am = std::max_element(row, row + V) - row;
      EXPECT_EQ(am, t["logits"]["argmax"][p].get<int64_t>()) << "position " << p;
      double mx = row[am], s = 0;
      for (int64_t v = 0; v < V; v++) s += std::exp(double(row[v]) - mx);
      EXPECT_NEAR(mx + std::log(s), t["logits"]["logsumexp"][p].get<double>(), 1e-4) << "position " << p;
    }
    const float* last = lg.data() + (ids.size() - 1) * V;
    for (int i = 0; i < 16; i++) EXPECT_NEAR(last[i], t["logits"]["first16_last_pos"][i].get<double>(), 1e-4);
  }
  EXPECT_EQ(greedy(*m, ids_of(e["base"]["greedy"]["prompt_ids"]), 8), ids_of(e["base"]["greedy"]["tokens"]));
}

TEST_P(Fixture, AdaptersUnmergedMergedAndUnmerge) {
  json e = fixture_expected(GetParam());
  auto m = load_hf_model(dir() + "/model");
  for (const std::string& name : adapter_names(e)) {
    SCOPED_TRACE(name);
    const json& a = e["adapters"][name];
    int slot = m->add_adapter(load_peft_adapter(dir() + "/adapters/" + name));
    std::vector<AdapterUse> uses{{slot, 1.f}};
    for (const json& t : a["texts"]) EXPECT_NEAR(mean_nll(*m, ids_of(t["ids"]), uses), t["nll"].get<double>(), kNllTol);
    EXPECT_EQ(greedy(*m, ids_of(a["greedy"]["prompt_ids"]), 8, uses), ids_of(a["greedy"]["tokens"]));
    // Merge in place, score with the base path, unmerge and check exact restoration.
    std::vector<std::vector<float>> before;
    for (Linear* L : m->linears()) before.push_back(L->W.to_f32());
    m->merge_adapter(slot, 1.f);
    for (size_t i = 0; i < a["texts"].size(); i++)
      EXPECT_NEAR(mean_nll(*m, ids_of(a["texts"][i]["ids"])), a["merged_nll"][i].get<double>(), kNllTol);
    m->unmerge_all();
    std::vector<Linear*> ls = m->linears();
    for (size_t i = 0; i < ls.size(); i++) {
      std::vector<float> after = ls[i]->W.to_f32();
      ASSERT_EQ(after.size(), before[i].size());
      EXPECT_EQ(std::memcmp(after.data(), before[i].data(), after.size() * 4), 0) << ls[i]->module << " not restored exactly";
    }
    m->remove_adapter(slot);
  }
}

TEST_P(Fixture, MergedModelDirectory) {
  json e = fixture_expected(GetParam());
  for (const std::string& name : adapter_names(e)) {
    SCOPED_TRACE(name);
    auto ad = load_peft_adapter(dir() + "/adapters/" + name);
    std::string out = temp_dir("merged-" + GetParam() + "-" + name);
    write_hf_model(dir() + "/model", out, {{ad.get(), 1.f}}, nullptr);
    auto m = load_hf_model(out);
    const json& a = e["adapters"][name];
    for (size_t i = 0; i < a["texts"].size(); i++)
      EXPECT_NEAR(mean_nll(*m, ids_of(a["texts"][i]["ids"])), a["merged_nll"][i].get<double>(), kNllTol);
    // Same tensor names, dtypes and shapes as the input.
    SafetensorsFile src = SafetensorsFile::open(dir() + "/model/model.safetensors");
    SafetensorsFile dst = SafetensorsFile::open(out + "/model.safetensors");
    ASSERT_EQ(src.tensors().size(), dst.tensors().size());
    for (const Tensor& t : src.tensors()) {
      ASSERT_TRUE(dst.has(t.name)) << t.name;
      EXPECT_EQ(dst.get(t.name).dtype, t.dtype);
      EXPECT_EQ(dst.get(t.name).shape, t.shape);
    }
  }
}

TEST_P(Fixture, GradientsAtStep0) {
  json e = fixture_expected(GetParam());
  auto m = load_hf_model(dir() + "/model");
  for (const std::string& name : adapter_names(e)) {
    SCOPED_TRACE(name);
    const json& tr = e["adapters"][name]["train"];
    auto ad = load_peft_adapter(dir() + "/adapters/" + name);
    int slot = m->add_adapter(ad);
    m->trainable_adapter = slot;
    ad->alloc_grads();
    ad->zero_grads();
    std::vector<int32_t> ids = ids_of(tr["ids"]);
    m->forward(single(ids, {{slot, 1.f}}), true);
    m->backward(float(1.0 / double(ids.size() - 1)));
    SafetensorsFile g = SafetensorsFile::open(dir() + "/adapters/" + name + "/grads_step0.safetensors");
    size_t checked = 0;
    for (auto& [module, t] : ad->targets) {
      for (int which = 0; which < 2; which++) {
        const Tensor& ref = g.get("base_model.model." + module + (which ? ".lora_B.weight" : ".lora_A.weight"));
        std::vector<float> r = ref.to_f32_vector();
        const FloatBuffer& mine = which ? t.dB : t.dA;
        ASSERT_EQ(int64_t(r.size()), mine.n);
        double maxref = 0;
        for (float x : r) maxref = std::max(maxref, double(std::fabs(x)));
        for (size_t i = 0; i < r.size(); i++)
          ASSERT_NEAR(mine.ptr()[i], r[i], 1e-4 * std::max(1.0, maxref)) << ref.name << "[" << i << "]";
        checked++;
      }
    }
    EXPECT_EQ(checked, g.tensors().size());
    m->remove_adapter(slot);
  }
}

// Trains like the fixture's PEFT run and compares the logged losses (1e-3 relative), the final
// loss and the final tensors. Some runs (the all-linear adapters) are chaotic at f32 rounding
// level: Adam normalizes tiny gradient components, so a one-ulp perturbation of the start
// changes later losses by percents (plain PyTorch in f32 or f64, dev/torch_ref.py, deviates
// from the PEFT trajectory by 2-5% on them too). The test measures that horizon with a
// perturbed twin run and compares against the fixture over every step the arithmetic
// determines; it requires the horizon to cover at least the first 3 steps. The twin's start
// is perturbed by 1e-5 relative: the size of the disagreement between two independent f32
// implementations of the step-0 gradients (PyTorch vs the PEFT fixture: 1.2e-5 to 3e-5 of
// max |g|, measured with dev/torch_ref.py).
TEST_P(Fixture, TrainTwentyStepsLikePeft) {
  json e = fixture_expected(GetParam());
  for (const std::string& name : adapter_names(e)) {
    SCOPED_TRACE(name);
    const json& tr = e["adapters"][name]["train"];
    Example ex;
    ex.ids = ids_of(tr["ids"]);
    ex.targets.assign(ex.ids.size(), -1);
    for (size_t t = 0; t + 1 < ex.ids.size(); t++) ex.targets[t] = ex.ids[t + 1];
    TrainOptions o;
    o.lr = tr["lr"].get<double>();
    o.steps = tr["steps"].get<int64_t>();
    o.max_grad_norm = 0;
    o.progress = false;
    auto run = [&](bool perturb, std::shared_ptr<Adapter>& ad, std::unique_ptr<Model>& m) {
      m = load_hf_model(dir() + "/model");
      ad = load_peft_adapter(dir() + "/adapters/" + name);
      if (perturb)
        for (auto& [module, t] : ad->targets)
          for (int64_t i = 0; i < t.A.n; i++) t.A.ptr()[i] *= 1.f + 1e-5f;
      m->trainable_adapter = m->add_adapter(ad);
      return train(*m, {ex}, {}, o, 0, nullptr).losses;
    };
    std::shared_ptr<Adapter> ad, ad2;
    std::unique_ptr<Model> m, m2;
    std::vector<double> losses = run(false, ad, m);
    std::vector<double> twin = run(true, ad2, m2);
    std::vector<double> want = tr["losses"].get<std::vector<double>>();
    ASSERT_EQ(losses.size(), want.size());
    size_t horizon = 0;
    while (horizon < losses.size() && std::fabs(losses[horizon] - twin[horizon]) <= 1e-4 * std::fabs(losses[horizon]))
      horizon++;
    ASSERT_GE(horizon, 3u) << "training is numerically unstable from the start";
    for (size_t s = 0; s < horizon; s++) EXPECT_NEAR(losses[s], want[s], 1e-3 * std::fabs(want[s])) << "step " << s;
    if (horizon < losses.size()) {
      std::printf("[ NOTE     ] %s/%s: trajectory is chaotic after step %zu (a 1e-5 relative perturbation moves the "
                  "loss by more than 1e-4); compared the first %zu of %zu losses\n",
                  GetParam().c_str(), name.c_str(), horizon, horizon, losses.size());
      continue;
    }
    double final_loss = m->forward(single(ex.ids, {{m->trainable_adapter, 1.f}}), false) / double(ex.ids.size() - 1);
    EXPECT_NEAR(final_loss, tr["final_loss"].get<double>(), 1e-3 * tr["final_loss"].get<double>());
    SafetensorsFile after = SafetensorsFile::open(dir() + "/adapters/" + name + "/after_train/adapter_model.safetensors");
    for (auto& [module, t] : ad->targets)
      for (int which = 0; which < 2; which++) {
        std::vector<float> ref = after.get("base_model.model." + module + (which ? ".lora_B.weight" : ".lora_A.weight")).to_f32_vector();
        const FloatBuffer& mine = which ? t.B : t.A;
        for (size_t i = 0; i < ref.size(); i++)
          ASSERT_NEAR(mine.ptr()[i], ref[i], 1e-3 * std::fabs(double(ref[i])) + 1e-6) << module << " " << which << " [" << i << "]";
      }
  }
}

TEST_P(Fixture, PeftDirRoundTripIsByteCompatible) {
  json e = fixture_expected(GetParam());
  for (const std::string& name : adapter_names(e)) {
    SCOPED_TRACE(name);
    std::string src = dir() + "/adapters/" + name;
    auto ad = load_peft_adapter(src);
    std::string out = temp_dir("peft-" + GetParam() + "-" + name);
    save_peft_adapter(*ad, out);
    std::string a, b;
    {
      std::ifstream f1(src + "/adapter_config.json"), f2(out + "/adapter_config.json");
      a.assign(std::istreambuf_iterator<char>(f1), {});
      b.assign(std::istreambuf_iterator<char>(f2), {});
    }
    EXPECT_EQ(a, b) << "adapter_config.json differs from PEFT's";
    std::ifstream s1(src + "/adapter_model.safetensors", std::ios::binary), s2(out + "/adapter_model.safetensors", std::ios::binary);
    std::string x(std::istreambuf_iterator<char>(s1), {}), y(std::istreambuf_iterator<char>(s2), {});
    EXPECT_EQ(x, y) << "adapter_model.safetensors differs from PEFT's bytes";
  }
}

TEST_P(Fixture, MixedAdapterBatchEqualsSeparateRuns) {
  json e = fixture_expected(GetParam());
  auto m = load_hf_model(dir() + "/model");
  std::vector<std::string> names = adapter_names(e);
  std::vector<int> slots;
  for (const std::string& n : names) slots.push_back(m->add_adapter(load_peft_adapter(dir() + "/adapters/" + n)));
  std::vector<int32_t> ids = ids_of(e["base"]["texts"][0]["ids"]);
  // Rows: base, adapter 0, adapter 1, both stacked at 0.5 each.
  std::vector<std::vector<AdapterUse>> rows = {{}, {{slots[0], 1.f}}, {{slots[1], 1.f}}, {{slots[0], .5f}, {slots[1], .5f}}};
  Batch b;
  b.B = int64_t(rows.size());
  b.T = int64_t(ids.size());
  Batch one = single(ids);
  for (size_t r = 0; r < rows.size(); r++) {
    b.ids.insert(b.ids.end(), ids.begin(), ids.end());
    b.targets.insert(b.targets.end(), one.targets.begin(), one.targets.end());
  }
  b.row_adapters = rows;
  m->forward(b, false);
  std::vector<float> losses = m->losses();
  for (size_t r = 0; r < rows.size(); r++) {
    m->forward(single(ids, rows[r]), false);
    for (size_t t = 0; t < ids.size(); t++) EXPECT_NEAR(losses[r * ids.size() + t], m->losses()[t], 1e-5) << "row " << r;
  }
  // Swapping adapters never touches the base weights.
  std::vector<float> w0 = m->layers[0].o.W.to_f32();
  m->remove_adapter(slots[0]);
  m->add_adapter(load_peft_adapter(dir() + "/adapters/" + names[0]));
  EXPECT_EQ(std::memcmp(w0.data(), m->layers[0].o.W.to_f32().data(), w0.size() * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(HF, Fixture, ::testing::ValuesIn(fixture_models()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
