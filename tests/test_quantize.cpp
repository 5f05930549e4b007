// lowrank quantize: llama.cpp's mixture rules (which tensor gets which type, worked out by hand
// from src/llama-quant.cpp for TinyLlama's shapes and for rows that are not a multiple of 256)
// and the CLI round trip on a tiny GGUF (metadata, types, bytes, atomic write, errors).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "fixture_util.h"
#include "proc_util.h"
#include "io/gguf.h"
#include "io/gguf_quantize.h"
#include "quants/dequant.h"
#include "quants/quantize.h"
#include "tiny_gguf.h"

using namespace lowrank;

namespace {

std::string cli() { return std::string(LOWRANK_BINARY_DIR) + "/lowrank"; }

std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

struct CliRun {
  int rc = -1;
  std::string out, err;
};
// Runs the CLI with args (words, paths quoted with q()), no shell.
CliRun run_cli(const std::string& dir, const std::string& args) {
  const std::string o = dir + "/stdout", e = dir + "/stderr";
  std::vector<std::string> argv = split_words(args);
  argv.insert(argv.begin(), cli());
  CliRun r;
  r.rc = run_process(argv, o, e).rc;
  r.out = slurp(o);
  r.err = slurp(e);
  return r;
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

QuantPreset preset(const std::string& n) {
  QuantPreset p;
  EXPECT_TRUE(quant_preset(n, &p)) << n;
  return p;
}

// TinyLlama-1.1B's tensor list: 22 layers, dim 2048, ffn 5632, 32 heads / 4 kv heads (head
// dim 64), vocab 32000, untied, in the file's order.
std::vector<TensorQuantPlan> tinyllama_tensors() {
  std::vector<TensorQuantPlan> t;
  auto add = [&](const std::string& n, std::vector<int64_t> ne) { t.push_back({n, ne, DType::F16, DType::F16, false}); };
  add("output.weight", {2048, 32000});
  add("token_embd.weight", {2048, 32000});
  for (int l = 0; l < 22; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {2048});
    add(p + "ffn_down.weight", {5632, 2048});
    add(p + "ffn_gate.weight", {2048, 5632});
    add(p + "ffn_up.weight", {2048, 5632});
    add(p + "ffn_norm.weight", {2048});
    add(p + "attn_k.weight", {2048, 256});
    add(p + "attn_output.weight", {2048, 2048});
    add(p + "attn_q.weight", {2048, 2048});
    add(p + "attn_v.weight", {2048, 256});
  }
  add("output_norm.weight", {2048});
  return t;
}

QuantModelInfo tinyllama_info() { return QuantModelInfo{"llama", 22, 32, 4, 0}; }

// name -> type of a plan.
std::map<std::string, DType> types_of(const std::vector<TensorQuantPlan>& plan) {
  std::map<std::string, DType> m;
  for (const TensorQuantPlan& t : plan) m[t.name] = t.to;
  return m;
}

// The expected type of every TinyLlama tensor under a preset, from llama.cpp's rules:
// per-layer overrides for attn_v / ffn_down / attn_output, output and token_embd.
struct Expect {
  DType base, output, token_embd;
  std::function<DType(int)> attn_v, ffn_down, attn_output;
};

void check_tinyllama(const std::string& name, const Expect& e) {
  SCOPED_TRACE(name);
  const auto m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset(name), false, "tinyllama"));
  EXPECT_EQ(m.at("output.weight"), e.output);
  EXPECT_EQ(m.at("token_embd.weight"), e.token_embd);
  EXPECT_EQ(m.at("output_norm.weight"), DType::F16);  // 1-D: kept as it is
  for (int l = 0; l < 22; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    SCOPED_TRACE(p);
    EXPECT_EQ(m.at(p + "attn_norm.weight"), DType::F16);
    EXPECT_EQ(m.at(p + "ffn_norm.weight"), DType::F16);
    EXPECT_EQ(m.at(p + "attn_q.weight"), e.base);
    EXPECT_EQ(m.at(p + "attn_k.weight"), e.base);
    EXPECT_EQ(m.at(p + "ffn_gate.weight"), e.base);
    EXPECT_EQ(m.at(p + "ffn_up.weight"), e.base);
    EXPECT_EQ(m.at(p + "attn_v.weight"), e.attn_v ? e.attn_v(l) : e.base);
    EXPECT_EQ(m.at(p + "ffn_down.weight"), e.ffn_down ? e.ffn_down(l) : e.base);
    EXPECT_EQ(m.at(p + "attn_output.weight"), e.attn_output ? e.attn_output(l) : e.base);
  }
}

