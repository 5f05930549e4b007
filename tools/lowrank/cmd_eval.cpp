#include <cmath>
#include <cstdio>

#include "common.h"
#include "train/dataset.h"

namespace lowrank::cli {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Score a JSONL data set: mean NLL and perplexity");
  struct Opts {
    std::string model, data;
    std::vector<std::string> adapters;
    bool per_record = false, json = false;
    int64_t seq_len = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--data", o->data, "JSONL file: {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"}")->required();
  cmd->add_option("--adapter", o->adapters, "PEFT adapter DIR[:SCALE]; repeat to stack");
  cmd->add_option("--seq-len", o->seq_len, "Truncate records to this many tokens (0 = no limit)");
  cmd->add_flag("--per-record", o->per_record, "Include each record's NLL");
  cmd->add_flag("--json", o->json, "Print one JSON object as the last line");
  cmd->callback([o] {
    Loaded l = load_all(o->model, o->adapters);
    std::vector<Example> data = load_jsonl(o->data, l.tok, o->seq_len);
    double total = 0;
    int64_t tokens = 0;
    std::vector<std::pair<double, int64_t>> per;
    for (const Example& ex : data) {
      Batch b;
      b.B = 1;
      b.T = int64_t(ex.ids.size());
      b.ids = ex.ids;
      b.targets = ex.targets;
      b.row_adapters = {l.uses};
      double sum = l.model->forward(b, false);
      int64_t n = ex.scored();
      total += sum;
      tokens += n;
      per.push_back({n ? sum / double(n) : 0.0, n});
    }
    double nll = tokens ? total / double(tokens) : 0.0;
    if (o->json) {
      std::string s = "{\"nll\":" + std::to_string(nll) + ",\"ppl\":" + std::to_string(std::exp(nll)) +
                      ",\"tokens\":" + std::to_string(tokens);
      if (o->per_record) {
        s += ",\"records\":[";
        char buf[64];
        for (size_t i = 0; i < per.size(); i++) {
          std::snprintf(buf, sizeof buf, "%s{\"nll\":%.9g,\"tokens\":%lld}", i ? "," : "", per[i].first,
                        (long long)per[i].second);
          s += buf;
        }
        s += "]";
      }
      s += "}";
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", nll);
      // Use full precision for the mean too.
      size_t p = s.find(",\"ppl\"");
      s = "{\"nll\":" + std::string(buf) + s.substr(p);
      std::printf("%s\n", s.c_str());
    } else {
      std::printf("records %zu  tokens %lld  nll %.6f  ppl %.4f\n", data.size(), (long long)tokens, nll, std::exp(nll));
      if (o->per_record)
        for (size_t i = 0; i < per.size(); i++) std::printf("  %zu: nll %.6f (%lld tokens)\n", i, per[i].first, (long long)per[i].second);
    }
  });
}

}  // namespace lowrank::cli
