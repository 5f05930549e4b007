// Findings of a hostile test of the command line and the readers (issue "Hardening"): each case
// here failed on the code before the fix (ran a shell command from a path, trained on and saved
// NaN, read /dev/zero until memory ran out, hung on a FIFO, echoed a secret, loaded a model with
// the wrong head, accepted values that cannot be right, overwrote a foreign --out).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>

#include "cli_util.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "lora/peft.h"

using namespace cli_test;
namespace fs = std::filesystem;

namespace {

using Hardening = CliTest;

#define NEED_FIXTURES()                                                            \
  do {                                                                             \
    if (!have_fixtures()) GTEST_SKIP() << "fixtures not found at " << llama_dir(); \
  } while (0)

std::string llama_model() { return llama_dir() + "/model"; }

// Values of an F32 safetensors tensor.
std::vector<float> tensor_values(const std::string& file, const std::string& name) {
  lowrank::SafetensorsFile st = lowrank::SafetensorsFile::open(file);
  const lowrank::Tensor& t = st.get(name);
  std::vector<float> v(size_t(t.numel()));
  lowrank::to_f32(t.dtype, t.data, v.data(), t.numel());
  return v;
}

// ---------------------------------------------------------------- 1: no shell from paths

TEST_F(Hardening, CheckpointReplacementRunsNoShellCommand) {
  NEED_FIXTURES();
  // The old trainer removed a replaced checkpoint with a shell "rm -rf" built from the path: this
  // --out closed the quote and ran `touch INJECTED` in the working directory.
  const std::string out = dir_ + "/o'; touch INJECTED; '";
  const std::string common = "train --no-progress --model " + q(llama_model()) + " --data " + q(good_data()) +
                             " --out " + q(out) + " --steps 2 --save-every 1";
  CliRun r1 = run_cli(dir_, common);
  ASSERT_EQ(r1.rc, 0) << r1.err;
  // Resuming from step 1 writes checkpoint-2 again, replacing the one of the first run.
  CliRun r2 = run_cli(dir_, common + " --resume " + q(out + "/checkpoint-1"));
  ASSERT_EQ(r2.rc, 0) << r2.err;
  EXPECT_FALSE(exists(dir_ + "/INJECTED")) << "a shell command built from --out was run";
  EXPECT_TRUE(exists(out + "/checkpoint-2/adapter_model.safetensors"));
  EXPECT_FALSE(exists(out + "/checkpoint-2.old"));
  EXPECT_FALSE(exists(out + "/checkpoint-2.tmp"));
}

// ---------------------------------------------------------------- 2: divergence stops training

TEST_F(Hardening, DivergingTrainingStopsAndKeepsTheLastGoodCheckpoint) {
  NEED_FIXTURES();
  const std::string out = dir_ + "/diverged";
  // With lr 1e6 the loss is finite at steps 1-2 and NaN from step 3 on (the clipping of the
  // default --max-grad-norm 1 must not hide it).
  CliRun r = run_cli(dir_, "train --no-progress --model " + q(llama_model()) + " --data " + q(good_data()) +
                               " --out " + q(out) + " --targets all-linear --steps 8 --lr 1e6 --save-every 1" +
                               " --json-log " + q(dir_ + "/log.jsonl"));
  expect_clean_error(r, {"diverged at step 3"}, /*info_lines_ok=*/true);
  EXPECT_NE(r.err.find("checkpoint-2"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(out + "/adapter_model.safetensors")) << "a diverged run wrote its adapter";
  EXPECT_FALSE(exists(out + "/checkpoint-3"));
  ASSERT_TRUE(exists(out + "/checkpoint-2/adapter_model.safetensors"));
  lowrank::SafetensorsFile st = lowrank::SafetensorsFile::open(out + "/checkpoint-2/adapter_model.safetensors");
  for (const lowrank::Tensor& t : st.tensors()) {
    std::vector<float> v = tensor_values(out + "/checkpoint-2/adapter_model.safetensors", t.name);
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << t.name;
  }
  EXPECT_NE(read_file(dir_ + "/log.jsonl").find("\"error\""), std::string::npos);
}

TEST_F(Hardening, NonFiniteAdapterIsRefusedByEvalAndNeverWritten) {
  NEED_FIXTURES();
  std::string a = copy_adapter("nan-adapter");
  Safetensors s = st_split(read_file(a + "/adapter_model.safetensors"));
  const std::string key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
  ASSERT_TRUE(s.header.contains(key));
  ASSERT_EQ(s.header[key]["dtype"], "F32");
  const float nan = std::nanf("");
  std::memcpy(s.data.data() + s.header[key]["data_offsets"][0].get<size_t>(), &nan, 4);
  write_file(a + "/adapter_model.safetensors", st_join(s));
  CliRun r = run_cli(dir_, "eval --model " + q(llama_model()) + " --adapter " + q(a) + " --data " + q(good_data()));
  expect_clean_error(r, {"q_proj.lora_B.weight"});
  CliRun g = run_cli(dir_, "generate --model " + q(llama_model()) + " --adapter " + q(a) + " --prompt hi");
  expect_clean_error(g, {"q_proj.lora_B.weight"});
  // The writer refuses too (every path that saves an adapter goes through it).
  lowrank::Adapter bad;
  lowrank::LoraTarget& t = bad.targets["m"];
  t.A = lowrank::FloatBuffer::zeros({1, 2});
  t.B = lowrank::FloatBuffer::zeros({2, 1});
  t.B.ptr()[1] = INFINITY;
  EXPECT_THROW(lowrank::save_peft_adapter(bad, dir_ + "/never"), lowrank::Error);
  EXPECT_FALSE(exists(dir_ + "/never/adapter_model.safetensors"));
}

// ---------------------------------------------------------------- 5: files that never end

TEST_F(Hardening, DevZeroAdapterConfigIsRefusedAtOnce) {
  NEED_FIXTURES();
  std::string a = copy_adapter("zero-adapter");
  fs::remove(a + "/adapter_config.json");
  fs::create_symlink("/dev/zero", a + "/adapter_config.json");
  // The old reader read /dev/zero until memory ran out; a few seconds are plenty for the error.
  CliRun r = run_cli(dir_, "eval --model " + q(llama_model()) + " --adapter " + q(a) + " --data " + q(good_data()), 5);
  expect_clean_error(r, {"adapter_config.json"});
  EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << r.err;
}

TEST_F(Hardening, FifoFilesDoNotHang) {
  NEED_FIXTURES();
  std::string a = copy_adapter("fifo-adapter");
  fs::remove(a + "/adapter_config.json");
  ASSERT_EQ(::mkfifo((a + "/adapter_config.json").c_str(), 0644), 0);
  CliRun r = run_cli(dir_, "eval --model " + q(llama_model()) + " --adapter " + q(a) + " --data " + q(good_data()), 5);
  expect_clean_error(r, {"adapter_config.json"});
  // A FIFO as the model config and as the data file: refused, not waited on.
  std::string m = copy_model();
  fs::remove(m + "/config.json");
  ASSERT_EQ(::mkfifo((m + "/config.json").c_str(), 0644), 0);
  CliRun c = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()), 5);
  expect_clean_error(c, {"config.json"});
  const std::string fifo_data = dir_ + "/data.fifo";
  ASSERT_EQ(::mkfifo(fifo_data.c_str(), 0644), 0);
  CliRun d = run_cli(dir_, "eval --model " + q(llama_model()) + " --data " + q(fifo_data), 5);
  expect_clean_error(d, {"data.fifo"});
}

