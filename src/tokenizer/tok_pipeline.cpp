// Runtime of normalizers, pre-tokenizers and decoders, following the semantics of the
// corresponding Hugging Face `tokenizers` components.
#include <algorithm>

#include "tokenizer/tok_impl.h"

namespace lowrank::tok {

namespace {

// ((start, end), is_match) covering a whole string, like HF Pattern::find_matches.
using Matches = std::vector<std::pair<std::pair<size_t, size_t>, bool>>;

void regex_matches(const Regex& re, std::string_view s, bool invert, Matches& out) {
  out.clear();
  if (s.empty()) {
    out.push_back({{0, 0}, false});
    return;
  }
  std::vector<std::pair<size_t, size_t>> found;
  re.find_all(s, found);
  size_t prev = 0;
  for (auto [a, b] : found) {
    if (prev != a) out.push_back({{prev, a}, invert});
    out.push_back({{a, b}, !invert});
    prev = b;
  }
  if (prev != s.size()) out.push_back({{prev, s.size()}, invert});
}

// Every character satisfying `pred` is its own match (HF's `Fn(char) -> bool` pattern).
template <typename Pred>
void char_matches(std::string_view s, Pred pred, Matches& out) {
  out.clear();
  if (s.empty()) {
    out.push_back({{0, 0}, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = next_cp(s, i);
    if (pred(cp)) {
      if (last < b) out.push_back({{last, b}, false});
      out.push_back({{b, i}, true});
      last = i;
    }
  }
  if (last < s.size()) out.push_back({{last, s.size()}, false});
}

// HF NormalizedString::split followed by PreTokenizedString's removal of empty pieces.
void split_piece(const Piece& p, Matches& m, Behavior behavior, std::vector<Piece>& out) {
  // (range, remove)
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> splits;
  switch (behavior) {
    case Behavior::Removed:
      splits = m;
      break;
    case Behavior::Isolated:
      for (auto& [r, is_match] : m) splits.push_back({r, false});
      break;
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (auto& [r, is_match] : m) {
        if (is_match == prev_match && !splits.empty()) splits.back().first.second = r.second;
        else splits.push_back({r, false});
        prev_match = is_match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& [r, is_match] : m) {
        if (is_match && !prev_match && !splits.empty()) splits.back().first.second = r.second;
        else splits.push_back({r, false});
        prev_match = is_match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = m.size(); k-- > 0;) {
        auto& [r, is_match] = m[k];
        if (is_match && !prev_match && !splits.empty()) splits.back().first.first = r.first;
        else splits.push_back({r, false});
        prev_match = is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (auto& [r, remove] : splits) {
    if (remove || r.second <= r.first) continue;
    out.push_back(Piece{p.text.substr(r.first, r.second - r.first), p.at_start && r.first == 0});
  }
}

void replace_matches(std::string& s, const Regex& re, const std::string& content) {
  std::vector<std::pair<size_t, size_t>> found;
  re.find_all(s, found);
  if (found.empty()) return;
  std::string out;
  out.reserve(s.size() + found.size() * content.size());
  size_t prev = 0;
  for (auto [a, b] : found) {
    out.append(s, prev, a - prev);
    out.append(content);
    prev = b;
  }
  out.append(s, prev, std::string::npos);
  s.swap(out);
}

void replace_char(std::string& s, char from, const std::string& to) {
  if (s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size() + 16);
  for (char c : s) {
    if (c == from) out += to;
    else out.push_back(c);
  }
  s.swap(out);
}

bool starts_with_cp(const std::string& s, uint32_t cp) {
  if (s.empty()) return false;
  size_t i = 0;
  return next_cp(s, i) == cp;
}

std::string cp_str(uint32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

bool is_ascii_punct(uint32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

const Regex& punct_regex() {
  static const Regex re("^\\p{P}", false);
  return re;
}

bool is_punct(uint32_t cp) {
  if (cp < 0x80) return is_ascii_punct(cp);
  std::string s = cp_str(cp);
  return punct_regex().matches_at(s, 0);
}

const Regex& whitespace_regex() {
  static const Regex re("\\w+|[^\\w\\s]+", false);
  return re;
}

const Regex& numeric_regex() {
  static const Regex re("\\p{N}", false);
  return re;
}

}  // namespace

void Normalizer::apply(std::string& s) const {
  switch (kind) {
    case Kind::Sequence:
      for (const auto& c : children) c.apply(s);
      break;
    case Kind::Prepend:
      if (!s.empty()) s.insert(0, text);
      break;
    case Kind::Append:
      if (!s.empty()) s.append(text);
      break;
    case Kind::Replace:
      replace_matches(s, *re, text);
      break;
    case Kind::NF:
      s = normalize(s, form);
      break;
    case Kind::Lowercase:
      s = lowercase(s);
      break;
    case Kind::StripAccents:
      s = strip_marks(s);
      break;
    case Kind::Strip: {
      size_t b = 0, e = s.size();
      if (left) {
        while (b < e) {
          size_t i = b;
          if (!is_whitespace(next_cp(s, i))) break;
          b = i;
        }
      }
      if (right) {
        while (e > b) {
          size_t i = e;
          if (!is_whitespace(prev_cp(s, i))) break;
          e = i;
        }
      }
      s = s.substr(b, e - b);
      break;
    }
    case Kind::ByteLevel: {
      std::string out;
      out.reserve(s.size() * 2);
      for (unsigned char c : s) out += byte_to_unicode(c);
      s.swap(out);
      break;
    }
  }
}

void PreTokenizer::apply(std::vector<Piece>& pieces) const {
  if (kind == Kind::Sequence) {
    for (const auto& c : children) c.apply(pieces);
    return;
  }
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  Matches m;
  switch (kind) {
    case Kind::Sequence:
      break;
    case Kind::ByteLevel:
      for (auto& p : pieces) {
        if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) {
          std::string t(1, ' ');
          t += p.text;
          p.text.swap(t);
        }
        if (use_regex) {
          regex_matches(*re, p.text, false, m);
          split_piece(p, m, Behavior::Isolated, out);
        } else if (!p.text.empty()) {
          out.push_back(std::move(p));
        }
      }
      for (auto& p : out) {
        std::string mapped;
        mapped.reserve(p.text.size() * 2);
        for (unsigned char c : p.text) mapped += byte_to_unicode(c);
        p.text.swap(mapped);
      }
      break;
    case Kind::Split:
      for (auto& p : pieces) {
        regex_matches(*re, p.text, invert, m);
        split_piece(p, m, behavior, out);
      }
      break;
    case Kind::Metaspace: {
      std::string rep = cp_str(replacement);
      for (auto& p : pieces) {
        replace_char(p.text, ' ', rep);
        if (prepend == PrependScheme::Always || (prepend == PrependScheme::First && p.at_start)) {
          if (!starts_with_cp(p.text, replacement)) p.text.insert(0, rep);
        }
        if (split) {
          uint32_t r = replacement;
          char_matches(p.text, [r](uint32_t c) { return c == r; }, m);
          split_piece(p, m, Behavior::MergedWithNext, out);
        } else if (!p.text.empty()) {
          out.push_back(std::move(p));
        }
      }
      break;
    }
    case Kind::Digits:
      for (auto& p : pieces) {
        regex_matches(numeric_regex(), p.text, false, m);
        split_piece(p, m, behavior, out);
      }
      break;
    case Kind::Whitespace:
      for (auto& p : pieces) {
        regex_matches(whitespace_regex(), p.text, true, m);
        split_piece(p, m, Behavior::Removed, out);
      }
      break;
    case Kind::WhitespaceSplit:
      for (auto& p : pieces) {
        char_matches(p.text, is_whitespace, m);
        split_piece(p, m, Behavior::Removed, out);
      }
      break;
    case Kind::Punctuation:
      for (auto& p : pieces) {
        char_matches(p.text, is_punct, m);
        split_piece(p, m, behavior, out);
      }
      break;
    case Kind::Bert: {
      std::vector<Piece> tmp;
      for (auto& p : pieces) {
        char_matches(p.text, is_whitespace, m);
        split_piece(p, m, Behavior::Removed, tmp);
      }
      for (auto& p : tmp) {
        char_matches(p.text, is_punct, m);
        split_piece(p, m, Behavior::Isolated, out);
      }
      break;
    }
    case Kind::CharDelimiter: {
      uint32_t d = replacement;
      for (auto& p : pieces) {
        char_matches(p.text, [d](uint32_t c) { return c == d; }, m);
        split_piece(p, m, Behavior::Removed, out);
      }
      break;
    }
  }
  pieces.swap(out);
}

namespace {
int hex_val(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xXX>" -> byte (Rust u8::from_str_radix on the two characters, which also takes "+X").
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int lo = hex_val(t[4]);
  if (lo < 0) return -1;
  if (t[3] == '+') return lo;
  int hi = hex_val(t[3]);
  if (hi < 0) return -1;
  return hi * 16 + lo;
}
}  // namespace

void Decoder::decode_chain(std::vector<std::string>& tokens) const {
  switch (kind) {
    case Kind::Sequence:
      for (const auto& c : children) c.decode_chain(tokens);
      break;
    case Kind::ByteLevel: {
      std::string bytes;
      for (const auto& t : tokens) {
        std::string mapped;
        mapped.reserve(t.size());
        bool ok = true;
        size_t i = 0;
        while (i < t.size()) {
          int b = unicode_to_byte(next_cp(t, i));
          if (b < 0) {
            ok = false;
            break;
          }
          mapped.push_back(char(b));
        }
        bytes += ok ? mapped : t;
      }
      tokens.assign(1, utf8_lossy(bytes));
      break;
    }
    case Kind::Metaspace:
      for (size_t k = 0; k < tokens.size(); k++) {
        const std::string& t = tokens[k];
        std::string out;
        out.reserve(t.size());
        size_t i = 0;
        while (i < t.size()) {
          size_t b = i;
          uint32_t cp = next_cp(t, i);
          if (cp == ch) {
            if (!(k == 0 && prepend != PrependScheme::Never)) out.push_back(' ');
          } else {
            out.append(t, b, i - b);
          }
        }
        tokens[k].swap(out);
      }
      break;
    case Kind::Replace:
      for (auto& t : tokens) replace_matches(t, *re, text);
      break;
    case Kind::ByteFallback: {
      std::vector<std::string> out;
      out.reserve(tokens.size());
      std::string pending;
      auto flush = [&]() {
        if (pending.empty()) return;
        if (is_valid_utf8(pending)) {
          out.push_back(pending);
        } else {
          for (size_t k = 0; k < pending.size(); k++) out.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
      };
      for (auto& t : tokens) {
        int b = byte_token_value(t);
        if (b >= 0) {
          pending.push_back(char(b));
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens.swap(out);
      break;
    }
    case Kind::Fuse: {
      size_t total = 0;
      for (auto& t : tokens) total += t.size();
      std::string all;
      all.reserve(total);
      for (auto& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case Kind::Strip:
      for (auto& t : tokens) {
        // Cut up to `start` leading and `stop` trailing `ch` characters (never overlapping).
        size_t bs = 0, n_start = 0;
        while (n_start < start && bs < t.size()) {
          size_t i = bs;
          if (next_cp(t, i) != ch) break;
          bs = i;
          n_start++;
        }
        size_t be = t.size(), n_stop = 0;
        while (n_stop < stop && be > bs) {
          size_t i = be;
          if (prev_cp(t, i) != ch) break;
          be = i;
          n_stop++;
        }
        if (bs > 0 || be < t.size()) t = t.substr(bs, be - bs);
      }
      break;
    case Kind::BPE:
      for (size_t k = 0; k < tokens.size(); k++) {
        std::string& t = tokens[k];
        if (text.empty()) continue;
        std::string rep = k + 1 == tokens.size() ? "" : " ";
        std::string out;
        size_t pos = 0;
        while (true) {
          size_t f = t.find(text, pos);
          if (f == std::string::npos) break;
          out.append(t, pos, f - pos);
          out += rep;
          pos = f + text.size();
        }
        out.append(t, pos, std::string::npos);
        t.swap(out);
      }
      break;
  }
}

}  // namespace lowrank::tok
