// Loading tokenizer.json / tokenizer_config.json / GGUF SentencePiece vocabularies, and the
// encode/decode drivers. Component semantics live in tok_pipeline.cpp and tok_models.cpp.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "tokenizer/tok_impl.h"

namespace lowrank {

namespace tok {

using json = nlohmann::json;

namespace {

constexpr int kMaxNesting = 32;          // nested Sequence components
constexpr size_t kMaxJsonDepth = 512;    // JSON nesting accepted at all
constexpr int64_t kMaxId = 1 << 26;      // ids above this are rejected (no real vocabulary is that big)

const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::shared_ptr<const Regex> gpt2_regex() {
  static const std::shared_ptr<const Regex> re = std::make_shared<Regex>(kGpt2Pattern, false);
  return re;
}

// Rejects absurdly deep JSON before nlohmann builds (and later destroys) it.
bool json_too_deep(const std::string& s) {
  size_t depth = 0;
  bool in_str = false, esc = false;
  for (char c : s) {
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      depth--;
    }
  }
  return false;
}

struct Loader {
  std::string src;

  [[noreturn]] void err(const std::string& what) const { fail("file ", src, ": ", what); }

  json parse(const std::string& text) const {
    if (json_too_deep(text)) err("JSON nested too deeply");
    try {
      return json::parse(text);
    } catch (const json::exception& e) {
      err(std::string("invalid JSON: ") + json_error_text(e));
    }
  }

