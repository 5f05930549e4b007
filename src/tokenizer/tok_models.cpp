// BPE (Hugging Face semantics) and SentencePiece (llama.cpp semantics) models, plus the
// added-token trie.
#include <algorithm>
#include <cmath>
#include <queue>

#include "core/error.h"
#include "tokenizer/tok_impl.h"

namespace lowrank::tok {

// ---------------------------------------------------------------- MergeMap

void MergeMap::build(const std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>>& entries) {
  size_t cap = 16;
  while (cap < entries.size() * 2 + 1) cap <<= 1;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  for (const auto& [key, v] : entries) {
    size_t i = hash(key) & mask_;
    while (slots_[i].rank >= 0 && slots_[i].key != key) i = (i + 1) & mask_;
    // A later duplicate overwrites the earlier one (HashMap collect semantics).
    slots_[i].key = key;
    slots_[i].rank = v.first;
    slots_[i].new_id = v.second;
  }
}

// ---------------------------------------------------------------- BPE

namespace {
struct Symbol {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // bytes; 0 once merged away
};
struct MergeItem {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  // priority_queue pops the largest: make the lowest rank, then the lowest position, largest.
  bool operator<(const MergeItem& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};
constexpr size_t kCacheMaxWordBytes = 256;
constexpr size_t kCacheMaxEntries = 200000;
#ifndef LOWRANK_TOK_SPLIT_MIN_BYTES
#define LOWRANK_TOK_SPLIT_MIN_BYTES 128
#endif
constexpr size_t kSplitMinBytes = LOWRANK_TOK_SPLIT_MIN_BYTES;
}  // namespace

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out, const std::string& source) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = vocab->find(std::string(word));
    if (it != vocab->end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() < kSplitMinBytes || !prefix.empty() || !suffix.empty() || !virtual_ids.empty()) {
    tokenize_cached(word, out, source);
    return;
  }
  std::call_once(pairs_once, [this] {
    std::vector<std::pair<uint64_t, std::pair<int32_t, int32_t>>> pairs;
    for (const auto& [tok, id] : *vocab) {
      size_t i = 0;
      uint32_t prev = 0;
      bool first = true;
      while (i < tok.size()) {
        uint32_t cp = next_cp(tok, i);
        if (!first) pairs.push_back({(uint64_t(prev) << 32) | cp, {0, 0}});
        prev = cp;
        first = false;
      }
    }
    inner_pairs.build(pairs);
  });
  size_t seg_start = 0, i = 0;
  uint32_t prev_cp = 0;
  bool prev_known = false;
  while (i < word.size()) {
    size_t b = i;
    uint32_t cp = next_cp(word, i);
    bool known = char_in_vocab(word.substr(b, i - b));
    int32_t r, n;
    if (b > seg_start && known && prev_known && !inner_pairs.find(int32_t(prev_cp), int32_t(cp), r, n)) {
      tokenize_cached(word.substr(seg_start, b - seg_start), out, source);
      seg_start = b;
    }
    prev_cp = cp;
    prev_known = known;
  }
  tokenize_cached(word.substr(seg_start), out, source);
}

bool BpeModel::char_in_vocab(std::string_view c) const {
  if (c.size() == 1 && (unsigned char)c[0] < 128) return single_byte_ids[(unsigned char)c[0]] >= 0;
  return vocab->find(std::string(c)) != vocab->end();
}

