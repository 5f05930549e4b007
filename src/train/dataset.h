// JSONL datasets: {"text"} (loss on all tokens), {"prompt","completion"} (loss on the
// completion only), {"messages":[{role,content}...]} (chat template, loss on assistant turns).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lowrank {

struct Example {
  std::vector<int32_t> ids;      // (n)
  std::vector<int32_t> targets;  // (n): targets[t] = ids[t+1] where scored, else -1
  int64_t scored() const;
};

// Reads and tokenizes every line; seq_len > 0 truncates each example to seq_len tokens.
// Empty lines, bad JSON and records of no known shape fail with file:line in the message.
std::vector<Example> load_jsonl(const std::string& path, const Tokenizer& tok, int64_t seq_len);

// Batches examples [begin, begin+B) into (B, T) with T = longest, padding ids with pad and
// targets with -1.
struct Batch;
void make_batch(const std::vector<Example>& data, const std::vector<size_t>& order, size_t begin,
                int64_t B, int32_t pad, Batch& out);
// Packs examples back to back into rows of exactly seq_len tokens (targets do not cross
// example boundaries); returns the packed examples.
std::vector<Example> pack_examples(const std::vector<Example>& data, int64_t seq_len, int32_t pad);

}  // namespace lowrank