  const json* opt(const json& o, const char* key) const {
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json& req(const json& o, const char* key, const std::string& where) const {
    const json* v = opt(o, key);
    if (!v) err(where + ": missing \"" + key + "\"");
    return *v;
  }
  std::string str(const json& v, const std::string& where) const {
    if (!v.is_string()) err(where + " must be a string, got " + v.type_name());
    return v.get<std::string>();
  }
  std::string req_str(const json& o, const char* key, const std::string& where) const {
    return str(req(o, key, where), where + "." + key);
  }
  std::string opt_str(const json& o, const char* key, const std::string& where, const std::string& def = "") const {
    const json* v = opt(o, key);
    return v ? str(*v, where + "." + key) : def;
  }
  bool opt_bool(const json& o, const char* key, const std::string& where, bool def) const {
    const json* v = opt(o, key);
    if (!v) return def;
    if (!v->is_boolean()) err(where + "." + key + " must be a boolean, got " + v->type_name());
    return v->get<bool>();
  }
  int64_t integer(const json& v, const std::string& where, int64_t lo, int64_t hi) const {
    int64_t x;
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) err(where + " is out of range");
      x = int64_t(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else {
      err(where + " must be an integer, got " + std::string(v.type_name()));
    }
    if (x < lo || x > hi) err(where + " = " + std::to_string(x) + " is out of range");
    return x;
  }
  int64_t opt_int(const json& o, const char* key, const std::string& where, int64_t def, int64_t lo,
                  int64_t hi) const {
    const json* v = opt(o, key);
    return v ? integer(*v, where + "." + key, lo, hi) : def;
  }
  const json& array(const json& v, const std::string& where) const {
    if (!v.is_array()) err(where + " must be an array, got " + std::string(v.type_name()));
    return v;
  }
  const json& object(const json& v, const std::string& where) const {
    if (!v.is_object()) err(where + " must be an object, got " + std::string(v.type_name()));
    return v;
  }
  std::string type_of(const json& o, const std::string& where) const {
    object(o, where);
    return req_str(o, "type", where);
  }
  uint32_t one_char(const json& v, const std::string& where) const {
    std::string s = str(v, where);
    size_t i = 0;
    if (s.empty()) err(where + " must be a single character");
    uint32_t cp = next_cp(s, i);
    if (i != s.size()) err(where + " must be a single character, got \"" + s + "\"");
    return cp;
  }
  std::shared_ptr<const Regex> pattern(const json& o, const std::string& where) const {
    const json& p = object(req(o, "pattern", where), where + ".pattern");
    bool literal;
    const json* v;
    if ((v = opt(p, "String"))) literal = true;
    else if ((v = opt(p, "Regex"))) literal = false;
    else err(where + ".pattern must have \"String\" or \"Regex\"");
    std::string pat = str(*v, where + ".pattern");
    try {
      return std::make_shared<Regex>(pat, literal);
    } catch (const std::exception& e) {
      err(where + ".pattern: invalid regex \"" + pat + "\": " + e.what());
    }
  }
  PrependScheme scheme(const json& o, const std::string& where) const {
    const json* v = opt(o, "prepend_scheme");
    if (v) {
      std::string s = str(*v, where + ".prepend_scheme");
      if (s == "first") return PrependScheme::First;
      if (s == "always") return PrependScheme::Always;
      if (s == "never") return PrependScheme::Never;
      err(where + ".prepend_scheme: unknown value \"" + s + "\"");
    }
    // Files written before prepend_scheme existed use add_prefix_space.
    return opt_bool(o, "add_prefix_space", where, true) ? PrependScheme::Always : PrependScheme::Never;
  }
  Behavior behavior(const json& o, const std::string& where, Behavior def) const {
    const json* v = opt(o, "behavior");
    if (!v) return def;
    std::string s = str(*v, where + ".behavior");
    if (s == "Removed") return Behavior::Removed;
    if (s == "Isolated") return Behavior::Isolated;
    if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
    if (s == "MergedWithNext") return Behavior::MergedWithNext;
    if (s == "Contiguous") return Behavior::Contiguous;
    err(where + ".behavior: unknown value \"" + s + "\"");
  }

  // ------------------------------------------------------------ components

  Normalizer normalizer(const json& o, const std::string& where, int depth) const {
    if (depth > kMaxNesting) err(where + ": nested too deeply");
    std::string t = type_of(o, where);
    Normalizer n;
    using K = Normalizer::Kind;
    if (t == "Sequence") {
      n.kind = K::Sequence;
      const json& list = array(req(o, "normalizers", where), where + ".normalizers");
      for (size_t i = 0; i < list.size(); i++)
        n.children.push_back(normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "Prepend") {
      n.kind = K::Prepend;
      n.text = req_str(o, "prepend", where);
    } else if (t == "Replace") {
      n.kind = K::Replace;
      n.re = pattern(o, where);
      n.text = req_str(o, "content", where);
    } else if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
      n.kind = K::NF;
      n.form = t == "NFC" ? NormForm::NFC : t == "NFD" ? NormForm::NFD : t == "NFKC" ? NormForm::NFKC : NormForm::NFKD;
    } else if (t == "Lowercase") {
      n.kind = K::Lowercase;
    } else if (t == "StripAccents") {
      n.kind = K::StripAccents;
    } else if (t == "Strip") {
      n.kind = K::Strip;
      n.left = opt_bool(o, "strip_left", where, true);
      n.right = opt_bool(o, "strip_right", where, true);
    } else if (t == "ByteLevel") {
      n.kind = K::ByteLevel;
    } else {
      err(where + ": unsupported normalizer type \"" + t + "\"");
    }
    return n;
  }

  PreTokenizer pre_tokenizer(const json& o, const std::string& where, int depth) const {
    if (depth > kMaxNesting) err(where + ": nested too deeply");
    std::string t = type_of(o, where);
    PreTokenizer p;
    using K = PreTokenizer::Kind;
    if (t == "Sequence") {
      p.kind = K::Sequence;
      const json& list = array(req(o, "pretokenizers", where), where + ".pretokenizers");
      for (size_t i = 0; i < list.size(); i++)
        p.children.push_back(
            pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "ByteLevel") {
      p.kind = K::ByteLevel;
      p.add_prefix_space = opt_bool(o, "add_prefix_space", where, true);
      p.use_regex = opt_bool(o, "use_regex", where, true);
      opt_bool(o, "trim_offsets", where, true);
      p.re = gpt2_regex();
    } else if (t == "Split") {
      p.kind = K::Split;
      p.re = pattern(o, where);
      p.behavior = behavior(o, where, Behavior::Isolated);
      if (!opt(o, "behavior")) err(where + ": missing \"behavior\"");
      p.invert = opt_bool(o, "invert", where, false);
    } else if (t == "Metaspace") {
      p.kind = K::Metaspace;
      p.replacement = opt(o, "replacement") ? one_char(o["replacement"], where + ".replacement") : 0x2581;
      p.prepend = scheme(o, where);
      p.split = opt_bool(o, "split", where, true);
    } else if (t == "Digits") {
      p.kind = K::Digits;
      p.behavior = opt_bool(o, "individual_digits", where, false) ? Behavior::Isolated : Behavior::Contiguous;
    } else if (t == "Whitespace") {
      p.kind = K::Whitespace;
    } else if (t == "WhitespaceSplit") {
      p.kind = K::WhitespaceSplit;
    } else if (t == "Punctuation") {
      p.kind = K::Punctuation;
      p.behavior = behavior(o, where, Behavior::Isolated);
    } else if (t == "BertPreTokenizer") {
      p.kind = K::Bert;
    } else if (t == "CharDelimiterSplit") {
      p.kind = K::CharDelimiter;
      p.replacement = one_char(req(o, "delimiter", where), where + ".delimiter");
    } else {
      err(where + ": unsupported pre_tokenizer type \"" + t + "\"");
    }
    return p;
  }

  Decoder decoder(const json& o, const std::string& where, int depth) const {
    if (depth > kMaxNesting) err(where + ": nested too deeply");
    std::string t = type_of(o, where);
    Decoder d;
    using K = Decoder::Kind;
    if (t == "Sequence") {
      d.kind = K::Sequence;
      const json& list = array(req(o, "decoders", where), where + ".decoders");
      for (size_t i = 0; i < list.size(); i++)
        d.children.push_back(decoder(list[i], where + ".decoders[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "ByteLevel") {
      d.kind = K::ByteLevel;
    } else if (t == "Metaspace") {
      d.kind = K::Metaspace;
      d.ch = opt(o, "replacement") ? one_char(o["replacement"], where + ".replacement") : 0x2581;
      d.prepend = scheme(o, where);
    } else if (t == "Replace") {
      d.kind = K::Replace;
      d.re = pattern(o, where);
      d.text = req_str(o, "content", where);
    } else if (t == "ByteFallback") {
      d.kind = K::ByteFallback;
    } else if (t == "Fuse") {
      d.kind = K::Fuse;
    } else if (t == "Strip") {
      d.kind = K::Strip;
      d.ch = one_char(req(o, "content", where), where + ".content");
      d.start = size_t(opt_int(o, "start", where, 0, 0, kMaxId));
      d.stop = size_t(opt_int(o, "stop", where, 0, 0, kMaxId));
    } else if (t == "BPEDecoder") {
      d.kind = K::BPE;
      d.text = opt_str(o, "suffix", where, "</w>");
    } else {
      err(where + ": unsupported decoder type \"" + t + "\"");
    }
    return d;
  }

  // Template piece: {"SpecialToken": {"id": ..}} / {"Sequence": {"id": "A"}} or "$A" / "<s>" / "<s>:1".
  void template_piece(const json& v, const json* specials, const std::string& where,
                      std::vector<TemplateItem>& out) const {
    bool is_seq;
    std::string id;
    if (v.is_string()) {
      std::string s = v.get<std::string>();
      if (!s.empty() && s[0] == '$') {
        is_seq = true;
        std::string rest = s.substr(1);
        size_t colon = rest.find(':');
        id = colon == std::string::npos ? rest : rest.substr(0, colon);
        if (id.empty() || id == "0") id.assign(1, 'A');
        if (id == "1") id.assign(1, 'B');
      } else {
        is_seq = false;
        size_t colon = s.rfind(':');
        id = colon == std::string::npos ? s : s.substr(0, colon);
      }
    } else if (v.is_object()) {
      const json* p;
      if ((p = opt(v, "Sequence"))) {
        is_seq = true;
        id = req_str(object(*p, where + ".Sequence"), "id", where + ".Sequence");
      } else if ((p = opt(v, "SpecialToken"))) {
        is_seq = false;
        id = req_str(object(*p, where + ".SpecialToken"), "id", where + ".SpecialToken");
      } else {
        err(where + " must be a Sequence or SpecialToken piece");
      }
    } else {
      err(where + " must be an object or a string");
    }
    if (is_seq) {
      if (id != "A" && id != "B") err(where + ": unknown sequence id \"" + id + "\"");
      if (id == "A") out.push_back(TemplateItem{true, {}});
      return;
    }
    const json* sp = specials ? opt(*specials, id.c_str()) : nullptr;
    if (!sp) err(where + ": special token \"" + id + "\" is missing from special_tokens");
    const json& ids = array(req(object(*sp, where), "ids", where + " special token \"" + id + "\""),
                            where + " special token \"" + id + "\".ids");
    TemplateItem item;
    for (const auto& x : ids) item.ids.push_back(int32_t(integer(x, where + ".ids[]", 0, kMaxId)));
    out.push_back(std::move(item));
  }

  void post_processor(const json& o, const std::string& where, int depth,
                      std::vector<std::vector<TemplateItem>>& out) const {
    if (depth > kMaxNesting) err(where + ": nested too deeply");
    std::string t = type_of(o, where);
    if (t == "Sequence") {
      const json& list = array(req(o, "processors", where), where + ".processors");
      for (size_t i = 0; i < list.size(); i++)
        post_processor(list[i], where + ".processors[" + std::to_string(i) + "]", depth + 1, out);
    } else if (t == "ByteLevel") {
      // Only trims offsets; ids are unchanged.
    } else if (t == "TemplateProcessing") {
      const json& single = req(o, "single", where);
      const json* specials = opt(o, "special_tokens");
      if (specials) object(*specials, where + ".special_tokens");
      std::vector<TemplateItem> tmpl;
      if (single.is_string()) {
        std::string s = single.get<std::string>();
        size_t i = 0;
        while (i < s.size()) {
          while (i < s.size() && s[i] == ' ') i++;
          size_t j = i;
          while (j < s.size() && s[j] != ' ') j++;
          if (j > i) template_piece(json(s.substr(i, j - i)), specials, where + ".single", tmpl);
          i = j;
        }
      } else {
        array(single, where + ".single");
        for (size_t i = 0; i < single.size(); i++)
          template_piece(single[i], specials, where + ".single[" + std::to_string(i) + "]", tmpl);
      }
      out.push_back(std::move(tmpl));
    } else if (t == "RobertaProcessing" || t == "BertProcessing") {
      auto pair_id = [&](const char* key) {
        const json& p = array(req(o, key, where), where + "." + key);
        if (p.size() != 2) err(where + "." + key + " must be [token, id]");
        str(p[0], where + "." + key + "[0]");
        return int32_t(integer(p[1], where + "." + key + "[1]", 0, kMaxId));
      };
      int32_t cls = pair_id("cls"), sep = pair_id("sep");
      out.push_back({TemplateItem{false, {cls}}, TemplateItem{true, {}}, TemplateItem{false, {sep}}});
    } else {
      err(where + ": unsupported post_processor type \"" + t + "\"");
    }
  }

  void model(const json& o, Impl& im) const {
    object(o, "model");
    const json* tv = opt(o, "type");
    std::string t = tv ? str(*tv, "model.type") : (opt(o, "merges") ? "BPE" : "");
    if (t != "BPE") err("model: unsupported model type \"" + t + "\" (only BPE is supported)");
    BpeModel& m = im.bpe;
    auto& mv = im.model_vocab;
    m.vocab = &mv;
    const json& vocab = object(req(o, "vocab", "model"), "model.vocab");
    mv.reserve(vocab.size() * 2);
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      int64_t id = integer(it.value(), "model.vocab[\"" + it.key() + "\"]", 0, kMaxId);
      mv[it.key()] = int32_t(id);
      max_id = std::max(max_id, id);
    }
    if (max_id >= 0 && size_t(max_id) > 2 * vocab.size() + 1024)
      err("model.vocab: ids are not dense (max id " + std::to_string(max_id) + " for " +
          std::to_string(vocab.size()) + " tokens)");
    const json* unk = opt(o, "unk_token");
    if (unk) {
      m.has_unk = true;
      m.unk_token = str(*unk, "model.unk_token");
    }
    m.prefix = opt_str(o, "continuing_subword_prefix", "model");
    m.suffix = opt_str(o, "end_of_word_suffix", "model");
    m.fuse_unk = opt_bool(o, "fuse_unk", "model", false);
    m.byte_fallback = opt_bool(o, "byte_fallback", "model", false);
    m.ignore_merges = opt_bool(o, "ignore_merges", "model", false);
    if (const json* d = opt(o, "dropout")) {
      if (!d->is_number()) err("model.dropout must be a number or null");
      double p = d->get<double>();
      if (!(p >= 0.0 && p <= 1.0)) err("model.dropout must be in [0, 1]");
      // Dropout only applies when training; encode() is deterministic like HF inference with
      // dropout 0. A positive dropout makes HF's output random, so it cannot be reproduced.
    }
    for (int b = 0; b < 256; b++) {
      char name[8];
      snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = mv.find(name);
      m.byte_ids[b] = it == mv.end() ? -1 : it->second;
    }
    for (int c = 0; c < 128; c++) {
      auto it = mv.find(std::string(1, char(c)));
      m.single_byte_ids[c] = it == mv.end() ? -1 : it->second;
    }

    const json* merges = opt(o, "merges");
    std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>> entries;
    if (merges) {
      array(*merges, "model.merges");
      entries.reserve(merges->size());
      size_t prefix_len = m.prefix.size();
      std::string a, b;
      for (size_t r = 0; r < merges->size(); r++) {
        const json& e = (*merges)[r];
        std::string where = "model.merges[" + std::to_string(r) + "]";
        if (e.is_string()) {
          const std::string& line = e.get_ref<const std::string&>();
          size_t sp = line.find(' ');
          if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
            err(where + ": \"" + line + "\" is not of the form \"a b\"");
          a = line.substr(0, sp);
          b = line.substr(sp + 1);
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          a = e[0].get<std::string>();
          b = e[1].get<std::string>();
        } else {
          err(where + " must be \"a b\" or [\"a\", \"b\"]");
        }
        auto ia = mv.find(a);
        if (ia == mv.end()) err(where + ": token \"" + a + "\" is not in the vocabulary");
        auto ib = mv.find(b);
        if (ib == mv.end()) err(where + ": token \"" + b + "\" is not in the vocabulary");
        if (b.size() < prefix_len) err(where + ": token \"" + b + "\" is shorter than continuing_subword_prefix");
        std::string merged = a + b.substr(prefix_len);
        auto im2 = mv.find(merged);
        if (im2 == mv.end()) err(where + ": merged token \"" + merged + "\" is not in the vocabulary");
        uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
        entries.push_back({key, {int32_t(r), im2->second}});
      }
    }
    m.merges.build(entries);
  }
};

std::string token_name(const json* v) {
  if (!v) return "";
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) {
    auto it = v->find("content");
    if (it != v->end() && it->is_string()) return it->get<std::string>();
  }
  return "";
}


// Builds the AddedVocabulary the way HF does (AddedVocabulary::add_tokens): an id comes from the
// vocabulary when the content is already known, otherwise the next free id after the model's.
struct AddedBuilder {
  Impl& im;
  const Loader& L;
  std::vector<AddedToken> special_list, classic_list;
  std::unordered_set<std::string> special_set;
  int64_t max_added = -1;

  void add(AddedToken t, const std::string& where) {
    if (t.special && !t.content.empty() && !special_set.count(t.content)) {
      special_set.insert(t.content);
      special_list.push_back(t);
    }
    if (t.content.empty()) return;
    auto a = im.added_vocab.find(t.content);
    if (a != im.added_vocab.end()) {
      auto r = im.added_r.find(a->second);
      if (r != im.added_r.end()) {
        const AddedToken& e = r->second;
        if (e.content == t.content && e.single_word == t.single_word && e.lstrip == t.lstrip &&
            e.rstrip == t.rstrip && e.normalized == t.normalized && e.special == t.special)
          return;  // exact duplicate
      }
    }
    int64_t model_size = int64_t(im.model_vocab.size());
    int64_t id;
    auto mv = im.model_vocab.find(t.content);
    if (a != im.added_vocab.end()) id = a->second;
    else if (mv != im.model_vocab.end()) id = mv->second;
    else if (max_added < 0) id = model_size;
    else id = (max_added >= model_size || model_size == 0) ? max_added + 1 : model_size;
    if (id > kMaxId) L.err(where + ": too many added tokens");
    max_added = std::max(max_added, id);
    t.id = int32_t(id);
    im.added_vocab[t.content] = t.id;
    im.added_r[t.id] = t;
    if (!special_set.count(t.content)) classic_list.push_back(t);
  }

  AddedToken parse(const json& o, const std::string& where, bool default_special) const {
    AddedToken t;
    if (o.is_string()) {
      t.content = o.get<std::string>();
      t.special = default_special;
      t.normalized = !t.special;
      return t;
    }
    L.object(o, where);
    t.content = L.req_str(o, "content", where);
    t.special = L.opt_bool(o, "special", where, default_special);
    t.single_word = L.opt_bool(o, "single_word", where, false);
    t.lstrip = L.opt_bool(o, "lstrip", where, false);
    t.rstrip = L.opt_bool(o, "rstrip", where, false);
    t.normalized = L.opt_bool(o, "normalized", where, !t.special);
    return t;
  }

  // Matching tries: special tokens first, then the others (the first identical pattern wins).
  void build_tries(bool split_special_tokens) {
    for (const auto* list : {&special_list, &classic_list}) {
      for (const auto& t : *list) {
        if (split_special_tokens && special_set.count(t.content)) continue;  // matched as plain text
        int32_t id = im.added_vocab.at(t.content);
        if (!t.normalized) {
          im.trie_raw.add(t.content, id);
        } else {
          std::string pat = t.content;
          if (im.has_normalizer) im.normalizer.apply(pat);
          im.trie_norm.add(pat, id);
        }
      }
    }
  }
};

void finish_vocab(Impl& im, const std::unordered_set<std::string>& specials) {
  int64_t size = 0;
  for (const auto& [t, id] : im.model_vocab) size = std::max<int64_t>(size, int64_t(id) + 1);
  for (const auto& [t, id] : im.added_vocab) size = std::max<int64_t>(size, int64_t(id) + 1);
  im.id_to_token.assign(size_t(size), std::string());
  im.present.assign(size_t(size), 0);
  im.special.assign(size_t(size), 0);
  for (const auto& [t, id] : im.model_vocab) {
    im.id_to_token[id] = t;
    im.present[id] = 1;
  }
  for (const auto& [id, tok] : im.added_r) {
    im.id_to_token[id] = tok.content;
    im.present[id] = 1;
  }
  for (size_t id = 0; id < im.id_to_token.size(); id++)
    if (im.present[id] && specials.count(im.id_to_token[id])) im.special[id] = 1;
}

std::shared_ptr<Impl> load_hf(const std::string& text, const std::string& source, const std::string& cfg_text,
                              const std::string& cfg_source) {
  auto im = std::make_shared<Impl>();
  im->mode = Impl::Mode::HF;
  im->source = source;
  Loader L{source};
  Loader C{cfg_source};
  json root = L.parse(text);
  if (!root.is_object()) L.err("expected a JSON object at the top level");
  json cfg = json::object();
  if (!cfg_text.empty()) {
    cfg = C.parse(cfg_text);
    if (!cfg.is_object()) C.err("expected a JSON object");
  }
  AddedBuilder added{*im, L};
  try {
    if (const json* v = L.opt(root, "version")) {
      if (L.str(*v, "version") != "1.0") L.err("unknown tokenizer.json version \"" + v->get<std::string>() + "\"");
    }
    L.model(L.req(root, "model", "tokenizer.json"), *im);
    if (const json* n = L.opt(root, "normalizer")) {
      im->normalizer = L.normalizer(*n, "normalizer", 0);
      im->has_normalizer = true;
    }
    if (const json* p = L.opt(root, "pre_tokenizer")) {
      im->pre_tokenizer = L.pre_tokenizer(*p, "pre_tokenizer", 0);
      im->has_pre_tokenizer = true;
    }
    if (const json* d = L.opt(root, "decoder")) {
      im->decoder = L.decoder(*d, "decoder", 0);
      im->has_decoder = true;
    }
    if (const json* p = L.opt(root, "post_processor")) {
      L.post_processor(*p, "post_processor", 0, im->post);
      im->has_post = true;
    }
    if (const json* at = L.opt(root, "added_tokens")) {
      L.array(*at, "added_tokens");
      for (size_t i = 0; i < at->size(); i++) {
        std::string where = "added_tokens[" + std::to_string(i) + "]";
        const json& o = L.object((*at)[i], where);
        L.integer(L.req(o, "id", where), where + ".id", 0, kMaxId);
        added.add(added.parse(o, where, false), where);
      }
    }
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    L.err(std::string("malformed tokenizer.json: ") + json_error_text(e));
  } catch (const std::exception& e) {
    L.err(std::string("cannot load tokenizer: ") + e.what());
  }

  // tokenizer_config.json, as transformers' TokenizersBackend reads it.
  bool split_special = false;
  try {
    im->bos_token = token_name(C.opt(cfg, "bos_token"));
    im->eos_token = token_name(C.opt(cfg, "eos_token"));
    im->pad_token = token_name(C.opt(cfg, "pad_token"));
    if (im->pad_token.empty()) {
      // transformers falls back to tokenizer.json's padding settings.
      const json* pad = L.opt(root, "padding");
      if (pad && pad->is_object()) {
        auto it = pad->find("pad_token");
        if (it != pad->end() && it->is_string()) im->pad_token = it->get<std::string>();
      }
    }
    if (const json* ct = C.opt(cfg, "chat_template")) {
      if (ct->is_string()) {
        im->chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        for (const auto& e : *ct)
          if (e.is_object() && e.contains("name") && e["name"] == "default" && e.contains("template") &&
              e["template"].is_string())
            im->chat_template = e["template"].get<std::string>();
      } else if (!ct->is_null()) {
        fail(cfg_source, ": chat_template must be a string or a list of {\"name\", \"template\"} objects, not ",
             ct->type_name());
      }
    }
    split_special = C.opt_bool(cfg, "split_special_tokens", "tokenizer_config", false);
    // Tokens the config knows but tokenizer.json does not are added (as transformers does).
    auto known = [&](const std::string& content) { return im->added_vocab.count(content) > 0; };
    if (const json* atd = C.opt(cfg, "added_tokens_decoder")) {
      C.object(*atd, "added_tokens_decoder");
      std::vector<std::pair<int64_t, const json*>> entries;
      for (auto it = atd->begin(); it != atd->end(); ++it) {
        char* end = nullptr;
        long long k = std::strtoll(it.key().c_str(), &end, 10);
        entries.push_back({(end && *end == 0) ? k : 0, &it.value()});
      }
      std::stable_sort(entries.begin(), entries.end(), [](auto& x, auto& y) { return x.first < y.first; });
      for (auto& [k, v] : entries) {
        AddedToken t = added.parse(*v, "added_tokens_decoder", false);
        if (!known(t.content)) added.add(t, "tokenizer_config added_tokens_decoder");
      }
    }
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
      const json* v = C.opt(cfg, key);
      if (!v || (!v->is_string() && !v->is_object())) continue;
      AddedToken t = added.parse(*v, key, true);
      t.special = true;
      if (!known(t.content)) added.add(t, key);
    }
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
      const json* v = C.opt(cfg, key);
      if (!v || !(v->is_array() || v->is_object())) continue;
      for (const auto& e : *v) {
        if (!e.is_string() && !e.is_object()) continue;
        AddedToken t = added.parse(e, key, true);
        if (!known(t.content)) added.add(t, key);
      }
    }
    // transformers rebuilds the post-processor from bos/eos when the config sets
    // add_bos_token/add_eos_token, or when tokenizer.json has none.
    bool explicit_flags = cfg.contains("add_bos_token") || cfg.contains("add_eos_token");
    if (explicit_flags || !im->has_post) {
      auto flag = [&](const char* k) {
        const json* v = C.opt(cfg, k);
        if (v && !v->is_boolean()) C.err(std::string(k) + " must be a boolean");
        return v && v->get<bool>();
      };
      bool add_bos = flag("add_bos_token"), add_eos = flag("add_eos_token");
      std::vector<TemplateItem> tmpl;
      auto special_item = [&](const std::string& name) {
        int32_t id = im->lookup(name);
        if (id < 0) C.err("token \"" + name + "\" to add is not in the vocabulary");
        tmpl.push_back(TemplateItem{false, {id}});
      };
      if (add_bos && !im->bos_token.empty()) special_item(im->bos_token);
      tmpl.push_back(TemplateItem{true, {}});
      if (add_eos && !im->eos_token.empty()) special_item(im->eos_token);
      im->post.assign(1, std::move(tmpl));
      im->has_post = true;
    }
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    C.err(std::string("malformed tokenizer_config.json: ") + json_error_text(e));
  }
  added.build_tries(split_special);
  finish_vocab(*im, added.special_set);
  im->bos = im->bos_token.empty() ? -1 : im->lookup(im->bos_token);
  im->eos = im->eos_token.empty() ? -1 : im->lookup(im->eos_token);
  im->pad = im->pad_token.empty() ? -1 : im->lookup(im->pad_token);
  return im;
}

std::string config_source_for(const std::string& source) {
  const std::string name = "tokenizer.json";
  if (source.size() >= name.size() && source.compare(source.size() - name.size(), name.size(), name) == 0)
    return source.substr(0, source.size() - name.size()) + "tokenizer_config.json";
  return source + " (tokenizer_config)";
}

}  // namespace

// ---------------------------------------------------------------- Impl

int32_t Impl::lookup(const std::string& t) const {
  auto a = added_vocab.find(t);
  if (a != added_vocab.end()) return a->second;
  auto m = model_vocab.find(t);
  if (m != model_vocab.end()) return m->second;
  return -1;
}

namespace {
bool is_word_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  static const Regex re("^\\w", false);
  std::string s;
  append_utf8(s, cp);
  return is_mark(cp) || re.matches_at(s, 0);
}
}  // namespace

