#include <csignal>
#include <cstdio>

#include "common.h"
#include "core/error.h"
#include "lora/peft.h"
#include "serve/server.h"

namespace lowrank::cli {

namespace {
serve::HttpServer* g_http = nullptr;
void on_signal(int) {
  if (g_http) g_http->stop();
}
}  // namespace

void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve", "Serve the model over HTTP with many resident LoRA adapters, chosen per request (batched decode)");
  struct Opts {
    std::string model, host = "127.0.0.1";
    int port = 8080;
    std::vector<std::string> adapters;
    serve::ServeOptions s;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "HF model dir or .gguf file")->required();
  cmd->add_option("--adapter", o->adapters, "NAME=DIR: load a PEFT adapter under NAME (repeatable)");
  cmd->add_option("--host", o->host, "Address to listen on");
  cmd->add_option("--port", o->port, "Port (0 = any free port; the chosen one is printed)");
  cmd->add_option("--max-batch", o->s.max_batch, "Sequences decoded together per step");
  cmd->add_option("--max-context", o->s.max_context, "Prompt + completion tokens per request");
  cmd->add_option("--default-max-tokens", o->s.default_max_tokens, "max_tokens when a request gives none");
  cmd->callback([o] {
    std::vector<std::pair<std::string, std::string>> named;
    for (const std::string& a : o->adapters) {
      const size_t eq = a.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == a.size())
        fail("--adapter ", a, ": expected NAME=DIR");
      named.push_back({a.substr(0, eq), a.substr(eq + 1)});
    }
    Loaded l = load_all(o->model, {});
    o->s.model_name = o->model;
    serve::InferenceServer server(*l.model, l.tok, o->s);
    for (const auto& [name, dir] : named) server.load_adapter(name, dir);
    serve::HttpServer http(o->host, o->port, [&](const serve::HttpRequest& r) { return server.handle(r); });
    g_http = &http;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::fprintf(stderr, "lowrank serve: http://%s:%d  (%zu adapter%s; POST /v1/completions, /v1/chat/completions)\n",
                 o->host.c_str(), http.port(), named.size(), named.size() == 1 ? "" : "s");
    std::printf("{\"port\":%d}\n", http.port());
    std::fflush(stdout);
    http.serve();
    g_http = nullptr;
    std::fprintf(stderr, "lowrank serve: stopped\n");
  });
}

}  // namespace lowrank::cli
