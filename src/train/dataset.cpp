#include "train/dataset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_error.h"
#include "core/mmap_file.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"

namespace lowrank {

using json = nlohmann::json;

int64_t Example::scored() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t >= 0;
  return n;
}

// Marks targets for positions [from, to) of ids (predicting ids[t+1]).
static void score_range(Example& ex, size_t from, size_t to) {
  for (size_t t = from; t + 1 < ex.ids.size() && t < to; t++) ex.targets[t] = ex.ids[t + 1];
}

std::vector<Example> load_jsonl(const std::string& path, const Tokenizer& tok, int64_t seq_len) {
  check_regular_file(path);
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open");
  std::vector<Example> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    lineno++;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos)
      fail(path, ":", lineno, ": empty line (each line must be one JSON object)");
    json j;
    try {
      j = json::parse(line);
    } catch (const std::exception& e) {
      fail(path, ":", lineno, ": not valid JSON: ", json_error_text(e));
    }
    if (!j.is_object()) fail(path, ":", lineno, ": expected a JSON object");
    Example ex;
    try {
      if (j.contains("text")) {
        if (!j["text"].is_string()) fail(path, ":", lineno, ": \"text\" must be a string");
        ex.ids = tok.encode(j["text"].get<std::string>());
        ex.targets.assign(ex.ids.size(), -1);
        score_range(ex, 0, ex.ids.size());
      } else if (j.contains("prompt") && j.contains("completion")) {
        if (!j["prompt"].is_string() || !j["completion"].is_string())
          fail(path, ":", lineno, ": \"prompt\" and \"completion\" must be strings");
        std::string prompt = j["prompt"].get<std::string>();
        std::string completion = j["completion"].get<std::string>();
        std::vector<int32_t> p = tok.encode(prompt);
        std::vector<int32_t> full = tok.encode(prompt + completion);
        bool prefix_ok = full.size() >= p.size() && std::equal(p.begin(), p.end(), full.begin());
        if (!prefix_ok) {  // tokenization merged across the boundary: encode the parts apart
          full = p;
          std::vector<int32_t> c = tok.encode(completion, false);
          full.insert(full.end(), c.begin(), c.end());
        }
        if (tok.eos_id() >= 0) full.push_back(tok.eos_id());
        ex.ids = full;
        ex.targets.assign(ex.ids.size(), -1);
        // Position t predicts ids[t+1]: the first completion token is predicted at p.size()-1.
        score_range(ex, p.empty() ? 0 : p.size() - 1, ex.ids.size());
      } else if (j.contains("messages")) {
        if (!j["messages"].is_array()) fail(path, ":", lineno, ": \"messages\" must be a list");
        std::vector<ChatMessage> msgs;
        for (const json& m : j["messages"]) {
          if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
              !m["content"].is_string())
            fail(path, ":", lineno, ": each message needs string \"role\" and \"content\"");
          msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
          if (!is_known_chat_role(msgs.back().role))
            fail(path, ":", lineno, ": unknown chat role \"", msgs.back().role, "\" (", known_chat_roles(), ")");
        }
        if (msgs.empty()) fail(path, ":", lineno, ": \"messages\" is empty");
        if (tok.chat_template().empty())
          fail(path, ":", lineno, ": \"messages\" records need a chat template, and the tokenizer has none");
        RenderedChat rc = render_chat_with_spans(tok.chat_template(), msgs, tok.bos_token(), tok.eos_token());
        // BOS: templates that emit bos_token themselves make the tokenizer's BOS a duplicate.
        bool tmpl_bos = !tok.bos_token().empty() && rc.text.compare(0, tok.bos_token().size(), tok.bos_token()) == 0;
        ex.ids = tok.encode(rc.text, !tmpl_bos);
        ex.targets.assign(ex.ids.size(), -1);
        for (auto [b, e] : rc.assistant_spans) {
          size_t tb = tok.encode(rc.text.substr(0, b), !tmpl_bos).size();
          size_t te = tok.encode(rc.text.substr(0, e), !tmpl_bos).size();
          score_range(ex, tb == 0 ? 0 : tb - 1, te == 0 ? 0 : te - 1);
        }
      } else {
        fail(path, ":", lineno, ": record needs \"text\", \"prompt\"+\"completion\" or \"messages\"");
      }
    } catch (const json::exception& e) {
      fail(path, ":", lineno, ": ", e.what());
    }
    if (seq_len > 0 && int64_t(ex.ids.size()) > seq_len) {
      ex.ids.resize(size_t(seq_len));
      ex.targets.resize(size_t(seq_len));
      ex.targets.back() = -1;
    }
    if (ex.ids.empty()) fail(path, ":", lineno, ": record tokenizes to no tokens");
    out.push_back(std::move(ex));
  }
  if (out.empty()) fail(path, ": no records");
  return out;
}

void make_batch(const std::vector<Example>& data, const std::vector<size_t>& order, size_t begin, int64_t B,
                int32_t pad, Batch& out) {
  int64_t T = 0;
  for (int64_t b = 0; b < B; b++) T = std::max<int64_t>(T, int64_t(data[order[(begin + size_t(b)) % order.size()]].ids.size()));
  out.B = B;
  out.T = T;
  out.ids.assign(size_t(B * T), pad < 0 ? 0 : pad);
  out.targets.assign(size_t(B * T), -1);
  for (int64_t b = 0; b < B; b++) {
    const Example& ex = data[order[(begin + size_t(b)) % order.size()]];
    std::copy(ex.ids.begin(), ex.ids.end(), out.ids.begin() + b * T);
    std::copy(ex.targets.begin(), ex.targets.end(), out.targets.begin() + b * T);
  }
}

std::vector<Example> pack_examples(const std::vector<Example>& data, int64_t seq_len, int32_t pad) {
  std::vector<Example> out;
  Example cur;
  for (const Example& ex : data) {
    size_t i = 0;
    while (i < ex.ids.size()) {
      size_t room = size_t(seq_len) - cur.ids.size();
      size_t take = std::min(room, ex.ids.size() - i);
      for (size_t k = 0; k < take; k++) {
        cur.ids.push_back(ex.ids[i + k]);
        // The last token of a piece predicts nothing within this row.
        cur.targets.push_back(k + 1 < take ? ex.targets[i + k] : -1);
      }
      i += take;
      if (int64_t(cur.ids.size()) == seq_len) {
        out.push_back(std::move(cur));
        cur = Example();
      }
    }
  }
  if (!cur.ids.empty()) out.push_back(std::move(cur));
  return out;
}

}  // namespace lowrank