// HF AddedVocabulary::find_matches + split_with_indices.
void Impl::split_added(std::string_view s, const TokenTrie& trie, bool at_start, std::vector<Segment>& out) const {
  if (s.empty()) return;
  if (trie.empty()) {
    out.push_back(Segment{-1, std::string(s), at_start});
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  auto emit_text = [&](size_t a, size_t b) {
    if (b > a) out.push_back(Segment{-1, std::string(s.substr(a, b - a)), at_start && a == 0});
  };
  while (pos < s.size()) {
    if (!trie.may_start((unsigned char)s[pos])) {
      pos++;
      continue;
    }
    size_t len = 0;
    int32_t id = trie.longest_at(s, pos, len);
    if (id < 0) {
      pos++;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // matches never overlap
    const AddedToken& tok = added_r.at(id);
    if (tok.single_word) {
      bool start_space = true, stop_space = true;
      if (start > 0) {
        size_t i = start;
        start_space = !is_word_cp(prev_cp(s, i));
      }
      if (stop < s.size()) {
        size_t i = stop;
        stop_space = !is_word_cp(next_cp(s, i));
      }
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t i = ns;
        if (!is_whitespace(prev_cp(s, i))) break;
        ns = i;
      }
      start = std::max(ns, start_offset);
    }
    if (tok.rstrip) {
      while (stop < s.size()) {
        size_t i = stop;
        if (!is_whitespace(next_cp(s, i))) break;
        stop = i;
      }
    }
    if (start_offset < start) emit_text(start_offset, start);
    out.push_back(Segment{id, std::string(), false});
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < s.size()) emit_text(start_offset, s.size());
}

std::vector<int32_t> Impl::encode(const std::string& input, bool add_special) const {
  if (mode != Mode::HF) return encode_llama(input, add_special);
  std::vector<int32_t> ids;
  try {
    std::string owned;
    const std::string* text = &input;
    if (!is_valid_utf8(input)) {
      owned = utf8_lossy(input);
      text = &owned;
    }
    std::vector<Segment> raw;
    split_added(*text, trie_raw, true, raw);
    std::vector<Segment> segs;
    std::vector<Piece> pieces;
    for (auto& r : raw) {
      if (r.id >= 0) {
        ids.push_back(r.id);
        continue;
      }
      if (has_normalizer) normalizer.apply(r.text);
      segs.clear();
      split_added(r.text, trie_norm, r.at_start, segs);
      for (auto& sg : segs) {
        if (sg.id >= 0) {
          ids.push_back(sg.id);
          continue;
        }
        pieces.clear();
        pieces.push_back(Piece{std::move(sg.text), sg.at_start});
        if (has_pre_tokenizer) pre_tokenizer.apply(pieces);
        for (const auto& p : pieces) bpe.tokenize(p.text, ids, source);
      }
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("file ", source, ": cannot encode text: ", e.what());
  }
  if (add_special && has_post) {
    {
      for (const auto& tmpl : post) {
        std::vector<int32_t> next;
        next.reserve(ids.size() + 4);
        for (const auto& item : tmpl) {
          if (item.is_sequence) next.insert(next.end(), ids.begin(), ids.end());
          else next.insert(next.end(), item.ids.begin(), item.ids.end());
        }
        ids.swap(next);
      }
    }
  }
  return ids;
}

std::string Impl::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= id_to_token.size() || !present[id]) continue;
    if (skip_special && special[id]) continue;
    tokens.push_back(id_to_token[id]);
  }
  try {
    if (has_decoder) {
      decoder.decode_chain(tokens);
      std::string out;
      for (const auto& t : tokens) out += t;
      return out;
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("file ", source, ": cannot decode ids: ", e.what());
  }
  std::string out;
  for (size_t k = 0; k < tokens.size(); k++) {
    if (k) out.push_back(' ');
    out += tokens[k];
  }
  return out;
}

}  // namespace tok