void BpeModel::tokenize_cached(std::string_view word, std::vector<int32_t>& out, const std::string& source) const {
  bool cacheable = word.size() < kCacheMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::shared_lock lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t before = out.size();
  merge_word(word, out, source);
  if (cacheable) {
    std::unique_lock lock(cache_mu);
    if (cache.size() < kCacheMaxEntries) cache.emplace(std::move(key), std::vector<int32_t>(out.begin() + before, out.end()));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out, const std::string& source) const {
  std::vector<Symbol> syms;
  syms.reserve(w.size());
  auto add = [&](int32_t id, uint32_t len) {
    int32_t idx = int32_t(syms.size());
    syms.push_back(Symbol{id, idx - 1, -1, len});
    if (idx > 0) syms[idx - 1].next = idx;
  };
  bool plain = prefix.empty() && suffix.empty();
  bool have_unk = false;
  int32_t unk_id = -1;
  uint32_t unk_len = 0;
  auto unk_vocab_id = [&]() -> int32_t {
    auto it = vocab->find(unk_token);
    if (it == vocab->end()) fail("file ", source, ": unk_token '", unk_token, "' is not in the vocabulary");
    return it->second;
  };
  std::string s;
  size_t i = 0;
  while (i < w.size()) {
    size_t start = i;
    i += utf8_seq_len((unsigned char)w[i]);
    if (i > w.size()) i = w.size();
    uint32_t byte_len = uint32_t(i - start);
    int32_t id = -1;
    if (plain && byte_len == 1 && (unsigned char)w[start] < 128) {
      id = single_byte_ids[(unsigned char)w[start]];
      s.assign(1, w[start]);
    } else {
      s.clear();
      if (start != 0) s += prefix;
      s.append(w.substr(start, byte_len));
      if (i == w.size()) s += suffix;
      auto it = vocab->find(s);
      if (it != vocab->end()) id = it->second;
    }
    if (id < 0 && late_fallback) {
      // llama.cpp keeps the character as a piece (merges may name it) and turns it into bytes
      // at the end if it is still not a token.
      auto v = virtual_ids.find(s);
      add(v == virtual_ids.end() ? -1 : v->second, byte_len);
      continue;
    }
    if (id >= 0) {
      if (have_unk) {
        add(unk_id, unk_len);
        have_unk = false;
      }
      add(id, byte_len);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (unsigned char c : s)
        if (byte_ids[c] < 0) {
          all = false;
          break;
        }
      if (all) {
        for (unsigned char c : s) add(byte_ids[c], 1);
        continue;
      }
    }
    if (has_unk) {
      if (have_unk && fuse_unk) {
        unk_len += byte_len;
      } else {
        if (have_unk) add(unk_id, unk_len);
        unk_id = unk_vocab_id();
        unk_len = byte_len;
        have_unk = true;
      }
    }
  }
  if (have_unk) add(unk_id, unk_len);

  if (syms.size() > 1) {
    std::vector<MergeItem> storage;
    storage.reserve(syms.size());
    std::priority_queue<MergeItem> queue(std::less<MergeItem>(), std::move(storage));
    int32_t rank, new_id;
    for (size_t k = 0; k + 1 < syms.size(); k++)
      if (merges.find(syms[k].id, syms[k + 1].id, rank, new_id)) queue.push(MergeItem{rank, int32_t(k), new_id});
    while (!queue.empty()) {
      MergeItem top = queue.top();
      queue.pop();
      Symbol& cur = syms[top.pos];
      if (cur.len == 0 || cur.next < 0) continue;
      int32_t next_pos = cur.next;
      Symbol right = syms[next_pos];
      // Skip stale entries: the pair at this position must still produce the same token.
      if (!merges.find(cur.id, right.id, rank, new_id) || new_id != top.new_id) continue;
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next >= 0) syms[right.next].prev = top.pos;
      if (cur.prev >= 0) {
        const Symbol& prev = syms[cur.prev];
        if (merges.find(prev.id, cur.id, rank, new_id)) queue.push(MergeItem{rank, cur.prev, new_id});
      }
      if (cur.next >= 0) {
        const Symbol& nx = syms[cur.next];
        if (merges.find(cur.id, nx.id, rank, new_id)) queue.push(MergeItem{rank, top.pos, new_id});
      }
    }
  }
  size_t off = 0;  // live symbols cover the word in order
  for (const Symbol& sym : syms) {
    if (sym.len == 0) continue;
    if (late_fallback && (sym.id < 0 || sym.id >= virtual_base)) {
      for (size_t k = off; k < off + sym.len; k++) {
        unsigned char c = (unsigned char)w[k];
        int32_t b = late_fallback_raw ? (c < 128 ? single_byte_ids[c] : -1) : byte_ids[c];
        if (b >= 0) out.push_back(b);
      }
    } else {
      out.push_back(sym.id);
    }
    off += sym.len;
  }
}

