// The command line on bad input: every case must exit with code 2 and print exactly one line
// "lowrank: error: ..." on stderr that names the offending file (or tensor) — no crash, no
// "terminate called", no sanitizer report — and a command that fails must not leave a
// half-written --out behind. Inputs are corrupted copies of the tiny fixture model
// (../shared/fixtures/hf) and small GGUF files built here with GgufWriter.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_util.h"
#include "io/gguf.h"

using namespace cli_test;

namespace {

using CliErrors = CliTest;

// ------------------------------------------------------------------ sanity: the good path

TEST_F(CliErrors, GoodInputSucceeds) {
  NEED_FIXTURES();
  std::string m = copy_model();
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()) + " --json");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"nll\":"), std::string::npos) << r.out;
}

TEST_F(CliErrors, UsageErrorExitsTwo) {
  CliRun r = run_cli(dir_, "eval --data x.jsonl");  // --model missing
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos);
}

// ------------------------------------------------------------------ model files

TEST_F(CliErrors, NonexistentModelDir) {
  std::string missing = dir_ + "/no-such-model";
  CliRun r = run_cli(dir_, "eval --model " + q(missing) + " --data " + q(good_data()));
  expect_clean_error(r, {"no-such-model"});
}

TEST_F(CliErrors, NonexistentGgufModel) {
  std::string missing = dir_ + "/no-such-model.gguf";
  CliRun r = run_cli(dir_, "generate --model " + q(missing) + " --prompt hi");
  expect_clean_error(r, {"no-such-model.gguf"});
}

TEST_F(CliErrors, TruncatedSafetensors) {
  NEED_FIXTURES();
  std::string m = copy_model();
  std::string b = read_file(m + "/model.safetensors");
  write_file(m + "/model.safetensors", b.substr(0, b.size() / 2));
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r, {"model.safetensors"});
}

TEST_F(CliErrors, SafetensorsTruncatedInsideHeader) {
  NEED_FIXTURES();
  std::string m = copy_model();
  std::string b = read_file(m + "/model.safetensors");
  write_file(m + "/model.safetensors", b.substr(0, 100));
  CliRun r = run_cli(dir_, "inspect " + q(m + "/model.safetensors"));
  expect_clean_error(r, {"model.safetensors"});
}

TEST_F(CliErrors, SafetensorsOverlappingOffsets) {
  NEED_FIXTURES();
  // o_proj and q_proj of layer 0 are both (32, 32) F32: give o_proj q_proj's byte range.
  CliRun r = eval_with_header_edit([](json& h) {
    h["model.layers.0.self_attn.o_proj.weight"]["data_offsets"] = h["model.layers.0.self_attn.q_proj.weight"]["data_offsets"];
  });
  expect_clean_error(r, {"model.safetensors"});
  EXPECT_NE(r.err.find("overlap"), std::string::npos) << r.err;
}

TEST_F(CliErrors, SafetensorsOffsetsPastTheEnd) {
  NEED_FIXTURES();
  CliRun r = eval_with_header_edit([](json& h) {
    json& t = h["model.norm.weight"];
    uint64_t b = t["data_offsets"][0].get<uint64_t>() + 1000000, e = t["data_offsets"][1].get<uint64_t>() + 1000000;
    t["data_offsets"] = {b, e};
  });
  expect_clean_error(r, {"model.safetensors"});
}

TEST_F(CliErrors, SafetensorsUnknownDtype) {
  NEED_FIXTURES();
  for (const char* dt : {"F8_E4M3", "Q9"}) {
    SCOPED_TRACE(dt);
    CliRun r = eval_with_header_edit([&](json& h) { h["model.layers.1.mlp.up_proj.weight"]["dtype"] = dt; });
    expect_clean_error(r, {"model.safetensors"});
    EXPECT_NE(r.err.find(dt), std::string::npos) << r.err;
  }
}