// ---------------------------------------------------------------- public API

Tokenizer::Tokenizer(std::shared_ptr<const tok::Impl> impl) : impl_(std::move(impl)) {
  // The longest token string (UTF-8 bytes; byte-level and <0xXX> spellings are at least as
  // long as the bytes they stand for), for encode_bounded.
  for (const std::string& t : impl_->id_to_token) max_token_bytes_ = std::max<int64_t>(max_token_bytes_, int64_t(t.size()));
  for (const auto& [text, id] : impl_->added_vocab) max_token_bytes_ = std::max<int64_t>(max_token_bytes_, int64_t(text.size()));
}
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json,
                               const std::string& source) {
  return Tokenizer(tok::load_hf(tokenizer_json, source, tokenizer_config_json, tok::config_source_for(source)));
}

Tokenizer Tokenizer::from_hf_dir(const std::string& dir) {
  std::string base = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  std::string tok_path = base + "tokenizer.json";
  std::string cfg_path = base + "tokenizer_config.json";
  if (!file_exists(tok_path)) fail("file ", tok_path, ": not found");
  std::string tok_text = read_text_file(tok_path, kTokenizerFileCap);
  std::string cfg_text = file_exists(cfg_path) ? read_text_file(cfg_path, kTokenizerFileCap) : std::string();
  auto im = tok::load_hf(tok_text, tok_path, cfg_text, cfg_path);
  std::string jinja = base + "chat_template.jinja";
  if (im->chat_template.empty() && file_exists(jinja)) im->chat_template = read_text_file(jinja);
  return Tokenizer(std::move(im));
}

