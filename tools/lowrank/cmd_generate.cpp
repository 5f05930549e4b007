#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "common.h"
#include "core/error.h"
#include "model/gguf_model.h"
#include "model/sampling.h"
#include "tokenizer/chat_template.h"

namespace lowrank::cli {


void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text with a KV cache (greedy or sampled), streaming to stdout");
  struct Opts {
    std::string model, prompt, system;
    std::vector<std::string> adapters;
    int max_tokens = 64;
    SampleOptions s;
    uint64_t seed = 0;
    bool json = false, chat = false, quiet = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("--adapter", o->adapters, "PEFT adapter DIR[:SCALE]; repeat to stack");
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate at most")->check(in_range(1, kMaxSeqLen));
  cmd->add_option("--temperature", o->s.temperature, "0 = greedy")->check(in_range(0, 100));
  cmd->add_option("--top-k", o->s.top_k, "Sample among the k most likely tokens (0 = all)")->check(in_range(0, 1 << 30));
  cmd->add_option("--top-p", o->s.top_p, "Nucleus sampling mass")->check(in_range(0, 1));
  cmd->add_option("--seed", o->seed, "Random seed for sampling");
  cmd->add_flag("--chat", o->chat, "Wrap the prompt as a user message with the model's chat template");
  cmd->add_option("--system", o->system, "System message (with --chat)");
  cmd->add_flag("--json", o->json, "Print {\"tokens\":[...],\"text\":...} as the last line");
  cmd->add_flag("--quiet", o->quiet, "Do not stream text");
  cmd->callback([o] {
    Loaded l = load_all(o->model, o->adapters);
    std::vector<int32_t> prompt_ids;
    if (o->chat) {
      const std::string& tmpl = l.tok.chat_template();
      if (tmpl.empty()) fail(o->model, ": --chat needs a chat template and the model has none");
      std::vector<ChatMessage> msgs;
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      msgs.push_back({"user", o->prompt});
      std::string text = render_chat_template(tmpl, msgs, true, l.tok.bos_token(), l.tok.eos_token());
      bool tmpl_bos = !l.tok.bos_token().empty() && text.compare(0, l.tok.bos_token().size(), l.tok.bos_token()) == 0;
      prompt_ids = l.tok.encode(text, !tmpl_bos);
    } else {
      prompt_ids = l.tok.encode(o->prompt);
    }
    if (prompt_ids.empty()) fail("the prompt tokenizes to no tokens");
    Model& m = *l.model;
    int64_t cap = int64_t(prompt_ids.size()) + o->max_tokens;
    if (m.cfg.arch == Arch::GPT2) cap = std::min<int64_t>(cap, m.cfg.max_pos);
    KVCache cache = m.new_cache(cap);
    std::vector<int32_t> eos = m.cfg.eos_ids;
    if (l.tok.eos_id() >= 0) eos.push_back(l.tok.eos_id());
    std::mt19937_64 rng(o->seed);
    std::vector<int32_t> out;
    std::string printed;
    std::vector<float> logits = m.forward_cached(prompt_ids, cache, l.uses);
    for (int i = 0; i < o->max_tokens; i++) {
      int32_t next = sample_token(logits.data(), int64_t(logits.size()), o->s, rng);
      if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
      out.push_back(next);
      if (!o->quiet) {
        std::string text = l.tok.decode(out, true);
        // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until it completes.
        bool partial = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
        if (!partial && text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
          std::fputs(text.c_str() + printed.size(), stdout);
          std::fflush(stdout);
          printed = text;
        }
      }
      if (cache.len >= cap) break;
      logits = m.forward_cached({next}, cache, l.uses);
    }
    std::string text = l.tok.decode(out, true);
    if (!o->quiet) {
      if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0)
        std::fputs(text.c_str() + printed.size(), stdout);
      std::fputs("\n", stdout);
    }
    if (o->json) {
      std::string s = "{\"tokens\":[";
      for (size_t i = 0; i < out.size(); i++) s += (i ? "," : "") + std::to_string(out[i]);
      std::printf("%s],\"text\":%s}\n", s.c_str(), json_escape(text).c_str());
    }
  });
}

}  // namespace lowrank::cli