// ---------------------------------------------------------------- SentencePiece (llama.cpp)

namespace {
struct SpmSymbol {
  int32_t prev, next;
  size_t off, n;
};
struct SpmBigram {
  int32_t left, right;
  float score;
  size_t size;
  // Highest score first, then the leftmost.
  bool operator<(const SpmBigram& o) const { return score < o.score || (score == o.score && left > o.left); }
};
}  // namespace

void SpmModel::tokenize(const std::string& text, std::vector<int32_t>& out,
                        const std::unordered_map<std::string, int32_t>& vocab) const {
  std::vector<SpmSymbol> syms;
  size_t offs = 0;
  int32_t index = 0;
  while (offs < text.size()) {
    size_t len = std::min(utf8_seq_len((unsigned char)text[offs]), text.size() - offs);
    // llama.cpp's unicode_len_utf8 also maps a stray continuation byte to length 1.
    syms.push_back(SpmSymbol{index - 1, offs + len == text.size() ? -1 : index + 1, offs, len});
    offs += len;
    index++;
  }
  std::priority_queue<SpmBigram> queue;
  std::string buf;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    buf.assign(text, syms[left].off, syms[left].n + syms[right].n);
    auto it = vocab.find(buf);
    if (it == vocab.end() || it->second < 0 || size_t(it->second) >= scores.size()) return;
    queue.push(SpmBigram{left, right, scores[it->second], buf.size()});
  };
  for (int32_t k = 1; k < int32_t(syms.size()); k++) try_add(k - 1, k);
  while (!queue.empty()) {
    SpmBigram bg = queue.top();
    queue.pop();
    SpmSymbol& l = syms[bg.left];
    SpmSymbol& r = syms[bg.right];
    if (l.n == 0 || r.n == 0 || l.n + r.n != bg.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = bg.left;
    try_add(l.prev, bg.left);
    try_add(bg.left, l.next);
  }
  for (int32_t k = syms.empty() ? -1 : 0; k != -1; k = syms[k].next) {
    const SpmSymbol& sym = syms[k];
    buf.assign(text, sym.off, sym.n);
    auto it = vocab.find(buf);
    if (it != vocab.end()) {
      out.push_back(it->second);
      continue;
    }
    for (size_t j = 0; j < sym.n; j++) {
      int32_t id = byte_ids[(unsigned char)text[sym.off + j]];
      if (id < 0) id = unk;
      if (id >= 0) out.push_back(id);
    }
  }
}

// ---------------------------------------------------------------- TokenTrie

void TokenTrie::add(const std::string& pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char c : pattern) {
    auto& nx = nodes_[node].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t(-1)),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it != nx.end() && it->first == c) {
      node = it->second;
    } else {
      int32_t fresh = int32_t(nodes_.size());
      nx.insert(it, {c, fresh});
      nodes_.emplace_back();
      node = fresh;
    }
  }
  if (nodes_[node].value < 0) nodes_[node].value = value;  // first identical pattern wins
  first_[(unsigned char)pattern[0]] = true;
}

int32_t TokenTrie::child(int32_t node, unsigned char c) const {
  const auto& nx = nodes_[node].next;
  auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t(-1)),
                             [](const auto& a, const auto& b) { return a.first < b.first; });
  return it != nx.end() && it->first == c ? it->second : -1;
}

int32_t TokenTrie::longest_at(std::string_view s, size_t pos, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < s.size(); i++) {
    unsigned char c = (unsigned char)s[i];
    const auto& nx = nodes_[node].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t(-1)),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it == nx.end() || it->first != c) break;
    node = it->second;
    if (nodes_[node].value >= 0) {
      best = nodes_[node].value;
      len = i + 1 - pos;
    }
  }
  return best;
}

}  // namespace lowrank::tok
