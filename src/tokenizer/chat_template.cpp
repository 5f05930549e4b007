// Jinja2-subset interpreter for chat templates. See chat_template.h for the supported subset.
//
// Pipeline: source (newlines normalized) -> Lexer (text + tag tokens, whitespace control applied
// while lexing, exactly like Jinja's lexer does) -> Parser (AST of statements/expressions;
// unknown filters/tests/tags are rejected here) -> Interp (tree-walking evaluator writing into
// a stack of output sinks). String values carry "provenance" ranges so that the output bytes
// that came from an assistant message's content can be located (render_with_spans).
#include "tokenizer/chat_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/error.h"

namespace lowrank {
namespace {

constexpr int kMaxParseDepth = 128;       // parser recursion (parens, unary chains, ...)
constexpr int kMaxExprDepth = 128;        // depth of an expression tree
constexpr int kMaxBlockNesting = 64;      // nested {% if %}/{% for %}/... blocks
constexpr int kMaxRecursion = 1000;       // evaluator recursion (exec + eval + macro calls)
constexpr int kMaxMacroDepth = 32;        // nested macro calls
constexpr size_t kMaxSteps = 2'000'000;   // executed statements + loop iterations per render
constexpr size_t kMaxString = size_t(256) << 20;  // any string, including the output
constexpr int64_t kMaxRange = 100'000;            // elements produced by range() or list * n
constexpr uint32_t kGenTag = 0xffffffffu;          // provenance id of {% generation %} ranges

#define NOINLINE __attribute__((noinline))

// Formats "chat template: <what>, at line L col C" for a byte offset in the source.
[[noreturn]] void fail_at(const std::string& src, size_t pos, const std::string& what) {
  size_t line = 1, col = 1;
  for (size_t k = 0; k < pos && k < src.size(); k++) {
    if (src[k] == '\n') {
      line++;
      col = 1;
    } else if ((uint8_t(src[k]) & 0xC0) != 0x80) {
      col++;
    }
  }
  fail("chat template: ", what, ", at line ", line, " col ", col);
}

// ---------------------------------------------------------------------------------------------
// Values

struct Prov {  // bytes [b, e) of a string came from the content of message `msg`
  uint32_t msg;
  size_t b, e;
};

struct Value;
struct Dict;
struct Stmt;
using List = std::vector<Value>;

enum class VT : uint8_t { Undefined, None, Bool, Int, Float, Str, List, Dict, Macro, Builtin };

struct Value {
  VT t = VT::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;           // Str: the text; Undefined: why (error hint); Builtin: its name
  std::vector<Prov> prov;  // Str only
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  const Stmt* macro = nullptr;
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, like Python dicts
  bool is_namespace = false;
  const Value* find(const std::string& k) const {
    for (auto& kv : items)
      if (kv.first == k) return &kv.second;
    return nullptr;
  }
  void set(const std::string& k, Value v) {
    for (auto& kv : items)
      if (kv.first == k) {
        kv.second = std::move(v);
        return;
      }
    items.emplace_back(k, std::move(v));
  }
};

Value v_undef(std::string why) {
  Value v;
  v.s = std::move(why);
  return v;
}
Value v_none() {
  Value v;
  v.t = VT::None;
  return v;
}
Value v_bool(bool x) {
  Value v;
  v.t = VT::Bool;
  v.b = x;
  return v;
}
Value v_int(int64_t x) {
  Value v;
  v.t = VT::Int;
  v.i = x;
  return v;
}
Value v_float(double x) {
  Value v;
  v.t = VT::Float;
  v.f = x;
  return v;
}
Value v_str(std::string s, std::vector<Prov> prov = {}) {
  Value v;
  v.t = VT::Str;
  v.s = std::move(s);
  v.prov = std::move(prov);
  return v;
}
Value v_list(List l) {
  Value v;
  v.t = VT::List;
  v.list = std::make_shared<List>(std::move(l));
  return v;
}
Value v_dict(std::shared_ptr<Dict> d) {
  Value v;
  v.t = VT::Dict;
  v.dict = std::move(d);
  return v;
}
Value v_builtin(const std::string& name) {
  Value v;
  v.t = VT::Builtin;
  v.s = name;
  return v;
}

const char* type_name(const Value& v) {
  switch (v.t) {
    case VT::Undefined: return "Undefined";
    case VT::None: return "NoneType";
    case VT::Bool: return "bool";
    case VT::Int: return "int";
    case VT::Float: return "float";
    case VT::Str: return "str";
    case VT::List: return "list";
    case VT::Dict: return v.dict->is_namespace ? "Namespace" : "dict";
    case VT::Macro: return "Macro";
    case VT::Builtin: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.t) {
    case VT::Undefined:
    case VT::None: return false;
    case VT::Bool: return v.b;
    case VT::Int: return v.i != 0;
    case VT::Float: return v.f != 0;
    case VT::Str: return !v.s.empty();
    case VT::List: return !v.list->empty();
    case VT::Dict: return !v.dict->items.empty();
    case VT::Macro:
    case VT::Builtin: return true;
  }
  return false;
}

bool is_num(const Value& v) { return v.t == VT::Int || v.t == VT::Float || v.t == VT::Bool; }
bool is_intlike(const Value& v) { return v.t == VT::Int || v.t == VT::Bool; }
double num(const Value& v) { return v.t == VT::Float ? v.f : v.t == VT::Int ? double(v.i) : v.b; }
int64_t ival(const Value& v) { return v.t == VT::Int ? v.i : int64_t(v.b); }

bool equals(const Value& a, const Value& b) {
  if (is_num(a) && is_num(b)) {
    if (is_intlike(a) && is_intlike(b)) return ival(a) == ival(b);
    return num(a) == num(b);
  }
  if (a.t != b.t) return false;
  switch (a.t) {
    case VT::Undefined:
    case VT::None: return true;
    case VT::Str: return a.s == b.s;
    case VT::List: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); k++)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case VT::Dict: {
      if (a.dict == b.dict) return true;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (auto& kv : a.dict->items) {
        const Value* o = b.dict->find(kv.first);
        if (!o || !equals(kv.second, *o)) return false;
      }
      return true;
    }
    case VT::Macro: return a.macro == b.macro;
    case VT::Builtin: return a.s == b.s;
    default: return false;
  }
}

// Provenance of s[b, e) re-based to 0: ranges overlapping the window are clipped; a range that
// contains the whole window, or an empty range inside it, is kept (possibly as an empty range)
// so that even an emptied content keeps its position.
std::vector<Prov> sub_prov(const std::vector<Prov>& prov, size_t b, size_t e) {
  std::vector<Prov> out;
  for (const Prov& p : prov) {
    size_t nb = std::clamp(p.b, b, e), ne = std::clamp(p.e, b, e);
    bool keep = nb < ne || (p.b <= b && e <= p.e) || (p.b == p.e && b <= p.b && p.b <= e);
    if (keep) out.push_back({p.msg, nb - b, ne - b});
  }
  return out;
}

Value substr_v(const Value& v, size_t b, size_t e) {
  return v_str(v.s.substr(b, e - b), sub_prov(v.prov, b, e));
}

void append_prov(std::vector<Prov>& dst, const std::vector<Prov>& src, size_t off) {
  for (const Prov& p : src) dst.push_back({p.msg, p.b + off, p.e + off});
}

// ---------------------------------------------------------------------------------------------
// UTF-8 / Python string helpers (code point semantics for len, indexing, strip).

size_t cp_next(const std::string& s, size_t i) {
  uint8_t c = uint8_t(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) return i + 1;
  for (size_t k = 1; k < n; k++)
    if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return i + 1;
  return i + n;
}

uint32_t cp_decode(const std::string& s, size_t i, size_t j) {
  uint8_t c = uint8_t(s[i]);
  if (j - i == 1) return c;
  uint32_t cp = j - i == 2 ? (c & 0x1F) : j - i == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = i + 1; k < j; k++) cp = (cp << 6) | (uint8_t(s[k]) & 0x3F);
  return cp;
}

// Byte offsets of every code point start, plus s.size() at the end.
std::vector<size_t> cp_bounds(const std::string& s) {
  std::vector<size_t> out;
  out.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); i = cp_next(s, i)) out.push_back(i);
  out.push_back(s.size());
  return out;
}

size_t cp_count(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i = cp_next(s, i)) n++;
  return n;
}

void put_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool py_isspace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Byte range [b, e) left after Python's str.strip/lstrip/rstrip(chars).
std::pair<size_t, size_t> strip_range(const std::string& s, const Value* chars, bool left,
                                      bool right) {
  std::vector<std::string> set;
  bool ws = !chars || chars->t == VT::None || chars->t == VT::Undefined;
  if (!ws)
    for (size_t i = 0; i < chars->s.size();) {
      size_t j = cp_next(chars->s, i);
      set.push_back(chars->s.substr(i, j - i));
      i = j;
    }
  auto strip_me = [&](size_t i, size_t j) {
    if (ws) return py_isspace(cp_decode(s, i, j));
    std::string_view cp(s.data() + i, j - i);
    for (auto& c : set)
      if (cp == c) return true;
    return false;
  };
  std::vector<size_t> bd = cp_bounds(s);
  size_t lo = 0, hi = bd.size() - 1;  // code point indices
  if (left)
    while (lo < hi && strip_me(bd[lo], bd[lo + 1])) lo++;
  if (right)
    while (hi > lo && strip_me(bd[hi - 1], bd[hi])) hi--;
  return {bd[lo], bd[hi]};
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // [-]d[.ddd]e(+|-)XX, shortest round-trip digits
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  size_t epos = sci.find('e');
  int exp = std::atoi(sci.c_str() + epos + 1);
  std::string digits;
  for (size_t k = 0; k < epos; k++)
    if (sci[k] != '.') digits += sci[k];
  int decpt = exp + 1;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) return sign + "0." + std::string(size_t(-decpt), '0') + digits;
    if (size_t(decpt) >= digits.size())
      return sign + digits + std::string(size_t(decpt) - digits.size(), '0') + ".0";
    return sign + digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
  }
  std::string m = digits.substr(0, 1);
  if (digits.size() > 1) m += "." + digits.substr(1);
  char eb[16];
  std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return sign + m + eb;
}

std::string py_repr_str(const std::string& s) {
  bool sq = s.find('\'') != std::string::npos, dq = s.find('"') != std::string::npos;
  char q = (sq && !dq) ? '"' : '\'';
  std::string out(1, q);
  for (char ch : s) {
    uint8_t c = uint8_t(ch);
    if (ch == q || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += ch;
    }
  }
  out += q;
  return out;
}

std::string repr(const Value& v);

// Python str() of a value, as {{ }} prints it.
std::string to_str(const Value& v) {
  switch (v.t) {
    case VT::Undefined: return "";
    case VT::None: return "None";
    case VT::Bool: return v.b ? "True" : "False";
    case VT::Int: return std::to_string(v.i);
    case VT::Float: return py_float(v.f);
    case VT::Str: return v.s;
    case VT::Macro: return "<Macro>";
    case VT::Builtin: return "<function " + v.s + ">";
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.t) {
    case VT::Undefined: return "Undefined";
    case VT::Str: return py_repr_str(v.s);
    case VT::List: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); k++) {
        if (k) out += ", ";
        out += repr((*v.list)[k]);
      }
      return out + "]";
    }
    case VT::Dict: {
      std::string out = v.dict->is_namespace ? "<Namespace {" : "{";
      bool first = true;
      for (auto& kv : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        out += py_repr_str(kv.first) + ": " + repr(kv.second);
      }
      return out + (v.dict->is_namespace ? "}>" : "}");
    }
    default: return to_str(v);
  }
}

// str() that keeps provenance for strings.
Value to_str_v(const Value& v) { return v.t == VT::Str ? v : v_str(to_str(v)); }

// json.dumps-compatible string escaping.
void json_escape(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    uint8_t c = uint8_t(s[i]);
    char b[16];
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\b') {
      out += "\\b";
    } else if (c == '\f') {
      out += "\\f";
    } else if (c < 0x20 || (ensure_ascii && c == 0x7F)) {
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else if (c >= 0x80 && ensure_ascii) {
      size_t j = cp_next(s, i);
      uint32_t cp = j - i == 1 ? 0xFFFD : cp_decode(s, i, j);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        std::snprintf(b, sizeof b, "\\u%04x", cp);
      }
      out += b;
      i = j;
      continue;
    } else {
      out += char(c);
    }
    i++;
  }
  out += '"';
}

struct JsonFmt {
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool pretty = false;
  std::string indent;
  std::string item_sep = ", ", key_sep = ": ";
};

// Returns false (with *bad set) on a value JSON cannot hold.
bool to_json(const Value& v, std::string& out, const JsonFmt& f, int level, const Value** bad) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int k = 0; k < lvl; k++) out += f.indent;
  };
  switch (v.t) {
    case VT::None: out += "null"; return true;
    case VT::Bool: out += v.b ? "true" : "false"; return true;
    case VT::Int: out += std::to_string(v.i); return true;
    case VT::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity")
                                                          : py_float(v.f);
      return true;
    case VT::Str: json_escape(out, v.s, f.ensure_ascii); return true;
    case VT::List: {
      if (v.list->empty()) {
        out += "[]";
        return true;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); k++) {
        if (k) out += f.item_sep;
        if (f.pretty) newline(level + 1);
        if (!to_json((*v.list)[k], out, f, level + 1, bad)) return false;
      }
      if (f.pretty) newline(level);
      out += ']';
      return true;
    }
    case VT::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return true;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (auto& kv : v.dict->items) items.push_back(&kv);
      if (f.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); k++) {
        if (k) out += f.item_sep;
        if (f.pretty) newline(level + 1);
        json_escape(out, items[k]->first, f.ensure_ascii);
        out += f.key_sep;
        if (!to_json(items[k]->second, out, f, level + 1, bad)) return false;
      }
      if (f.pretty) newline(level);
      out += '}';
      return true;
    }
    default: *bad = &v; return false;
  }
}

