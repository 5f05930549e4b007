// tokenizer.ggml.* metadata for a Hugging Face model dir, as llama.cpp's convert_hf_to_gguf.py
// writes it (conversion/base.py get_vocab_base / _set_vocab_gpt2 / _create_vocab_sentencepiece /
// _set_vocab_llama_hf, conversion/phi.py, gguf-py's SpecialVocab), from tokenizer.json alone.
//
// Where the converter needs something tokenizer.json does not hold, or would write a file that
// llama.cpp tokenizes differently from Hugging Face, lowrank decides as follows:
//   - tokenizer.ggml.pre: llama.cpp hashes the tokenization of a test text; here the
//     pre-tokenizer of tokenizer.json is matched structurally (exact regex strings) against the
//     ones llama.cpp implements, and anything else is refused.
//   - SentencePiece scores: tokenizer.json has merges, not scores. llama.cpp's LlamaHfVocab
//     writes -1000 for every token, which makes llama.cpp's SPM merge the leftmost pair first
//     instead of in BPE order. Here a piece made by merge r (the first merge that produces it)
//     gets score -r: llama.cpp's highest-score-first order is then the merges' rank order,
//     which is how Hugging Face's converter ordered the merges (by SentencePiece score).
//   - add_bos_token / add_eos_token are always written, with what the Hugging Face tokenizer
//     does (its post-processor and tokenizer_config flags), so llama.cpp's per-pre-tokenizer
//     defaults never apply.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"

