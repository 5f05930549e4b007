#include <cmath>
#include <algorithm>
#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "train/dataset.h"

namespace lowrank::cli {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Score a JSONL data set: mean NLL and perplexity");
  struct Opts {
    std::string model, data;
    std::vector<std::string> adapters;
    bool per_record = false, json = false, top1 = false;
    int64_t seq_len = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--data", o->data, "JSONL file: {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"}")->required();
  cmd->add_option("--adapter", o->adapters, "PEFT adapter DIR[:SCALE]; repeat to stack");
  cmd->add_option("--seq-len", o->seq_len, "Truncate records to this many tokens (0 = no limit)")->check(in_range(0, kMaxSeqLen));
  cmd->add_flag("--per-record", o->per_record, "Include each record's NLL");
  cmd->add_flag("--json", o->json, "Print one JSON object as the last line");
  cmd->add_flag("--top1", o->top1,
                "Per record, also the input token ids and the teacher-forced top-1 prediction at every "
                "position (argmax of the logits; top1[t] predicts ids[t+1]); implies --per-record");
  cmd->callback([o] {
    Loaded l = load_all(o->model, o->adapters);
    l.model->keep_logits = o->top1;
    std::vector<Example> data = load_jsonl(o->data, l.tok, o->seq_len);
    double total = 0;
    int64_t tokens = 0;
    std::vector<std::pair<double, int64_t>> per;
    std::vector<std::vector<int32_t>> top1;  // per record: argmax of each position's logits
    if (o->top1) o->per_record = true;
    for (const Example& ex : data) {
      Batch b;
      b.B = 1;
      b.T = int64_t(ex.ids.size());
      b.ids = ex.ids;
      b.targets = ex.targets;
      b.row_adapters = {l.uses};
      double sum = l.model->forward(b, false);
      int64_t n = ex.scored();
      if (!std::isfinite(sum))
        fail(o->data, ": record ", per.size() + 1, ": the loss is not finite (", sum,
             "): the model or an adapter holds NaN/Inf values");
      total += sum;
      tokens += n;
      per.push_back({n ? sum / double(n) : 0.0, n});
      if (o->top1) {
        const std::vector<float>& logits = l.model->logits();
        const int64_t V = l.model->cfg.vocab;
        if (int64_t(logits.size()) < b.T * V) fail("eval --top1: the model kept no logits for the record");
        std::vector<int32_t> best(size_t(b.T));
        for (int64_t t = 0; t < b.T; t++) {
          const float* row = logits.data() + t * V;
          best[size_t(t)] = int32_t(std::max_element(row, row + V) - row);  // first index of the max
        }
        top1.push_back(std::move(best));
      }
    }
    auto ids_json = [](const std::vector<int32_t>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); i++) {
        if (i) s += ",";
        s += std::to_string(v[i]);
      }
      return s + "]";
    };
    double nll = tokens ? total / double(tokens) : 0.0;
    if (o->json) {
      std::string s = "{\"nll\":" + std::to_string(nll) + ",\"ppl\":" + std::to_string(std::exp(nll)) +
                      ",\"tokens\":" + std::to_string(tokens);
      if (o->per_record) {
        s += ",\"records\":[";
        char buf[64];
        for (size_t i = 0; i < per.size(); i++) {
          std::snprintf(buf, sizeof buf, "%s{\"nll\":%.9g,\"tokens\":%lld", i ? "," : "", per[i].first,
                        (long long)per[i].second);
          s += buf;
          if (o->top1) s += ",\"ids\":" + ids_json(data[i].ids) + ",\"top1\":" + ids_json(top1[i]);
          s += "}";
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
        for (size_t i = 0; i < per.size(); i++) {
          std::printf("  %zu: nll %.6f (%lld tokens)\n", i, per[i].first, (long long)per[i].second);
          if (o->top1) {
            // How often the top-1 prediction is the next token of the record.
            const Example& ex = data[i];
            int64_t hit = 0, scored = 0;
            for (size_t t = 0; t < ex.targets.size(); t++)
              if (ex.targets[t] >= 0) {
                scored++;
                hit += top1[i][t] == ex.targets[t];
              }
            std::printf("     ids %s\n     top1 %s\n     top1 = next token at %lld of %lld scored positions\n",
                        ids_json(ex.ids).c_str(), ids_json(top1[i]).c_str(), (long long)hit, (long long)scored);
          }
        }
    }
  });
}

}  // namespace lowrank::cli