template <typename J>
Value from_json(const J& j) {
  using T = nlohmann::detail::value_t;
  switch (j.type()) {
    case T::boolean: return v_bool(j.template get<bool>());
    case T::number_integer: return v_int(j.template get<int64_t>());
    case T::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      return u <= uint64_t(std::numeric_limits<int64_t>::max()) ? v_int(int64_t(u))
                                                                 : v_float(double(u));
    }
    case T::number_float: return v_float(j.template get<double>());
    case T::string: return v_str(j.template get<std::string>());
    case T::array: {
      List l;
      for (auto& e : j) l.push_back(from_json(e));
      return v_list(std::move(l));
    }
    case T::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->items.emplace_back(it.key(), from_json(*it));
      return v_dict(std::move(d));
    }
    default: return v_none();
  }
}

// ---------------------------------------------------------------------------------------------
// Lexer

enum class TK : uint8_t { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Str, Int, Float, Op, Eof };

struct Token {
  TK k;
  std::string s;  // Text/Name/Str/Op
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;
};

std::string describe(const Token& t) {
  switch (t.k) {
    case TK::Text: return "template text";
    case TK::VarBegin: return "'{{'";
    case TK::VarEnd: return "'}}'";
    case TK::BlockBegin: return "'{%'";
    case TK::BlockEnd: return "'%}'";
    case TK::Name: return "'" + t.s + "'";
    case TK::Str: return "string literal";
    case TK::Int:
    case TK::Float: return "number";
    case TK::Op: return "'" + t.s + "'";
    case TK::Eof: return "end of template";
  }
  return "?";
}

bool hspace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }
bool anyspace(char c) { return hspace(c) || c == '\n'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(const std::string& src, const ChatTemplateOptions& opt) : src_(src), opt_(opt), n_(src.size()) {}

  std::vector<Token> run() {
    while (true) {
      size_t t = p_;
      while (t + 1 < n_ &&
             !(src_[t] == '{' && (src_[t + 1] == '{' || src_[t + 1] == '%' || src_[t + 1] == '#')))
        t++;
      if (t + 1 >= n_) t = n_;
      char kind = t < n_ ? src_[t + 1] : 0;
      char sign = (t < n_ && t + 2 < n_ && (src_[t + 2] == '-' || src_[t + 2] == '+')) ? src_[t + 2] : 0;
      emit_text(src_.substr(p_, t - p_), p_, kind, sign);
      if (t >= n_) break;
      if (kind == '#')
        comment(t, sign);
      else
        tag(t, kind == '%', sign);
    }
    out_.push_back({TK::Eof, "", 0, 0, n_});
    return std::move(out_);
  }

 private:
  const std::string& src_;
  const ChatTemplateOptions& opt_;
  size_t n_;
  size_t p_ = 0;
  bool line_starting_ = true;  // text at p_ begins a line (start, or a trimmed newline before)
  std::vector<Token> out_;

  // Text before a tag of `kind` ('{', '%', '#', or 0 at end) whose opening has `sign`.
  void emit_text(std::string text, size_t pos, char kind, char sign) {
    if (kind) {
      if (sign == '-') {
        while (!text.empty() && anyspace(text.back())) text.pop_back();
      } else if (kind != '{' && sign != '+' && opt_.lstrip_blocks) {
        size_t nl = text.rfind('\n');
        size_t l = nl == std::string::npos ? 0 : nl + 1;
        if (nl != std::string::npos || line_starting_) {
          bool ws = l < text.size();
          for (size_t k = l; k < text.size() && ws; k++) ws = hspace(text[k]);
          if (ws) text.resize(l);
        }
      }
    }
    if (!text.empty()) out_.push_back({TK::Text, std::move(text), 0, 0, pos});
  }

  // Whitespace handling after a closing delimiter that ended at p_.
  void after_end(bool strip, bool plus, bool block_like) {
    if (strip) {
      size_t q = p_;
      while (q < n_ && anyspace(src_[q])) q++;
      line_starting_ = q > p_ && src_[q - 1] == '\n';
      p_ = q;
    } else if (block_like && !plus && opt_.trim_blocks && p_ < n_ && src_[p_] == '\n') {
      p_++;
      line_starting_ = true;
    } else {
      line_starting_ = false;
    }
  }

  void comment(size_t t, char sign) {
    size_t start = t + 2 + (sign ? 1 : 0);
    size_t e = src_.find("#}", start);
    if (e == std::string::npos) fail_at(src_, t, "unclosed comment '{#'");
    bool strip = e > start && src_[e - 1] == '-';
    bool plus = e > start && src_[e - 1] == '+';
    p_ = e + 2;
    after_end(strip, plus, true);
  }

  bool at(size_t q, const char* lit) const { return src_.compare(q, std::strlen(lit), lit) == 0; }

  void tag(size_t t, bool block, char sign) {
    out_.push_back({block ? TK::BlockBegin : TK::VarBegin, "", 0, 0, t});
    size_t first_tok = out_.size();
    p_ = t + 2 + (sign ? 1 : 0);
    std::vector<char> closers;  // expected closing brackets
    const char* close = block ? "%}" : "}}";
    while (true) {
      while (p_ < n_ && anyspace(src_[p_])) p_++;
      if (p_ >= n_) fail_at(src_, t, block ? "unclosed tag '{%'" : "unclosed tag '{{'");
      if (closers.empty()) {
        bool strip = false, plus = false;
        size_t len = 0;
        if (src_[p_] == '-' && at(p_ + 1, close)) {
          strip = true;
          len = 3;
        } else if (block && src_[p_] == '+' && at(p_ + 1, close)) {
          plus = true;
          len = 3;
        } else if (at(p_, close)) {
          len = 2;
        }
        if (len) {
          out_.push_back({block ? TK::BlockEnd : TK::VarEnd, "", 0, 0, p_});
          p_ += len;
          after_end(strip, plus, block);
          if (block) maybe_raw(t, first_tok);
          return;
        }
      }
      char c = src_[p_];
      size_t start = p_;
      if (c == '\'' || c == '"') {
        out_.push_back({TK::Str, string_literal(), 0, 0, start});
      } else if (is_digit(c)) {
        number();
      } else if (is_alpha(c)) {
        while (p_ < n_ && (is_alpha(src_[p_]) || is_digit(src_[p_]))) p_++;
        out_.push_back({TK::Name, src_.substr(start, p_ - start), 0, 0, start});
      } else {
        static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* o : two)
          if (at(p_, o)) op = o;
        if (op.empty()) {
          if (!std::strchr("+-*/%~<>=()[]{},.:|;", c) || c == 0)
            fail_at(src_, p_, std::string("unexpected character '") + c + "' in tag");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") {
          closers.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (closers.empty()) fail_at(src_, p_, "unexpected '" + op + "'");
          if (closers.back() != op[0])
            fail_at(src_, p_, "unexpected '" + op + "', expected '" + closers.back() + "'");
          closers.pop_back();
        }
        p_ += op.size();
        out_.push_back({TK::Op, op, 0, 0, start});
      }
    }
  }

  std::string string_literal() {
    size_t start = p_;
    char q = src_[p_++];
    std::string lit;
    while (true) {
      if (p_ >= n_) fail_at(src_, start, "unclosed string literal");
      char ch = src_[p_];
      if (ch == q) {
        p_++;
        return lit;
      }
      if (ch != '\\') {
        lit += ch;
        p_++;
        continue;
      }
      if (p_ + 1 >= n_) fail_at(src_, start, "unclosed string literal");
      char e = src_[p_ + 1];
      p_ += 2;
      switch (e) {
        case 'n': lit += '\n'; break;
        case 't': lit += '\t'; break;
        case 'r': lit += '\r'; break;
        case '\\': lit += '\\'; break;
        case '\'': lit += '\''; break;
        case '"': lit += '"'; break;
        case 'a': lit += '\a'; break;
        case 'b': lit += '\b'; break;
        case 'f': lit += '\f'; break;
        case 'v': lit += '\v'; break;
        case '\n': break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int k = 0; k < nd; k++) {
            int h = p_ < n_ ? hexval(src_[p_]) : -1;
            if (h < 0) fail_at(src_, p_ - 2 - k, std::string("invalid \\") + e + " escape in string");
            cp = cp * 16 + uint32_t(h);
            p_++;
          }
          if (cp > 0x10FFFF) fail_at(src_, p_ - nd - 2, "invalid unicode escape in string");
          put_utf8(lit, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = uint32_t(e - '0');
            for (int k = 0; k < 2 && p_ < n_ && src_[p_] >= '0' && src_[p_] <= '7'; k++)
              cp = cp * 8 + uint32_t(src_[p_++] - '0');
            put_utf8(lit, cp);
          } else {  // unknown escapes stay as written (Python behaviour)
            lit += '\\';
            lit += e;
          }
      }
    }
  }

  void number() {
    size_t start = p_;
    bool after_dot = !out_.empty() && out_.back().k == TK::Op && out_.back().s == ".";
    auto digits = [&] {
      while (p_ < n_ && (is_digit(src_[p_]) || (src_[p_] == '_' && p_ + 1 < n_ && is_digit(src_[p_ + 1]))))
        p_++;
    };
    digits();
    bool is_float = false;
    if (!after_dot && p_ + 1 < n_ && src_[p_] == '.' && is_digit(src_[p_ + 1])) {
      p_++;
      digits();
      is_float = true;
    }
    if (!after_dot && p_ < n_ && (src_[p_] == 'e' || src_[p_] == 'E')) {
      size_t q = p_ + 1;
      if (q < n_ && (src_[q] == '+' || src_[q] == '-')) q++;
      if (q < n_ && is_digit(src_[q])) {
        p_ = q;
        digits();
        is_float = true;
      }
    }
    std::string txt;
    for (size_t k = start; k < p_; k++)
      if (src_[k] != '_') txt += src_[k];
    Token tok{is_float ? TK::Float : TK::Int, txt, 0, 0, start};
    if (is_float) {
      tok.f = std::strtod(txt.c_str(), nullptr);
    } else {
      auto r = std::from_chars(txt.data(), txt.data() + txt.size(), tok.i);
      if (r.ec != std::errc()) fail_at(src_, start, "integer literal too large");
    }
    out_.push_back(std::move(tok));
  }

  // `{% raw %}` ... `{% endraw %}`: the tokens just lexed were BlockBegin, Name raw, BlockEnd.
  void maybe_raw(size_t t, size_t first_tok) {
    if (out_.size() - first_tok != 2 || out_[first_tok].k != TK::Name || out_[first_tok].s != "raw")
      return;
    out_.resize(first_tok - 1);
    size_t q = p_;
    while (true) {
      size_t s = src_.find("{%", q);
      if (s == std::string::npos) fail_at(src_, t, "unclosed 'raw' block (expected '{% endraw %}')");
      size_t k = s + 2;
      char sign = 0;
      if (k < n_ && (src_[k] == '-' || src_[k] == '+')) sign = src_[k++];
      while (k < n_ && anyspace(src_[k])) k++;
      if (!at(k, "endraw")) {
        q = s + 2;
        continue;
      }
      k += 6;
      while (k < n_ && anyspace(src_[k])) k++;
      bool strip = false, plus = false;
      size_t len = 0;
      if (at(k, "-%}")) {
        strip = true;
        len = 3;
      } else if (at(k, "+%}")) {
        plus = true;
        len = 3;
      } else if (at(k, "%}")) {
        len = 2;
      } else {
        q = s + 2;
        continue;
      }
      emit_text(src_.substr(p_, s - p_), p_, '%', sign);
      p_ = k + len;
      after_end(strip, plus, true);
      return;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// AST

enum class EK : uint8_t {
  Const, Name, Attr, Item, Slice, Call, Filter, Test, Neg, Pos, Bin, Cmp, And, Or, Not, Cond,
  ListLit, DictLit
};

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  EK k;
  size_t pos = 0;
  int depth = 1;
  Value val;                  // Const
  std::string name;           // Name, Attr, Filter, Test, Bin operator
  std::vector<ExprP> a;       // operands / arguments (Slice: obj, start, stop, step; may be null)
  std::vector<std::pair<std::string, ExprP>> kw;  // keyword arguments
  std::vector<std::string> ops;                   // Cmp operators
  bool neg = false;                               // Test: `is not`
};

enum class SK : uint8_t { Text, Out, If, For, Set, SetBlock, Macro, Break, Continue, Gen };

using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  SK k;
  size_t pos = 0;
  std::string text;                  // Text; Macro name
  ExprP expr;                        // Out; Set value; For iterable
  ExprP cond;                        // For filter
  std::vector<ExprP> conds;          // If
  std::vector<Body> bodies;          // If branches (+ else)
  std::vector<std::string> targets;  // For/Set/SetBlock names; Set attr: {namespace, attribute}
  bool attr_target = false;
  bool uses_loop = false;            // For: the body mentions `loop` (else no loop object is made)
  Body body, else_body;
  std::vector<std::string> params;  // Macro
  std::vector<ExprP> defaults;      // Macro (null: no default)
};

