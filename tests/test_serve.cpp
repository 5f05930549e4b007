// Serving: the batched decode step (many sequences, one adapter list per row) against one
// sequence at a time, the HTTP request parser, and the HTTP API end to end on a real socket
// with concurrent requests that each pick a different adapter.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "fixture_util.h"
#include "lora/peft.h"
#include "model/model.h"
#include "serve/http.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"

using namespace lowrank;
using json = nlohmann::json;

namespace {

std::string model_dir(const std::string& m) { return fixtures_dir() + "/" + m + "/model"; }
std::string adapter_dir(const std::string& m, const std::string& a) { return fixtures_dir() + "/" + m + "/adapters/" + a; }

// Greedy continuation of one prompt, one sequence at a time (the reference).
std::vector<int32_t> greedy_sequential(Model& m, const std::vector<int32_t>& prompt, const std::vector<AdapterUse>& uses,
                                       int n, const std::vector<int32_t>& eos) {
  KVCache cache = m.new_cache(int64_t(prompt.size()) + n);
  std::vector<float> logits = m.forward_cached(prompt, cache, uses);
  std::vector<int32_t> out;
  for (int i = 0; i < n; i++) {
    int32_t t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (std::find(eos.begin(), eos.end(), t) != eos.end()) break;
    out.push_back(t);
    if (i + 1 < n) logits = m.forward_cached({t}, cache, uses);
  }
  return out;
}

// Decode steps of three sequences of different lengths, with no adapter, adapter A, and A+B
// stacked at other scales, batched: each row's logits equal the one-sequence path.
void check_batched_decode(const std::string& name, const std::string& a1, const std::string& a2) {
  Tokenizer tok = Tokenizer::from_hf_dir(model_dir(name));
  auto m = load_hf_model(model_dir(name));
  const int s1 = m->add_adapter(load_peft_adapter(adapter_dir(name, a1)));
  const int s2 = m->add_adapter(load_peft_adapter(adapter_dir(name, a2)));
  std::vector<std::vector<int32_t>> prompts = {tok.encode("Once upon a time"),
                                               tok.encode("The little robot looked at the painting and"),
                                               tok.encode("Hello")};
  std::vector<std::vector<AdapterUse>> rows = {{}, {{s1, 1.f}}, {{s1, 0.5f}, {s2, 0.75f}}};
  std::vector<KVCache> batched, single;
  std::vector<int32_t> next;
  for (size_t s = 0; s < prompts.size(); s++) {
    batched.push_back(m->new_cache(64));
    single.push_back(m->new_cache(64));
    std::vector<float> lb = m->forward_cached(prompts[s], batched[s], rows[s]);
    m->forward_cached(prompts[s], single[s], rows[s]);
    next.push_back(int32_t(std::max_element(lb.begin(), lb.end()) - lb.begin()));
  }
  const int64_t V = m->cfg.vocab;
  for (int step = 0; step < 4; step++) {
    std::vector<KVCache*> caches;
    for (KVCache& c : batched) caches.push_back(&c);
    std::vector<float> lb = m->forward_decode_batch(next, caches, rows);
    ASSERT_EQ(lb.size(), size_t(3 * V));
    for (size_t s = 0; s < prompts.size(); s++) {
      std::vector<float> ls = m->forward_cached({next[s]}, single[s], rows[s]);
      EXPECT_EQ(batched[s].len, single[s].len);
      double max_diff = 0, max_abs = 0;
      for (int64_t v = 0; v < V; v++) {
        max_diff = std::max(max_diff, double(std::fabs(lb[s * size_t(V) + size_t(v)] - ls[size_t(v)])));
        max_abs = std::max(max_abs, double(std::fabs(ls[size_t(v)])));
      }
      EXPECT_LT(max_diff, 1e-5 * std::max(1.0, max_abs)) << name << " row " << s << " step " << step;
      next[s] = int32_t(std::max_element(ls.begin(), ls.end()) - ls.begin());
    }
  }
  // Different adapters really give different rows (otherwise the check above proves little).
  std::vector<KVCache*> caches;
  for (KVCache& c : batched) caches.push_back(&c);
  std::vector<int32_t> same(3, next[0]);
  std::vector<float> lb = m->forward_decode_batch(same, caches, rows);
  double d01 = 0;
  for (int64_t v = 0; v < V; v++) d01 = std::max(d01, double(std::fabs(lb[size_t(v)] - lb[size_t(V + v)])));
  EXPECT_GT(d01, 1e-4);
}

// ---- a minimal HTTP client -------------------------------------------------------------

struct Reply {
  int status = 0;
  json body;
};

Reply http(int port, const std::string& method, const std::string& path, const std::string& body = "",
           bool with_length = true) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n";
  if (with_length) req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, size_t(n));
  ::close(fd);
  Reply r;
  EXPECT_EQ(raw.rfind("HTTP/1.1 ", 0), 0u) << raw;
  if (raw.size() > 12) r.status = std::stoi(raw.substr(9, 3));
  size_t p = raw.find("\r\n\r\n");
  if (p != std::string::npos) r.body = json::parse(raw.substr(p + 4), nullptr, false);
  return r;
}

}  // namespace