namespace lowrank {

namespace {

using json = nlohmann::json;

constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;
const char* kSpace = "\xE2\x96\x81";  // "▁"

// The pre-tokenizer regexes of tokenizer.json that llama.cpp's pre-tokenizers implement.
const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

json read_json(const std::string& path, bool required, size_t cap = kSmallFileCap) {
  if (!file_exists(path)) {
    if (required) fail(path, ": not found");
    return json();
  }
  try {
    return json::parse(read_text_file(path, cap));
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", json_error_text(e));
  }
}

std::string str_or_content(const json* v) {
  if (!v) return "";
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object() && v->contains("content") && (*v)["content"].is_string()) return (*v)["content"].get<std::string>();
  return "";
}

const json* field(const json& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string type_of(const json* o) {
  const json* t = o ? field(*o, "type") : nullptr;
  return t && t->is_string() ? t->get<std::string>() : "";
}

bool flag(const json& o, const char* key, bool def) {
  const json* v = field(o, key);
  return v && v->is_boolean() ? v->get<bool>() : def;
}

// conversion/base.py does_token_look_special.
bool looks_special(const std::string& t) {
  auto starts = [&](const char* p) { return t.rfind(p, 0) == 0; };
  auto ends = [&](const char* s) {
    size_t n = std::strlen(s);
    return t.size() >= n && t.compare(t.size() - n, n, s) == 0;
  };
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts("<|") && ends("|>")) return true;
  if (starts("<\xEF\xBD\x9C") && ends("\xEF\xBD\x9C>")) return true;  // <｜ ... ｜>
  if (starts("<unused") && ends(">")) return true;
  return false;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

bool is_byte_token(const std::string& t) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

int utf8_char_len(unsigned char c) { return c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1; }

struct Added {
  int32_t id;
  std::string content;
  bool special, normalized;
};

}  // namespace

void gguf_write_tokenizer(GgufWriter& w, const std::string& hf_dir, const std::string& model_type) {
  const std::string base = hf_dir.empty() || hf_dir.back() == '/' ? hf_dir : hf_dir + "/";
  const std::string tj_path = base + "tokenizer.json", tc_path = base + "tokenizer_config.json";
  const std::string cfg_path = base + "config.json";
  static const std::unordered_set<std::string> kFamilies = {"llama", "mistral", "qwen2", "qwen3", "gemma2",
                                                            "gemma3", "gemma3_text", "phi3", "gpt2"};
  if (!kFamilies.count(model_type))
    fail(cfg_path, ": model_type \"", model_type,
         "\": converting its tokenizer is not supported (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, gpt2)");
  if (!file_exists(tj_path))
    fail(tj_path, ": not found (a tokenizer.json is needed; SentencePiece tokenizer.model files are not read)");
  const json tj = read_json(tj_path, true, kTokenizerFileCap);
  const json tc = read_json(tc_path, false, kTokenizerFileCap);
  const json cfg = read_json(cfg_path, false);
  if (!tj.is_object()) fail(tj_path, ": expected a JSON object");
  const Tokenizer hf = Tokenizer::from_hf_dir(hf_dir);  // validates everything and gives HF's behaviour

  const json* model = field(tj, "model");
  if (!model || type_of(model) != "BPE")
    fail(tj_path, ": model.type \"", type_of(model), "\" cannot be converted (only BPE models)");
  const json* vocab = field(*model, "vocab");
  if (!vocab || !vocab->is_object()) fail(tj_path, ": model.vocab must be an object");
  const json* norm = field(tj, "normalizer");
  const json* pre = field(tj, "pre_tokenizer");
  const json* dec = field(tj, "decoder");

  // Added tokens: tokenizer.json's, then the ones only tokenizer_config.json declares.
  std::vector<Added> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_set<int32_t> config_added;  // ids listed in tokenizer_config's added_tokens_decoder
  auto add_added = [&](const json& o, int64_t id) {
    if (!o.is_object() || id < 0) return;
    Added a{int32_t(id), str_or_content(&o), flag(o, "special", false), flag(o, "normalized", !flag(o, "special", false))};
    if (added_by_id.count(a.id)) return;
    added_by_id[a.id] = added.size();
    added.push_back(a);
  };
  if (const json* at = field(tj, "added_tokens"); at && at->is_array())
    for (const json& o : *at)
      if (const json* id = field(o, "id"); id && id->is_number_integer()) add_added(o, id->get<int64_t>());
  if (const json* atd = field(tc, "added_tokens_decoder"); atd && atd->is_object())
    for (auto it = atd->begin(); it != atd->end(); ++it) {
      char* end = nullptr;
      long long id = std::strtoll(it.key().c_str(), &end, 10);
      if (!end || *end) continue;
      add_added(it.value(), id);
      config_added.insert(int32_t(id));
    }

  // vocab size: config.json's, else the largest id + 1.
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it)
    if (it.value().is_number_integer()) max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
  for (const Added& a : added) max_id = std::max<int64_t>(max_id, a.id);
  int64_t n_vocab = max_id + 1;
  if (const json* vs = field(cfg, "vocab_size"); vs && vs->is_number_integer()) {
    n_vocab = vs->get<int64_t>();
    if (max_id >= n_vocab)
      fail(cfg_path, ": vocab_size ", n_vocab, " is smaller than the tokenizer's largest id ", max_id);
  }
  if (n_vocab <= 0 || n_vocab > (int64_t(1) << 26)) fail(tj_path, ": bad vocabulary size ", n_vocab);

