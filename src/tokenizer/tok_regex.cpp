#include "tokenizer/tok_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdexcept>

#include "tokenizer/tok_unicode.h"

namespace lowrank::tok {

namespace {
std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof(buf));
  if (n < 0) return "PCRE2 error " + std::to_string(code);
  return std::string(reinterpret_cast<const char*>(buf), size_t(n));
}

struct MatchData {
  pcre2_match_data* md;
  explicit MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!md) throw std::bad_alloc();
  }
  ~MatchData() { pcre2_match_data_free(md); }
};
}  // namespace

Regex::Regex(const std::string& pattern, bool literal) {
  if (literal) literal_ = pattern;
  int err = 0;
  PCRE2_SIZE erroff = 0;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
  if (literal) opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL;  // UCP is not allowed with LITERAL
  if (!is_valid_utf8(pattern)) throw std::invalid_argument("pattern is not valid UTF-8");
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err,
                                   &erroff, nullptr);
  if (!code) throw std::invalid_argument(pcre2_message(err) + " at offset " + std::to_string(erroff));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  pcre2_match_context* mctx = pcre2_match_context_create(nullptr);
  if (!mctx) {
    pcre2_code_free(code);
    throw std::bad_alloc();
  }
  pcre2_set_match_limit(mctx, 20000000);
  pcre2_set_depth_limit(mctx, 100000);
  pcre2_set_heap_limit(mctx, 256 * 1024);  // KiB
  mctx_ = mctx;
}

Regex::~Regex() {
  pcre2_match_context_free(static_cast<pcre2_match_context*>(mctx_));
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

static int run_match(const pcre2_code* code, pcre2_match_context* mctx, bool jit, std::string_view s, size_t start,
                     uint32_t opts, pcre2_match_data* md) {
  auto subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  int rc = pcre2_match(code, subj, s.size(), start, opts | PCRE2_NO_UTF_CHECK | (jit ? 0 : PCRE2_NO_JIT), md, mctx);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    // The JIT stack is small by default; the interpreter keeps its backtracking on the heap.
    rc = pcre2_match(code, subj, s.size(), start, opts | PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, mctx);
  }
  return rc;
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  if (!literal_.empty()) {
    size_t pos = 0;
    while (true) {
      size_t hit = s.find(literal_, pos);
      if (hit == std::string_view::npos) return;
      out.emplace_back(hit, hit + literal_.size());
      pos = hit + literal_.size();
    }
  }
  auto code = static_cast<const pcre2_code*>(code_);
  auto mctx = static_cast<pcre2_match_context*>(mctx_);
  MatchData md(code);
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = run_match(code, mctx, jit_, s, pos, 0, md.md);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw std::runtime_error("regex match failed: " + pcre2_message(rc));
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.md);
    size_t a = ov[0], b = ov[1];
    if (a > s.size() || b > s.size() || b < a) break;  // \K tricks can yield odd ranges
    if (out.empty() || a >= out.back().second) out.emplace_back(a, b);
    size_t next = b > a ? b : b + (b < s.size() ? utf8_seq_len((unsigned char)s[b]) : 1);
    if (next <= pos) next = pos + (pos < s.size() ? utf8_seq_len((unsigned char)s[pos]) : 1);
    pos = next;
  }
}

bool Regex::matches_at(std::string_view s, size_t pos) const {
  auto code = static_cast<const pcre2_code*>(code_);
  MatchData md(code);
  int rc = run_match(code, static_cast<pcre2_match_context*>(mctx_), jit_, s, pos, PCRE2_ANCHORED, md.md);
  return rc >= 0;
}

}  // namespace lowrank::tok