TEST(Serve, BatchedDecodeMatchesSequentialLlama) { check_batched_decode("tiny-llama", "qv-r4", "all-linear-r8"); }
TEST(Serve, BatchedDecodeMatchesSequentialGpt2) {
  check_batched_decode("tiny-gpt2", "attn-qkv-r4", "all-linear-r8-rslora");
}

TEST(Serve, HttpParser) {
  serve::HttpLimits lim;
  lim.max_body_bytes = 100;
  serve::HttpRequest r;
  EXPECT_EQ(serve::parse_http_request("GET /health HTTP/1.1\r\nHost: x\r\n", lim, r), -1);  // incomplete
  ASSERT_EQ(serve::parse_http_request("GET /v1/adapters?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", lim, r), 0);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.path, "/v1/adapters");
  EXPECT_EQ(r.query, "x=1");
  EXPECT_EQ(r.headers["host"], "x");
  EXPECT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", lim, r), -1);
  ASSERT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\nCONTENT-LENGTH: 5\r\n\r\nabcdefg", lim, r), 0);
  EXPECT_EQ(r.body, "abcde");
  EXPECT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\n\r\n", lim, r), 411);
  EXPECT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n", lim, r), 413);
  EXPECT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", lim, r), 400);
  EXPECT_EQ(serve::parse_http_request("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", lim, r), 501);
  EXPECT_EQ(serve::parse_http_request("GARBAGE\r\n\r\n", lim, r), 400);
  EXPECT_EQ(serve::parse_http_request("GET x HTTP/1.1\r\n\r\n", lim, r), 400);
  EXPECT_EQ(serve::parse_http_request("GET / HTTP/1.1\r\nno colon here\r\n\r\n", lim, r), 400);
  lim.max_header_bytes = 32;
  EXPECT_EQ(serve::parse_http_request(std::string("GET / HTTP/1.1\r\nX: ") + std::string(64, 'a'), lim, r), 431);
}

