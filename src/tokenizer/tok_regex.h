// Thin PCRE2 wrapper (UTF + UCP, JIT when available) used by the tokenizer pipeline.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowrank::tok {

class Regex {
 public:
  // Compiles `pattern` (a literal string when `literal`). Throws std::invalid_argument with
  // PCRE2's message when the pattern does not compile.
  Regex(const std::string& pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping matches (byte offsets) in a valid UTF-8 string, left to right. After an
  // empty match the search resumes one character further. Throws std::runtime_error when
  // PCRE2 gives up (match/depth limit).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  // Whether the pattern matches at s[pos] exactly (anchored).
  bool matches_at(std::string_view s, size_t pos) const;

 private:
  std::string literal_;    // non-empty: plain substring search instead of PCRE2
  void* code_ = nullptr;   // pcre2_code_8*
  void* mctx_ = nullptr;   // pcre2_match_context_8*
  bool jit_ = false;
};

}  // namespace lowrank::tok
