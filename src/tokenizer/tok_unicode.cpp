#include "tokenizer/tok_unicode.h"

#include <algorithm>
#include <array>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace lowrank::tok {

uint32_t next_cp(std::string_view s, size_t& i) {
  unsigned char c = (unsigned char)s[i];
  size_t n = utf8_seq_len(c);
  if (n == 1 || i + n > s.size()) {
    i++;
    return c;
  }
  uint32_t cp = n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
  i += n;
  return cp;
}

uint32_t prev_cp(std::string_view s, size_t& i) {
  size_t j = i;
  while (j > 0) {
    j--;
    if (((unsigned char)s[j] & 0xC0) != 0x80) break;
  }
  size_t k = j;
  uint32_t cp = next_cp(s, k);
  i = j;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

// Number of bytes of a valid sequence starting at s[i], or -(bytes of the maximal invalid
// subpart) when invalid (always at least 1).
static long utf8_check(std::string_view s, size_t i) {
  unsigned char c = (unsigned char)s[i];
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (size_t k = 1; k <= need; k++) {
    if (i + k >= s.size()) return -(long)k;
    unsigned char d = (unsigned char)s[i + k];
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (d < l || d > h) return -(long)k;
  }
  return (long)need + 1;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if ((unsigned char)s[i] < 0x80) {
      i++;
      continue;
    }
    long n = utf8_check(s, i);
    if (n < 0) return false;
    i += (size_t)n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    long n = utf8_check(s, i);
    if (n > 0) {
      out.append(s.data() + i, (size_t)n);
      i += (size_t)n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += (size_t)(-n);
    }
  }
  return out;
}

bool is_whitespace(uint32_t cp) {
  if (cp <= 0x7F) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

using namespace unidata;

uint32_t ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  size_t lo = 0, hi = kCccCount;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kCcc[mid].last < cp) lo = mid + 1;
    else hi = mid;
  }
  if (lo < kCccCount && kCcc[lo].first <= cp) return kCcc[lo].value;
  return 0;
}

const Decomp* find_decomp(const Decomp* table, size_t n, uint32_t cp) {
  const Decomp* end = table + n;
  const Decomp* it = std::lower_bound(table, end, cp, [](const Decomp& d, uint32_t c) { return d.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

constexpr uint32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
constexpr uint32_t LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

void decompose_cp(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp >= SBase && cp < SBase + SCount) {
    uint32_t s = cp - SBase;
    out.push_back(LBase + s / NCount);
    out.push_back(VBase + (s % NCount) / TCount);
    if (s % TCount) out.push_back(TBase + s % TCount);
    return;
  }
  if (cp < 0xA0) {
    out.push_back(cp);
    return;
  }
  const Decomp* d = compat ? find_decomp(kDecompCompat, kDecompCompatCount, cp)
                           : find_decomp(kDecompCanon, kDecompCanonCount, cp);
  if (!d) {
    out.push_back(cp);
    return;
  }
  for (uint32_t k = 0; k < d->len; k++) out.push_back(kDecompData[d->offset + k]);
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
    return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
    return a + (b - TBase);
  const Composition* end = kCompositions + kCompositionCount;
  const Composition* it = std::lower_bound(kCompositions, end, std::make_pair(a, b),
                                           [](const Composition& c, const std::pair<uint32_t, uint32_t>& k) {
                                             return c.first != k.first ? c.first < k.first : c.second < k.second;
                                           });
  if (it != end && it->first == a && it->second == b) return it->composite;
  return 0;
}

}  // namespace

std::string normalize(std::string_view s, NormForm form) {
  bool ascii = true;
  for (char c : s)
    if ((unsigned char)c >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return std::string(s);
  bool compat = form == NormForm::NFKC || form == NormForm::NFKD;
  bool compose = form == NormForm::NFC || form == NormForm::NFKC;
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) decompose_cp(next_cp(s, i), compat, cps);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  std::vector<uint32_t> ccc(cps.size());
  for (size_t k = 0; k < cps.size(); k++) ccc[k] = ccc_of(cps[k]);
  for (size_t k = 0; k < cps.size();) {
    if (ccc[k] == 0) {
      k++;
      continue;
    }
    size_t e = k;
    while (e < cps.size() && ccc[e] != 0) e++;
    if (e - k > 1) {
      std::vector<std::pair<uint32_t, uint32_t>> run;
      for (size_t j = k; j < e; j++) run.emplace_back(ccc[j], cps[j]);
      std::stable_sort(run.begin(), run.end(), [](auto& x, auto& y) { return x.first < y.first; });
      for (size_t j = k; j < e; j++) {
        ccc[j] = run[j - k].first;
        cps[j] = run[j - k].second;
      }
    }
    k = e;
  }
  if (compose && !cps.empty()) {
    // Canonical composition algorithm (UAX #15).
    size_t starter = SIZE_MAX;
    std::vector<uint32_t> out;
    std::vector<uint32_t> outc;
    out.reserve(cps.size());
    outc.reserve(cps.size());
    for (size_t k = 0; k < cps.size(); k++) {
      uint32_t c = cps[k], cc = ccc[k];
      if (starter != SIZE_MAX) {
        uint32_t last_cc = outc.size() - 1 == starter ? 0 : outc.back();
        bool blocked = (out.size() - 1 != starter) && (last_cc == 0 || last_cc >= cc);
        if (!blocked) {
          uint32_t comp = compose_pair(out[starter], c);
          if (comp) {
            out[starter] = comp;
            continue;
          }
        }
      }
      if (cc == 0) starter = out.size();
      out.push_back(c);
      outc.push_back(cc);
    }
    cps.swap(out);
  }
  std::string res;
  res.reserve(s.size() + 8);
  for (uint32_t c : cps) append_utf8(res, c);
  return res;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) {
      out.push_back((c >= 'A' && c <= 'Z') ? char(c + 32) : char(c));
      i++;
      continue;
    }
    uint32_t cp = next_cp(s, i);
    const Decomp* d = find_decomp(kLower, kLowerCount, cp);
    if (!d) {
      append_utf8(out, cp);
    } else {
      for (uint32_t k = 0; k < d->len; k++) append_utf8(out, kLowerData[d->offset + k]);
    }
  }
  return out;
}

bool is_mark(uint32_t cp) {
  if (cp < 0x300) return false;
  size_t lo = 0, hi = kMarkCount;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kMarks[mid].last < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < kMarkCount && kMarks[lo].first <= cp;
}

std::string strip_marks(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t st = i;
    uint32_t cp = next_cp(s, i);
    if (!is_mark(cp)) out.append(s.data() + st, i - st);
  }
  return out;
}

namespace {
struct ByteTables {
  std::array<std::string, 256> b2u;
  std::array<int16_t, 324> u2b;
  ByteTables() {
    u2b.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; b++) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      append_utf8(b2u[b], cp);
      u2b[cp] = int16_t(b);
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_tables().b2u[b]; }

int unicode_to_byte(uint32_t cp) {
  if (cp >= 324) return -1;
  return byte_tables().u2b[cp];
}

}  // namespace lowrank::tok
