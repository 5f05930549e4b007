// Helpers for tests that run the lowrank command line (no shell: see proc_util.h) and check
// its error contract, on writable copies of the tiny fixture model.
#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fixture_util.h"
#include "proc_util.h"

namespace cli_test {

using json = nlohmann::json;


inline std::string cli_path() { return std::string(LOWRANK_BINARY_DIR) + "/lowrank"; }
inline std::string llama_dir() { return fixtures_dir() + "/tiny-llama"; }

inline bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

inline void write_file(const std::string& p, const std::string& bytes) {
  std::remove(p.c_str());  // fixture copies may be read-only
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << p;
}

inline void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  write_file(p, std::string(b.begin(), b.end()));
}

// Quotes one word for split_words (the quoting /bin/sh would read the same way).
inline std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CliRun {
  int rc = -1;
  std::string out, err;
  std::vector<std::string> err_lines() const {
    std::vector<std::string> lines;
    std::istringstream is(err);
    for (std::string l; std::getline(is, l);) lines.push_back(l);
    return lines;
  }
};

// Runs the CLI in `dir` with `args` (words quoted with q(), split without a shell) and
// captures exit code, stdout and stderr; a run past timeout_s is killed (rc 137).
inline CliRun run_cli(const std::string& dir, const std::string& args, double timeout_s = 600) {
  const std::string out = dir + "/cli.stdout", err = dir + "/cli.stderr";
  std::vector<std::string> argv = split_words(args);
  argv.insert(argv.begin(), cli_path());
  CliRun r;
  r.rc = run_process(argv, out, err, dir, timeout_s).rc;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// The error contract. `needles`: the message must contain at least one of them (the file or
// tensor at fault). `info_lines_ok`: commands that print progress to stderr before failing
// (train) may have earlier lines, but the error must still be a single, last line.
inline void expect_clean_error(const CliRun& r, std::initializer_list<const char*> needles, bool info_lines_ok = false) {
  SCOPED_TRACE("stderr was:\n" + r.err);
  EXPECT_EQ(r.rc, 2);
  for (const char* bad : {"terminate called", "Sanitizer", "runtime error:", "Segmentation", "Aborted", "what():"})
    EXPECT_EQ(r.err.find(bad), std::string::npos) << "stderr contains '" << bad << "'";
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n') << "error line must end with a newline";
  std::vector<std::string> lines = r.err_lines();
  ASSERT_FALSE(lines.empty());
  if (!info_lines_ok) {
    EXPECT_EQ(lines.size(), 1u) << "stderr must be exactly one line";
  }
  const std::string& last = lines.back();
  EXPECT_EQ(last.rfind("lowrank: error: ", 0), 0u) << last;
  int n_errors = 0;
  for (const std::string& l : lines) n_errors += l.rfind("lowrank: error:", 0) == 0;
  EXPECT_EQ(n_errors, 1);
  bool named = false;
  for (const char* n : needles) named = named || last.find(n) != std::string::npos;
  std::string want;
  for (const char* n : needles) want += std::string(want.empty() ? "" : " or ") + "'" + n + "'";
  EXPECT_TRUE(named) << "error line does not name " << want << ": " << last;
}

// ------------------------------------------------------------------ safetensors editing

struct Safetensors {
  json header;       // parsed header, "__metadata__" included
  std::string data;  // the data section, unchanged
};

inline Safetensors st_split(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {json::parse(bytes.substr(8, size_t(n))), bytes.substr(8 + size_t(n))};
}

inline std::string st_join(const Safetensors& s) {
  std::string h = s.header.dump();
  while (h.size() % 8) h += ' ';
  uint64_t n = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + h + s.data;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(exists(cli_path())) << cli_path() << " is missing: build the lowrank target first";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = temp_dir(std::string("cli-") + info->test_suite_name() + "-" + info->name());
  }
  bool have_fixtures() const { return exists(llama_dir() + "/model/model.safetensors"); }
  // A writable copy of the tiny llama model dir at dir_/name.
  std::string copy_model(const std::string& name = "model") {
    std::string d = dir_ + "/" + name;
    ::mkdir(d.c_str(), 0755);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
      write_file(d + "/" + f, read_file(llama_dir() + "/model/" + f));
    return d;
  }
  std::string copy_adapter(const std::string& name) {
    std::string d = dir_ + "/" + name;
    ::mkdir(d.c_str(), 0755);
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
      write_file(d + "/" + f, read_file(llama_dir() + "/adapters/qv-r4/" + f));
    return d;
  }
  std::string good_data() {
    std::string p = dir_ + "/data.jsonl";
    write_file(p, "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n{\"text\": \"Hello world\"}\n");
    return p;
  }
  // Edits the model copy's safetensors header and runs eval on it.
  CliRun eval_with_header_edit(const std::function<void(json&)>& edit) {
    std::string m = copy_model();
    Safetensors s = st_split(read_file(m + "/model.safetensors"));
    edit(s.header);
    write_file(m + "/model.safetensors", st_join(s));
    return run_cli(dir_, "eval --model " + q(m) + " --data " + q(good_data()));
  }
  std::string dir_;
};

#define NEED_FIXTURES()                                                            \
  do {                                                                             \
    if (!have_fixtures()) GTEST_SKIP() << "fixtures not found at " << llama_dir(); \
  } while (0)


}  // namespace cli_test
