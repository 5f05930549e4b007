#include "serve/server.h"

#include <algorithm>
#include <future>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_error.h"
#include "lora/peft.h"
#include "tokenizer/chat_template.h"

namespace lowrank::serve {

using json = nlohmann::json;

struct InferenceServer::Job {
  GenRequest req;
  std::vector<AdapterUse> uses;  // resolved when admitted
  KVCache cache;
  std::mt19937_64 rng;
  int32_t next = -1;             // token to feed in the next decode step
  bool done = false;
  GenResult result;
  std::promise<GenResult> promise;
};

namespace {

HttpResponse json_response(int status, const json& j) {
  return {status, "application/json", j.dump(-1, ' ', false, json::error_handler_t::replace)};
}

HttpResponse error_response(int status, const std::string& msg) {
  return json_response(status, {{"error", {{"message", msg}}}});
}

// Reads an optional number field with a range check.
template <class T>
T field(const json& body, const char* name, T dflt, T lo, T hi) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return dflt;
  if (!it->is_number()) fail("\"", name, "\" must be a number");
  const double v = it->get<double>();
  if (!(v >= double(lo) && v <= double(hi))) fail("\"", name, "\" must be in [", lo, ", ", hi, "], got ", v);
  return T(v);
}

}  // namespace

InferenceServer::InferenceServer(Model& model, Tokenizer tok, ServeOptions opt)
    : model_(model), tok_(std::move(tok)), opt_(std::move(opt)) {
  if (opt_.max_batch < 1) fail("serve: --max-batch must be at least 1");
  eos_ = model_.cfg.eos_ids;
  if (tok_.eos_id() >= 0) eos_.push_back(tok_.eos_id());
  thread_ = std::thread([this] { run(); });
}

InferenceServer::~InferenceServer() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int InferenceServer::peak_batch() const {
  std::lock_guard<std::mutex> lk(mu_);
  return peak_batch_;
}

void InferenceServer::call_in_scheduler(const std::function<void()>& fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> f = done->get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) fail("serve: server stopped");
    control_.push_back([fn, done] {
      try {
        fn();
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  cv_.notify_all();
  f.get();
}

void InferenceServer::load_adapter(const std::string& name, const std::string& dir) {
  if (name.empty()) fail("serve: an adapter needs a non-empty name");
  std::shared_ptr<Adapter> a = load_peft_adapter(dir);  // file reading off the scheduler thread
  a->name = name;
  call_in_scheduler([&] {
    auto it = adapters_.find(name);
    if (it != adapters_.end()) {
      model_.remove_adapter(it->second.slot);
      adapters_.erase(it);
    }
    int slot = model_.add_adapter(a);
    adapters_[name] = {slot, dir, a};
  });
}

void InferenceServer::unload_adapter(const std::string& name) {
  call_in_scheduler([&] {
    auto it = adapters_.find(name);
    if (it == adapters_.end()) fail("serve: no adapter named \"", name, "\"");
    model_.remove_adapter(it->second.slot);
    adapters_.erase(it);
  });
}

GenResult InferenceServer::generate(const GenRequest& r) {
  if (r.prompt.empty()) fail("the prompt tokenizes to no tokens");
  if (int64_t(r.prompt.size()) + r.max_tokens > opt_.max_context)
    fail("prompt (", r.prompt.size(), " tokens) + max_tokens (", r.max_tokens, ") exceeds the context limit of ",
         opt_.max_context);
  auto job = std::make_shared<Job>();
  job->req = r;
  job->rng.seed(r.seed);
  std::future<GenResult> f = job->promise.get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) fail("serve: server stopped");
    pending_.push_back(job);
  }
  cv_.notify_all();
  return f.get();
}