TEST_F(Hardening, OversizedConfigIsRefusedWithoutReading) {
  NEED_FIXTURES();
  std::string a = copy_adapter("huge-adapter");
  // A sparse 64 MiB file: far more than an adapter_config.json can need.
  { std::ofstream(a + "/adapter_config.json", std::ios::trunc) << "{"; }
  fs::resize_file(a + "/adapter_config.json", size_t(64) << 20);
  CliRun r = run_cli(dir_, "eval --model " + q(llama_model()) + " --adapter " + q(a) + " --data " + q(good_data()), 20);
  expect_clean_error(r, {"adapter_config.json"});
  EXPECT_NE(r.err.find("bytes"), std::string::npos) << r.err;
}

TEST_F(Hardening, ErrorsDoNotEchoFileContents) {
  NEED_FIXTURES();
  // config.json is a symlink to a "secret" that is not JSON: the JSON parser's message quoted
  // what it had read ("last read: ..."), putting the secret into the error line.
  const std::string secret = dir_ + "/secret.txt";
  { std::ofstream(secret) << "\"TOPSECRET-4f9a-password-hunter2"; }
  std::string m = copy_model();
  fs::remove(m + "/config.json");
  fs::create_symlink(secret, m + "/config.json");
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r, {"config.json"});
  EXPECT_EQ(r.err.find("TOPSECRET"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("hunter2"), std::string::npos) << r.err;
  // The same through the adapter config and the data file.
  std::string a = copy_adapter("secret-adapter");
  fs::remove(a + "/adapter_config.json");
  fs::create_symlink(secret, a + "/adapter_config.json");
  CliRun ra = run_cli(dir_, "eval --model " + q(llama_model()) + " --adapter " + q(a) + " --data " + q(good_data()));
  expect_clean_error(ra, {"adapter_config.json"});
  EXPECT_EQ(ra.err.find("TOPSECRET"), std::string::npos) << ra.err;
  CliRun rd = run_cli(dir_, "eval --model " + q(llama_model()) + " --data " + q(secret));
  expect_clean_error(rd, {"secret.txt"});
  EXPECT_EQ(rd.err.find("TOPSECRET"), std::string::npos) << rd.err;
}

