// llama.cpp vocabularies (GGUF tokenizer.ggml.*): building the tokenizer and encoding with the
// semantics of llama.cpp's llama_vocab (src/llama-vocab.cpp, src/unicode.cpp):
//
//   tokenize(text, add_special, parse_special = true):
//     1. tokenizer_st_partition: every control, unknown and user-defined token, longest text
//        first, is cut out of the remaining raw text at each of its leftmost non-overlapping
//        occurrences (LSTRIP/RSTRIP attributes eat the ASCII whitespace beside it);
//     2. SPM: each raw fragment gets " " in front when add_space_prefix and the previous
//        fragment was a special token (or it is the first), spaces become "▁", then the
//        highest-scoring adjacent pair whose text is a token is merged first (ties: leftmost),
//        leftovers become <0xXX> byte tokens;
//        BPE: each raw fragment is split by the pre-tokenizer's regexes in turn (matches and the
//        gaps between them are pieces), bytes are mapped to GPT-2's byte characters, and BPE
//        merges by rank run inside each piece;
//     3. BOS in front / EOS at the end when add_special and add_bos / add_eos.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "tokenizer/tok_impl.h"
#include "tokenizer/tokenizer.h"

namespace lowrank {

namespace tok {

namespace {

// The BPE pre-tokenizers of llama_vocab::impl::load / llm_tokenizer_bpe (regexes as written there).
struct LlamaPre {
  std::vector<const char*> names;
  std::vector<const char*> regexes;
  bool ignore_merges = false;    // a piece that is a token is not split
  bool add_bos = false;          // llama.cpp's default add_bos for this pre-tokenizer
  bool force_add_bos = false;    // add_bos is forced on whatever the file says (llama.cpp's Gemma-4 workaround)
  bool byte_encode = true;       // GPT-2 byte mapping; else raw UTF-8 with <0xXX> byte fallback
  bool escape_whitespace = false;
  bool newline_words_whole = false;
};

const char* kContractionsLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";

const std::vector<LlamaPre>& llama_pres() {
  static const std::vector<LlamaPre> pres = [] {
    std::vector<LlamaPre> v;
    LlamaPre p;
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_LLAMA3
    p.names = {"llama-bpe", "llama3", "llama-v3"};
    p.regexes = {kContractionsLlama3};
    p.ignore_merges = true;
    p.add_bos = true;
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_SMAUG / DBRX: the Llama-3 regex without ignore_merges
    p.names = {"smaug-bpe", "dbrx"};
    p.regexes = {kContractionsLlama3};
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_QWEN2
    p.names = {"qwen2", "deepseek-r1-qwen"};
    p.regexes = {kQwen2};
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_SMOLLM
    p.names = {"smollm"};
    p.regexes = {"\\p{N}", kGpt2};
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_GPT2
    p.names = {"gpt-2", "phi-2"};
    p.regexes = {kGpt2};
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_DEFAULT
    p.names = {"default"};
    p.regexes = {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"};
    v.push_back(p);
    p = LlamaPre{};  // LLAMA_VOCAB_PRE_TYPE_GEMMA4: SentencePiece-style BPE
    p.names = {"gemma4", "granite-embed-multi-311m"};
    p.regexes = {"[^\\n]+|[\\n]+"};
    p.byte_encode = false;
    p.escape_whitespace = true;
    p.newline_words_whole = true;
    p.add_bos = true;
    p.force_add_bos = true;
    v.push_back(p);
    return v;
  }();
  return pres;
}

const LlamaPre* find_pre(const std::string& name) {
  for (const LlamaPre& p : llama_pres())
    for (const char* n : p.names)
      if (name == n) return &p;
  return nullptr;
}

std::shared_ptr<const Regex> compile(const char* pattern) {
  return std::make_shared<Regex>(pattern, false);
}

}  // namespace

// ---------------------------------------------------------------- encoding

void Impl::partition_llama(const std::string& text, std::vector<Segment>& out) const {
  out.clear();
  if (text.empty()) return;
  // Only the special tokens that occur in the text can split it (every fragment is a substring
  // of the text), so find those first instead of scanning the text once per special token.
  std::vector<int32_t> present;  // indices into llama_specials
  if (!llama_special_trie.empty()) {
    std::vector<uint8_t> seen(llama_specials.size(), 0);
    for (size_t pos = 0; pos < text.size(); pos++) {
      if (!llama_special_trie.may_start((unsigned char)text[pos])) continue;
      llama_special_trie.each_at(text, pos, [&](int32_t k) {
        if (!seen[k]) {
          seen[k] = 1;
          present.push_back(k);
        }
      });
    }
    std::sort(present.begin(), present.end());  // llama_specials is in priority order
  }
  struct Frag {
    int32_t id;  // >= 0: a special token
    size_t off, len;
  };
  std::vector<Frag> frags{{-1, 0, text.size()}}, next;
  for (int32_t k : present) {
    const LlamaSpecial& sp = llama_specials[k];
    next.clear();
    for (const Frag& f : frags) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      size_t base = f.off, len = f.len;
      while (true) {
        size_t match = std::string_view(text.data(), base + len).find(sp.text, base);
        if (match == std::string_view::npos) {
          next.push_back({-1, base, len});
          break;
        }
        size_t left = match - base;
        if (sp.lstrip)
          while (left > 0 && std::isspace((unsigned char)text[base + left - 1])) left--;
        if (left > 0) next.push_back({-1, base, left});
        next.push_back({sp.id, 0, 0});
        size_t rs = match + sp.text.size(), end = base + len;
        if (rs >= end) break;
        size_t rl = end - rs;
        if (sp.rstrip)
          while (rl > 0 && std::isspace((unsigned char)text[rs])) {
            rs++;
            rl--;
          }
        if (rl == 0) break;
        base = rs;
        len = rl;
      }
    }
    frags.swap(next);
  }
  out.reserve(frags.size());
  for (const Frag& f : frags) {
    if (f.id >= 0) out.push_back(Segment{f.id, std::string(), false});
    else out.push_back(Segment{-1, text.substr(f.off, f.len), false});
  }
}

std::vector<int32_t> Impl::encode_llama(const std::string& input, bool add_special) const {
  std::vector<int32_t> out;
  std::vector<Segment> frags;
  try {
    std::string owned;
    const std::string* text = &input;
    // The BPE pre-tokenizer runs regexes over code points (llama.cpp rejects invalid UTF-8 there);
    // invalid sequences become U+FFFD as in HF mode. SPM works on bytes, as llama.cpp does.
    if (mode == Mode::LlamaBpe && !is_valid_utf8(input)) {
      owned = utf8_lossy(input);
      text = &owned;
    }
    partition_llama(*text, frags);
    if (add_special && llama_add_bos) out.push_back(bos);
    if (mode == Mode::SPM) {
      bool prev_special = true;
      std::string buf;
      for (const Segment& f : frags) {
        if (f.id >= 0) {
          out.push_back(f.id);
          prev_special = true;
          continue;
        }
        buf.clear();
        if (llama_add_space_prefix && prev_special) buf += "\xE2\x96\x81";
        for (char c : f.text) {
          if (c == ' ') buf += "\xE2\x96\x81";
          else buf.push_back(c);
        }
        spm.tokenize(buf, out, model_vocab);
        prev_special = false;
      }
    } else {
      std::vector<Piece> pieces;
      for (Segment& f : frags) {
        if (f.id >= 0) {
          out.push_back(f.id);
          continue;
        }
        if (llama_escape_whitespace) {
          std::string esc;
          esc.reserve(f.text.size() + 16);
          for (char c : f.text) {
            if (c == ' ') esc += "\xE2\x96\x81";
            else esc.push_back(c);
          }
          f.text.swap(esc);
        }
        pieces.clear();
        pieces.push_back(Piece{std::move(f.text), false});
        if (has_pre_tokenizer) pre_tokenizer.apply(pieces);
        for (const Piece& p : pieces) {
          if (llama_newline_words_whole && p.text.find_first_not_of('\n') == std::string::npos) {
            auto it = model_vocab.find(p.text);
            if (it != model_vocab.end()) {
              out.push_back(it->second);
              continue;
            }
          }
          bpe.tokenize(p.text, out, source);
        }
      }
    }
    if (add_special && llama_add_eos) out.push_back(eos);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("file ", source, ": cannot encode text: ", e.what());
  }
  return out;
}

}  // namespace tok

// ---------------------------------------------------------------- construction

Tokenizer Tokenizer::from_llama_vocab(LlamaVocab v) {
  const std::string& src = v.source;
  const size_t n = v.tokens.size();
  if (n == 0) fail(src, ": no tokens");
  if (n > size_t(1) << 26) fail(src, ": too many tokens (", n, ")");
  if (!v.scores.empty() && v.scores.size() != n) fail(src, ": ", v.scores.size(), " scores for ", n, " tokens");
  if (!v.types.empty() && v.types.size() != n) fail(src, ": ", v.types.size(), " token types for ", n, " tokens");
  auto check_id = [&](int32_t id, const char* what) {
    if (id < -1 || (id >= 0 && size_t(id) >= n)) fail(src, ": ", what, " id ", id, " out of range [0, ", n, ")");
  };
  check_id(v.bos, "bos");
  check_id(v.eos, "eos");
  check_id(v.unk, "unk");
  if (v.add_bos && v.bos < 0) fail(src, ": add_bos_token is set but there is no bos token");
  if (v.add_eos && v.eos < 0) fail(src, ": add_eos_token is set but there is no eos token");
  v.scores.resize(n, 0.0f);
  v.types.resize(n, 1);

  auto im = std::make_shared<tok::Impl>();
  im->source = src;
  im->model_vocab.reserve(n * 2);
  for (size_t i = 0; i < n; i++) {
    // llama.cpp renames empty tokens; invalid UTF-8 cannot be matched by any text anyway.
    if (v.tokens[i].empty()) v.tokens[i] = "[EMPTY_" + std::to_string(i) + "]";
    const bool invalid = !tok::is_valid_utf8(v.tokens[i]);
    if (invalid) v.tokens[i] = tok::utf8_lossy(v.tokens[i]);
    auto [it, fresh] = im->model_vocab.emplace(v.tokens[i], int32_t(i));
    // llama.cpp asserts that every token text is distinct (id_to_token.size() == token_to_id.size()).
    if (!fresh && invalid)
      fail(src, ": token ", i, " is not valid UTF-8 and reads like token ", it->second, " (not supported)");
    if (!fresh) fail(src, ": token ", i, " \"", v.tokens[i], "\" repeats token ", it->second);
  }

  const tok::LlamaPre* pre = nullptr;
  if (v.kind == LlamaVocab::Kind::Spm) {
    im->mode = tok::Impl::Mode::SPM;
    for (float& s : v.scores)
      if (std::isnan(s)) s = -std::numeric_limits<float>::infinity();
    im->spm.scores = v.scores;
    im->spm.unk = v.unk;
    for (int b = 0; b < 256; b++) {
      char name[8];
      snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = im->model_vocab.find(name);
      if (it == im->model_vocab.end()) it = im->model_vocab.find(std::string(1, char(b)));
      im->spm.byte_ids[b] = it == im->model_vocab.end() ? -1 : it->second;
    }
    im->llama_add_space_prefix = v.add_space_prefix;
  } else {
    im->mode = tok::Impl::Mode::LlamaBpe;
    pre = tok::find_pre(v.pre);
    if (!pre) {
      std::string known;
      for (const auto& p : tok::llama_pres())
        for (const char* nm : p.names) known += std::string(known.empty() ? "" : ", ") + nm;
      fail(src, ": tokenizer.ggml.pre \"", v.pre, "\" is not supported (supported: ", known, ")");
    }
    tok::BpeModel& m = im->bpe;
    m.vocab = &im->model_vocab;
    m.ignore_merges = pre->ignore_merges;
    m.late_fallback = true;
    m.late_fallback_raw = pre->byte_encode;
    for (int b = 0; b < 256; b++) {
      char name[8];
      snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = im->model_vocab.find(name);
      m.byte_ids[b] = it == im->model_vocab.end() ? -1 : it->second;
    }
    for (int c = 0; c < 128; c++) {
      auto it = im->model_vocab.find(std::string(1, char(c)));
      m.single_byte_ids[c] = it == im->model_vocab.end() ? -1 : it->second;
    }
    // Merges "left right" (split at the first space after the first byte, as llama.cpp does).
    // Strings that are not tokens (llama.cpp merges by text: e.g. Gemma's "▁▁" pieces, whose
    // user-defined tokens the converter renamed to spaces) get ids past the vocabulary.
    m.virtual_base = int32_t(n);
    auto id_of = [&](const std::string& t) {
      auto it = im->model_vocab.find(t);
      if (it != im->model_vocab.end()) return it->second;
      auto [vit, fresh] = m.virtual_ids.emplace(t, int32_t(n + m.virtual_ids.size()));
      if (fresh && size_t(vit->second) >= (size_t(1) << 30)) fail(src, ": tokenizer.ggml.merges is too large");
      return vit->second;
    };
    std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>> entries;
    entries.reserve(v.merges.size());
    for (size_t r = 0; r < v.merges.size(); r++) {
      const std::string& w = v.merges[r];
      size_t sp = w.size() > 1 ? w.find(' ', 1) : std::string::npos;
      // llama.cpp keeps such an entry as the pair ("", ""), which never matches.
      if (sp == std::string::npos) continue;
      std::string a = w.substr(0, sp), b = w.substr(sp + 1);
      if (a.empty() || b.empty()) continue;
      int32_t ia = id_of(a), ib = id_of(b), ic = id_of(a + b);
      entries.push_back({(uint64_t(uint32_t(ia)) << 32) | uint32_t(ib), {int32_t(r), ic}});
    }
    // The first rank of a pair wins (llama.cpp's bpe_ranks.emplace keeps the first).
    std::reverse(entries.begin(), entries.end());
    m.merges.build(entries);
    // Pre-tokenizer: each regex splits the pieces of the previous one (matches and gaps are
    // pieces), then bytes map to GPT-2's byte characters.
    using PK = tok::PreTokenizer::Kind;
    tok::PreTokenizer seq;
    seq.kind = PK::Sequence;
    for (const char* re : pre->regexes) {
      tok::PreTokenizer split;
      split.kind = PK::Split;
      split.re = tok::compile(re);
      split.behavior = tok::Behavior::Isolated;
      seq.children.push_back(split);
    }
    if (pre->byte_encode) {
      tok::PreTokenizer bl;
      bl.kind = PK::ByteLevel;
      bl.add_prefix_space = false;
      bl.use_regex = false;
      seq.children.push_back(bl);
    }
    im->pre_tokenizer = std::move(seq);
    im->has_pre_tokenizer = true;
    im->llama_escape_whitespace = pre->escape_whitespace;
    im->llama_newline_words_whole = pre->newline_words_whole;
    if (pre->force_add_bos) v.add_bos = true;
    if (v.add_bos && v.bos < 0) fail(src, ": add_bos_token is set but there is no bos token");
  }

  // Special tokens: control/unknown/user-defined texts are cut out of the input, longest first.
  im->present.assign(n, 1);
  im->special.assign(n, 0);
  for (size_t i = 0; i < n; i++) {
    int32_t t = v.types[i];
    bool control = t == 3;
    if (control || t == 2) im->special[i] = 1;
    if (control || t == 2 || t == 4) {
      tok::LlamaSpecial s;
      s.text = v.tokens[i];
      s.id = int32_t(i);
      im->llama_specials.push_back(std::move(s));
    }
  }
  {
    std::vector<uint8_t> l(n, 0), r(n, 0);
    for (int32_t id : v.lstrip_ids) {
      check_id(id, "lstrip token");
      if (id >= 0) l[id] = 1;
    }
    for (int32_t id : v.rstrip_ids) {
      check_id(id, "rstrip token");
      if (id >= 0) r[id] = 1;
    }
    for (auto& s : im->llama_specials) {
      s.lstrip = l[s.id];
      s.rstrip = r[s.id];
    }
  }
  std::stable_sort(im->llama_specials.begin(), im->llama_specials.end(),
                   [](const auto& a, const auto& b) { return a.text.size() > b.text.size(); });
  for (size_t k = 0; k < im->llama_specials.size(); k++) im->llama_special_trie.add(im->llama_specials[k].text, int32_t(k));

  im->id_to_token = std::move(v.tokens);
  im->bos = v.bos;
  im->eos = v.eos;
  im->llama_add_bos = v.add_bos;
  im->llama_add_eos = v.add_eos;
  if (v.bos >= 0) im->bos_token = im->id_to_token[v.bos];
  if (v.eos >= 0) im->eos_token = im->id_to_token[v.eos];

  // Decoding like the matching HF decoders.
  using DK = tok::Decoder::Kind;
  if (v.kind == LlamaVocab::Kind::Bpe && pre->byte_encode) {
    im->decoder.kind = DK::ByteLevel;
  } else {
    // "▁" -> " ", <0xXX> bytes, fuse; the leading space is the one SPM added.
    tok::Decoder rep;
    rep.kind = DK::Replace;
    rep.re = std::make_shared<tok::Regex>("\xE2\x96\x81", true);
    rep.text = " ";
    tok::Decoder bf;
    bf.kind = DK::ByteFallback;
    tok::Decoder fuse;
    fuse.kind = DK::Fuse;
    im->decoder.kind = DK::Sequence;
    im->decoder.children = {rep, bf, fuse};
    if (v.kind == LlamaVocab::Kind::Spm && v.add_space_prefix) {
      tok::Decoder strip;
      strip.kind = DK::Strip;
      strip.ch = ' ';
      strip.start = 1;
      im->decoder.children.push_back(strip);
    }
  }
  im->has_decoder = true;
  return Tokenizer(std::move(im));
}

}  // namespace lowrank
