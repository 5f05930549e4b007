// Serving many LoRA adapters on one frozen base: an OpenAI-style JSON API over HTTP whose
// requests each pick their adapter (or none, or a weighted stack), and a scheduler that runs
// all active requests together: each new request is prefilled on its own, then every decode
// step is one batched forward over all running sequences with one adapter list per row
// (continuous batching; Model::forward_decode_batch). Adapters load and unload at run time
// without touching the base weights.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "model/sampling.h"
#include "serve/http.h"
#include "tokenizer/tokenizer.h"

namespace lowrank::serve {

struct ServeOptions {
  int max_batch = 8;             // sequences decoded together per step
  int64_t max_context = 2048;    // prompt + completion tokens per request
  int default_max_tokens = 128;
  std::string model_name;        // reported as "model"
};

// One completion request after parsing.
struct GenRequest {
  std::vector<int32_t> prompt;                            // token ids
  std::vector<std::pair<std::string, float>> adapters;   // (name, scale); empty = base model
  SampleOptions sampling;
  uint64_t seed = 0;
  int max_tokens = 128;
};

struct GenResult {
  std::vector<int32_t> tokens;  // generated ids (EOS excluded)
  std::string finish_reason;    // "stop" (EOS) or "length"
};

class InferenceServer {
 public:
  InferenceServer(Model& model, Tokenizer tok, ServeOptions opt);
  ~InferenceServer();  // stops the scheduler; pending requests fail with "server stopped"
  InferenceServer(const InferenceServer&) = delete;
  InferenceServer& operator=(const InferenceServer&) = delete;

  // Loads a PEFT adapter dir under `name` (replacing one of the same name). Thread-safe: runs
  // between decode steps. Throws lowrank::Error on a bad adapter.
  void load_adapter(const std::string& name, const std::string& dir);
  void unload_adapter(const std::string& name);
  // Blocking generation through the scheduler (what the HTTP handlers call). Thread-safe.
  GenResult generate(const GenRequest& r);
  // The HTTP API: GET /health, GET /v1/adapters, POST /v1/adapters {"name","path"},
  // DELETE /v1/adapters/NAME, POST /v1/completions, POST /v1/chat/completions.
  HttpResponse handle(const HttpRequest& req);

  // Largest number of sequences decoded in one step so far (for tests and logs).
  int peak_batch() const;

 private:
  struct Job;
  void run();
  void step_locked_out(std::vector<std::shared_ptr<Job>>& active);
  void call_in_scheduler(const std::function<void()>& fn);

  Model& model_;
  Tokenizer tok_;
  ServeOptions opt_;
  std::vector<int32_t> eos_;
  struct AdapterEntry { int slot; std::string path; std::shared_ptr<Adapter> adapter; };
  std::map<std::string, AdapterEntry> adapters_;  // scheduler thread only (and via call_in_scheduler)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> pending_;
  std::deque<std::function<void()>> control_;
  bool stopping_ = false;
  int peak_batch_ = 0;
  uint64_t next_id_ = 1;
  std::thread thread_;
};

}  // namespace lowrank::serve