const std::set<std::string, std::less<>>& known_filters() {
  static const std::set<std::string, std::less<>> s = {
      "trim", "upper", "lower", "capitalize", "title", "length", "count", "default", "d",
      "tojson", "first", "last", "join", "string", "int", "float", "abs", "round", "replace",
      "list", "items", "safe", "escape", "e", "forceescape", "reverse", "sort", "unique", "map",
      "select", "reject", "selectattr", "rejectattr", "min", "max", "sum", "indent"};
  return s;
}

const std::set<std::string, std::less<>>& known_tests() {
  static const std::set<std::string, std::less<>> s = {
      "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true",
      "false", "mapping", "iterable", "sequence", "callable", "eq", "equalto", "==", "ne", "!=",
      "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "odd",
      "even", "divisibleby", "lower", "upper", "sameas"};
  return s;
}

// ---------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  Parser(const std::string& src, std::vector<Token> toks) : src_(src), t_(std::move(toks)) {}

  Body parse_template() {
    std::string found;
    return parse_body({}, found, 0, nullptr);
  }

  bool has_generation = false;

 private:
  const std::string& src_;
  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  int nest_ = 0;
  int loop_refs_ = 0;  // `loop` names parsed so far

  [[noreturn]] void fail(size_t pos, const std::string& what) const { fail_at(src_, pos, what); }

  struct Guard {
    int& d;
    Guard(Parser& p, size_t pos) : d(p.depth_) {
      if (++d > kMaxParseDepth) p.fail(pos, "expression nested too deeply");
    }
    ~Guard() { --d; }
  };

  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* s) const { return peek().k == TK::Op && peek().s == s; }
  bool is_name(const char* s) const { return peek().k == TK::Name && peek().s == s; }
  void expect_op(const char* s) {
    if (!is_op(s)) fail(peek().pos, std::string("expected '") + s + "' but got " + describe(peek()));
    i_++;
  }
  std::string expect_name() {
    if (peek().k != TK::Name) fail(peek().pos, "expected a name but got " + describe(peek()));
    return t_[i_++].s;
  }
  void expect_block_end() {
    if (peek().k != TK::BlockEnd) fail(peek().pos, "expected '%}' but got " + describe(peek()));
    i_++;
  }

  ExprP node(EK k, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->pos = pos;
    return e;
  }
  ExprP done(ExprP e) {
    int d = 0;
    for (auto& x : e->a)
      if (x) d = std::max(d, x->depth);
    for (auto& x : e->kw) d = std::max(d, x.second->depth);
    e->depth = d + 1;
    if (e->depth > kMaxExprDepth) fail(e->pos, "expression nested too deeply");
    return e;
  }
  ExprP binary(EK k, const std::string& op, size_t pos, ExprP l, ExprP r) {
    auto e = node(k, pos);
    e->name = op;
    e->a.push_back(std::move(l));
    e->a.push_back(std::move(r));
    return done(std::move(e));
  }

  static bool is_end_word(const std::string& s) {
    return s == "endif" || s == "elif" || s == "else" || s == "endfor" || s == "endset" ||
           s == "endmacro" || s == "endgeneration" || s == "endraw" || s == "endfilter" ||
           s == "endcall" || s == "endblock" || s == "endwith";
  }

  Body parse_body(std::initializer_list<const char*> ends, std::string& found, size_t open_pos,
                  const char* open_what) {
    if (++nest_ > kMaxBlockNesting) fail(open_pos, "blocks nested too deeply");
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.k == TK::Eof) {
        if (ends.size())
          fail(open_pos, std::string("unclosed '") + open_what + "' block (expected '{% " +
                             *(ends.end() - 1) + " %}')");
        break;
      }
      if (t.k == TK::Text) {
        auto s = std::make_unique<Stmt>();
        s->k = SK::Text;
        s->pos = t.pos;
        s->text = t.s;
        body.push_back(std::move(s));
        i_++;
        continue;
      }
      if (t.k == TK::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->k = SK::Out;
        s->pos = t.pos;
        i_++;
        if (peek().k == TK::VarEnd) fail(peek().pos, "empty expression in '{{ }}'");
        s->expr = parse_expr();
        if (peek().k != TK::VarEnd) fail(peek().pos, "expected '}}' but got " + describe(peek()));
        i_++;
        body.push_back(std::move(s));
        continue;
      }
      if (t.k == TK::BlockBegin) {
        size_t pos = t.pos;
        const Token& nt = peek(1);
        if (nt.k != TK::Name) fail(nt.pos, "expected a tag name after '{%' but got " + describe(nt));
        for (const char* e : ends)
          if (nt.s == e) {
            found = nt.s;
            i_ += 2;
            --nest_;
            return body;
          }
        if (is_end_word(nt.s)) {
          std::string msg = "unexpected '{% " + nt.s + " %}'";
          if (open_what) msg += std::string(" inside '") + open_what + "' block";
          fail(nt.pos, msg);
        }
        std::string name = nt.s;
        size_t name_pos = nt.pos;
        i_ += 2;
        body.push_back(parse_stmt(name, pos, name_pos));
        continue;
      }
      fail(t.pos, "unexpected " + describe(t));
    }
    --nest_;
    return body;
  }

  std::unique_ptr<Stmt> parse_stmt(const std::string& name, size_t pos, size_t name_pos) {
    auto s = std::make_unique<Stmt>();
    s->pos = pos;
    std::string found;
    if (name == "if") {
      s->k = SK::If;
      s->conds.push_back(parse_expr());
      expect_block_end();
      while (true) {
        s->bodies.push_back(parse_body({"elif", "else", "endif"}, found, pos, "if"));
        if (found == "elif") {
          s->conds.push_back(parse_expr());
          expect_block_end();
          continue;
        }
        if (found == "else") {
          expect_block_end();
          s->bodies.push_back(parse_body({"endif"}, found, pos, "if"));
        }
        expect_block_end();
        break;
      }
    } else if (name == "for") {
      s->k = SK::For;
      s->targets.push_back(expect_name());
      while (is_op(",")) {
        i_++;
        s->targets.push_back(expect_name());
      }
      if (!is_name("in")) fail(peek().pos, "expected 'in' but got " + describe(peek()));
      i_++;
      s->expr = parse_expr(false);
      if (is_name("if")) {
        i_++;
        s->cond = parse_expr();
      }
      if (is_name("recursive")) fail(peek().pos, "recursive for loops are not supported");
      expect_block_end();
      loop_depth_++;
      int refs = loop_refs_;
      s->body = parse_body({"else", "endfor"}, found, pos, "for");
      s->uses_loop = loop_refs_ != refs;
      loop_depth_--;
      if (found == "else") {
        expect_block_end();
        s->else_body = parse_body({"endfor"}, found, pos, "for");
      }
      expect_block_end();
    } else if (name == "set") {
      s->k = SK::Set;
      s->targets.push_back(expect_name());
      if (is_op(".")) {
        i_++;
        s->targets.push_back(expect_name());
        s->attr_target = true;
      } else {
        while (is_op(",")) {
          i_++;
          s->targets.push_back(expect_name());
        }
      }
      if (peek().k == TK::BlockEnd && !s->attr_target && s->targets.size() == 1) {
        i_++;
        s->k = SK::SetBlock;
        s->body = parse_body({"endset"}, found, pos, "set");
        expect_block_end();
        return s;
      }
      expect_op("=");
      size_t epos = peek().pos;
      ExprP e = parse_expr();
      if (is_op(",")) {  // tuple without parentheses
        auto l = node(EK::ListLit, epos);
        l->a.push_back(std::move(e));
        while (is_op(",")) {
          i_++;
          if (peek().k == TK::BlockEnd) break;
          l->a.push_back(parse_expr());
        }
        e = done(std::move(l));
      }
      s->expr = std::move(e);
      expect_block_end();
    } else if (name == "macro") {
      s->k = SK::Macro;
      s->text = expect_name();
      expect_op("(");
      bool had_default = false;
      while (!is_op(")")) {
        size_t ppos = peek().pos;
        s->params.push_back(expect_name());
        if (is_op("=")) {
          i_++;
          s->defaults.push_back(parse_expr());
          had_default = true;
        } else {
          if (had_default) fail(ppos, "non-default macro argument follows default argument");
          s->defaults.push_back(nullptr);
        }
        if (!is_op(",")) break;
        i_++;
      }
      expect_op(")");
      expect_block_end();
      int saved = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_body({"endmacro"}, found, pos, "macro");
      loop_depth_ = saved;
      if (peek().k == TK::Name && peek().s == s->text) i_++;
      expect_block_end();
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail(name_pos, "'" + name + "' outside of a loop");
      s->k = name == "break" ? SK::Break : SK::Continue;
      expect_block_end();
    } else if (name == "generation") {
      s->k = SK::Gen;
      expect_block_end();
      s->body = parse_body({"endgeneration"}, found, pos, "generation");
      expect_block_end();
      has_generation = true;
    } else if (name == "filter" || name == "call" || name == "block" || name == "extends" ||
               name == "include" || name == "import" || name == "from" || name == "with" ||
               name == "autoescape" || name == "do" || name == "trans") {
      fail(name_pos, "unsupported tag '" + name + "'");
    } else {
      fail(name_pos, "unknown tag '" + name + "'");
    }
    return s;
  }

  // ---- expressions (precedence as in Jinja's parser) ----

  ExprP parse_expr(bool with_condexpr = true) {
    Guard g(*this, peek().pos);
    ExprP e = parse_or();
    if (!with_condexpr) return e;
    while (is_name("if")) {
      size_t pos = peek().pos;
      i_++;
      auto c = node(EK::Cond, pos);
      c->a.push_back(parse_or());
      c->a.push_back(std::move(e));
      if (is_name("else")) {
        i_++;
        c->a.push_back(parse_expr());
      } else {
        c->a.push_back(nullptr);
      }
      e = done(std::move(c));
    }
    return e;
  }

  ExprP parse_or() {
    ExprP e = parse_and();
    while (is_name("or")) {
      size_t pos = peek().pos;
      i_++;
      e = binary(EK::Or, "or", pos, std::move(e), parse_and());
    }
    return e;
  }

  ExprP parse_and() {
    ExprP e = parse_not();
    while (is_name("and")) {
      size_t pos = peek().pos;
      i_++;
      e = binary(EK::And, "and", pos, std::move(e), parse_not());
    }
    return e;
  }

  ExprP parse_not() {
    Guard g(*this, peek().pos);
    if (is_name("not")) {
      auto n = node(EK::Not, peek().pos);
      i_++;
      n->a.push_back(parse_not());
      return done(std::move(n));
    }
    return parse_compare();
  }

  ExprP parse_compare() {
    size_t pos = peek().pos;
    ExprP e = parse_math1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      const Token& t = peek();
      if (t.k == TK::Op && (t.s == "==" || t.s == "!=" || t.s == "<" || t.s == ">" ||
                            t.s == "<=" || t.s == ">=")) {
        op = t.s;
        i_++;
      } else if (is_name("in")) {
        op = "in";
        i_++;
      } else if (is_name("not") && peek(1).k == TK::Name && peek(1).s == "in") {
        op = "notin";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(EK::Cmp, pos);
        cmp->a.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->a.push_back(parse_math1());
      cmp = done(std::move(cmp));
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  template <typename Next>
  ExprP left_assoc(std::initializer_list<const char*> ops, Next next) {
    ExprP e = (this->*next)();
    while (true) {
      const char* hit = nullptr;
      for (const char* o : ops)
        if (is_op(o)) hit = o;
      if (!hit) return e;
      size_t pos = peek().pos;
      i_++;
      e = binary(EK::Bin, hit, pos, std::move(e), (this->*next)());
    }
  }
  ExprP parse_math1() { return left_assoc({"+", "-"}, &Parser::parse_concat); }
  ExprP parse_concat() { return left_assoc({"~"}, &Parser::parse_math2); }
  ExprP parse_math2() { return left_assoc({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprP parse_pow() { return left_assoc({"**"}, &Parser::parse_unary_f); }
  ExprP parse_unary_f() { return parse_unary(true); }

  ExprP parse_unary(bool with_filter) {
    Guard g(*this, peek().pos);
    ExprP e;
    if (is_op("-") || is_op("+")) {
      e = node(is_op("-") ? EK::Neg : EK::Pos, peek().pos);
      i_++;
      e->a.push_back(parse_unary(false));
      e = done(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    const Token& t = peek();
    size_t pos = t.pos;
    if (t.k == TK::Name) {
      i_++;
      auto e = node(EK::Const, pos);
      if (t.s == "true" || t.s == "True") {
        e->val = v_bool(true);
      } else if (t.s == "false" || t.s == "False") {
        e->val = v_bool(false);
      } else if (t.s == "none" || t.s == "None") {
        e->val = v_none();
      } else {
        e->k = EK::Name;
        e->name = t.s;
        if (t.s == "loop") loop_refs_++;
      }
      return e;
    }
    if (t.k == TK::Str) {
      std::string s;
      while (peek().k == TK::Str) s += t_[i_++].s;
      auto e = node(EK::Const, pos);
      e->val = v_str(std::move(s));
      return e;
    }
    if (t.k == TK::Int || t.k == TK::Float) {
      auto e = node(EK::Const, pos);
      e->val = t.k == TK::Int ? v_int(t.i) : v_float(t.f);
      i_++;
      return e;
    }
    if (is_op("(")) {
      i_++;
      if (is_op(")")) {
        i_++;
        return node(EK::ListLit, pos);
      }
      ExprP e = parse_expr();
      if (is_op(",")) {
        auto l = node(EK::ListLit, pos);
        l->a.push_back(std::move(e));
        while (is_op(",")) {
          i_++;
          if (is_op(")")) break;
          l->a.push_back(parse_expr());
        }
        e = done(std::move(l));
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      i_++;
      auto l = node(EK::ListLit, pos);
      while (!is_op("]")) {
        l->a.push_back(parse_expr());
        if (!is_op(",")) break;
        i_++;
      }
      expect_op("]");
      return done(std::move(l));
    }
    if (is_op("{")) {
      i_++;
      auto d = node(EK::DictLit, pos);
      while (!is_op("}")) {
        d->a.push_back(parse_expr());
        expect_op(":");
        d->a.push_back(parse_expr());
        if (!is_op(",")) break;
        i_++;
      }
      expect_op("}");
      return done(std::move(d));
    }
    fail(pos, "unexpected " + describe(t) + " in expression");
  }

  void parse_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().k == TK::Name && peek(1).k == TK::Op && peek(1).s == "=") {
        std::string k = t_[i_].s;
        i_ += 2;
        call.kw.emplace_back(k, parse_expr());
      } else {
        if (!call.kw.empty()) fail(peek().pos, "positional argument follows keyword argument");
        call.a.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      i_++;
    }
    expect_op(")");
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      size_t pos = peek().pos;
      if (is_op(".")) {
        i_++;
        const Token& t = peek();
        if (t.k == TK::Name) {
          auto n = node(EK::Attr, pos);
          n->name = t.s;
          n->a.push_back(std::move(e));
          e = done(std::move(n));
        } else if (t.k == TK::Int) {
          auto n = node(EK::Item, pos);
          auto c = node(EK::Const, t.pos);
          c->val = v_int(t.i);
          n->a.push_back(std::move(e));
          n->a.push_back(std::move(c));
          e = done(std::move(n));
        } else {
          fail(t.pos, "expected an attribute name after '.' but got " + describe(t));
        }
        i_++;
      } else if (is_op("[")) {
        i_++;
        ExprP x0, x1, x2;
        bool slice = false;
        if (!is_op(":")) x0 = parse_expr();
        if (is_op(":")) {
          slice = true;
          i_++;
          if (!is_op("]") && !is_op(":")) x1 = parse_expr();
          if (is_op(":")) {
            i_++;
            if (!is_op("]")) x2 = parse_expr();
          }
        }
        expect_op("]");
        auto n = node(slice ? EK::Slice : EK::Item, pos);
        n->a.push_back(std::move(e));
        n->a.push_back(std::move(x0));
        if (slice) {
          n->a.push_back(std::move(x1));
          n->a.push_back(std::move(x2));
        }
        e = done(std::move(n));
      } else if (is_op("(")) {
        auto n = node(EK::Call, pos);
        n->a.push_back(std::move(e));
        parse_args(*n);
        e = done(std::move(n));
      } else {
        return e;
      }
    }
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      size_t pos = peek().pos;
      if (is_op("|")) {
        i_++;
        size_t npos = peek().pos;
        std::string name = expect_name();
        if (!known_filters().count(name)) fail(npos, "unknown filter '" + name + "'");
        auto n = node(EK::Filter, pos);
        n->name = name;
        n->a.push_back(std::move(e));
        if (is_op("(")) parse_args(*n);
        e = done(std::move(n));
      } else if (is_name("is")) {
        i_++;
        auto n = node(EK::Test, pos);
        if (is_name("not")) {
          i_++;
          n->neg = true;
        }
        size_t npos = peek().pos;
        std::string name;
        if (peek().k == TK::Name)
          name = t_[i_++].s;
        else
          fail(npos, "expected a test name after 'is' but got " + describe(peek()));
        if (!known_tests().count(name)) fail(npos, "unknown test '" + name + "'");
        n->name = name;
        n->a.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*n);
        } else {
          const Token& t = peek();
          bool arg = t.k == TK::Str || t.k == TK::Int || t.k == TK::Float || is_op("[") ||
                     is_op("{") ||
                     (t.k == TK::Name && t.s != "else" && t.s != "or" && t.s != "and" &&
                      t.s != "if" && t.s != "in" && t.s != "not" && t.s != "is");
          if (arg) n->a.push_back(parse_postfix(parse_primary()));
        }
        e = done(std::move(n));
      } else if (is_op("(")) {
        auto n = node(EK::Call, pos);
        n->a.push_back(std::move(e));
        parse_args(*n);
        e = done(std::move(n));
      } else {
        return e;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Interpreter

struct Sink {
  std::string text;
  std::vector<Prov> prov;
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

class Interp {
 public:
  explicit Interp(const std::string& src) : src_(src) {
    frames_.emplace_back();
    sinks_.emplace_back();
  }

  void set_global(const std::string& k, Value v) { assign(k, std::move(v)); }

  Sink run(const Body& body) {
    exec_body(body);
    return std::move(sinks_.front());
  }

 private:
  using Frame = std::vector<std::pair<std::string, Value>>;
  enum Flow { kNormal, kBreak, kContinue };

  const std::string& src_;
  std::vector<Frame> frames_;
  std::vector<Sink> sinks_;
  size_t steps_ = 0;
  int rec_ = 0;
  int macro_depth_ = 0;

  [[noreturn]] void fail(size_t pos, const std::string& what) const { fail_at(src_, pos, what); }

  struct Rec {
    int& r;
    Rec(Interp& in, size_t pos) : r(in.rec_) {
      if (++r > kMaxRecursion) in.fail(pos, "template recursion too deep");
    }
    ~Rec() { --r; }
  };

  void check_size(size_t n, size_t pos) const {
    if (n > kMaxString) fail(pos, "string too long (limit 256 MiB)");
  }

  // ---- variables ----

  const Value* lookup(const std::string& n) const {
    for (auto f = frames_.rbegin(); f != frames_.rend(); ++f)
      for (auto& kv : *f)
        if (kv.first == n) return &kv.second;
    return nullptr;
  }

  void assign(const std::string& n, Value v) {
    for (auto& kv : frames_.back())
      if (kv.first == n) {
        kv.second = std::move(v);
        return;
      }
    frames_.back().emplace_back(n, std::move(v));
  }

  static bool is_builtin(const std::string& n) {
    return n == "raise_exception" || n == "range" || n == "namespace" || n == "strftime_now" ||
           n == "dict";
  }

  void need(const Value& v, size_t pos) const {
    if (v.t == VT::Undefined) fail(pos, v.s.empty() ? "value is undefined" : v.s);
  }

  // ---- output ----

  Sink& cur() { return sinks_.back(); }

  void write(const std::string& s, size_t pos) {
    check_size(cur().text.size() + s.size(), pos);
    cur().text += s;
  }

  void emit(const Value& v, size_t pos) {
    if (v.t == VT::Str) {
      size_t off = cur().text.size();
      write(v.s, pos);
      append_prov(cur().prov, v.prov, off);
    } else {
      write(to_str(v), pos);
    }
  }

  // ---- statements ----

  Flow exec_body(const Body& b) {
    for (auto& s : b) {
      Flow f = exec(*s);
      if (f != kNormal) return f;
    }
    return kNormal;
  }

  // exec/eval recurse through nested statements and expressions, so they only dispatch; the
  // work (and the stack-hungry temporaries) lives in non-inlined helpers.
  Flow exec(const Stmt& s) {
    Rec r(*this, s.pos);
    if (++steps_ > kMaxSteps) fail(s.pos, "template execution limit exceeded");
    switch (s.k) {
      case SK::Text: write(s.text, s.pos); return kNormal;
      case SK::Out: exec_out(s); return kNormal;
      case SK::If: return exec_if(s);
      case SK::For: return exec_for(s);
      case SK::Set: exec_set(s); return kNormal;
      case SK::SetBlock: return exec_set_block(s);
      case SK::Macro: define_macro(s); return kNormal;
      case SK::Break: return kBreak;
      case SK::Continue: return kContinue;
      case SK::Gen: return exec_generation(s);
    }
    return kNormal;
  }

  NOINLINE void exec_out(const Stmt& s) { emit(eval(*s.expr), s.pos); }

  NOINLINE Flow exec_if(const Stmt& s) {
    size_t j = 0;
    for (; j < s.conds.size(); j++)
      if (truthy(eval(*s.conds[j]))) break;
    if (j < s.bodies.size()) return exec_body(s.bodies[j]);  // else branch when j == conds.size()
    return kNormal;
  }

  NOINLINE void exec_set(const Stmt& s) { do_set(s, eval(*s.expr)); }

  NOINLINE Flow exec_set_block(const Stmt& s) {
    sinks_.emplace_back();
    Flow f = exec_body(s.body);
    Sink c = std::move(sinks_.back());
    sinks_.pop_back();
    assign(s.targets[0], v_str(std::move(c.text), std::move(c.prov)));
    return f;
  }

  NOINLINE void define_macro(const Stmt& s) {
    Value m;
    m.t = VT::Macro;
    m.macro = &s;
    assign(s.text, std::move(m));
  }

  NOINLINE Flow exec_generation(const Stmt& s) {
    size_t b = cur().text.size();
    Flow f = exec_body(s.body);
    cur().prov.push_back({kGenTag, b, cur().text.size()});
    return f;
  }

  void unpack(const std::vector<std::string>& names, const Value& v, size_t pos) {
    if (names.size() == 1) {
      assign(names[0], v);
      return;
    }
    List items = iterate(v, pos);
    if (items.size() != names.size())
      fail(pos, "cannot unpack " + std::to_string(items.size()) + " values into " +
                    std::to_string(names.size()) + " names");
    for (size_t k = 0; k < names.size(); k++) assign(names[k], items[k]);
  }

  void do_set(const Stmt& s, Value v) {
    if (s.attr_target) {
      const Value* ns = lookup(s.targets[0]);
      if (!ns || ns->t != VT::Dict || !ns->dict->is_namespace)
        fail(s.pos, "cannot assign attribute '" + s.targets[1] + "' on non-namespace object '" +
                        s.targets[0] + "'");
      ns->dict->set(s.targets[1], std::move(v));
      return;
    }
    unpack(s.targets, v, s.pos);
  }

  List iterate(const Value& v, size_t pos) {
    switch (v.t) {
      case VT::List: return *v.list;
      case VT::Undefined: return {};
      case VT::Dict: {
        List out;
        for (auto& kv : v.dict->items) out.push_back(v_str(kv.first));
        return out;
      }
      case VT::Str: {
        List out;
        std::vector<size_t> bd = cp_bounds(v.s);
        for (size_t k = 0; k + 1 < bd.size(); k++) out.push_back(substr_v(v, bd[k], bd[k + 1]));
        return out;
      }
      default: fail(pos, std::string("'") + type_name(v) + "' object is not iterable");
    }
  }

  NOINLINE Flow exec_for(const Stmt& s) {
    List items = iterate(eval(*s.expr), s.expr->pos);
    if (s.cond) {
      List kept;
      for (auto& x : items) {
        frames_.emplace_back();
        unpack(s.targets, x, s.pos);
        bool ok = truthy(eval(*s.cond));
        frames_.pop_back();
        if (ok) kept.push_back(x);
      }
      items = std::move(kept);
    }
    if (items.empty()) return s.else_body.empty() ? kNormal : exec_body(s.else_body);
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; k++) {
      if (++steps_ > kMaxSteps) fail(s.pos, "template execution limit exceeded");
      frames_.emplace_back();
      unpack(s.targets, items[size_t(k)], s.pos);
      if (s.uses_loop) make_loop_object(items, k);
      Flow f = exec_body(s.body);
      frames_.pop_back();
      if (f == kBreak) break;
    }
    return kNormal;
  }

  NOINLINE void make_loop_object(const List& items, int64_t k) {
    const int64_t n = int64_t(items.size());
    auto loop = std::make_shared<Dict>();
    loop->items = {{"index", v_int(k + 1)},    {"index0", v_int(k)},         {"revindex", v_int(n - k)},
                   {"revindex0", v_int(n - k - 1)}, {"first", v_bool(k == 0)}, {"last", v_bool(k == n - 1)},
                   {"length", v_int(n)},       {"depth", v_int(1)},          {"depth0", v_int(0)}};
    if (k > 0) loop->items.emplace_back("previtem", items[size_t(k - 1)]);
    if (k + 1 < n) loop->items.emplace_back("nextitem", items[size_t(k + 1)]);
    assign("loop", v_dict(std::move(loop)));
  }

  // ---- expressions ----

  Value eval(const Expr& e) {
    Rec r(*this, e.pos);
    switch (e.k) {
      case EK::Const: return e.val;
      case EK::Name: return eval_name(e);
      case EK::Attr: return eval_attr(e);
      case EK::Item: return eval_item(e);
      case EK::Slice: return eval_slice(e);
      case EK::Call: return eval_call(e);
      case EK::Filter: return eval_filter(e);
      case EK::Test: return eval_test(e);
      case EK::Neg:
      case EK::Pos: return eval_unary(e);
      case EK::Bin: return eval_bin(e);
      case EK::Cmp: return eval_cmp(e);
      case EK::And:
      case EK::Or: return eval_logic(e);
      case EK::Not: return eval_not(e);
      case EK::Cond: return eval_cond(e);
      case EK::ListLit: return eval_list(e);
      case EK::DictLit: return eval_dict(e);
    }
    return Value{};
  }

  NOINLINE Value eval_name(const Expr& e) {
    if (const Value* v = lookup(e.name)) return *v;
    if (is_builtin(e.name)) return v_builtin(e.name);
    return v_undef("'" + e.name + "' is undefined");
  }

  NOINLINE Value eval_attr(const Expr& e) { return get_attr(eval(*e.a[0]), e.name, e.pos); }

  NOINLINE Value eval_item(const Expr& e) {
    Value obj = eval(*e.a[0]);
    return get_item(obj, eval(*e.a[1]), e.pos);
  }

  NOINLINE Value eval_filter(const Expr& e) {
    Value in = eval(*e.a[0]);
    Args args = eval_args(e, 1);
    return apply_filter(e.name, in, args, e.pos);
  }

  NOINLINE Value eval_test(const Expr& e) {
    Value in = eval(*e.a[0]);
    Args args = eval_args(e, 1);
    bool res = apply_test(e.name, in, args, e.pos);
    return v_bool(e.neg ? !res : res);
  }

  NOINLINE Value eval_unary(const Expr& e) {
    Value v = eval(*e.a[0]);
    need(v, e.pos);
    if (!is_num(v))
      fail(e.pos, std::string("bad operand type for unary ") + (e.k == EK::Neg ? "-" : "+") + ": '" +
                      type_name(v) + "'");
    if (e.k == EK::Pos) return v.t == VT::Float ? v : v_int(ival(v));
    if (v.t == VT::Float) return v_float(-v.f);
    if (ival(v) == std::numeric_limits<int64_t>::min()) fail(e.pos, "integer overflow");
    return v_int(-ival(v));
  }

  NOINLINE Value eval_bin(const Expr& e) {
    Value l = eval(*e.a[0]);
    return binop(e.name, l, eval(*e.a[1]), e.pos);
  }

  NOINLINE Value eval_cmp(const Expr& e) {
    Value l = eval(*e.a[0]);
    for (size_t j = 0; j < e.ops.size(); j++) {
      Value rr = eval(*e.a[j + 1]);
      if (!compare(e.ops[j], l, rr, e.pos)) return v_bool(false);
      l = std::move(rr);
    }
    return v_bool(true);
  }

  NOINLINE Value eval_logic(const Expr& e) {
    Value l = eval(*e.a[0]);
    if (truthy(l) == (e.k == EK::Or)) return l;  // `a or b` -> a if truthy; `a and b` -> a if falsy
    return eval(*e.a[1]);
  }

  NOINLINE Value eval_not(const Expr& e) { return v_bool(!truthy(eval(*e.a[0]))); }

  NOINLINE Value eval_cond(const Expr& e) {
    if (truthy(eval(*e.a[0]))) return eval(*e.a[1]);
    if (e.a[2]) return eval(*e.a[2]);
    return v_undef("the inline if-expression evaluated to false and no else section was defined");
  }

  NOINLINE Value eval_list(const Expr& e) {
    List l;
    l.reserve(e.a.size());
    for (auto& x : e.a) l.push_back(eval(*x));
    return v_list(std::move(l));
  }

  NOINLINE Value eval_dict(const Expr& e) {
    auto d = std::make_shared<Dict>();
    for (size_t j = 0; j + 1 < e.a.size(); j += 2) {
      Value k = eval(*e.a[j]);
      if (k.t != VT::Str) fail(e.a[j]->pos, "dict keys must be strings");
      d->set(k.s, eval(*e.a[j + 1]));
    }
    return v_dict(std::move(d));
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t j = first; j < e.a.size(); j++) a.pos.push_back(eval(*e.a[j]));
    for (auto& kv : e.kw) a.kw.emplace_back(kv.first, eval(*kv.second));
    return a;
  }

  // Binds call arguments to named parameters (Python rules, no *args/**kwargs).
  std::vector<const Value*> bind(const Args& a, std::initializer_list<const char*> names,
                                 const std::string& what, size_t pos) const {
    std::vector<const Value*> out(names.size(), nullptr);
    if (a.pos.size() > names.size())
      fail(pos, what + " takes at most " + std::to_string(names.size()) + " argument(s) (" +
                    std::to_string(a.pos.size()) + " given)");
    for (size_t k = 0; k < a.pos.size(); k++) out[k] = &a.pos[k];
    for (auto& kv : a.kw) {
      size_t k = 0;
      for (const char* n : names) {
        if (kv.first == n) break;
        k++;
      }
      if (k == names.size()) fail(pos, what + " got an unexpected keyword argument '" + kv.first + "'");
      if (out[k]) fail(pos, what + " got multiple values for argument '" + kv.first + "'");
      out[k] = &kv.second;
    }
    return out;
  }

  static bool given(const Value* v) { return v && v->t != VT::Undefined; }

  int64_t int_arg(const Value* v, int64_t dflt, const std::string& what, size_t pos) const {
    if (!v || v->t == VT::None) return dflt;
    if (!is_intlike(*v)) fail(pos, what + " expects an integer, got '" + type_name(*v) + "'");
    return ival(*v);
  }

  const std::string& str_arg(const Value* v, const std::string& what, size_t pos) const {
    if (!v) fail(pos, what + " is missing a required argument");
    if (v->t != VT::Str) fail(pos, what + " expects a string, got '" + type_name(*v) + "'");
    return v->s;
  }

  Value get_attr(const Value& obj, const std::string& name, size_t pos) {
    need(obj, pos);
    if (obj.t == VT::Dict) {
      if (const Value* v = obj.dict->find(name)) return *v;
      return v_undef(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
    }
    return v_undef(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
  }

  static bool norm_index(int64_t& idx, size_t n) {
    if (idx < 0) idx += int64_t(n);
    return idx >= 0 && idx < int64_t(n);
  }

  Value get_item(const Value& obj, const Value& key, size_t pos) {
    need(obj, pos);
    auto miss = [&] { return v_undef(std::string("'") + type_name(obj) + " object' has no element " + repr(key)); };
    if (obj.t == VT::Dict) {
      if (key.t == VT::Str)
        if (const Value* v = obj.dict->find(key.s)) return *v;
      return miss();
    }
    if (obj.t == VT::List && is_intlike(key)) {
      int64_t idx = ival(key);
      if (norm_index(idx, obj.list->size())) return (*obj.list)[size_t(idx)];
      return miss();
    }
    if (obj.t == VT::Str && is_intlike(key)) {
      std::vector<size_t> bd = cp_bounds(obj.s);
      int64_t idx = ival(key);
      if (norm_index(idx, bd.size() - 1)) return substr_v(obj, bd[size_t(idx)], bd[size_t(idx) + 1]);
      return miss();
    }
    return miss();
  }

  NOINLINE Value eval_slice(const Expr& e) {
    Value obj = eval(*e.a[0]);
    need(obj, e.pos);
    int64_t idx[3];
    bool have[3];
    for (int k = 0; k < 3; k++) {
      have[k] = false;
      if (!e.a[k + 1]) continue;
      Value v = eval(*e.a[k + 1]);
      if (v.t == VT::None) continue;
      if (!is_intlike(v)) fail(e.pos, "slice indices must be integers or none");
      idx[k] = ival(v);
      have[k] = true;
    }
    int64_t step = have[2] ? idx[2] : 1;
    if (step == 0) fail(e.pos, "slice step cannot be zero");
    if (obj.t != VT::List && obj.t != VT::Str)
      fail(e.pos, std::string("'") + type_name(obj) + "' object is not sliceable");
    std::vector<size_t> bd;
    int64_t len;
    if (obj.t == VT::Str) {
      bd = cp_bounds(obj.s);
      len = int64_t(bd.size()) - 1;
    } else {
      len = int64_t(obj.list->size());
    }
    auto adjust = [&](bool h, int64_t v, bool is_start) {
      if (!h) return is_start ? (step < 0 ? len - 1 : 0) : (step < 0 ? -1 : len);
      if (v < 0) {
        v += len;
        if (v < 0) v = step < 0 ? -1 : 0;
      } else if (v >= len) {
        v = step < 0 ? len - 1 : len;
      }
      return v;
    };
    int64_t start = adjust(have[0], idx[0], true), stop = adjust(have[1], idx[1], false);
    if (obj.t == VT::Str && step == 1) {
      if (stop < start) stop = start;
      return substr_v(obj, bd[size_t(start)], bd[size_t(stop)]);
    }
    List l;
    std::string s;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (obj.t == VT::List)
        l.push_back((*obj.list)[size_t(k)]);
      else
        s.append(obj.s, bd[size_t(k)], bd[size_t(k) + 1] - bd[size_t(k)]);
    }
    return obj.t == VT::List ? v_list(std::move(l)) : v_str(std::move(s));
  }

  // ---- operators ----

  Value concat(const Value& l, const Value& r, size_t pos) {
    check_size(l.s.size() + r.s.size(), pos);
    Value out = v_str(l.s + r.s, l.prov);
    append_prov(out.prov, r.prov, l.s.size());
    return out;
  }

  Value repeat(const Value& x, int64_t n, size_t pos) {
    if (n <= 0) return x.t == VT::Str ? v_str("") : v_list({});
    if (x.t == VT::Str) {
      if (!x.s.empty() && uint64_t(n) > kMaxString / x.s.size()) fail(pos, "string too long (limit 256 MiB)");
      std::string s;
      for (int64_t k = 0; k < n; k++) s += x.s;
      return v_str(std::move(s));
    }
    if (!x.list->empty() && uint64_t(n) > uint64_t(kMaxRange) / x.list->size())
      fail(pos, "list too long");
    List l;
    for (int64_t k = 0; k < n; k++) l.insert(l.end(), x.list->begin(), x.list->end());
    return v_list(std::move(l));
  }

  [[noreturn]] void type_error(const std::string& op, const Value& l, const Value& r, size_t pos) const {
    fail(pos, "unsupported operand types for " + op + ": '" + type_name(l) + "' and '" + type_name(r) + "'");
  }

  Value binop(const std::string& op, const Value& l, const Value& r, size_t pos) {
    if (op == "~") return concat(to_str_v(l), to_str_v(r), pos);
    need(l, pos);
    need(r, pos);
    bool ints = is_intlike(l) && is_intlike(r);
    bool nums = is_num(l) && is_num(r);
    int64_t a = ints ? ival(l) : 0, b = ints ? ival(r) : 0, z = 0;
    if (op == "+") {
      if (ints) {
        if (__builtin_add_overflow(a, b, &z)) fail(pos, "integer overflow");
        return v_int(z);
      }
      if (nums) return v_float(num(l) + num(r));
      if (l.t == VT::Str && r.t == VT::Str) return concat(l, r, pos);
      if (l.t == VT::List && r.t == VT::List) {
        List out = *l.list;
        out.insert(out.end(), r.list->begin(), r.list->end());
        return v_list(std::move(out));
      }
      type_error(op, l, r, pos);
    }
    if (op == "-") {
      if (ints) {
        if (__builtin_sub_overflow(a, b, &z)) fail(pos, "integer overflow");
        return v_int(z);
      }
      if (nums) return v_float(num(l) - num(r));
      type_error(op, l, r, pos);
    }
    if (op == "*") {
      if (ints) {
        if (__builtin_mul_overflow(a, b, &z)) fail(pos, "integer overflow");
        return v_int(z);
      }
      if (nums) return v_float(num(l) * num(r));
      if ((l.t == VT::Str || l.t == VT::List) && is_intlike(r)) return repeat(l, ival(r), pos);
      if ((r.t == VT::Str || r.t == VT::List) && is_intlike(l)) return repeat(r, ival(l), pos);
      type_error(op, l, r, pos);
    }
    if (op == "/") {
      if (!nums) type_error(op, l, r, pos);
      if (num(r) == 0) fail(pos, "division by zero");
      return v_float(num(l) / num(r));
    }
    if (op == "//" || op == "%") {
      if (l.t == VT::Str && op == "%") fail(pos, "printf-style string formatting ('%' on strings) is not supported");
      if (!nums) type_error(op, l, r, pos);
      if (num(r) == 0) fail(pos, op == "//" ? "integer division by zero" : "modulo by zero");
      if (ints) {
        if (b == -1) {
          if (op == "%") return v_int(0);
          if (a == std::numeric_limits<int64_t>::min()) fail(pos, "integer overflow");
          return v_int(-a);
        }
        int64_t q = a / b, m = a % b;
        if (m != 0 && ((m < 0) != (b < 0))) {
          q--;
          m += b;
        }
        return v_int(op == "//" ? q : m);
      }
      double x = num(l), y = num(r);
      if (op == "//") return v_float(std::floor(x / y));
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return v_float(m);
    }
    if (op == "**") {
      if (ints && b >= 0) {
        int64_t result = 1, base = a, e = b;
        while (e > 0) {
          if (e & 1)
            if (__builtin_mul_overflow(result, base, &result)) fail(pos, "integer overflow");
          e >>= 1;
          if (e > 0 && __builtin_mul_overflow(base, base, &base)) fail(pos, "integer overflow");
        }
        return v_int(result);
      }
      if (nums) return v_float(std::pow(num(l), num(r)));
      type_error(op, l, r, pos);
    }
    fail(pos, "unknown operator '" + op + "'");
  }

  bool contains(const Value& container, const Value& item, size_t pos) {
    switch (container.t) {
      case VT::Str:
        if (item.t != VT::Str)
          fail(pos, std::string("'in <string>' requires string as left operand, not ") + type_name(item));
        return container.s.find(item.s) != std::string::npos;
      case VT::List:
        for (auto& x : *container.list)
          if (equals(x, item)) return true;
        return false;
      case VT::Dict: return item.t == VT::Str && container.dict->find(item.s) != nullptr;
      case VT::Undefined: return false;
      default:
        fail(pos, std::string("argument of type '") + type_name(container) + "' is not iterable");
    }
  }

  // Three-way ordering for <, >, sort, min, max.
  int order(const Value& l, const Value& r, size_t pos, const char* op = "<") const {
    need(l, pos);
    need(r, pos);
    if (is_num(l) && is_num(r)) {
      if (is_intlike(l) && is_intlike(r)) return ival(l) < ival(r) ? -1 : ival(l) > ival(r);
      double x = num(l), y = num(r);
      return x < y ? -1 : x > y;
    }
    if (l.t == VT::Str && r.t == VT::Str) return l.s < r.s ? -1 : l.s > r.s;
    if (l.t == VT::List && r.t == VT::List) {
      for (size_t k = 0; k < l.list->size() && k < r.list->size(); k++) {
        if (equals((*l.list)[k], (*r.list)[k])) continue;
        return order((*l.list)[k], (*r.list)[k], pos, op);
      }
      return l.list->size() < r.list->size() ? -1 : l.list->size() > r.list->size();
    }
    fail(pos, std::string("'") + op + "' not supported between instances of '" + type_name(l) +
                  "' and '" + type_name(r) + "'");
  }

  bool compare(const std::string& op, const Value& l, const Value& r, size_t pos) {
    if (op == "==") return equals(l, r);
    if (op == "!=") return !equals(l, r);
    if (op == "in") return contains(r, l, pos);
    if (op == "notin") return !contains(r, l, pos);
    int c = order(l, r, pos, op.c_str());
    if (op == "<") return c < 0;
    if (op == ">") return c > 0;
    if (op == "<=") return c <= 0;
    return c >= 0;  // ">="
  }

  // ---- calls ----

  NOINLINE Value eval_call(const Expr& e) {
    const Expr& callee = *e.a[0];
    if (callee.k == EK::Attr) {
      Value obj = eval(*callee.a[0]);
      Args args = eval_args(e, 1);
      return call_method(obj, callee.name, args, e.pos);
    }
    Value f = eval(callee);
    Args args = eval_args(e, 1);
    if (f.t == VT::Macro) return call_macro(*f.macro, args, e.pos);
    if (f.t == VT::Builtin) return call_builtin(f.s, args, e.pos);
    if (f.t == VT::Undefined) need(f, e.pos);
    fail(e.pos, std::string("'") + type_name(f) + "' object is not callable");
  }

  NOINLINE Value call_macro(const Stmt& m, const Args& a, size_t pos) {
    if (macro_depth_ >= kMaxMacroDepth) fail(pos, "macro calls nested too deeply");
    if (a.pos.size() > m.params.size())
      fail(pos, "macro '" + m.text + "' takes " + std::to_string(m.params.size()) + " argument(s)");
    for (auto& kv : a.kw)
      if (std::find(m.params.begin(), m.params.end(), kv.first) == m.params.end())
        fail(pos, "macro '" + m.text + "' got an unexpected keyword argument '" + kv.first + "'");
    macro_depth_++;
    frames_.emplace_back();
    for (size_t k = 0; k < m.params.size(); k++) {
      const Value* v = k < a.pos.size() ? &a.pos[k] : nullptr;
      for (auto& kv : a.kw)
        if (kv.first == m.params[k]) v = &kv.second;
      if (v)
        assign(m.params[k], *v);
      else if (m.defaults[k])
        assign(m.params[k], eval(*m.defaults[k]));
      else
        assign(m.params[k], v_undef("'" + m.params[k] + "' is undefined"));
    }
    sinks_.emplace_back();
    exec_body(m.body);
    Sink out = std::move(sinks_.back());
    sinks_.pop_back();
    frames_.pop_back();
    macro_depth_--;
    return v_str(std::move(out.text), std::move(out.prov));
  }

  NOINLINE Value call_builtin(const std::string& name, const Args& a, size_t pos) {
    if (name == "raise_exception") {
      auto p = bind(a, {"message"}, name, pos);
      fail(pos, "raise_exception: " + (p[0] ? to_str(*p[0]) : std::string()));
    }
    if (name == "range") {
      if (!a.kw.empty()) fail(pos, "range() takes no keyword arguments");
      if (a.pos.empty() || a.pos.size() > 3) fail(pos, "range() expects 1 to 3 arguments");
      int64_t v[3] = {0, 0, 0};
      for (size_t k = 0; k < a.pos.size(); k++) v[k] = int_arg(&a.pos[k], 0, "range()", pos);
      int64_t start = a.pos.size() == 1 ? 0 : v[0], stop = a.pos.size() == 1 ? v[0] : v[1];
      int64_t step = a.pos.size() == 3 ? v[2] : 1;
      if (step == 0) fail(pos, "range() step must not be zero");
      __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
      __int128 mag = step > 0 ? __int128(step) : -__int128(step);
      __int128 count = span <= 0 ? 0 : (span + mag - 1) / mag;
      if (count > kMaxRange) fail(pos, "range() too long");
      List l;
      l.reserve(size_t(count));
      for (int64_t k = 0; k < int64_t(count); k++) l.push_back(v_int(int64_t(start + __int128(k) * step)));
      return v_list(std::move(l));
    }
    if (name == "namespace" || name == "dict") {
      auto d = std::make_shared<Dict>();
      d->is_namespace = name == "namespace";
      for (auto& x : a.pos) {
        if (x.t != VT::Dict) fail(pos, name + "() positional argument must be a mapping");
        for (auto& kv : x.dict->items) d->set(kv.first, kv.second);
      }
      for (auto& kv : a.kw) d->set(kv.first, kv.second);
      return v_dict(std::move(d));
    }
    if (name == "strftime_now") {
      auto p = bind(a, {"format"}, name, pos);
      const std::string& fmt = str_arg(p[0], "strftime_now()", pos);
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      std::string buf(fmt.size() * 8 + 64, '\0');
      size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
      buf.resize(n);
      return v_str(std::move(buf));
    }
    fail(pos, "unknown function '" + name + "'");
  }

  NOINLINE Value call_method(const Value& obj, const std::string& name, const Args& a, size_t pos) {
    need(obj, pos);
    const std::string what = std::string(type_name(obj)) + "." + name + "()";
    if (obj.t == VT::Str) return str_method(obj, name, a, what, pos);
    if (obj.t == VT::Dict) {
      const Dict& d = *obj.dict;
      if (const Value* v = d.find(name)) {
        if (v->t == VT::Macro) return call_macro(*v->macro, a, pos);
        if (v->t == VT::Builtin) return call_builtin(v->s, a, pos);
      }
      if (name == "cycle" && d.find("index0") && d.find("revindex0")) {  // loop.cycle(...)
        if (a.pos.empty()) fail(pos, "loop.cycle() needs at least one argument");
        return a.pos[size_t(d.find("index0")->i) % a.pos.size()];
      }
      if (!d.is_namespace) {
        if (name == "items" || name == "keys" || name == "values") {
          bind(a, {}, what, pos);
          List l;
          for (auto& kv : d.items) {
            if (name == "items")
              l.push_back(v_list({v_str(kv.first), kv.second}));
            else
              l.push_back(name == "keys" ? v_str(kv.first) : kv.second);
          }
          return v_list(std::move(l));
        }
        if (name == "get") {
          auto p = bind(a, {"key", "default"}, what, pos);
          if (!p[0]) fail(pos, what + " is missing a required argument");
          if (p[0]->t == VT::Str)
            if (const Value* v = d.find(p[0]->s)) return *v;
          return p[1] ? *p[1] : v_none();
        }
      }
    }
    if (obj.t == VT::List && (name == "append" || name == "pop" || name == "extend" ||
                              name == "insert" || name == "remove" || name == "clear"))
      fail(pos, "modifying a list (" + what + ") is not allowed in a chat template");
    fail(pos, "unknown method " + what);
  }

  // Python str methods.
  NOINLINE Value str_method(const Value& s, const std::string& name, const Args& a, const std::string& what, size_t pos) {
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      auto p = bind(a, {"chars"}, what, pos);
      if (p[0] && p[0]->t != VT::None && p[0]->t != VT::Str)
        fail(pos, what + " arg must be None or str");
      auto [b, e] = strip_range(s.s, p[0], name != "rstrip", name != "lstrip");
      return substr_v(s, b, e);
    }
    if (name == "split" || name == "rsplit") {
      auto p = bind(a, {"sep", "maxsplit"}, what, pos);
      int64_t maxsplit = int_arg(p[1], -1, what, pos);
      return v_list(split(s, p[0] && p[0]->t != VT::None ? &str_arg(p[0], what, pos) : nullptr,
                          maxsplit, name == "rsplit", what, pos));
    }
    if (name == "splitlines") {
      bind(a, {}, what, pos);
      List out;
      size_t b = 0;
      for (size_t k = 0; k < s.s.size(); k++) {
        if (s.s[k] == '\n' || s.s[k] == '\r') {
          out.push_back(substr_v(s, b, k));
          if (s.s[k] == '\r' && k + 1 < s.s.size() && s.s[k + 1] == '\n') k++;
          b = k + 1;
        }
      }
      if (b < s.s.size()) out.push_back(substr_v(s, b, s.s.size()));
      return v_list(std::move(out));
    }
    if (name == "startswith" || name == "endswith") {
      auto p = bind(a, {"prefix"}, what, pos);
      if (!p[0]) fail(pos, what + " takes exactly one argument");
      std::vector<std::string> cands;
      if (p[0]->t == VT::Str) {
        cands.push_back(p[0]->s);
      } else if (p[0]->t == VT::List) {
        for (auto& x : *p[0]->list) cands.push_back(str_arg(&x, what, pos));
      } else {
        fail(pos, what + " argument must be str or a tuple of str");
      }
      for (auto& c : cands) {
        if (c.size() > s.s.size()) continue;
        if (name == "startswith" ? s.s.compare(0, c.size(), c) == 0
                                 : s.s.compare(s.s.size() - c.size(), c.size(), c) == 0)
          return v_bool(true);
      }
      return v_bool(false);
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      bind(a, {}, what, pos);
      return case_map(s, name);
    }
    if (name == "replace") {
      auto p = bind(a, {"old", "new", "count"}, what, pos);
      return v_str(replace(s.s, str_arg(p[0], what, pos), str_arg(p[1], what, pos),
                           int_arg(p[2], -1, what, pos), pos));
    }
    if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
      auto p = bind(a, {"sub"}, what, pos);
      const std::string& sub = str_arg(p[0], what, pos);
      size_t k = name[0] == 'r' ? s.s.rfind(sub) : s.s.find(sub);
      if (k == std::string::npos) {
        if (name.find("index") != std::string::npos) fail(pos, "substring not found");
        return v_int(-1);
      }
      return v_int(int64_t(cp_count(s.s.substr(0, k))));
    }
    if (name == "count") {
      auto p = bind(a, {"sub"}, what, pos);
      const std::string& sub = str_arg(p[0], what, pos);
      if (sub.empty()) return v_int(int64_t(cp_count(s.s)) + 1);
      int64_t n = 0;
      for (size_t k = s.s.find(sub); k != std::string::npos; k = s.s.find(sub, k + sub.size())) n++;
      return v_int(n);
    }
    if (name == "join") {
      auto p = bind(a, {"iterable"}, what, pos);
      if (!p[0]) fail(pos, what + " takes exactly one argument");
      List items = iterate(*p[0], pos);
      Value out = v_str("");
      for (size_t k = 0; k < items.size(); k++) {
        if (items[k].t != VT::Str)
          fail(pos, "sequence item " + std::to_string(k) + ": expected str instance, " + type_name(items[k]) + " found");
        if (k) out = concat(out, s, pos);
        out = concat(out, items[k], pos);
      }
      return out;
    }
    if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum" ||
        name == "islower" || name == "isupper") {
      bind(a, {}, what, pos);
      if (name == "islower" || name == "isupper") return v_bool(case_test(s.s, name == "islower"));
      if (s.s.empty()) return v_bool(false);
      for (size_t i = 0; i < s.s.size();) {
        size_t j = cp_next(s.s, i);
        uint32_t c = cp_decode(s.s, i, j);
        bool ok = name == "isdigit"   ? (c >= '0' && c <= '9')
                  : name == "isspace" ? py_isspace(c)
                  : name == "isalpha" ? (c < 128 ? std::isalpha(int(c)) != 0 : c >= 0xC0)
                                      : (c < 128 ? std::isalnum(int(c)) != 0 : c >= 0xC0);
        if (!ok) return v_bool(false);
        i = j;
      }
      return v_bool(true);
    }
    fail(pos, "unknown method " + what);
  }

  static bool case_test(const std::string& s, bool lower) {
    bool cased = false;
    for (char c : s) {
      if (c >= 'a' && c <= 'z') {
        if (!lower) return false;
        cased = true;
      } else if (c >= 'A' && c <= 'Z') {
        if (lower) return false;
        cased = true;
      }
    }
    return cased;
  }

  // ASCII case mapping (length-preserving, so provenance is kept).
  static Value case_map(const Value& v, const std::string& how) {
    Value out = v;
    bool prev_alpha = false;
    for (size_t k = 0; k < out.s.size(); k++) {
      char& c = out.s[k];
      bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      bool up;
      if (how == "upper")
        up = true;
      else if (how == "lower")
        up = false;
      else if (how == "title")
        up = !prev_alpha;
      else
        up = k == 0;
      if (alpha) c = up ? char(std::toupper(uint8_t(c))) : char(std::tolower(uint8_t(c)));
      prev_alpha = alpha || (uint8_t(c) >= 0x80 && how == "title" && prev_alpha);
    }
    return out;
  }

  std::string replace(const std::string& s, const std::string& old, const std::string& rep,
                      int64_t count, size_t pos) {
    std::string out;
    int64_t done = 0;
    if (old.empty()) {
      std::vector<size_t> bd = cp_bounds(s);
      for (size_t k = 0; k + 1 < bd.size(); k++) {
        if (count < 0 || done < count) {
          out += rep;
          done++;
        }
        out.append(s, bd[k], bd[k + 1] - bd[k]);
        check_size(out.size(), pos);
      }
      if (count < 0 || done < count) out += rep;
      return out;
    }
    size_t k = 0;
    while (count < 0 || done < count) {
      size_t f = s.find(old, k);
      if (f == std::string::npos) break;
      out.append(s, k, f - k);
      out += rep;
      check_size(out.size(), pos);
      k = f + old.size();
      done++;
    }
    out.append(s, k, std::string::npos);
    return out;
  }

  List split(const Value& s, const std::string* sep, int64_t maxsplit, bool from_right,
             const std::string& what, size_t pos) {
    List out;
    const std::string& t = s.s;
    if (sep && sep->empty()) fail(pos, what + ": empty separator");
    std::vector<std::pair<size_t, size_t>> parts;
    if (sep) {
      if (!from_right) {
        size_t k = 0;
        int64_t n = 0;
        while (maxsplit < 0 || n < maxsplit) {
          size_t f = t.find(*sep, k);
          if (f == std::string::npos) break;
          parts.emplace_back(k, f);
          k = f + sep->size();
          n++;
        }
        parts.emplace_back(k, t.size());
      } else {
        size_t end = t.size();
        int64_t n = 0;
        while (maxsplit < 0 || n < maxsplit) {
          if (end < sep->size()) break;
          size_t f = t.rfind(*sep, end - sep->size());
          if (f == std::string::npos) break;
          parts.emplace_back(f + sep->size(), end);
          end = f;
          n++;
        }
        parts.emplace_back(0, end);
        std::reverse(parts.begin(), parts.end());
      }
    } else {  // runs of whitespace; leading/trailing whitespace ignored
      std::vector<size_t> bd = cp_bounds(t);
      size_t ncp = bd.size() - 1;
      auto ws = [&](size_t k) { return py_isspace(cp_decode(t, bd[k], bd[k + 1])); };
      if (!from_right) {
        size_t k = 0;
        int64_t n = 0;
        while (true) {
          while (k < ncp && ws(k)) k++;
          if (k >= ncp) break;
          if (maxsplit >= 0 && n >= maxsplit) {
            size_t e = ncp;
            while (e > k && ws(e - 1)) e--;
            parts.emplace_back(bd[k], bd[e]);
            break;
          }
          size_t j = k;
          while (j < ncp && !ws(j)) j++;
          parts.emplace_back(bd[k], bd[j]);
          n++;
          k = j;
        }
      } else {
        size_t k = ncp;
        int64_t n = 0;
        while (true) {
          while (k > 0 && ws(k - 1)) k--;
          if (k == 0) break;
          if (maxsplit >= 0 && n >= maxsplit) {
            size_t b = 0;
            while (b < k && ws(b)) b++;
            parts.emplace_back(bd[b], bd[k]);
            break;
          }
          size_t j = k;
          while (j > 0 && !ws(j - 1)) j--;
          parts.emplace_back(bd[j], bd[k]);
          n++;
          k = j;
        }
        std::reverse(parts.begin(), parts.end());
      }
    }
    for (auto [b, e] : parts) out.push_back(substr_v(s, b, e));
    return out;
  }

  // ---- filters ----

  // Attribute lookup for map/selectattr/sort(attribute=...): "a.b" or "a.0" paths.
  Value attr_path(const Value& v, const std::string& path, size_t pos) {
    Value cur = v;
    size_t k = 0;
    while (true) {
      size_t dot = path.find('.', k);
      std::string part = path.substr(k, dot == std::string::npos ? std::string::npos : dot - k);
      bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), is_digit);
      if (numeric && part.size() < 18)
        cur = get_item(cur, v_int(std::stoll(part)), pos);
      else
        cur = cur.t == VT::Dict ? get_attr(cur, part, pos) : get_item(cur, v_str(part), pos);
      if (dot == std::string::npos) return cur;
      k = dot + 1;
    }
  }

  NOINLINE Value apply_filter(const std::string& name, const Value& in, const Args& a, size_t pos) {
    const std::string what = "filter '" + name + "'";
    if (name == "safe") return in;
    if (name == "trim") {
      auto p = bind(a, {"chars"}, what, pos);
      Value s = to_str_v(in);
      auto [b, e] = strip_range(s.s, p[0], true, true);
      return substr_v(s, b, e);
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      bind(a, {}, what, pos);
      return case_map(to_str_v(in), name);
    }
    if (name == "string") return to_str_v(in);
    if (name == "length" || name == "count") {
      switch (in.t) {
        case VT::Str: return v_int(int64_t(cp_count(in.s)));
        case VT::List: return v_int(int64_t(in.list->size()));
        case VT::Dict: return v_int(int64_t(in.dict->items.size()));
        case VT::Undefined: return v_int(0);
        default: fail(pos, std::string("object of type '") + type_name(in) + "' has no len()");
      }
    }
    if (name == "default" || name == "d") {
      auto p = bind(a, {"default_value", "boolean"}, what, pos);
      bool boolean = p[1] && truthy(*p[1]);
      if (in.t == VT::Undefined || (boolean && !truthy(in))) return p[0] ? *p[0] : v_str("");
      return in;
    }
    if (name == "tojson") {
      auto p = bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, what, pos);
      JsonFmt f;
      f.ensure_ascii = p[0] && truthy(*p[0]);
      f.sort_keys = p[3] && truthy(*p[3]);
      if (p[1] && p[1]->t != VT::None) {
        f.pretty = true;
        if (p[1]->t == VT::Str)
          f.indent = p[1]->s;
        else
          f.indent = std::string(size_t(std::clamp<int64_t>(int_arg(p[1], 0, what, pos), 0, 64)), ' ');
        f.item_sep = ",";
      }
      if (p[2] && p[2]->t != VT::None) {
        if (p[2]->t != VT::List || p[2]->list->size() != 2)
          fail(pos, what + ": separators must be an (item_separator, key_separator) pair");
        f.item_sep = str_arg(&(*p[2]->list)[0], what, pos);
        f.key_sep = str_arg(&(*p[2]->list)[1], what, pos);
      }
      std::string out;
      const Value* bad = nullptr;
      if (!to_json(in, out, f, 0, &bad))
        fail(pos, std::string("Object of type ") + type_name(*bad) + " is not JSON serializable");
      check_size(out.size(), pos);
      return v_str(std::move(out));
    }
    if (name == "first" || name == "last") {
      bind(a, {}, what, pos);
      if (in.t == VT::Dict && name == "first") {
        if (in.dict->items.empty()) return v_undef("No first item, sequence was empty.");
        return v_str(in.dict->items.front().first);
      }
      List items = iterate(in, pos);
      if (items.empty()) return v_undef("No " + name + " item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      auto p = bind(a, {"d", "attribute"}, what, pos);
      Value sep = p[0] ? to_str_v(*p[0]) : v_str("");
      List items = iterate(in, pos);
      Value out = v_str("");
      for (size_t k = 0; k < items.size(); k++) {
        if (k) out = concat(out, sep, pos);
        Value x = given(p[1]) ? attr_path(items[k], to_str(*p[1]), pos) : items[k];
        out = concat(out, to_str_v(x), pos);
      }
      return out;
    }
    if (name == "int" || name == "float") {
      auto p = name == "int" ? bind(a, {"default", "base"}, what, pos) : bind(a, {"default"}, what, pos);
      Value dflt = p[0] ? *p[0] : (name == "int" ? v_int(0) : v_float(0.0));
      double d;
      switch (in.t) {
        case VT::Int:
        case VT::Bool: return name == "int" ? v_int(ival(in)) : v_float(double(ival(in)));
        case VT::Float: d = in.f; break;
        case VT::Str: {
          std::string t = in.s;
          auto [b, e] = strip_range(t, nullptr, true, true);
          t = t.substr(b, e - b);
          t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
          int64_t iv;
          auto r = std::from_chars(t.data(), t.data() + t.size(), iv);
          if (r.ec == std::errc() && r.ptr == t.data() + t.size() && !t.empty())
            return name == "int" ? v_int(iv) : v_float(double(iv));
          char* endp = nullptr;
          d = std::strtod(t.c_str(), &endp);
          if (t.empty() || endp != t.c_str() + t.size()) return dflt;
          break;
        }
        default: return dflt;
      }
      if (name == "float") return v_float(d);
      if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return dflt;
      return v_int(int64_t(d));
    }
    if (name == "abs") {
      bind(a, {}, what, pos);
      if (in.t == VT::Float) return v_float(std::fabs(in.f));
      if (is_intlike(in)) {
        if (ival(in) == std::numeric_limits<int64_t>::min()) fail(pos, "integer overflow");
        return v_int(std::llabs(ival(in)));
      }
      fail(pos, std::string("bad operand type for abs(): '") + type_name(in) + "'");
    }
    if (name == "round") {
      auto p = bind(a, {"precision", "method"}, what, pos);
      if (!is_num(in)) fail(pos, std::string("filter 'round' expects a number, got '") + type_name(in) + "'");
      int64_t prec = std::clamp<int64_t>(int_arg(p[0], 0, what, pos), -300, 300);
      std::string method = p[1] ? str_arg(p[1], what, pos) : "common";
      double scale = std::pow(10.0, double(prec)), x = num(in) * scale;
      double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::nearbyint(x);
      if (method != "common" && method != "ceil" && method != "floor")
        fail(pos, "filter 'round': method must be common, ceil or floor");
      return v_float(r / scale);
    }
    if (name == "replace") {
      auto p = bind(a, {"old", "new", "count"}, what, pos);
      Value s = to_str_v(in);
      return v_str(replace(s.s, to_str(p[0] ? *p[0] : v_str("")), to_str(p[1] ? *p[1] : v_str("")),
                           int_arg(p[2], -1, what, pos), pos));
    }
    if (name == "list") {
      bind(a, {}, what, pos);
      return v_list(iterate(in, pos));
    }
    if (name == "items") {
      bind(a, {}, what, pos);
      if (in.t == VT::Undefined) return v_list({});
      if (in.t != VT::Dict) fail(pos, std::string("filter 'items' expects a mapping, got '") + type_name(in) + "'");
      List l;
      for (auto& kv : in.dict->items) l.push_back(v_list({v_str(kv.first), kv.second}));
      return v_list(std::move(l));
    }
    if (name == "escape" || name == "e" || name == "forceescape") {
      bind(a, {}, what, pos);
      std::string out;
      for (char c : to_str(in)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out += c;
        }
      }
      return v_str(std::move(out));
    }
    if (name == "reverse") {
      bind(a, {}, what, pos);
      if (in.t == VT::Str) {
        std::vector<size_t> bd = cp_bounds(in.s);
        std::string out;
        for (size_t k = bd.size() - 1; k > 0; k--) out.append(in.s, bd[k - 1], bd[k] - bd[k - 1]);
        return v_str(std::move(out));
      }
      List l = iterate(in, pos);
      std::reverse(l.begin(), l.end());
      return v_list(std::move(l));
    }
    if (name == "sort" || name == "unique" || name == "min" || name == "max") {
      std::vector<const Value*> p;
      if (name == "sort") {
        p = bind(a, {"reverse", "case_sensitive", "attribute"}, what, pos);
      } else {
        p = bind(a, {"case_sensitive", "attribute"}, what, pos);
        p.insert(p.begin(), nullptr);
      }
      bool rev = p[0] && truthy(*p[0]);
      bool cs = p[1] && truthy(*p[1]);
      std::string attr = given(p[2]) ? to_str(*p[2]) : "";
      List items = iterate(in, pos);
      auto key = [&](const Value& v) {
        Value k = attr.empty() ? v : attr_path(v, attr, pos);
        if (!cs && k.t == VT::Str) k = case_map(k, "lower");
        return k;
      };
      if (name == "sort") {
        std::vector<std::pair<Value, size_t>> keyed;
        for (size_t k = 0; k < items.size(); k++) keyed.emplace_back(key(items[k]), k);
        std::stable_sort(keyed.begin(), keyed.end(), [&](auto& x, auto& y) {
          int c = order(x.first, y.first, pos);
          return rev ? c > 0 : c < 0;
        });
        List out;
        for (auto& kv : keyed) out.push_back(items[kv.second]);
        return v_list(std::move(out));
      }
      if (name == "unique") {
        List out, seen;
        for (auto& x : items) {
          Value k = key(x);
          bool dup = false;
          for (auto& s : seen) dup = dup || equals(s, k);
          if (!dup) {
            seen.push_back(k);
            out.push_back(x);
          }
        }
        return v_list(std::move(out));
      }
      if (items.empty()) return v_undef("No aggregated item, sequence was empty.");
      size_t best = 0;
      for (size_t k = 1; k < items.size(); k++) {
        int c = order(key(items[k]), key(items[best]), pos);
        if (name == "min" ? c < 0 : c > 0) best = k;
      }
      return items[best];
    }
    if (name == "sum") {
      auto p = bind(a, {"attribute", "start"}, what, pos);
      Value acc = p[1] ? *p[1] : v_int(0);
      for (auto& x : iterate(in, pos))
        acc = binop("+", acc, given(p[0]) ? attr_path(x, to_str(*p[0]), pos) : x, pos);
      return acc;
    }
    if (name == "map") {
      List items = iterate(in, pos);
      List out;
      const Value* attr = nullptr;
      const Value* dflt = nullptr;
      for (auto& kv : a.kw) {
        if (kv.first == "attribute")
          attr = &kv.second;
        else if (kv.first == "default")
          dflt = &kv.second;
        else
          fail(pos, what + " got an unexpected keyword argument '" + kv.first + "'");
      }
      if (attr) {
        if (!a.pos.empty()) fail(pos, what + ": use either attribute= or a filter name");
        for (auto& x : items) {
          Value v = attr_path(x, to_str(*attr), pos);
          out.push_back(v.t == VT::Undefined && dflt ? *dflt : v);
        }
        return v_list(std::move(out));
      }
      if (a.pos.empty() || a.pos[0].t != VT::Str) fail(pos, what + " needs a filter name or attribute=");
      const std::string& f = a.pos[0].s;
      if (!known_filters().count(f)) fail(pos, "unknown filter '" + f + "'");
      Args rest;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      for (auto& x : items) out.push_back(apply_filter(f, x, rest, pos));
      return v_list(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      if (!a.kw.empty()) fail(pos, what + " takes no keyword arguments");
      bool by_attr = name == "selectattr" || name == "rejectattr";
      bool keep_if = name == "select" || name == "selectattr";
      size_t k = 0;
      std::string attr;
      if (by_attr) {
        if (a.pos.empty()) fail(pos, what + " needs an attribute name");
        attr = to_str(a.pos[k++]);
      }
      std::string test;
      if (k < a.pos.size()) {
        if (a.pos[k].t != VT::Str) fail(pos, what + ": test name must be a string");
        test = a.pos[k++].s;
        if (!known_tests().count(test)) fail(pos, "unknown test '" + test + "'");
      }
      Args rest;
      rest.pos.assign(a.pos.begin() + long(k), a.pos.end());
      List out;
      for (auto& x : iterate(in, pos)) {
        Value v = by_attr ? attr_path(x, attr, pos) : x;
        bool r = test.empty() ? truthy(v) : apply_test(test, v, rest, pos);
        if (r == keep_if) out.push_back(x);
      }
      return v_list(std::move(out));
    }
    if (name == "indent") {
      auto p = bind(a, {"width", "first", "blank"}, what, pos);
      std::string ind = p[0] && p[0]->t == VT::Str ? p[0]->s
                                                    : std::string(size_t(std::clamp<int64_t>(int_arg(p[0], 4, what, pos), 0, 256)), ' ');
      bool first = p[1] && truthy(*p[1]), blank = p[2] && truthy(*p[2]);
      std::string s = to_str(in), out;
      size_t b = 0;
      bool is_first = true;
      while (true) {
        size_t nl = s.find('\n', b);
        std::string line = s.substr(b, nl == std::string::npos ? std::string::npos : nl - b);
        bool is_blank = std::all_of(line.begin(), line.end(), anyspace);
        if ((!is_first || first) && (blank || !is_blank)) out += ind;
        out += line;
        check_size(out.size(), pos);
        if (nl == std::string::npos) break;
        out += '\n';
        b = nl + 1;
        is_first = false;
      }
      return v_str(std::move(out));
    }
    fail(pos, "unknown filter '" + name + "'");
  }

  NOINLINE bool apply_test(const std::string& name, const Value& v, const Args& a, size_t pos) {
    auto arg = [&]() -> const Value& {
      if (a.pos.size() != 1 || !a.kw.empty()) fail(pos, "test '" + name + "' takes exactly one argument");
      return a.pos[0];
    };
    if (name == "defined") return v.t != VT::Undefined;
    if (name == "undefined") return v.t == VT::Undefined;
    if (name == "none") return v.t == VT::None;
    if (name == "string") return v.t == VT::Str;
    if (name == "number") return is_num(v);
    if (name == "integer") return v.t == VT::Int;
    if (name == "float") return v.t == VT::Float;
    if (name == "boolean") return v.t == VT::Bool;
    if (name == "true") return v.t == VT::Bool && v.b;
    if (name == "false") return v.t == VT::Bool && !v.b;
    if (name == "mapping") return v.t == VT::Dict;
    if (name == "iterable") return v.t == VT::Str || v.t == VT::List || v.t == VT::Dict || v.t == VT::Undefined;
    if (name == "sequence") return v.t == VT::Str || v.t == VT::List || v.t == VT::Dict;
    if (name == "callable") return v.t == VT::Macro || v.t == VT::Builtin;
    if (name == "eq" || name == "equalto" || name == "==") return equals(v, arg());
    if (name == "ne" || name == "!=") return !equals(v, arg());
    if (name == "lt" || name == "lessthan" || name == "<") return order(v, arg(), pos) < 0;
    if (name == "le" || name == "<=") return order(v, arg(), pos) <= 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return order(v, arg(), pos) > 0;
    if (name == "ge" || name == ">=") return order(v, arg(), pos) >= 0;
    if (name == "in") return contains(arg(), v, pos);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      need(v, pos);
      if (!is_intlike(v)) fail(pos, "test '" + name + "' expects an integer");
      int64_t d = name == "divisibleby" ? int_arg(&arg(), 1, "test 'divisibleby'", pos) : 2;
      if (d == 0) fail(pos, "test 'divisibleby': division by zero");
      bool divisible = d == -1 || ival(v) % d == 0;
      return name == "odd" ? !divisible : divisible;
    }
    if (name == "lower" || name == "upper") return v.t == VT::Str && case_test(v.s, name == "lower");
    if (name == "sameas") {
      const Value& o = arg();
      if (v.t != o.t) return false;
      if (v.t == VT::List) return v.list == o.list;
      if (v.t == VT::Dict) return v.dict == o.dict;
      return equals(v, o);
    }
    fail(pos, "unknown test '" + name + "'");
  }
};