// use_more_bits(i, 22): i < 2, i >= 19, or (i - 2) % 3 == 2 -> layers 0 1 4 7 10 13 16 19 20 21.
bool more_bits(int l) { return l < 2 || l >= 19 || (l - 2) % 3 == 2; }

}  // namespace

TEST(QuantizePlan, TinyLlamaMixtures) {
  using D = DType;
  auto always = [](D t) { return std::function<D(int)>([t](int) { return t; }); };
  check_tinyllama("Q4_K_M", {D::Q4_K, D::Q6_K, D::Q4_K, [](int l) { return more_bits(l) ? D::Q6_K : D::Q4_K; },
                             [](int l) { return more_bits(l) ? D::Q6_K : D::Q4_K; }, nullptr});
  check_tinyllama("Q5_K_M", {D::Q5_K, D::Q6_K, D::Q5_K, [](int l) { return more_bits(l) ? D::Q6_K : D::Q5_K; },
                             [](int l) { return more_bits(l) ? D::Q6_K : D::Q5_K; }, nullptr});
  // Q4_K_S: attn_v of the first 4 layers and ffn_down of the first 22/8 = 2 layers Q5_K.
  check_tinyllama("Q4_K_S", {D::Q4_K, D::Q6_K, D::Q4_K, [](int l) { return l < 4 ? D::Q5_K : D::Q4_K; },
                             [](int l) { return l < 2 ? D::Q5_K : D::Q4_K; }, nullptr});
  check_tinyllama("Q5_K_S", {D::Q5_K, D::Q6_K, D::Q5_K, nullptr, nullptr, nullptr});
  // Q2_K: n_gqa = 8 >= 4 -> attn_v Q4_K; ffn_down and attn_output Q3_K.
  check_tinyllama("Q2_K", {D::Q2_K, D::Q6_K, D::Q2_K, always(D::Q4_K), always(D::Q3_K), always(D::Q3_K)});
  check_tinyllama("Q3_K_S", {D::Q3_K, D::Q6_K, D::Q3_K, nullptr, nullptr, nullptr});
  // Q3_K_M: attn_v Q5_K for the first 2, else Q4_K; ffn_down Q5_K below 22/16 = 1, else Q4_K;
  // attn_output Q4_K.
  check_tinyllama("Q3_K_M", {D::Q3_K, D::Q6_K, D::Q3_K, [](int l) { return l < 2 ? D::Q5_K : D::Q4_K; },
                             [](int l) { return l < 1 ? D::Q5_K : D::Q4_K; }, always(D::Q4_K)});
  check_tinyllama("Q3_K_L", {D::Q3_K, D::Q6_K, D::Q3_K, always(D::Q5_K), always(D::Q5_K), always(D::Q5_K)});
  check_tinyllama("Q6_K", {D::Q6_K, D::Q6_K, D::Q6_K, nullptr, nullptr, nullptr});
  // Q8_0: the output rule keeps Q8_0 (it only moves other types to Q6_K).
  check_tinyllama("Q8_0", {D::Q8_0, D::Q8_0, D::Q8_0, nullptr, nullptr, nullptr});
  for (const char* n : {"Q4_0", "Q4_1", "Q5_0", "Q5_1"}) {
    const D t = preset(n).default_type;
    check_tinyllama(n, {t, D::Q6_K, t, nullptr, nullptr, nullptr});
  }
  // IQ4_NL / IQ4_XS (no imatrix): attn_v Q5_K (n_gqa >= 4), ffn_down Q5_K below 22/8 = 2.
  for (const char* n : {"IQ4_NL", "IQ4_XS"}) {
    const D t = preset(n).default_type;
    check_tinyllama(n, {t, D::Q6_K, t, always(D::Q5_K), [t](int l) { return l < 2 ? D::Q5_K : t; }, nullptr});
  }
  // TQ1_0 / TQ2_0: token_embd Q4_K.
  check_tinyllama("TQ2_0", {D::TQ2_0, D::Q6_K, D::Q4_K, nullptr, nullptr, nullptr});
  // Plain types: every 2-D weight in that type, output included.
  check_tinyllama("F16", {D::F16, D::F16, D::F16, nullptr, nullptr, nullptr});
  check_tinyllama("BF16", {D::BF16, D::BF16, D::BF16, nullptr, nullptr, nullptr});
  // Aliases.
  EXPECT_EQ(preset("q4_k").name, "Q4_K_M");
  EXPECT_EQ(preset("Q3_K").ftype, 12u);
  EXPECT_EQ(preset("Q4_K_M").ftype, 15u);
  EXPECT_EQ(preset("IQ4_XS").ftype, 30u);
  EXPECT_EQ(preset("BF16").ftype, 32u);
  QuantPreset p;
  EXPECT_FALSE(quant_preset("Q2_K_S", &p));  // needs an importance matrix
  EXPECT_FALSE(quant_preset("IQ2_XXS", &p));
}

