// GGUF tokenizers, read as llama.cpp's llama_vocab::impl::load reads them: the defaults it
// applies for absent keys, the token attributes it derives from token texts and model names,
// and refusal of everything it would tokenize differently from what lowrank implements.
#include "tokenizer/gguf_vocab.h"

#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "core/error.h"
#include "io/gguf.h"

namespace lowrank {

namespace {

constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4;

// An optional token id key; `def` when absent. Out of range ids are refused (llama.cpp would
// warn and keep its default).
int32_t token_id(const GgufFile& f, const char* key, int32_t def, size_t n) {
  if (def >= 0 && size_t(def) >= n) def = -1;
  const GgufValue* v = f.find(key);
  if (!v) return def;
  if (!v->is_int()) fail(f.path(), ": ", key, " must be an integer, got ", gguf_type_name(v->type));
  int64_t id = v->as_int();
  if (id < 0 || uint64_t(id) >= n) fail(f.path(), ": ", key, " = ", id, " is out of range [0, ", n, ")");
  return int32_t(id);
}

bool opt_bool(const GgufFile& f, const char* key, bool def) {
  const GgufValue* v = f.find(key);
  if (!v) return def;
  if (v->type != GGUF_BOOL) fail(f.path(), ": ", key, " must be a bool, got ", gguf_type_name(v->type));
  return v->as_bool();
}

const GgufValue& need_array(const GgufFile& f, const char* key, uint32_t elem_type) {
  const GgufValue* v = f.find(key);
  if (!v) fail(f.path(), ": ", key, " is missing");
  if (!v->is_array()) fail(f.path(), ": ", key, " must be an array, got ", gguf_type_name(v->type));
  if (elem_type == GGUF_STRING && v->elem_type != GGUF_STRING)
    fail(f.path(), ": ", key, " must be an array of strings, got an array of ", gguf_type_name(v->elem_type));
  return *v;
}

}  // namespace

Tokenizer gguf_tokenizer(const std::string& path) { return gguf_tokenizer(GgufFile::open(path)); }

Tokenizer gguf_tokenizer(const GgufFile& f) {
  const std::string& path = f.path();
  const GgufValue* model = f.find("tokenizer.ggml.model");
  if (!model) fail(path, ": tokenizer.ggml.model is missing (the file has no tokenizer)");
  if (model->type != GGUF_STRING) fail(path, ": tokenizer.ggml.model must be a string");
  const std::string kind = model->as_string();
  LlamaVocab v;
  v.source = path;
  if (kind == "llama") {
    v.kind = LlamaVocab::Kind::Spm;
  } else if (kind == "gpt2") {
    v.kind = LlamaVocab::Kind::Bpe;
  } else {
    fail(path, ": tokenizer.ggml.model \"", kind,
         "\" is not supported (supported: \"llama\" = SentencePiece, \"gpt2\" = BPE)");
  }

  v.tokens = need_array(f, "tokenizer.ggml.tokens", GGUF_STRING).as_string_array();
  const size_t n = v.tokens.size();
  if (n == 0) fail(path, ": tokenizer.ggml.tokens is empty");
  if (const GgufValue* s = f.find("tokenizer.ggml.scores")) {
    if (!s->is_array() || (s->elem_type != GGUF_F32 && s->elem_type != GGUF_I32))
      fail(path, ": tokenizer.ggml.scores must be an array of f32 or i32");
    v.scores = s->as_float_array();
    if (v.scores.size() < n) fail(path, ": tokenizer.ggml.scores has ", v.scores.size(), " entries for ", n, " tokens");
    v.scores.resize(n);
  }
  if (const GgufValue* t = f.find("tokenizer.ggml.token_type")) {
    if (!t->is_array() || t->elem_type != GGUF_I32) fail(path, ": tokenizer.ggml.token_type must be an array of i32");
    std::vector<int64_t> types = t->as_int_array();
    if (types.size() < n) fail(path, ": tokenizer.ggml.token_type has ", types.size(), " entries for ", n, " tokens");
    v.types.resize(n);
    for (size_t i = 0; i < n; i++) {
      int64_t ty = types[i];
      // llama.cpp maps unknown type values to "undefined" (a plain token).
      v.types[i] = ty >= 1 && ty <= 6 ? int32_t(ty) : 0;
    }
  } else {
    v.types.assign(n, kNormal);
  }

  if (v.kind == LlamaVocab::Kind::Spm) {
    // llama.cpp ignores tokenizer.ggml.pre for SentencePiece vocabularies.
    v.bos = token_id(f, "tokenizer.ggml.bos_token_id", 1, n);
    v.eos = token_id(f, "tokenizer.ggml.eos_token_id", 2, n);
    v.unk = token_id(f, "tokenizer.ggml.unknown_token_id", 0, n);
    v.add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token", true);
    v.add_space_prefix = opt_bool(f, "tokenizer.ggml.add_space_prefix", true);
  } else {
    const GgufValue* pre = f.find("tokenizer.ggml.pre");
    if (!pre || pre->type != GGUF_STRING || pre->as_string().empty())
      fail(path, ": tokenizer.ggml.pre is missing (llama.cpp then falls back to its \"default\" pre-tokenizer and "
                 "warns that generation quality will be degraded); reconvert the model");
    v.pre = pre->as_string();
    v.merges = need_array(f, "tokenizer.ggml.merges", GGUF_STRING).as_string_array();
    v.bos = token_id(f, "tokenizer.ggml.bos_token_id", 11, n);
    v.eos = token_id(f, "tokenizer.ggml.eos_token_id", 11, n);
    v.unk = token_id(f, "tokenizer.ggml.unknown_token_id", -1, n);
    // llama.cpp's default add_bos: on for the Llama-3 pre-tokenizer, off for the others.
    bool def_bos = v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "llama-v3" || v.pre == "gemma4" ||
                   v.pre == "granite-embed-multi-311m";
    v.add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token", def_bos);
    v.add_space_prefix = false;  // read by llama.cpp but unused for BPE
  }
  v.add_eos = opt_bool(f, "tokenizer.ggml.add_eos_token", false);

  // Token attributes llama.cpp derives from token texts.
  std::unordered_map<std::string, int32_t> by_text;
  by_text.reserve(n * 2);
  for (size_t i = 0; i < n; i++) by_text.emplace(v.tokens[i], int32_t(i));
  auto is_split = [&](int32_t id) {  // cut out of the input by llama.cpp's partition
    int32_t t = v.types[id];
    return t == kControl || t == kUserDefined || t == kUnknown;
  };
  // End-of-generation texts always become control tokens.
  for (const char* t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~["}) {
    auto it = by_text.find(t);
    if (it != by_text.end() && v.types[it->second] != kControl) v.types[it->second] = kControl;
  }
  // FIM tokens: when the id key is absent, llama.cpp takes the first token (in hash order) with
  // one of these texts and makes it a control token. Ambiguous cases that would change the
  // tokenization are refused.
  struct Fim {
    const char* key;
    std::vector<const char*> texts;
  };
  const std::vector<Fim> fims = {
      {"tokenizer.ggml.fim_pre_token_id",
       {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
        "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"}},
      {"tokenizer.ggml.fim_suf_token_id",
       {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>",
        "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"}},
      {"tokenizer.ggml.fim_mid_token_id",
       {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
        "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"}},
      {"tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
      {"tokenizer.ggml.fim_rep_token_id", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
      {"tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"}},
  };
  for (const Fim& fim : fims) {
    const char* old_key = nullptr;  // deprecated spellings llama.cpp reads too
    if (std::string(fim.key) == "tokenizer.ggml.fim_pre_token_id") old_key = "tokenizer.ggml.prefix_token_id";
    if (std::string(fim.key) == "tokenizer.ggml.fim_suf_token_id") old_key = "tokenizer.ggml.suffix_token_id";
    if (std::string(fim.key) == "tokenizer.ggml.fim_mid_token_id") old_key = "tokenizer.ggml.middle_token_id";
    if (f.find(fim.key) || (old_key && f.find(old_key))) continue;
    std::vector<int32_t> found;
    bool changes = false;
    for (const char* t : fim.texts) {
      auto it = by_text.find(t);
      if (it == by_text.end()) continue;
      found.push_back(it->second);
      if (!is_split(it->second)) changes = true;
    }
    if (found.size() == 1) {
      if (v.types[found[0]] != kControl) v.types[found[0]] = kControl;
    } else if (found.size() > 1 && changes) {
      fail(path, ": ", found.size(), " candidate tokens for ", fim.key,
           " and the key is absent; llama.cpp picks one of them by hash order (set the key)");
    }
  }
  // gpt-oss: these are always user-defined (rendered, cut out of the input).
  for (const char* t : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    auto it = by_text.find(t);
    if (it != by_text.end()) v.types[it->second] = kUserDefined;
  }
  // Gemma 4: "</s>" is a plain token when "<|tool_response>" exists.
  if (by_text.count("<|tool_response>") && by_text.count("</s>")) v.types[by_text["</s>"]] = kNormal;

  // Attributes llama.cpp sets by model name.
  std::string name;
  if (const GgufValue* g = f.find("general.name"); g && g->type == GGUF_STRING) name = g->as_string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (size_t i = 0; i < n; i++)
      if (is_split(int32_t(i))) v.rstrip_ids.push_back(int32_t(i));
    if (by_text.count("</s>")) v.rstrip_ids.push_back(by_text["</s>"]);
    for (const char* t : {"<unk>", "<s>", "<|endoftext|>"}) {
      auto it = by_text.find(t);
      if (it == by_text.end()) continue;
      v.rstrip_ids.erase(std::remove(v.rstrip_ids.begin(), v.rstrip_ids.end(), it->second), v.rstrip_ids.end());
    }
  } else if (name.find("modern-bert") != std::string::npos) {
    if (by_text.count("[MASK]")) v.lstrip_ids.push_back(by_text["[MASK]"]);
  }

  std::string tmpl;
  if (const GgufValue* t = f.find("tokenizer.chat_template")) {
    if (t->type != GGUF_STRING) fail(path, ": tokenizer.chat_template must be a string");
    tmpl = t->as_string();
  }
  return Tokenizer::from_llama_vocab(std::move(v)).with_chat_template(std::move(tmpl));
}

std::string gguf_chat_template(const std::string& path) {
  GgufFile f = GgufFile::open(path);
  return f.get_string("tokenizer.chat_template", "");
}

}  // namespace lowrank
