// One exception type for every user-facing failure: it carries the file/tensor/shape
// context in its message; the CLI prints it as one line and exits with code 2.
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>
#include <vector>
#include <cstdint>

namespace lowrank {

struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Builds a message from any streamable parts: fail("file ", path, ": bad header").
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace lowrank
