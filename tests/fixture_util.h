// Helpers for tests that compare against the Hugging Face reference fixtures.
#pragma once
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

inline std::string fixtures_dir() { return std::string(LOWRANK_SOURCE_DIR) + "/../shared/fixtures/hf"; }

inline std::vector<std::string> fixture_models() {
  std::vector<std::string> out;
  DIR* d = opendir(fixtures_dir().c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n[0] == '.') continue;
    std::ifstream f(fixtures_dir() + "/" + n + "/expected.json");
    if (f) out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

inline nlohmann::json fixture_expected(const std::string& model) {
  std::ifstream f(fixtures_dir() + "/" + model + "/expected.json");
  return nlohmann::json::parse(f);
}

inline std::string temp_dir(const std::string& name) {
  std::string d = std::string(LOWRANK_BINARY_DIR) + "/test-tmp";
  ::mkdir(d.c_str(), 0755);
  d += "/" + name;
  std::error_code ec;
  std::filesystem::remove_all(d, ec);
  ::mkdir(d.c_str(), 0755);
  return d;
}

// The TinyLlama 2-bit GGUF fetched by scripts/fetch-tinyllama, looked up in $LOWRANK_CACHE and
// $HOME/.cache/lowrank; "" when absent (tests that need it skip).
inline std::string tinyllama_path() {
  const char* name = "tinyllama-1.1b-chat-v1.0.IQ2_XXS.gguf";
  std::vector<std::string> dirs;
  if (const char* c = std::getenv("LOWRANK_CACHE")) dirs.push_back(c);
  if (const char* h = std::getenv("HOME")) dirs.push_back(std::string(h) + "/.cache/lowrank");
  for (const std::string& d : dirs) {
    std::string p = d + "/" + name;
    if (std::ifstream(p).good()) return p;
  }
  return "";
}