std::string normalize_source(const std::string& in, bool keep_trailing_newline) {
  std::string s;
  s.reserve(in.size());
  for (size_t k = 0; k < in.size(); k++) {
    if (in[k] == '\r') {
      s += '\n';
      if (k + 1 < in.size() && in[k + 1] == '\n') k++;
    } else {
      s += in[k];
    }
  }
  if (!keep_trailing_newline && !s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Marks the content of each assistant message (a string) with provenance; returns their count.
uint32_t tag_assistant_contents(Value& messages) {
  uint32_t n = 0;
  if (messages.t != VT::List) return 0;
  for (Value& m : *messages.list) {
    if (m.t != VT::Dict) continue;
    const Value* role = m.dict->find("role");
    if (!role || role->t != VT::Str || role->s != "assistant") continue;
    for (auto& kv : m.dict->items)
      if (kv.first == "content" && kv.second.t == VT::Str) {
        kv.second.prov = {{n, 0, kv.second.s.size()}};
      }
    n++;
  }
  return n;
}

Value messages_value(const std::vector<ChatMessage>& messages) {
  List l;
  for (auto& m : messages) {
    auto d = std::make_shared<Dict>();
    d->items = {{"role", v_str(m.role)}, {"content", v_str(m.content)}};
    l.push_back(v_dict(std::move(d)));
  }
  return v_list(std::move(l));
}

RenderedChat make_spans(Sink&& out, uint32_t n_assistant, const std::string& eos, bool generation) {
  RenderedChat r;
  r.text = std::move(out.text);
  if (generation) {
    std::vector<std::pair<size_t, size_t>> g;
    for (auto& p : out.prov)
      if (p.msg == kGenTag) g.emplace_back(p.b, p.e);
    std::stable_sort(g.begin(), g.end());
    r.assistant_spans = std::move(g);
    return r;
  }
  const size_t none = std::numeric_limits<size_t>::max();
  std::vector<size_t> lo(n_assistant, none), hi(n_assistant, 0);
  for (auto& p : out.prov) {
    if (p.msg >= n_assistant) continue;
    lo[p.msg] = std::min(lo[p.msg], p.b);
    hi[p.msg] = std::max(hi[p.msg], p.e);
  }
  for (uint32_t k = 0; k < n_assistant; k++) {
    if (lo[k] == none) {
      r.assistant_spans.emplace_back(r.text.size(), r.text.size());
      continue;
    }
    size_t e = hi[k];
    if (!eos.empty()) {
      size_t q = e;
      while (q < r.text.size() && anyspace(r.text[q])) q++;
      if (r.text.compare(q, eos.size(), eos) == 0) e = q + eos.size();
    }
    r.assistant_spans.emplace_back(lo[k], e);
  }
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API

struct ChatTemplate::Impl {
  std::string src;
  Body body;
  bool has_generation = false;

  using Globals = std::vector<std::pair<std::string, Value>>;

  Sink run(Globals globals) const {
    try {
      Interp in(src);
      in.set_global("tools", v_none());
      in.set_global("documents", v_none());
      for (auto& kv : globals) in.set_global(kv.first, std::move(kv.second));
      return in.run(body);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("chat template: render failed: ", e.what());
    }
  }

  static Globals from_context(const nlohmann::ordered_json& ctx) {
    if (!ctx.is_object()) fail("chat template: the context must be a JSON object");
    Globals g;
    for (auto it = ctx.begin(); it != ctx.end(); ++it) g.emplace_back(it.key(), from_json(*it));
    return g;
  }

  static Globals chat_globals(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                              const std::string& bos, const std::string& eos,
                              const nlohmann::ordered_json* extra) {
    Globals g;
    if (extra && !extra->is_null()) g = from_context(*extra);
    g.emplace_back("messages", messages_value(messages));
    g.emplace_back("add_generation_prompt", v_bool(add_generation_prompt));
    g.emplace_back("bos_token", v_str(bos));
    g.emplace_back("eos_token", v_str(eos));
    return g;
  }
};

ChatTemplate::ChatTemplate(const std::string& source, ChatTemplateOptions opts)
    : impl_(std::make_unique<Impl>()) {
  impl_->src = normalize_source(source, opts.keep_trailing_newline);
  try {
    Lexer lex(impl_->src, opts);
    Parser parser(impl_->src, lex.run());
    impl_->body = parser.parse_template();
    impl_->has_generation = parser.has_generation;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("chat template: parse failed: ", e.what());
  }
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

bool ChatTemplate::uses_generation_blocks() const { return impl_->has_generation; }

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token) const {
  return impl_->run(Impl::chat_globals(messages, add_generation_prompt, bos_token, eos_token, nullptr)).text;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const nlohmann::ordered_json& extra) const {
  return impl_->run(Impl::chat_globals(messages, add_generation_prompt, bos_token, eos_token, &extra)).text;
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& context) const {
  return impl_->run(Impl::from_context(context)).text;
}

RenderedChat ChatTemplate::render_with_spans(const std::vector<ChatMessage>& messages,
                                             const std::string& bos_token,
                                             const std::string& eos_token) const {
  Impl::Globals g = Impl::chat_globals(messages, false, bos_token, eos_token, nullptr);
  uint32_t n = 0;
  for (auto& kv : g)
    if (kv.first == "messages") n = tag_assistant_contents(kv.second);
  return make_spans(impl_->run(std::move(g)), n, eos_token, impl_->has_generation);
}

RenderedChat ChatTemplate::render_json_with_spans(const nlohmann::ordered_json& context) const {
  Impl::Globals g = Impl::from_context(context);
  uint32_t n = 0;
  std::string eos;
  for (auto& kv : g) {
    if (kv.first == "messages") n = tag_assistant_contents(kv.second);
    if (kv.first == "eos_token" && kv.second.t == VT::Str) eos = kv.second.s;
  }
  return make_spans(impl_->run(std::move(g)), n, eos, impl_->has_generation);
}

std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const std::string& bos_token,
                                 const std::string& eos_token) {
  return ChatTemplate(tmpl).render(messages, add_generation_prompt, bos_token, eos_token);
}

RenderedChat render_chat_with_spans(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                    const std::string& bos_token, const std::string& eos_token) {
  return ChatTemplate(tmpl).render_with_spans(messages, bos_token, eos_token);
}

bool is_known_chat_role(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

const char* known_chat_roles() { return "system, user, assistant, tool"; }

}  // namespace lowrank