void InferenceServer::run() {
  std::vector<std::shared_ptr<Job>> active;
  const int64_t V = model_.cfg.vocab;
  auto finish = [&](Job& j, const std::string& reason) {
    j.done = true;
    j.result.finish_reason = reason;
    j.cache = KVCache();  // release the cache now
    j.promise.set_value(std::move(j.result));
  };
  auto fail_job = [&](Job& j, std::exception_ptr e) {
    j.done = true;
    j.cache = KVCache();
    j.promise.set_exception(e);
  };
  // Takes the logits of a job's last position: sample, then stop or queue the token.
  auto take = [&](Job& j, const float* logits) {
    const int32_t t = sample_token(logits, V, j.req.sampling, j.rng);
    if (std::find(eos_.begin(), eos_.end(), t) != eos_.end()) return finish(j, "stop");
    j.result.tokens.push_back(t);
    if (int(j.result.tokens.size()) >= j.req.max_tokens || j.cache.len >= j.cache.capacity)
      return finish(j, "length");
    j.next = t;
  };
  for (;;) {
    std::vector<std::shared_ptr<Job>> admit;
    std::deque<std::function<void()>> control;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !pending_.empty() || !control_.empty() || !active.empty(); });
      if (stopping_) break;
      control.swap(control_);
      while (!pending_.empty() && active.size() + admit.size() < size_t(opt_.max_batch)) {
        admit.push_back(pending_.front());
        pending_.pop_front();
      }
    }
    for (auto& fn : control) fn();
    // Prefill each new request on its own (its prompt length is its own).
    for (auto& j : admit) {
      try {
        for (const auto& [name, scale] : j->req.adapters) {
          auto it = adapters_.find(name);
          if (it == adapters_.end()) fail("no adapter named \"", name, "\" is loaded");
          j->uses.push_back({it->second.slot, scale});
        }
        int64_t cap = int64_t(j->req.prompt.size()) + j->req.max_tokens;
        if (model_.cfg.arch == Arch::GPT2) cap = std::min<int64_t>(cap, model_.cfg.max_pos);
        j->cache = model_.new_cache(cap);
        std::vector<float> logits = model_.forward_cached(j->req.prompt, j->cache, j->uses);
        take(*j, logits.data());
        if (!j->done) active.push_back(j);
      } catch (...) {
        fail_job(*j, std::current_exception());
      }
    }
    // One decode step for every running sequence, each row with its own adapters.
    if (!active.empty()) {
      std::vector<int32_t> ids;
      std::vector<KVCache*> caches;
      std::vector<std::vector<AdapterUse>> rows;
      for (auto& j : active) {
        ids.push_back(j->next);
        caches.push_back(&j->cache);
        rows.push_back(j->uses);
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        peak_batch_ = std::max(peak_batch_, int(active.size()));
      }
      try {
        std::vector<float> logits = model_.forward_decode_batch(ids, caches, rows);
        for (size_t s = 0; s < active.size(); s++) take(*active[s], logits.data() + s * size_t(V));
      } catch (...) {
        for (auto& j : active) fail_job(*j, std::current_exception());
      }
      active.erase(std::remove_if(active.begin(), active.end(), [](const auto& j) { return j->done; }), active.end());
    }
  }
  // Stopping: everything still queued or running fails.
  auto stopped = std::make_exception_ptr(Error("serve: server stopped"));
  for (auto& j : active) fail_job(*j, stopped);
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& j : pending_) fail_job(*j, stopped);
  pending_.clear();
  for (auto& fn : control_) fn();  // adapter loads/unloads queued before the stop still complete
  control_.clear();
}

