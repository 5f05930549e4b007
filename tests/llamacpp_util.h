// Shared helpers of the tests that compare lowrank with llama.cpp (node-llama-cpp): where the
// cached downloads are, and scoring token ids with scripts/llamacpp_score.mjs.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "proc_util.h"

namespace llamacpp_test {

inline std::string cache_dir() {
  if (const char* c = std::getenv("LOWRANK_CACHE"); c && *c) return c;
  if (const char* h = std::getenv("HOME")) return std::string(h) + "/.cache/lowrank";
  return "";
}

inline std::string tokenizers_dir() { return cache_dir() + "/tokenizers"; }

// The folder holding node_modules/node-llama-cpp (same order as scripts/llamacpp_score.mjs).
inline std::string node_llama_cpp_prefix() {
  std::vector<std::string> c;
  if (const char* e = std::getenv("LOWRANK_NODE_LLAMA_CPP"); e && *e) c.push_back(e);
  c.push_back(cache_dir() + "/node-llama-cpp");
  for (const std::string& d : c)
    if (std::filesystem::exists(d + "/node_modules/node-llama-cpp/package.json")) return d;
  return "";
}

inline bool have_node() { return run_process({"node", "--version"}, "", "").rc == 0; }

// "" when llama.cpp can be run, else what is missing.
inline std::string missing_llamacpp() {
  if (!have_node()) return "Node.js (node) is not in PATH";
  if (node_llama_cpp_prefix().empty()) return "node-llama-cpp is missing (scripts/fetch-node-llama-cpp)";
  return "";
}

inline std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Scores records of ids with llama.cpp (teacher forcing, F32 KV cache, no flash attention)
// and returns scripts/llamacpp_score.mjs's JSON; `error` gets stderr on failure.
inline nlohmann::json llamacpp_score(const std::string& gguf, const std::vector<std::vector<int32_t>>& records,
                                     const std::string& work, std::string& error,
                                     const std::vector<std::string>& loras = {}, int top = 5) {
  const std::string ids = work + "/ids.json", out = work + "/llamacpp.stdout", err = work + "/llamacpp.stderr";
  std::ofstream(ids) << nlohmann::json(records).dump();
  std::vector<std::string> argv = {"LOWRANK_NODE_LLAMA_CPP=" + node_llama_cpp_prefix(), "node",
                                   std::string(LOWRANK_SOURCE_DIR) + "/scripts/llamacpp_score.mjs",
                                   "--model", gguf, "--ids", ids, "--exact", "--top", std::to_string(top)};
  for (const std::string& l : loras) {
    argv.push_back("--lora");
    argv.push_back(l);
  }
  const ProcResult r = run_process(argv, out, err, "", 600);
  if (r.rc != 0) {
    error = "llama.cpp scoring failed (exit " + std::to_string(r.rc) + "): " + slurp(err);
    return nullptr;
  }
  try {
    return nlohmann::json::parse(slurp(out));
  } catch (const std::exception& e) {
    error = std::string("llama.cpp scoring printed no JSON: ") + e.what();
    return nullptr;
  }
}

}  // namespace llamacpp_test