// ---------------------------------------------------------------- 7: untied head must exist

TEST_F(Hardening, UntiedModelWithoutLmHeadIsRefused) {
  NEED_FIXTURES();
  for (const char* tie : {"false", "absent"}) {
    SCOPED_TRACE(tie);
    std::string m = copy_model(std::string("model-") + tie);
    Safetensors s = st_split(read_file(m + "/model.safetensors"));
    ASSERT_TRUE(s.header.contains("lm_head.weight"));
    s.header.erase("lm_head.weight");
    write_file(m + "/model.safetensors", st_join(s));
    json cfg = json::parse(read_file(m + "/config.json"));
    if (std::string(tie) == "false") cfg["tie_word_embeddings"] = false;
    else cfg.erase("tie_word_embeddings");  // transformers' llama default: untied
    write_file(m + "/config.json", cfg.dump(2));
    CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
    expect_clean_error(r, {"lm_head.weight"});
  }
}

// ---------------------------------------------------------------- 8: values that cannot be right

TEST_F(Hardening, ImpossibleConfigValuesAreRefused) {
  NEED_FIXTURES();
  struct Case { const char* key; json value; const char* model_type; };
  const std::vector<Case> cases = {
      {"rms_norm_eps", 0.0, nullptr},        {"rms_norm_eps", -1e-5, nullptr},
      {"max_position_embeddings", 0, nullptr}, {"sliding_window", -4, "mistral"},
      {"rope_theta", "10000", nullptr},      {"rope_theta", -1.0, nullptr},
      {"hidden_size", 0, nullptr},           {"num_key_value_heads", "2", nullptr},
      {"head_dim", 7.5, nullptr},            {"tie_word_embeddings", "no", nullptr},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    std::string m = copy_model();
    json cfg = json::parse(read_file(m + "/config.json"));
    cfg[c.key] = c.value;
    if (c.model_type) cfg["model_type"] = c.model_type;
    write_file(m + "/config.json", cfg.dump(2));
    CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
    expect_clean_error(r, {"config.json"});
    EXPECT_NE(r.err.find(c.key), std::string::npos) << r.err;
  }
}

