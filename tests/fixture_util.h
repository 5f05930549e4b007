// Helpers for tests that compare against the Hugging Face reference fixtures.
#pragma once
#include <dirent.h>

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
  std::system(("rm -rf '" + d + "'").c_str());
  ::mkdir(d.c_str(), 0755);
  return d;
}