TEST(QuantizePlan, OtherModelShapes) {
  using D = DType;
  // n_gqa < 4 (here 1): Q2_K's attn_v is Q3_K; IQ4_XS keeps attn_v.
  std::vector<TensorQuantPlan> t = tinyllama_tensors();
  QuantModelInfo info = tinyllama_info();
  info.n_head_kv = 32;
  auto m = types_of(plan_quantization(t, info, preset("Q2_K"), false, "m"));
  EXPECT_EQ(m.at("blk.3.attn_v.weight"), D::Q3_K);
  m = types_of(plan_quantization(t, info, preset("IQ4_XS"), false, "m"));
  EXPECT_EQ(m.at("blk.3.attn_v.weight"), D::IQ4_XS);
  // 70B (llama, 80 layers, GQA): Q3_K / Q4_K attn_v become Q5_K.
  std::vector<TensorQuantPlan> big;
  for (int l = 0; l < 80; l++) big.push_back({"blk." + std::to_string(l) + ".attn_v.weight", {8192, 1024}, D::F16, D::F16, false});
  m = types_of(plan_quantization(big, QuantModelInfo{"llama", 80, 64, 8, 0}, preset("Q3_K_M"), false, "m"));
  EXPECT_EQ(m.at("blk.0.attn_v.weight"), D::Q5_K);
  EXPECT_EQ(m.at("blk.50.attn_v.weight"), D::Q5_K);
  // With an importance matrix: IQ4_XS keeps its ffn_down, Q4_0 / Q5_0 put the first 22/8 = 2
  // ffn_down in Q4_1 / Q5_1.
  m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset("IQ4_XS"), false, "m", true));
  EXPECT_EQ(m.at("blk.0.ffn_down.weight"), D::IQ4_XS);
  m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset("Q4_0"), false, "m", true));
  EXPECT_EQ(m.at("blk.1.ffn_down.weight"), D::Q4_1);
  EXPECT_EQ(m.at("blk.2.ffn_down.weight"), D::Q4_0);
  m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset("Q5_0"), false, "m", true));
  EXPECT_EQ(m.at("blk.0.ffn_down.weight"), D::Q5_1);
  m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset("Q4_0"), false, "m", false));
  EXPECT_EQ(m.at("blk.0.ffn_down.weight"), D::Q4_0);
  // Tied embeddings (no output.weight): token_embd takes the output rule.
  t.erase(t.begin());
  m = types_of(plan_quantization(t, tinyllama_info(), preset("Q4_K_M"), false, "m"));
  EXPECT_EQ(m.at("token_embd.weight"), D::Q6_K);
  // --pure: the preset's type everywhere, output included; 1-D stays.
  m = types_of(plan_quantization(tinyllama_tensors(), tinyllama_info(), preset("Q4_K_M"), true, "m"));
  EXPECT_EQ(m.at("output.weight"), D::Q4_K);
  EXPECT_EQ(m.at("blk.0.attn_v.weight"), D::Q4_K);
  EXPECT_EQ(m.at("blk.0.attn_norm.weight"), D::F16);
  // Tensors llama.cpp never quantizes: 1-D (also [n, 1]), *_norm.weight, names not ending in
  // "weight", ffn_gate_inp, position embeddings.
  std::vector<TensorQuantPlan> odd = {
      {"blk.0.ffn_gate_inp.weight", {2048, 8}, D::F32, D::F32, false},
      {"blk.0.attn_q_norm.weight", {64, 64}, D::F32, D::F32, false},
      {"blk.0.attn_q.bias", {2048, 2}, D::F32, D::F32, false},
      {"blk.0.ssm_conv1d.weight", {4, 256}, D::F32, D::F32, false},
      {"position_embd.weight", {2048, 512}, D::F32, D::F32, false},
      {"blk.0.attn_q.weight", {2048, 1}, D::F32, D::F32, false},
      {"blk.0.attn_k.weight", {2048, 2}, D::F32, D::F32, false},
  };
  m = types_of(plan_quantization(odd, tinyllama_info(), preset("Q8_0"), false, "m"));
  for (const auto& o : odd) {
    if (o.name == "blk.0.attn_k.weight") EXPECT_EQ(m.at(o.name), D::Q8_0);
    else EXPECT_EQ(m.at(o.name), D::F32) << o.name;
  }
}

