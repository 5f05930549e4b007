// Internal representation of a loaded tokenizer (see tokenizer.h for the public API).
#pragma once
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tok_regex.h"
#include "tokenizer/tok_unicode.h"

namespace lowrank::tok {

// ---------------------------------------------------------------- pipeline pieces

// A pre-token: its text and whether it starts at offset 0 of the original input (this is
// what HF's Metaspace prepend_scheme "first" looks at).
struct Piece {
  std::string text;
  bool at_start = false;
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { First, Always, Never };

struct Normalizer {
  enum class Kind { Sequence, Prepend, Append, Replace, NF, Lowercase, Strip, StripAccents, ByteLevel };
  Kind kind = Kind::Sequence;
  std::vector<Normalizer> children;
  std::string text;                  // Prepend/Append: the text; Replace: the content
  std::shared_ptr<const Regex> re;   // Replace
  NormForm form = NormForm::NFC;     // NF
  bool left = false, right = false;  // Strip
  void apply(std::string& s) const;
};

struct PreTokenizer {
  enum class Kind { Sequence, ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation,
                    Bert, CharDelimiter };
  Kind kind = Kind::Sequence;
  std::vector<PreTokenizer> children;
  bool add_prefix_space = false;     // ByteLevel
  bool use_regex = true;             // ByteLevel
  std::shared_ptr<const Regex> re;   // Split (and ByteLevel's GPT-2 regex, Digits, ...)
  bool invert = false;               // Split
  Behavior behavior = Behavior::Isolated;
  uint32_t replacement = 0x2581;     // Metaspace: replacement char; CharDelimiter: the delimiter
  PrependScheme prepend = PrependScheme::Always;
  bool split = true;                 // Metaspace
  void apply(std::vector<Piece>& pieces) const;
};

struct Decoder {
  enum class Kind { Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPE };
  Kind kind = Kind::Sequence;
  std::vector<Decoder> children;
  std::shared_ptr<const Regex> re;   // Replace
  std::string text;                  // Replace: content; BPE: suffix
  uint32_t ch = 0;                   // Metaspace replacement; Strip content
  PrependScheme prepend = PrependScheme::Always;
  size_t start = 0, stop = 0;        // Strip
  void decode_chain(std::vector<std::string>& tokens) const;
};

// One element of a post-processing template: the input sequence, or fixed ids.
struct TemplateItem {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

// ---------------------------------------------------------------- models

// 64-bit key -> (rank, new id), open addressing. Keys are (left id << 32 | right id).
class MergeMap {
 public:
  void build(const std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>>& entries);
  // Returns false when absent.
  bool find(int32_t a, int32_t b, int32_t& rank, int32_t& new_id) const {
    if (slots_.empty()) return false;
    uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    size_t i = hash(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.rank < 0) return false;
      if (s.key == key) {
        rank = s.rank;
        new_id = s.new_id;
        return true;
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  struct Slot {
    uint64_t key = 0;
    int32_t rank = -1;
    int32_t new_id = -1;
  };
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

struct BpeModel {
  const std::unordered_map<std::string, int32_t>* vocab = nullptr;  // Impl::model_vocab
  MergeMap merges;
  bool has_unk = false;
  std::string unk_token;
  std::string prefix;  // continuing_subword_prefix
  std::string suffix;  // end_of_word_suffix
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  // llama.cpp vocabularies: merges work on strings, so a merge's parts and result need not be
  // tokens; such strings get ids >= virtual_base (virtual_ids). A piece that is not a token at
  // the end (a virtual id, or a character outside the vocabulary: id -1) becomes its bytes:
  // <0xXX> tokens, or with late_fallback_raw the one-byte tokens (byte-level vocabularies).
  bool late_fallback = false, late_fallback_raw = false;
  int32_t virtual_base = INT32_MAX;
  std::unordered_map<std::string, int32_t> virtual_ids;
  int32_t byte_ids[256];  // ids of "<0xXX>" tokens, -1 when absent
  int32_t single_byte_ids[128];  // ids of one-character ASCII tokens (no prefix/suffix), -1 absent

  mutable std::shared_mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;
  // Pairs of adjacent code points that occur inside some vocabulary token (built lazily).
  // A boundary between two in-vocabulary characters whose pair is not in this set can never
  // be crossed by a merge, so long words are cut there and tokenized piecewise (same result).
  mutable std::once_flag pairs_once;
  mutable MergeMap inner_pairs;

  // Appends the ids for one pre-token. `source` names the file for errors.
  void tokenize(std::string_view word, std::vector<int32_t>& out, const std::string& source) const;

 private:
  void tokenize_cached(std::string_view word, std::vector<int32_t>& out, const std::string& source) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out, const std::string& source) const;
  bool char_in_vocab(std::string_view c) const;
};

// llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm).
struct SpmModel {
  std::vector<float> scores;
  int32_t byte_ids[256];
  int32_t unk = -1;
  // `text` is already escaped (spaces replaced by "▁").
  void tokenize(const std::string& text, std::vector<int32_t>& out,
                const std::unordered_map<std::string, int32_t>& vocab) const;
};

// ---------------------------------------------------------------- added tokens

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest multi-pattern matcher over bytes (a trie).
class TokenTrie {
 public:
  void add(const std::string& pattern, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest pattern starting at s[pos]: returns its value and sets len, or -1.
  int32_t longest_at(std::string_view s, size_t pos, size_t& len) const;
  // Calls f(value) for every pattern that starts at s[pos] (shortest first).
  template <typename F>
  void each_at(std::string_view s, size_t pos, F&& f) const {
    int32_t node = 0;
    for (size_t i = pos; i < s.size(); i++) {
      int32_t nx = child(node, (unsigned char)s[i]);
      if (nx < 0) return;
      node = nx;
      if (nodes_[node].value >= 0) f(nodes_[node].value);
    }
  }
  bool may_start(unsigned char c) const { return first_[c]; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t value = -1;
  };
  int32_t child(int32_t node, unsigned char c) const;
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
};

// A segment of the input after splitting on added tokens: either an added token id or text.
struct Segment {
  int32_t id = -1;  // >= 0: added token
  std::string text;
  bool at_start = false;
};

// ---------------------------------------------------------------- the tokenizer

// A token that llama.cpp's tokenizer_st_partition splits out of the input (control, unknown and
// user-defined tokens), with the LSTRIP/RSTRIP attributes it may carry.
struct LlamaSpecial {
  std::string text;
  int32_t id = -1;
  bool lstrip = false, rstrip = false;
};

struct Impl {
  // HF: tokenizer.json pipeline. SPM / LlamaBpe: llama.cpp's llama_vocab (GGUF vocabularies).
  enum class Mode { HF, SPM, LlamaBpe } mode = Mode::HF;
  std::string source;

  // Vocabulary: model tokens plus added tokens (added tokens override the id->token map).
  std::unordered_map<std::string, int32_t> model_vocab;
  std::vector<std::string> id_to_token;       // dense, size vocab_size
  std::vector<uint8_t> present;               // per id: 1 when the id has a token
  std::vector<uint8_t> special;               // per id: 1 when special (skipped by decode)
  std::unordered_map<std::string, int32_t> added_vocab;  // added token content -> id
  std::unordered_map<int32_t, AddedToken> added_r;     // id -> added token (flags used when matching)
  TokenTrie trie_raw, trie_norm;              // values are token ids

  bool has_normalizer = false;
  Normalizer normalizer;
  bool has_pre_tokenizer = false;
  PreTokenizer pre_tokenizer;
  bool has_decoder = false;
  Decoder decoder;
  bool has_post = false;
  std::vector<std::vector<TemplateItem>> post;  // templates applied in order (single sequence)

  BpeModel bpe;
  SpmModel spm;

  // SPM / LlamaBpe modes (llama.cpp semantics).
  bool llama_add_bos = false, llama_add_eos = false;
  bool llama_add_space_prefix = true;     // SPM: " " before the first fragment and after specials
  bool llama_escape_whitespace = false;   // LlamaBpe (gemma4 pre): ' ' -> "▁" before splitting
  bool llama_newline_words_whole = false; // LlamaBpe (gemma4 pre): an all-'\n' word in the vocab is one token
  std::vector<LlamaSpecial> llama_specials;  // longest text first (llama.cpp's priority order)
  TokenTrie llama_special_trie;              // texts of llama_specials -> index, to find those present

  std::string bos_token, eos_token, pad_token, chat_template;
  int32_t bos = -1, eos = -1, pad = -1;

  int32_t lookup(const std::string& t) const;
  std::vector<int32_t> encode(const std::string& text, bool add_special) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const;

 private:
  void split_added(std::string_view text, const TokenTrie& trie, bool at_start, std::vector<Segment>& out) const;
  std::vector<int32_t> encode_llama(const std::string& text, bool add_special) const;
  void partition_llama(const std::string& text, std::vector<Segment>& out) const;
};

}  // namespace lowrank::tok