  // Which kind of tokenizer: byte-level BPE or SentencePiece-style BPE.
  const bool byte_fallback = flag(*model, "byte_fallback", false);
  const bool ignore_merges = flag(*model, "ignore_merges", false);
  auto byte_level = [](const json* p, bool use_regex) {
    return p && type_of(p) == "ByteLevel" && !flag(*p, "add_prefix_space", true) && flag(*p, "use_regex", true) == use_regex;
  };
  std::string gguf_pre;
  bool spm = false, add_space_prefix = false;
  if (type_of(dec) == "ByteLevel" && !byte_fallback) {
    if (norm && type_of(norm) != "NFC")
      fail(tj_path, ": normalizer \"", type_of(norm), "\" with a byte-level BPE: llama.cpp has no such normalizer");
    const json* seq = pre && type_of(pre) == "Sequence" ? field(*pre, "pretokenizers") : nullptr;
    if (byte_level(pre, true)) {
      gguf_pre = "gpt-2";
    } else if (seq && seq->is_array() && seq->size() == 2) {
      const json& a = (*seq)[0];
      const json& b = (*seq)[1];
      if (type_of(&a) == "Split" && byte_level(&b, false) && field(a, "behavior") &&
          (*field(a, "behavior")) == "Isolated" && !flag(a, "invert", false)) {
        const json* pat = field(a, "pattern");
        const json* re = pat ? field(*pat, "Regex") : nullptr;
        std::string r = re && re->is_string() ? re->get<std::string>() : "";
        if (r == kLlama3Regex) gguf_pre = ignore_merges ? "llama-bpe" : "smaug-bpe";
        else if (r == kQwen2Regex) gguf_pre = "qwen2";
      } else if (type_of(&a) == "Digits" && flag(a, "individual_digits", false) && byte_level(&b, true)) {
        gguf_pre = "smollm";
      }
    }
    if (gguf_pre.empty())
      fail(tj_path, ": the pre-tokenizer ", pre ? pre->dump() : std::string("null"),
           " is not one llama.cpp implements here (Llama-3, Qwen2, SmolLM or GPT-2 style); cannot choose tokenizer.ggml.pre");
    if (ignore_merges != (gguf_pre == "llama-bpe"))
      fail(tj_path, ": model.ignore_merges = ", ignore_merges ? "true" : "false", " does not match llama.cpp's \"",
           gguf_pre, "\" pre-tokenizer");
    if (norm && gguf_pre != "qwen2") fail(tj_path, ": an NFC normalizer is only known with the Qwen2 pre-tokenizer");
  } else if (byte_fallback && type_of(dec) == "Sequence") {
    // SentencePiece converted to BPE: "▁" for spaces (normalizer Replace, optionally Prepend,
    // or a Metaspace pre-tokenizer), <0xXX> byte fallback, decoder Replace + ByteFallback + Fuse.
    spm = true;
    auto is_space_replace = [&](const json* n) {
      if (type_of(n) != "Replace") return false;
      const json* pat = field(*n, "pattern");
      const json* s = pat ? field(*pat, "String") : nullptr;
      const json* c = field(*n, "content");
      return s && s->is_string() && *s == " " && c && c->is_string() && *c == kSpace;
    };
    bool replace = false, prepend = false, other = false;
    std::vector<const json*> norms;
    if (type_of(norm) == "Sequence") {
      if (const json* l = field(*norm, "normalizers"); l && l->is_array())
        for (const json& x : *l) norms.push_back(&x);
    } else if (norm) {
      norms.push_back(norm);
    }
    for (const json* n : norms) {
      if (is_space_replace(n)) replace = true;
      else if (type_of(n) == "Prepend" && field(*n, "prepend") && *field(*n, "prepend") == kSpace) prepend = true;
      else other = true;
    }
    bool pre_ok = !pre;
    if (pre && type_of(pre) == "Split") {
      // Gemma: Split(" ", MergedWithPrevious) after the normalizer removed every " ": no effect.
      const json* pat = field(*pre, "pattern");
      const json* s = pat ? field(*pat, "String") : nullptr;
      pre_ok = replace && s && s->is_string() && *s == " ";
    }
    if (pre && type_of(pre) == "Metaspace" && norms.empty()) {
      const json* rep = field(*pre, "replacement");
      std::string scheme = field(*pre, "prepend_scheme") && field(*pre, "prepend_scheme")->is_string()
                               ? field(*pre, "prepend_scheme")->get<std::string>()
                               : (flag(*pre, "add_prefix_space", true) ? "always" : "never");
      pre_ok = (!rep || *rep == kSpace) && !flag(*pre, "split", true);
      replace = true;
      prepend = scheme != "never";
    }
    if (!replace || other || !pre_ok)
      fail(tj_path, ": normalizer ", norm ? norm->dump() : "null", " / pre_tokenizer ", pre ? pre->dump() : "null",
           " is not a SentencePiece-style tokenizer that llama.cpp's \"llama\" vocabulary can express");
    add_space_prefix = prepend;
    if (model_type == "gemma2" || model_type == "gemma3" || model_type == "gemma3_text") {
      if (add_space_prefix) fail(tj_path, ": a Gemma tokenizer that adds a space prefix is not expected");
    }
    if (const json* ap = field(tc, "add_prefix_space"); ap && ap->is_boolean() && ap->get<bool>() != add_space_prefix)
      fail(tc_path, ": add_prefix_space = ", ap->get<bool>() ? "true" : "false",
           " disagrees with tokenizer.json (transformers rebuilds the tokenizer from tokenizer.model then)");
  } else {
    fail(tj_path, ": neither a byte-level BPE nor a SentencePiece-style BPE tokenizer (decoder \"", type_of(dec),
         "\", byte_fallback ", byte_fallback ? "true" : "false", ")");
  }
  if (spm && (model_type == "qwen2" || model_type == "qwen3" || model_type == "gpt2"))
    fail(tj_path, ": a SentencePiece-style tokenizer for model_type ", model_type, " is not expected");
  if (!spm && (model_type == "gemma2" || model_type == "gemma3" || model_type == "gemma3_text"))
    fail(tj_path, ": a byte-level BPE tokenizer for model_type ", model_type, " is not expected");