// Rows that are not a multiple of 256 (SmolLM2-135M: dim 576, ffn 1536, 9 heads / 3 kv heads,
// head dim 64, 30 layers): llama.cpp's fallbacks Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
// Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL; output (576 % 256 != 0) -> Q8_0.
TEST(QuantizePlan, FallbacksForRowsNotAMultipleOf256) {
  using D = DType;
  std::vector<TensorQuantPlan> t;
  auto add = [&](const std::string& n, std::vector<int64_t> ne) { t.push_back({n, ne, D::BF16, D::BF16, false}); };
  add("token_embd.weight", {576, 49152});
  for (int l = 0; l < 30; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_q.weight", {576, 576});
    add(p + "attn_k.weight", {576, 192});
    add(p + "attn_v.weight", {576, 192});
    add(p + "attn_output.weight", {576, 576});
    add(p + "ffn_gate.weight", {576, 1536});
    add(p + "ffn_up.weight", {576, 1536});
    add(p + "ffn_down.weight", {1536, 576});
    add(p + "attn_norm.weight", {576});
  }
  const QuantModelInfo info{"llama", 30, 9, 3, 0};
  auto plan = plan_quantization(t, info, preset("Q4_K_M"), false, "smol");
  auto m = types_of(plan);
  // Tied: token_embd takes the output rule: 576 % 256 != 0 -> Q8_0 (no fallback counted).
  EXPECT_EQ(m.at("token_embd.weight"), D::Q8_0);
  EXPECT_EQ(m.at("blk.5.attn_q.weight"), D::Q5_0);
  EXPECT_EQ(m.at("blk.0.attn_v.weight"), D::Q8_0);   // use_more_bits: Q6_K -> Q8_0
  EXPECT_EQ(m.at("blk.5.attn_v.weight"), D::Q8_0);   // use_more_bits(5, 30): (5 - 3) % 3 == 2
  EXPECT_EQ(m.at("blk.6.attn_v.weight"), D::Q5_0);   // Q4_K -> Q5_0
  EXPECT_EQ(m.at("blk.0.ffn_down.weight"), D::Q6_K);  // rows of 1536 = 6 x 256: no fallback
  EXPECT_EQ(m.at("blk.5.ffn_down.weight"), D::Q6_K);
  EXPECT_EQ(m.at("blk.6.ffn_down.weight"), D::Q4_K);
  int fallbacks = 0;
  for (const auto& p : plan) fallbacks += p.fallback;
  EXPECT_EQ(fallbacks, 30 * 6);  // q, k, v, o, gate, up of every layer
  m = types_of(plan_quantization(t, info, preset("Q5_K_M"), false, "smol"));
  EXPECT_EQ(m.at("blk.5.attn_q.weight"), D::Q5_1);
  m = types_of(plan_quantization(t, info, preset("Q3_K_M"), false, "smol"));
  EXPECT_EQ(m.at("blk.5.ffn_gate.weight"), D::Q4_0);
  m = types_of(plan_quantization(t, info, preset("Q2_K"), false, "smol"));
  EXPECT_EQ(m.at("blk.5.ffn_gate.weight"), D::Q4_0);
  m = types_of(plan_quantization(t, info, preset("IQ4_XS"), false, "smol"));
  EXPECT_EQ(m.at("blk.5.ffn_gate.weight"), D::IQ4_NL);
  // Rows of 48: Q4_K has no 32-element fallback that fits -> F16; Q8_0 has no fallback at all.
  std::vector<TensorQuantPlan> narrow = {{"blk.0.attn_q.weight", {48, 48}, D::F32, D::F32, false}};
  m = types_of(plan_quantization(narrow, info, preset("Q4_K_S"), false, "narrow.gguf"));
  EXPECT_EQ(m.at("blk.0.attn_q.weight"), D::F16);
  try {
    plan_quantization(narrow, info, preset("Q8_0"), false, "narrow.gguf");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("narrow.gguf"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row length 48"), std::string::npos) << msg;
  }
}

// The CLI on a tiny F32 GGUF: for each preset the output has the planned type per tensor,
// exactly the bytes of quantizing the input (or the input's bytes when the type is unchanged),
// every metadata key of the input (general.file_type and general.quantization_version set),
// and no temporary file is left.
TEST(QuantizeCli, RoundTrip) {
  if (!exists(cli())) GTEST_SKIP() << cli() << " not built";
  const std::string dir = temp_dir("quantize_cli");
  const std::string in = dir + "/tiny-f32.gguf";
  TinyLlamaSpec spec;
  write_tiny_llama_gguf(in, spec);
  GgufFile src = GgufFile::open(in);
  for (const std::string& name : quant_preset_names()) {
    SCOPED_TRACE(name);
    const std::string out = dir + "/tiny-" + name + ".gguf";
    const CliRun r = run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type " + name + " --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_FALSE(exists(out + ".tmp"));
    EXPECT_NE(r.err.find("wrote " + out), std::string::npos) << r.err;
    GgufFile f = GgufFile::open(out);
    const QuantPreset p = preset(name);
    EXPECT_EQ(f.get_int("general.file_type", -1), int64_t(p.ftype));
    EXPECT_EQ(f.get_int("general.quantization_version", -1), 2);
    for (const auto& [k, v] : src.metadata()) {
      if (k == "general.file_type") continue;
      const GgufValue* o = f.find(k);
      ASSERT_NE(o, nullptr) << k;
      EXPECT_EQ(o->to_string(100000), v.to_string(100000)) << k;
    }
    const auto plan = plan_quantization(src, p);
    ASSERT_EQ(f.tensors().size(), src.tensors().size());
    std::set<DType> seen;
    for (size_t i = 0; i < plan.size(); i++) {
      const GgufTensorInfo& a = src.tensors()[i];
      const GgufTensorInfo& b = f.tensors()[i];
      ASSERT_EQ(b.name, a.name);
      EXPECT_EQ(b.ne, a.ne);
      EXPECT_EQ(b.dtype, plan[i].to) << a.name;
      if (a.ne.size() == 1) {
        EXPECT_EQ(b.dtype, DType::F32) << a.name;
      }
      seen.insert(b.dtype);
      std::vector<uint8_t> want(dtype_bytes(b.dtype, a.n_elements));
      ASSERT_TRUE(quants::quantize_row(b.dtype, static_cast<const float*>(a.data), want.data(), a.n_elements));
      ASSERT_EQ(b.nbytes, want.size()) << a.name;
      EXPECT_EQ(std::memcmp(b.data, want.data(), want.size()), 0) << a.name << " " << dtype_name(b.dtype);
    }
    if (name != "MXFP4_MOE") {
      EXPECT_TRUE(seen.count(p.default_type)) << "the preset's own type is used";
    } else {
      EXPECT_EQ(seen, (std::set<DType>{DType::F32, DType::Q8_0})) << "no expert tensors: all Q8_0";
    }
    // The summary line.
    EXPECT_NE(r.out.find("\"type\":\"" + name + "\""), std::string::npos) << r.out;
    if (name != "F32" && name != "Q8_0") std::remove(out.c_str());
  }
  // Requantizing a quantized file: Q8_0 -> Q4_K_M dequantizes first; tensors already of the
  // planned type are copied unchanged (Q8_0 output stays Q8_0 under the Q8_0 preset).
  const std::string q8 = dir + "/tiny-Q8_0.gguf", q4 = dir + "/tiny-q8-to-q4km.gguf", q8b = dir + "/again.gguf";
  ASSERT_EQ(run_cli(dir, "quantize --model " + q(q8) + " --out " + q(q4) + " --type Q4_K_M").rc, 0);
  ASSERT_EQ(run_cli(dir, "quantize --model " + q(q8) + " --out " + q(q8b) + " --type Q8_0").rc, 0);
  EXPECT_EQ(slurp(q8), slurp(q8b));  // same types everywhere: a byte copy
  GgufFile f8 = GgufFile::open(q8), f4 = GgufFile::open(q4);
  const GgufTensorInfo* a = f8.tensor("blk.0.attn_q.weight");
  const GgufTensorInfo* b = f4.tensor("blk.0.attn_q.weight");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(b->dtype, DType::Q4_K);
  std::vector<float> x(static_cast<size_t>(a->n_elements));
  ASSERT_TRUE(quants::dequantize_row(DType::Q8_0, a->data, x.data(), a->n_elements));
  std::vector<uint8_t> want(b->nbytes);
  ASSERT_TRUE(quants::quantize_row(DType::Q4_K, x.data(), want.data(), a->n_elements));
  EXPECT_EQ(std::memcmp(b->data, want.data(), want.size()), 0);
  // --uniform-imatrix: llama.cpp's importance-matrix quantizers with all-ones importance, row
  // by row.
  {
    const std::string out = dir + "/tiny-imx.gguf";
    const CliRun r = run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type Q4_K_M --uniform-imatrix");
    ASSERT_EQ(r.rc, 0) << r.err;
    GgufFile f = GgufFile::open(out);
    const auto plan = plan_quantization(src, preset("Q4_K_M"), false, true);
    int differ_from_default = 0;
    for (size_t i = 0; i < plan.size(); i++) {
      const GgufTensorInfo& a = src.tensors()[i];
      const GgufTensorInfo& b = f.tensors()[i];
      ASSERT_EQ(b.dtype, plan[i].to) << a.name;
      if (a.ne.size() < 2) continue;
      const int64_t cols = a.ne[0], rows = a.n_elements / cols;
      std::vector<float> ones(static_cast<size_t>(cols), 1.0f);
      std::vector<uint8_t> want(b.nbytes), plain(b.nbytes);
      ASSERT_TRUE(quants::quantize_rows(b.dtype, static_cast<const float*>(a.data), want.data(), rows, cols, ones.data()));
      ASSERT_TRUE(quants::quantize_row(b.dtype, static_cast<const float*>(a.data), plain.data(), a.n_elements));
      EXPECT_EQ(std::memcmp(b.data, want.data(), want.size()), 0) << a.name;
      differ_from_default += want != plain;
    }
    EXPECT_GT(differ_from_default, 0);
  }
  // --dry-run prints the plan and writes nothing.
  const CliRun d = run_cli(dir, "quantize --model " + q(in) + " --type Q2_K --dry-run");
  EXPECT_EQ(d.rc, 0) << d.err;
  EXPECT_NE(d.out.find("blk.0.attn_v.weight"), std::string::npos);
  EXPECT_NE(d.out.find("-> Q3_K"), std::string::npos) << d.out;  // n_gqa 2 < 4
}

TEST(QuantizeCli, Errors) {
  if (!exists(cli())) GTEST_SKIP() << cli() << " not built";
  const std::string dir = temp_dir("quantize_cli_errors");
  const std::string in = dir + "/tiny.gguf";
  TinyLlamaSpec spec;
  spec.dim = 48;  // rows of 48: Q8_0 has no fallback
  spec.ffn = 64;
  spec.n_head = 2;
  spec.n_head_kv = 1;
  spec.vocab = 300;
  write_tiny_llama_gguf(in, spec);
  auto one_error_line = [](const CliRun& r, std::vector<std::string> parts) {
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("lowrank: error: ", 0), 0u) << r.err;
    for (const std::string& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << r.err;
  };
  const std::string out = dir + "/out.gguf";
  one_error_line(run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type Q8_0"),
                 {in, "output.weight", "row length 48", "no fallback"});
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
  one_error_line(run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type Q9_K"), {"Q9_K", "Q4_K_M"});
  one_error_line(run_cli(dir, "quantize --model " + q(in) + " --out " + q(in) + " --type Q4_K_M"), {"input model"});
  one_error_line(run_cli(dir, "quantize --model " + q(in) + " --out " + q(dir + "/no/such/x.gguf") + " --type Q4_0"),
                 {"does not exist"});
  one_error_line(run_cli(dir, "quantize --model " + q(dir + "/missing.gguf") + " --out " + q(out) + " --type Q4_0"),
                 {"missing.gguf"});
  // A corrupt input (a tensor type id past ggml's table) names the file and the tensor.
  std::string bytes = slurp(in);
  const std::string name = "blk.0.attn_q.weight";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + name.size() + 4 + 2 * 8;  // n_dims, ne[2], then the type
  bytes[type_at] = char(77);
  const std::string bad = dir + "/bad.gguf";
  std::ofstream(bad, std::ios::binary) << bytes;
  one_error_line(run_cli(dir, "quantize --model " + q(bad) + " --out " + q(out) + " --type Q4_0"),
                 {bad, name, "unknown ggml tensor type 77"});
  EXPECT_FALSE(exists(out));
  // Q4_K_S: the matrices would fall back to F16, but output.weight goes to Q8_0 first (its row
  // length is not a multiple of 256), which has no fallback: llama.cpp refuses this file too.
  one_error_line(run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type Q4_K_S"),
                 {"output.weight", "row length 48"});
  // A NaN in an F32 weight: refused naming the tensor and row, nothing written.
  {
    TinyLlamaSpec ok_spec;
    const std::string src = dir + "/nan.gguf";
    write_tiny_llama_gguf(src, ok_spec);
    GgufFile f = GgufFile::open(src);
    const GgufTensorInfo* t = f.tensor("blk.1.ffn_up.weight");
    ASSERT_NE(t, nullptr);
    const size_t at = size_t(static_cast<const uint8_t*>(t->data) - static_cast<const uint8_t*>(f.owner().get())) +
                      4 * size_t(3 * 256 + 7);  // row 3, column 7
    std::string img = slurp(src);
    const float nan = std::nanf("");
    std::memcpy(&img[at], &nan, 4);
    std::ofstream(src, std::ios::binary | std::ios::trunc) << img;
    one_error_line(run_cli(dir, "quantize --model " + q(src) + " --out " + q(out) + " --type Q4_K_M"),
                   {src, "blk.1.ffn_up.weight", "row 3", "NaN"});
    EXPECT_FALSE(exists(out));
    EXPECT_FALSE(exists(out + ".tmp"));
  }
  // F16 needs no blocks.
  const CliRun ok = run_cli(dir, "quantize --model " + q(in) + " --out " + q(out) + " --type F16");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_TRUE(exists(out));
}
