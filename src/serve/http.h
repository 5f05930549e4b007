// A small HTTP/1.1 server on POSIX sockets: one request per connection (Connection: close),
// a thread per connection (bounded), Content-Length bodies. Enough for a JSON API on a
// trusted network; put a reverse proxy in front for TLS or the open internet.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace lowrank::serve {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string path;                            // without the query string
  std::string query;                           // after '?', may be empty
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpLimits {
  size_t max_header_bytes = 64 * 1024;
  size_t max_body_bytes = 16 * 1024 * 1024;
  int max_connections = 64;    // concurrent; more get 503
  int read_timeout_s = 30;     // per recv
};

class HttpServer {
 public:
  // Binds and listens on host:port (port 0 = any free port); throws lowrank::Error on failure.
  HttpServer(const std::string& host, int port, HttpHandler handler, HttpLimits limits = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // Accepts connections until stop(); returns after the open connections are answered.
  void serve();
  // Thread-safe; makes serve() return.
  void stop();

 private:
  void handle_connection(int fd);
  int listen_fd_ = -1;
  int port_ = 0;
  HttpHandler handler_;
  HttpLimits limits_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int active_ = 0;
};

// Parses one request from raw bytes (header block + body). Returns 0 when complete and sets
// `req`; an HTTP status (400, 411, 413, 431, 501) when the input is invalid; -1 when more bytes
// are needed. Exposed for tests.
int parse_http_request(const std::string& raw, const HttpLimits& limits, HttpRequest& req);

const char* http_reason(int status);

}  // namespace lowrank::serve