HttpResponse InferenceServer::handle(const HttpRequest& req) {
  try {
    if (req.path == "/health") {
      if (req.method != "GET") return error_response(405, "use GET");
      return json_response(200, {{"status", "ok"}});
    }
    if (req.path == "/v1/adapters") {
      if (req.method == "GET") {
        json list = json::array();
        call_in_scheduler([&] {
          for (const auto& [name, e] : adapters_)
            list.push_back({{"name", name},
                            {"path", e.path},
                            {"r", e.adapter->config.r},
                            {"lora_alpha", e.adapter->config.lora_alpha},
                            {"targets", e.adapter->targets.size()}});
        });
        return json_response(200, {{"adapters", list}});
      }
      if (req.method == "POST") {
        json body = json::parse(req.body);
        if (!body.is_object() || !body.contains("name") || !body["name"].is_string() || !body.contains("path") ||
            !body["path"].is_string())
          return error_response(400, "POST /v1/adapters needs {\"name\": string, \"path\": PEFT adapter dir}");
        load_adapter(body["name"].get<std::string>(), body["path"].get<std::string>());
        return json_response(200, {{"loaded", body["name"]}});
      }
      return error_response(405, "use GET or POST");
    }
    if (req.path.rfind("/v1/adapters/", 0) == 0) {
      if (req.method != "DELETE") return error_response(405, "use DELETE");
      const std::string name = req.path.substr(13);
      unload_adapter(name);
      return json_response(200, {{"unloaded", name}});
    }
    const bool chat = req.path == "/v1/chat/completions";
    if (req.path == "/v1/completions" || chat) {
      if (req.method != "POST") return error_response(405, "use POST");
      json body = json::parse(req.body);
      if (!body.is_object()) return error_response(400, "the request body must be a JSON object");
      GenRequest g;
      g.max_tokens = field<int>(body, "max_tokens", opt_.default_max_tokens, 1, int(opt_.max_context));
      g.sampling.temperature = field<float>(body, "temperature", 0.f, 0.f, 100.f);
      g.sampling.top_k = field<int>(body, "top_k", 0, 0, 1 << 30);
      g.sampling.top_p = field<float>(body, "top_p", 1.f, 0.f, 1.f);
      g.seed = field<uint64_t>(body, "seed", 0, 0, uint64_t(1) << 53);
      // Adapter choice: "adapter": NAME, or "adapters": [{"name", "scale"}] to stack, or
      // "model": NAME of a loaded adapter (as OpenAI-style clients send it).
      if (body.contains("adapters") && !body["adapters"].is_null()) {
        if (!body["adapters"].is_array()) return error_response(400, "\"adapters\" must be a list of {name, scale}");
        for (const json& a : body["adapters"]) {
          if (!a.is_object() || !a.contains("name") || !a["name"].is_string())
            return error_response(400, "each entry of \"adapters\" needs a \"name\"");
          g.adapters.push_back({a["name"].get<std::string>(), field<float>(a, "scale", 1.f, -1e6f, 1e6f)});
        }
      } else if (body.contains("adapter") && !body["adapter"].is_null()) {
        if (!body["adapter"].is_string()) return error_response(400, "\"adapter\" must be a string");
        g.adapters.push_back({body["adapter"].get<std::string>(), 1.f});
      } else if (body.contains("model") && body["model"].is_string() && body["model"] != opt_.model_name) {
        g.adapters.push_back({body["model"].get<std::string>(), 1.f});
      }
      if (chat) {
        if (!body.contains("messages") || !body["messages"].is_array())
          return error_response(400, "\"messages\" must be a list of {role, content}");
        if (tok_.chat_template().empty()) return error_response(400, "the model has no chat template");
        std::vector<ChatMessage> msgs;
        for (const json& m : body["messages"]) {
          if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
              !m["content"].is_string())
            return error_response(400, "each message needs string \"role\" and \"content\"");
          msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        std::string text = render_chat_template(tok_.chat_template(), msgs, true, tok_.bos_token(), tok_.eos_token());
        const bool has_bos = !tok_.bos_token().empty() && text.compare(0, tok_.bos_token().size(), tok_.bos_token()) == 0;
        g.prompt = tok_.encode(text, !has_bos);
      } else {
        if (!body.contains("prompt") || !body["prompt"].is_string())
          return error_response(400, "\"prompt\" must be a string");
        g.prompt = tok_.encode(body["prompt"].get<std::string>());
      }
      GenResult r = generate(g);
      const std::string text = tok_.decode(r.tokens, true);
      uint64_t id;
      {
        std::lock_guard<std::mutex> lk(mu_);
        id = next_id_++;
      }
      json adapter_names = json::array();
      for (const auto& [n, s] : g.adapters) adapter_names.push_back({{"name", n}, {"scale", s}});
      json choice = {{"index", 0}, {"finish_reason", r.finish_reason}, {"tokens", r.tokens}};
      if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
      else choice["text"] = text;
      return json_response(200, {{"id", (chat ? "chatcmpl-" : "cmpl-") + std::to_string(id)},
                                 {"object", chat ? "chat.completion" : "text_completion"},
                                 {"model", opt_.model_name},
                                 {"adapters", adapter_names},
                                 {"choices", json::array({choice})},
                                 {"usage",
                                  {{"prompt_tokens", g.prompt.size()},
                                   {"completion_tokens", r.tokens.size()},
                                   {"total_tokens", g.prompt.size() + r.tokens.size()}}}});
    }
    return error_response(404, "no route " + req.method + " " + req.path);
  } catch (const json::exception& e) {
    return error_response(400, std::string("invalid JSON body: ") + json_error_text(e));
  } catch (const Error& e) {
    return error_response(400, e.what());
  }
}

}  // namespace lowrank::serve