  // Tokens by id.
  std::vector<std::string> tokens(static_cast<size_t>(n_vocab));
  std::vector<uint8_t> present(size_t(n_vocab), 0);
  int64_t n_base = 0;  // model vocab entries
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    int64_t id = it.value().get<int64_t>();
    tokens[id] = it.key();
    present[id] = 1;
    n_base++;
  }
  for (const Added& a : added) {
    tokens[a.id] = a.content;
    present[a.id] = 1;
  }

  std::vector<int32_t> types(size_t(n_vocab), kNormal);
  std::vector<float> scores;
  std::vector<std::string> merges;
  if (const json* m = field(*model, "merges"); m && m->is_array()) {
    merges.reserve(m->size());
    for (const json& e : *m) {
      if (e.is_string()) {
        merges.push_back(e.get<std::string>());
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        // gguf-py: spaces inside the pair's parts are written as U+0120 ("Ġ").
        merges.push_back(replace_all(e[0].get<std::string>(), " ", "\xC4\xA0") + " " +
                         replace_all(e[1].get<std::string>(), " ", "\xC4\xA0"));
      } else {
        fail(tj_path, ": model.merges must hold \"a b\" strings or [a, b] pairs");
      }
    }
  }

  // Token ids the HF tokenizer counts as special (transformers' all_special_ids).
  std::unordered_set<int32_t> special_ids;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (std::string t = str_or_content(field(tc, key)); !t.empty() && hf.token_to_id(t) >= 0) special_ids.insert(hf.token_to_id(t));
  if (const json* ast = field(tc, "additional_special_tokens"); ast && ast->is_array())
    for (const json& e : *ast)
      if (std::string t = str_or_content(&e); !t.empty() && hf.token_to_id(t) >= 0) special_ids.insert(hf.token_to_id(t));
  const std::string unk_token = str_or_content(field(*model, "unk_token"));

  if (!spm) {
    // conversion/base.py get_vocab_base.
    for (int64_t i = 0; i < n_vocab; i++) {
      if (!present[i]) {
        tokens[i] = "[PAD" + std::to_string(i) + "]";
        types[i] = kUnused;
        continue;
      }
      auto a = added_by_id.find(int32_t(i));
      if (a == added_by_id.end()) continue;
      const Added& ad = added[a->second];
      std::string t = ad.content;
      // llama.cpp expects control and user-defined tokens pre-normalized.
      if (!ad.normalized) t = hf.decode(hf.encode(t, false));
      if (ad.special || looks_special(t)) {
        types[i] = kControl;
      } else {
        t = replace_all(t, kSpace, " ");
        types[i] = kUserDefined;
      }
      tokens[i] = t;
    }
  } else {
    // Scores from the merges: the first merge that produces a piece gives its rank.
    std::unordered_map<std::string, int64_t> first_rank;
    first_rank.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); r++) {
      const std::string& m = merges[r];
      size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) fail(tj_path, ": model.merges[", r, "] has no space");
      first_rank.emplace(m.substr(0, sp) + m.substr(sp + 1), int64_t(r));
    }
    const float unreachable = -float(merges.size() + 1);
    scores.assign(size_t(n_vocab), -10000.0f);
    const bool phi3 = model_type == "phi3";
    const bool gemma = model_type == "gemma2" || model_type == "gemma3" || model_type == "gemma3_text";
    for (int64_t i = 0; i < n_vocab; i++) {
      if (!present[i]) {
        tokens[i] = "[PAD" + std::to_string(i) + "]";
        types[i] = kUnused;
        continue;
      }
      const std::string& t = tokens[i];
      auto fr = first_rank.find(t);
      // A single character is never the result of a merge; any other piece that no merge
      // produces comes after every merge (llama.cpp could still form it; HF never does).
      const bool one_char = !t.empty() && size_t(utf8_char_len((unsigned char)t[0])) == t.size();
      scores[i] = fr != first_rank.end() ? -float(fr->second) : (one_char ? 0.0f : unreachable);
      if (is_byte_token(t)) {
        types[i] = kByte;
        scores[i] = 0.0f;
      } else if (t == unk_token && !phi3) {
        types[i] = gemma ? kUnknown : kControl;
        scores[i] = 0.0f;
      }
      auto a = added_by_id.find(int32_t(i));
      if (phi3) {
        // conversion/phi.py: every added token is user-defined, or control when special.
        if (a != added_by_id.end()) {
          types[i] = added[a->second].special ? kControl : kUserDefined;
          scores[i] = -1000.0f;
        }
      } else if (gemma) {
        // _create_vocab_sentencepiece: tokenizer_config's added_tokens_decoder entries.
        if (a != added_by_id.end() && config_added.count(int32_t(i))) {
          const Added& ad = added[a->second];
          if (ad.special || looks_special(ad.content)) {
            types[i] = kControl;
          } else {
            tokens[i] = replace_all(ad.content, kSpace, " ");
            types[i] = kUserDefined;
          }
          scores[i] = -1000.0f;
        } else if (a != added_by_id.end() && added[a->second].special && types[i] == kNormal) {
          types[i] = kControl;
          scores[i] = 0.0f;
        }
      } else {
        // gguf-py LlamaHfVocab: control = transformers' special ids, bytes, the rest normal;
        // added tokens past the model vocabulary are user-defined unless special.
        if (special_ids.count(int32_t(i)) && types[i] != kByte) {
          types[i] = kControl;
          scores[i] = -1000.0f;
        } else if (a != added_by_id.end() && i >= n_base) {
          types[i] = added[a->second].special ? kControl : kUserDefined;
          scores[i] = -1000.0f;
        }
      }
    }
  }

  // Special token ids (gguf-py SpecialVocab): tokenizer_config names looked up among
  // tokenizer.json's added tokens, then config.json's *_token_id.
  auto added_id_of = [&](const std::string& content) -> int64_t {
    if (content.empty()) return -1;
    if (const json* at = field(tj, "added_tokens"); at && at->is_array())
      for (const json& o : *at)
        if (str_or_content(&o) == content && field(o, "id") && field(o, "id")->is_number_integer())
          return field(o, "id")->get<int64_t>();
    return -1;
  };
  std::string bos_t = str_or_content(field(tc, "bos_token")), eos_t = str_or_content(field(tc, "eos_token"));
  const std::string cls_t = str_or_content(field(tc, "cls_token")), sep_t = str_or_content(field(tc, "sep_token"));
  if (bos_t.empty() && !cls_t.empty()) bos_t = cls_t;
  if (eos_t.empty() && !sep_t.empty()) eos_t = sep_t;
  if (bos_t.empty()) {  // a leading special token of the post-processor's template
    const json* pp = field(tj, "post_processor");
    std::vector<const json*> procs;
    if (type_of(pp) == "Sequence" && field(*pp, "processors") && field(*pp, "processors")->is_array()) {
      for (const json& p : *field(*pp, "processors")) procs.push_back(&p);
    } else if (pp) {
      procs.push_back(pp);
    }
    for (const json* p : procs) {
      const json* single = type_of(p) == "TemplateProcessing" ? field(*p, "single") : nullptr;
      if (single && single->is_array() && single->size() > 1) {
        const json* st = field((*single)[0], "SpecialToken");
        if (st && field(*st, "id") && field(*st, "id")->is_string()) bos_t = field(*st, "id")->get<std::string>();
      }
    }
  }
  std::unordered_map<std::string, int64_t> ids;
  auto set_id = [&](const std::string& typ, int64_t id) {
    if (id < 0 || id >= n_vocab || ids.count(typ)) return;
    ids[typ] = id;
  };
  set_id("bos", added_id_of(bos_t));
  set_id("eos", added_id_of(eos_t));
  set_id("unk", added_id_of(str_or_content(field(tc, "unk_token"))));
  set_id("sep", added_id_of(sep_t));
  set_id("pad", added_id_of(str_or_content(field(tc, "pad_token"))));
  set_id("mask", added_id_of(str_or_content(field(tc, "mask_token"))));
  for (const char* typ : {"bos", "eos", "unk", "sep", "pad", "mask"}) {
    const json* v = field(cfg, (std::string(typ) + "_token_id").c_str());
    if (!v) {
      const json* text_cfg = field(cfg, "text_config");
      v = text_cfg ? field(*text_cfg, (std::string(typ) + "_token_id").c_str()) : nullptr;
    }
    if (v && v->is_number_integer()) set_id(typ, v->get<int64_t>());
  }

  // What the HF tokenizer adds around a text.
  const int32_t hf_bos = hf.bos_id(), hf_eos = hf.eos_id();
  std::vector<int32_t> with = hf.encode("a"), without = hf.encode("a", false);
  const bool add_bos = with.size() > without.size() && hf_bos >= 0 && with.front() == hf_bos;
  const bool add_eos = with.size() > without.size() && hf_eos >= 0 && with.back() == hf_eos;
  if (with.size() != without.size() + size_t(add_bos) + size_t(add_eos))
    fail(tj_path, ": the post-processor adds tokens other than BOS/EOS, which llama.cpp cannot express");
  if (add_bos && (!ids.count("bos") || ids["bos"] != hf_bos)) ids["bos"] = hf_bos;
  if (add_eos && (!ids.count("eos") || ids["eos"] != hf_eos)) ids["eos"] = hf_eos;

  w.set_string("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  w.set_string("tokenizer.ggml.pre", spm ? "default" : gguf_pre);
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  if (spm) w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  if (!spm) w.set_string_array("tokenizer.ggml.merges", merges);
  static const std::vector<std::pair<const char*, const char*>> kIdKeys = {
      {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},
      {"pad", "tokenizer.ggml.padding_token_id"}, {"mask", "tokenizer.ggml.mask_token_id"}};
  for (const auto& [typ, key] : kIdKeys)
    if (ids.count(typ)) w.set_u32(key, uint32_t(ids[typ]));
  w.set_bool("tokenizer.ggml.add_bos_token", add_bos);
  w.set_bool("tokenizer.ggml.add_eos_token", add_eos);
  if (spm) {
    w.set_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  } else if (const json* ap = field(tc, "add_prefix_space");
             ap && ap->is_boolean() && (model_type == "llama" || model_type == "mistral")) {
    w.set_bool("tokenizer.ggml.add_space_prefix", ap->get<bool>());  // LlamaModel.set_vocab; unused for BPE
  }

  // Chat template(s): tokenizer_config's chat_template, else chat_template.jinja / .json.
  json tmpl;
  if (const json* ct = field(tc, "chat_template")) tmpl = *ct;
  if (tmpl.is_null() && file_exists(base + "chat_template.jinja")) tmpl = read_text_file(base + "chat_template.jinja");
  if (tmpl.is_null()) {
    json ctj = read_json(base + "chat_template.json", false);
    if (const json* ct = field(ctj, "chat_template")) tmpl = *ct;
  }
  if (tmpl.is_string()) {
    w.set_string("tokenizer.chat_template", tmpl.get<std::string>());
  } else if (tmpl.is_array()) {
    std::vector<std::string> names;
    for (const json& e : tmpl) {
      std::string name = str_or_content(field(e, "name")), text;
      if (const json* t = field(e, "template"); t && t->is_string()) text = t->get<std::string>();
      else continue;
      for (char& c : name)
        if (!std::isalnum((unsigned char)c)) c = '_';
      if (name.empty()) continue;
      if (name == "default") {
        w.set_string("tokenizer.chat_template", text);
      } else {
        w.set_string("tokenizer.chat_template." + name, text);
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      }
    }
    if (!names.empty()) w.set_string_array("tokenizer.chat_templates", names);
  } else if (!tmpl.is_null()) {
    fail(tc_path, ": chat_template must be a string or a list of {name, template}");
  }
}

}  // namespace lowrank