Tokenizer Tokenizer::from_sentencepiece_vocab(std::vector<std::string> tokens, std::vector<float> scores,
                                              std::vector<int32_t> types, int32_t bos, int32_t eos, int32_t unk,
                                              bool add_bos, bool add_eos) {
  LlamaVocab v;
  v.kind = LlamaVocab::Kind::Spm;
  v.source = "sentencepiece vocabulary";
  v.tokens = std::move(tokens);
  v.scores = std::move(scores);
  v.types = std::move(types);
  v.bos = bos;
  v.eos = eos;
  v.unk = unk;
  v.add_bos = add_bos;
  v.add_eos = add_eos;
  v.add_space_prefix = true;
  return from_llama_vocab(std::move(v));
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::vector<int32_t> Tokenizer::encode_bounded(const std::string& text, int64_t max_tokens, bool add_special_tokens) const {
  // Every token stands for at most max_token_bytes_ bytes of text, so a longer text cannot fit:
  // refused before any work, which bounds tokenization to O(max_tokens · max_token_bytes).
  if (max_tokens < 0) max_tokens = 0;
  if (int64_t(text.size()) > max_tokens * max_token_bytes_ + 16)
    fail("the text (", text.size(), " bytes) is longer than ", max_tokens, " tokens can be (at most ",
         max_token_bytes_, " bytes per token)");
  std::vector<int32_t> ids = impl_->encode(text, add_special_tokens);
  if (int64_t(ids.size()) > max_tokens)
    fail("the text is ", ids.size(), " tokens, more than the limit of ", max_tokens);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::token_to_id(const std::string& t) const { return impl_->lookup(t); }

const std::string& Tokenizer::id_to_token(int32_t id) const {
  static const std::string empty;
  if (id < 0 || size_t(id) >= impl_->id_to_token.size()) return empty;
  return impl_->id_to_token[id];
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->id_to_token.size()); }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->special.size() && impl_->special[id];
}
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
const std::string& Tokenizer::chat_template() const { return chat_template_ ? *chat_template_ : impl_->chat_template; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
Tokenizer Tokenizer::with_chat_template(std::string tmpl) const {
  Tokenizer t(*this);
  t.chat_template_ = std::make_shared<const std::string>(std::move(tmpl));
  return t;
}
const std::string& Tokenizer::pad_token() const { return impl_->pad_token; }

}  // namespace lowrank