TEST(Serve, HttpApiWithConcurrentAdapters) {
  const std::string name = "tiny-llama";
  Tokenizer tok = Tokenizer::from_hf_dir(model_dir(name));
  auto ref = load_hf_model(model_dir(name));
  const int r1 = ref->add_adapter(load_peft_adapter(adapter_dir(name, "qv-r4")));
  const int r2 = ref->add_adapter(load_peft_adapter(adapter_dir(name, "all-linear-r8")));
  std::vector<int32_t> eos = ref->cfg.eos_ids;
  if (tok.eos_id() >= 0) eos.push_back(tok.eos_id());

  auto m = load_hf_model(model_dir(name));
  serve::ServeOptions opt;
  opt.max_batch = 4;
  opt.model_name = "tiny";
  serve::InferenceServer server(*m, tok, opt);
  server.load_adapter("qv", adapter_dir(name, "qv-r4"));
  serve::HttpServer httpd("127.0.0.1", 0, [&](const serve::HttpRequest& r) { return server.handle(r); });
  std::thread loop([&] { httpd.serve(); });
  const int port = httpd.port();
  ASSERT_GT(port, 0);

  EXPECT_EQ(http(port, "GET", "/health").body["status"], "ok");
  // Load a second adapter at run time.
  Reply load = http(port, "POST", "/v1/adapters",
                    json({{"name", "all"}, {"path", adapter_dir(name, "all-linear-r8")}}).dump());
  EXPECT_EQ(load.status, 200) << load.body.dump();
  Reply list = http(port, "GET", "/v1/adapters");
  ASSERT_EQ(list.body["adapters"].size(), 2u) << list.body.dump();

  // Concurrent requests, each with its own adapter choice; each must equal its one-sequence
  // greedy reference.
  struct Case {
    std::string prompt;
    json choice;
    std::vector<AdapterUse> ref_uses;
  };
  std::vector<Case> cases = {
      {"Once upon a time", json::object(), {}},
      {"Once upon a time", {{"adapter", "qv"}}, {{r1, 1.f}}},
      {"The little robot", {{"model", "all"}}, {{r2, 1.f}}},
      {"The little robot", {{"adapters", {{{"name", "qv"}, {"scale", 0.5}}, {{"name", "all"}, {"scale", 2.0}}}}},
       {{r1, 0.5f}, {r2, 2.f}}},
  };
  const int n_tokens = 12;
  std::vector<std::future<Reply>> replies;
  for (const Case& c : cases) {
    json body = c.choice;
    body["prompt"] = c.prompt;
    body["max_tokens"] = n_tokens;
    body["temperature"] = 0;
    replies.push_back(std::async(std::launch::async, [port, b = body.dump()] { return http(port, "POST", "/v1/completions", b); }));
  }
  for (size_t i = 0; i < cases.size(); i++) {
    Reply r = replies[i].get();
    ASSERT_EQ(r.status, 200) << r.body.dump();
    std::vector<int32_t> want = greedy_sequential(*ref, tok.encode(cases[i].prompt), cases[i].ref_uses, n_tokens, eos);
    std::vector<int32_t> got = r.body["choices"][0]["tokens"].get<std::vector<int32_t>>();
    EXPECT_EQ(got, want) << "case " << i << ": " << r.body.dump();
    EXPECT_EQ(r.body["choices"][0]["text"], tok.decode(want, true));
    EXPECT_EQ(r.body["usage"]["completion_tokens"], want.size());
    EXPECT_EQ(r.body["choices"][0]["finish_reason"], want.size() == size_t(n_tokens) ? "length" : "stop");
  }
  std::printf("[ INFO     ] peak decode batch: %d sequences\n", server.peak_batch());

  // Errors: one clear message each, the server keeps running.
  Reply unknown = http(port, "POST", "/v1/completions", R"({"prompt":"hi","adapter":"nope"})");
  EXPECT_EQ(unknown.status, 400);
  EXPECT_NE(unknown.body["error"]["message"].get<std::string>().find("nope"), std::string::npos);
  EXPECT_EQ(http(port, "POST", "/v1/completions", "{not json").status, 400);
  EXPECT_EQ(http(port, "POST", "/v1/completions", R"({"prompt":"hi","max_tokens":-3})").status, 400);
  EXPECT_EQ(http(port, "POST", "/v1/completions", R"({"prompt":"hi"})", /*with_length=*/false).status, 411);
  EXPECT_EQ(http(port, "GET", "/nowhere").status, 404);
  Reply bad_load = http(port, "POST", "/v1/adapters", json({{"name", "x"}, {"path", "/no/such/adapter"}}).dump());
  EXPECT_EQ(bad_load.status, 400);
  EXPECT_NE(bad_load.body["error"]["message"].get<std::string>().find("/no/such/adapter"), std::string::npos);
  // Unload, after which the name is unknown.
  EXPECT_EQ(http(port, "DELETE", "/v1/adapters/all").status, 200);
  EXPECT_EQ(http(port, "POST", "/v1/completions", R"({"prompt":"hi","adapter":"all"})").status, 400);
  EXPECT_EQ(http(port, "GET", "/v1/adapters").body["adapters"].size(), 1u);

  httpd.stop();
  loop.join();
}