TEST_F(CliErrors, SafetensorsHeaderNotJson) {
  NEED_FIXTURES();
  std::string m = copy_model();
  std::string b = read_file(m + "/model.safetensors");
  b[8] = '[';
  b[9] = '!';
  write_file(m + "/model.safetensors", b);
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r, {"model.safetensors"});
}

TEST_F(CliErrors, MissingTensor) {
  NEED_FIXTURES();
  CliRun r = eval_with_header_edit([](json& h) { h.erase("model.layers.1.mlp.down_proj.weight"); });
  expect_clean_error(r, {"model.layers.1.mlp.down_proj.weight"});
}

TEST_F(CliErrors, ConfigHiddenSizeDisagreesWithTensors) {
  NEED_FIXTURES();
  std::string m = copy_model();
  json c = json::parse(read_file(m + "/config.json"));
  c["hidden_size"] = 48;  // tensors are (.., 32)
  write_file(m + "/config.json", c.dump(2));
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  // Either the file or the first tensor whose shape disagrees.
  expect_clean_error(r, {"model.safetensors", "config.json", ".weight"});
}

TEST_F(CliErrors, ConfigNotJson) {
  NEED_FIXTURES();
  std::string m = copy_model();
  write_file(m + "/config.json", "{\"hidden_size\": 32,");
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r, {"config.json"});
}

TEST_F(CliErrors, MalformedTokenizerJson) {
  NEED_FIXTURES();
  std::string m = copy_model();
  std::string t = read_file(m + "/tokenizer.json");
  write_file(m + "/tokenizer.json", t.substr(0, 1000));
  CliRun r = run_cli(dir_, "tokenize --model " + q(m) + " hello");
  expect_clean_error(r, {"tokenizer.json"});
  CliRun r2 = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r2, {"tokenizer.json"});
}

TEST_F(CliErrors, TokenizerJsonWrongShape) {
  NEED_FIXTURES();
  std::string m = copy_model();
  json t = json::parse(read_file(m + "/tokenizer.json"));
  t["model"]["vocab"] = "not a map";
  write_file(m + "/tokenizer.json", t.dump());
  CliRun r = run_cli(dir_, "tokenize --model " + q(m) + " hello");
  expect_clean_error(r, {"tokenizer.json"});
}

// ------------------------------------------------------------------ data files

TEST_F(CliErrors, JsonlEmptyLine) {
  NEED_FIXTURES();
  std::string d = dir_ + "/gappy.jsonl";
  write_file(d, "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n");
  CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --data " + q(d));
  expect_clean_error(r, {"gappy.jsonl"});
}

TEST_F(CliErrors, JsonlBadRecords) {
  NEED_FIXTURES();
  const std::vector<std::string> bad = {
      "{\"text\": \"one\"}\n{\"text\": \n",  // truncated JSON
      "[1, 2]\n",                             // not an object
      "{\"txt\": \"one\"}\n",                 // no known field
      "{\"text\": 5}\n",                      // wrong type
  };
  for (size_t i = 0; i < bad.size(); i++) {
    SCOPED_TRACE(bad[i]);
    std::string d = dir_ + "/bad" + std::to_string(i) + ".jsonl";
    write_file(d, bad[i]);
    CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --data " + q(d));
    expect_clean_error(r, {("bad" + std::to_string(i) + ".jsonl").c_str()});
  }
}

TEST_F(CliErrors, MissingDataFile) {
  NEED_FIXTURES();
  CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --data " + q(dir_ + "/nope.jsonl"));
  expect_clean_error(r, {"nope.jsonl"});
}

// ------------------------------------------------------------------ GGUF

// A small valid GGUF file and the byte positions of the fields the tests corrupt.
struct SmallGguf {
  std::vector<uint8_t> bytes;
  size_t string_len_at = 0;  // u64 length of the "general.name" value
  size_t n_dims_at = 0;      // u32 n_dims of tensor "blk.0.attn_q.weight"
  size_t type_at = 0;        // u32 ggml type of that tensor
};

size_t find_bytes(const std::vector<uint8_t>& b, const std::string& s) {
  for (size_t i = 0; i + s.size() <= b.size(); i++)
    if (std::memcmp(b.data() + i, s.data(), s.size()) == 0) return i;
  return std::string::npos;
}