TEST_F(Hardening, ImpossibleFlagValuesAreRefused) {
  NEED_FIXTURES();
  const std::string base = " --model " + q(llama_model()) + " --data " + q(good_data());
  const std::string out = " --out " + q(dir_ + "/never");
  const std::vector<std::pair<std::string, const char*>> cases = {
      {"train --steps 1 --seq-len 0" + base + out, "--seq-len"},
      {"train --steps 1 --seq-len -5" + base + out, "--seq-len"},
      {"train --steps 1 --seq-len 1000000000000" + base + out, "--seq-len"},
      {"train --steps 1 --r 0" + base + out, "--r"},
      {"train --steps 1 --lr nan" + base + out, "--lr"},
      {"train --steps 1 --dropout 1.5" + base + out, "--dropout"},
      {"train --steps 1 --batch 0" + base + out, "--batch"},
      {"eval --seq-len -1" + base, "--seq-len"},
      {"eval --adapter " + q(llama_dir() + "/adapters/qv-r4") + ":nan" + base, "nan"},
      {"eval --adapter " + q(llama_dir() + "/adapters/qv-r4") + ":inf" + base, "inf"},
      {"generate --model " + q(llama_model()) + " --prompt hi --max-tokens 0", "--max-tokens"},
      {"generate --model " + q(llama_model()) + " --prompt hi --temperature -1", "--temperature"},
  };
  for (const auto& [args, needle] : cases) {
    SCOPED_TRACE(args);
    CliRun r = run_cli(dir_, args);
    expect_clean_error(r, {needle});
    EXPECT_FALSE(exists(dir_ + "/never"));
  }
}

TEST_F(Hardening, EmptyMessagesAndUnknownRolesAreRefused) {
  NEED_FIXTURES();
  // The fixture tokenizer has no chat template; give it a minimal one so messages records load.
  std::string m = copy_model();
  json tc = json::parse(read_file(m + "/tokenizer_config.json"));
  tc["chat_template"] = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}";
  write_file(m + "/tokenizer_config.json", tc.dump());
  const std::string ok = dir_ + "/ok.jsonl", empty = dir_ + "/empty.jsonl", role = dir_ + "/role.jsonl";
  write_file(ok, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n");
  write_file(empty, "{\"messages\": []}\n");
  write_file(role, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}\n");
  CliRun good = run_cli(dir_, "eval --model " + q(m) + " --data " + q(ok));
  EXPECT_EQ(good.rc, 0) << good.err;
  CliRun e = run_cli(dir_, "eval --model " + q(m) + " --data " + q(empty));
  expect_clean_error(e, {"empty.jsonl"});
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(role));
  expect_clean_error(r, {"wizard"});
}

// ---------------------------------------------------------------- 9: misaligned tensor data

TEST(HardeningIo, Float16TensorAtAnOddOffsetReadsCorrectlyAndAligned) {
  // The reproducer of the UBSan finding: one F16 tensor with data_offsets [1, 5].
  json h = {{"w", {{"dtype", "F16"}, {"shape", {2}}, {"data_offsets", {1, 5}}}}};
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  std::string bytes(8, '\0');
  const uint64_t n = hs.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += hs;
  bytes += std::string("\x00\x00\x3e\x00\xc0", 5);  // pad byte, then 1.5 (0x3e00) and -2 (0xc000)
  lowrank::SafetensorsFile st = lowrank::SafetensorsFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                                bytes.size(), "odd.safetensors");
  const lowrank::Tensor& t = st.get("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 2, 0u) << "tensor data left misaligned";
  float v[2];
  lowrank::to_f32(t.dtype, t.data, v, 2);
  EXPECT_EQ(v[0], 1.5f);
  EXPECT_EQ(v[1], -2.f);
}

// ---------------------------------------------------------------- 10: foreign --out

TEST_F(Hardening, TrainRefusesAForeignNonEmptyOut) {
  NEED_FIXTURES();
  const std::string out = dir_ + "/out";
  fs::create_directory(out);
  write_file(out + "/notes.txt", "mine");
  const std::string cmd = "train --no-progress --steps 1 --model " + q(llama_model()) + " --data " + q(good_data()) +
                          " --out " + q(out);
  CliRun r = run_cli(dir_, cmd);
  expect_clean_error(r, {"--overwrite"});
  EXPECT_FALSE(exists(out + "/adapter_config.json"));
  EXPECT_EQ(read_file(out + "/notes.txt"), "mine");
  // --overwrite says so explicitly.
  CliRun w = run_cli(dir_, cmd + " --overwrite");
  EXPECT_EQ(w.rc, 0) << w.err;
  EXPECT_TRUE(exists(out + "/adapter_config.json"));
  // The same command again may write into its own output; another command may not.
  CliRun same = run_cli(dir_, cmd);
  EXPECT_EQ(same.rc, 0) << same.err;
  CliRun other = run_cli(dir_, cmd + " --r 4");
  expect_clean_error(other, {"other settings"});
}

}  // namespace