SmallGguf small_gguf() {
  static const float w[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                              17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  lowrank::GgufWriter g;
  g.set_string("general.architecture", "toy");
  g.set_string("general.name", "corrupt-me-please");
  g.set_u32("toy.block_count", 1);
  g.set_string_array("toy.words", {"a", "bc", "def"});
  g.add_tensor_f32("blk.0.attn_q.weight", {8, 4}, w);
  g.add_tensor_f16("blk.0.ffn.weight", {16, 2}, w);
  SmallGguf s;
  s.bytes = g.to_bytes();
  size_t v = find_bytes(s.bytes, "corrupt-me-please");
  size_t t = find_bytes(s.bytes, "blk.0.attn_q.weight");
  if (v == std::string::npos || t == std::string::npos) return s;
  s.string_len_at = v - 8;
  s.n_dims_at = t + std::strlen("blk.0.attn_q.weight");
  s.type_at = s.n_dims_at + 4 + 2 * 8;
  return s;
}

template <typename T>
void put(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

TEST_F(CliErrors, GgufValidFileInspects) {
  SmallGguf s = small_gguf();
  ASSERT_NE(s.n_dims_at, 0u);
  std::string p = dir_ + "/good.gguf";
  write_bytes(p, s.bytes);
  CliRun r = run_cli(dir_, "inspect " + q(p));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("blk.0.attn_q.weight"), std::string::npos) << r.out;
}

TEST_F(CliErrors, GgufCorruptions) {
  SmallGguf s = small_gguf();
  ASSERT_NE(s.n_dims_at, 0u);
  struct Case {
    const char* name;
    std::vector<uint8_t> bytes;
  };
  std::vector<Case> cases;
  {
    auto b = s.bytes;
    b[0] = 'X';
    cases.push_back({"bad_magic.gguf", b});
  }
  {
    auto b = s.bytes;
    b.resize(b.size() - 40);  // cut into the data section
    cases.push_back({"truncated_data.gguf", b});
  }
  {
    auto b = s.bytes;
    b.resize(s.n_dims_at + 2);  // cut inside the tensor infos
    cases.push_back({"truncated_header.gguf", b});
  }
  {
    auto b = s.bytes;
    b.resize(10);
    cases.push_back({"truncated_tiny.gguf", b});
  }
  {
    auto b = s.bytes;
    put<uint32_t>(b, s.n_dims_at, 5);
    cases.push_back({"n_dims5.gguf", b});
  }
  {
    auto b = s.bytes;
    put<uint32_t>(b, s.type_at, 99);
    cases.push_back({"unknown_type.gguf", b});
  }
  {
    auto b = s.bytes;
    put<uint64_t>(b, s.string_len_at, uint64_t(b.size()) + 1000);
    cases.push_back({"string_past_end.gguf", b});
  }
  {
    auto b = s.bytes;
    put<uint64_t>(b, s.string_len_at, ~uint64_t(0) - 4);
    cases.push_back({"string_len_huge.gguf", b});
  }
  {
    auto b = s.bytes;
    put<uint64_t>(b, 8, uint64_t(1) << 40);  // tensor count
    cases.push_back({"tensor_count_huge.gguf", b});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string p = dir_ + "/" + c.name;
    write_bytes(p, c.bytes);
    expect_clean_error(run_cli(dir_, "inspect " + q(p)), {c.name});
    // The model-loading path must report the same way.
    expect_clean_error(run_cli(dir_, "tokenize --model " + q(p) + " hello"), {c.name});
  }
}

TEST_F(CliErrors, GgufWithoutModelTensors) {
  // A valid GGUF container that is not a llama model.
  SmallGguf s = small_gguf();
  std::string p = dir_ + "/not_a_model.gguf";
  write_bytes(p, s.bytes);
  CliRun r = run_cli(dir_, "eval --model " + q(p) + " --data " + q(good_data()));
  expect_clean_error(r, {"not_a_model.gguf"});
}

// ------------------------------------------------------------------ adapters

TEST_F(CliErrors, AdapterLoraAShapeMismatch) {
  NEED_FIXTURES();
  std::string a = copy_adapter("bad-adapter");
  Safetensors s = st_split(read_file(a + "/adapter_model.safetensors"));
  // lora_A of layer 0 q_proj is (4, 32) F32 at [0, 512): claim (4, 16) at [0, 256).
  json& t = s.header["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
  t["shape"] = {4, 16};
  t["data_offsets"] = {0, 256};
  write_file(a + "/adapter_model.safetensors", st_join(s));
  CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --adapter " + q(a) + " --data " + q(good_data()));
  expect_clean_error(r, {"layers.0.self_attn.q_proj"});
}

TEST_F(CliErrors, AdapterConfigMissing) {
  NEED_FIXTURES();
  std::string a = copy_adapter("no-config");
  std::remove((a + "/adapter_config.json").c_str());
  CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --adapter " + q(a) + " --data " + q(good_data()));
  expect_clean_error(r, {"adapter_config.json", "no-config"});
}

TEST_F(CliErrors, AdapterTargetMissingInModel) {
  NEED_FIXTURES();
  std::string a = copy_adapter("layer7-adapter");
  Safetensors s = st_split(read_file(a + "/adapter_model.safetensors"));
  for (const char* ab : {"lora_A", "lora_B"}) {
    std::string from = std::string("base_model.model.model.layers.1.self_attn.q_proj.") + ab + ".weight";
    std::string to = std::string("base_model.model.model.layers.7.self_attn.q_proj.") + ab + ".weight";
    s.header[to] = s.header[from];
    s.header.erase(from);
  }
  write_file(a + "/adapter_model.safetensors", st_join(s));
  CliRun r = run_cli(dir_, "eval --model " + q(llama_dir() + "/model") + " --adapter " + q(a) + " --data " + q(good_data()));
  expect_clean_error(r, {"layers.7"});
}

// ------------------------------------------------------------------ no half-written output

TEST_F(CliErrors, MergeFailureLeavesNoOutput) {
  NEED_FIXTURES();
  std::string a = copy_adapter("layer7-adapter");
  Safetensors s = st_split(read_file(a + "/adapter_model.safetensors"));
  for (const char* ab : {"lora_A", "lora_B"}) {
    std::string from = std::string("base_model.model.model.layers.1.self_attn.v_proj.") + ab + ".weight";
    std::string to = std::string("base_model.model.model.layers.7.self_attn.v_proj.") + ab + ".weight";
    s.header[to] = s.header[from];
    s.header.erase(from);
  }
  write_file(a + "/adapter_model.safetensors", st_join(s));
  std::string out = dir_ + "/merged";
  CliRun r = run_cli(dir_, "merge --model " + q(llama_dir() + "/model") + " --adapter " + q(a) + " --out " + q(out));
  expect_clean_error(r, {"layers.7"});
  EXPECT_FALSE(exists(out)) << out << " was left behind by a failed merge";
  // Nothing else beside it either (temporary dirs/files).
  std::string listing;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) listing += e.path().filename().string() + "\n";
  EXPECT_EQ(listing.find("merged"), std::string::npos) << listing;
}

TEST_F(CliErrors, MergeMissingAdapterLeavesNoOutput) {
  NEED_FIXTURES();
  std::string out = dir_ + "/merged";
  CliRun r = run_cli(dir_, "merge --model " + q(llama_dir() + "/model") + " --adapter " + q(dir_ + "/no-adapter") +
                            " --out " + q(out));
  expect_clean_error(r, {"no-adapter"});
  EXPECT_FALSE(exists(out));
}

TEST_F(CliErrors, TrainBadDataLeavesNoOutput) {
  NEED_FIXTURES();
  std::string bad = dir_ + "/gappy.jsonl";
  write_file(bad, "{\"text\": \"one\"}\n\n");
  std::string out = dir_ + "/trained";
  // Bad training data, then bad eval data (read after the adapter is created).
  CliRun r = run_cli(dir_, "train --no-progress --steps 1 --model " + q(llama_dir() + "/model") + " --data " + q(bad) +
                            " --out " + q(out));
  expect_clean_error(r, {"gappy.jsonl"}, /*info_lines_ok=*/true);
  EXPECT_FALSE(exists(out));
  CliRun r2 = run_cli(dir_, "train --no-progress --steps 1 --model " + q(llama_dir() + "/model") + " --data " +
                             q(good_data()) + " --eval-data " + q(bad) + " --out " + q(out));
  expect_clean_error(r2, {"gappy.jsonl"}, /*info_lines_ok=*/true);
  EXPECT_FALSE(exists(out));
}

TEST_F(CliErrors, TrainBadModelLeavesNoOutput) {
  NEED_FIXTURES();
  std::string m = copy_model();
  std::string b = read_file(m + "/model.safetensors");
  write_file(m + "/model.safetensors", b.substr(0, b.size() - 1000));
  std::string out = dir_ + "/trained";
  CliRun r = run_cli(dir_, "train --no-progress --steps 1 --model " + q(m) + " --data " + q(good_data()) + " --out " + q(out));
  expect_clean_error(r, {"model.safetensors"}, /*info_lines_ok=*/true);
  EXPECT_FALSE(exists(out));
}

// ------------------------------------------------------------------ checked before training

TEST_F(CliErrors, TrainGgufOutNeedsGgufModel) {
  NEED_FIXTURES();
  std::string out = dir_ + "/trained";
  CliRun r = run_cli(dir_, "train --no-progress --steps 1 --model " + q(llama_dir() + "/model") + " --data " +
                            q(good_data()) + " --out " + q(out) + " --gguf-out " + q(dir_ + "/a.gguf"));
  expect_clean_error(r, {"--gguf-out"});
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(dir_ + "/a.gguf"));
}

TEST_F(CliErrors, TrainOutIsAFileOrHasNoParent) {
  NEED_FIXTURES();
  std::string file = dir_ + "/plain-file";
  write_file(file, "x");
  CliRun r = run_cli(dir_, "train --no-progress --steps 1 --model " + q(llama_dir() + "/model") + " --data " +
                            q(good_data()) + " --out " + q(file));
  expect_clean_error(r, {"plain-file"});
  std::string orphan = dir_ + "/no-such-parent/out";
  CliRun r2 = run_cli(dir_, "train --no-progress --steps 1 --model " + q(llama_dir() + "/model") + " --data " +
                             q(good_data()) + " --out " + q(orphan));
  expect_clean_error(r2, {"no-such-parent"});
}

TEST_F(CliErrors, TrainPissaRefusesCheckpoints) {
  NEED_FIXTURES();
  std::string out = dir_ + "/trained";
  CliRun r = run_cli(dir_, "train --no-progress --steps 2 --init pissa --save-every 1 --model " +
                            q(llama_dir() + "/model") + " --data " + q(good_data()) + " --out " + q(out));
  expect_clean_error(r, {"pissa"});
  EXPECT_FALSE(exists(out));
}

TEST_F(CliErrors, MergeHfModelIntoGgufFileIsRefused) {
  NEED_FIXTURES();
  std::string out = dir_ + "/merged.gguf";
  CliRun r = run_cli(dir_, "merge --model " + q(llama_dir() + "/model") + " --adapter " +
                            q(llama_dir() + "/adapters/qv-r4") + " --out " + q(out));
  expect_clean_error(r, {"merged.gguf"});
  EXPECT_FALSE(exists(out));
}

TEST_F(CliErrors, ChatTemplateOfWrongType) {
  NEED_FIXTURES();
  std::string m = copy_model();
  json cfg = json::parse(read_file(m + "/tokenizer_config.json"));
  cfg["chat_template"] = 42;
  write_file(m + "/tokenizer_config.json", cfg.dump());
  CliRun r = run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  expect_clean_error(r, {"tokenizer_config.json"});
}

}  // namespace
