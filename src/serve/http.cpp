#include "serve/http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace lowrank::serve {

const char* http_reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

bool send_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

std::string error_json(const std::string& msg) {
  std::string out = "{\"error\":{\"message\":\"";
  for (char c : msg) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"}}";
}

}  // namespace

int parse_http_request(const std::string& raw, const HttpLimits& limits, HttpRequest& req) {
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return raw.size() > limits.max_header_bytes ? 431 : -1;
  if (end > limits.max_header_bytes) return 431;
  size_t line_end = raw.find("\r\n");
  const std::string request_line = raw.substr(0, line_end);
  const size_t sp1 = request_line.find(' '), sp2 = request_line.rfind(' ');
  if (sp1 == std::string::npos || sp2 == sp1) return 400;
  req.method = request_line.substr(0, sp1);
  std::string target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string version = request_line.substr(sp2 + 1);
  if (version.rfind("HTTP/1.", 0) != 0 || req.method.empty() || target.empty() || target[0] != '/') return 400;
  const size_t qm = target.find('?');
  req.path = target.substr(0, qm);
  req.query = qm == std::string::npos ? "" : target.substr(qm + 1);
  req.headers.clear();
  size_t pos = line_end + 2;
  while (pos < end) {
    size_t e = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, e - pos);
    pos = e + 2;
    const size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0) return 400;
    req.headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  if (req.headers.count("transfer-encoding")) return 501;  // chunked bodies are not supported
  size_t length = 0;
  auto cl = req.headers.find("content-length");
  if (cl != req.headers.end()) {
    const std::string& v = cl->second;
    if (v.empty() || v.size() > 12 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return 400;
    length = size_t(std::stoull(v));
    if (length > limits.max_body_bytes) return 413;
  } else if (req.method == "POST" || req.method == "PUT") {
    return 411;
  }
  if (raw.size() < end + 4 + length) return -1;
  req.body = raw.substr(end + 4, length);
  return 0;
}

HttpServer::HttpServer(const std::string& host, int port, HttpHandler handler, HttpLimits limits)
    : handler_(std::move(handler)), limits_(limits) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_s = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port_s.c_str(), &hints, &res);
  if (rc != 0) fail("serve: cannot resolve host \"", host, "\": ", gai_strerror(rc));
  std::string why;
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      listen_fd_ = fd;
      break;
    }
    why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (listen_fd_ < 0) fail("serve: cannot listen on ", host, ":", port, ": ", why);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

HttpServer::~HttpServer() {
  stop();
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return active_ == 0; });
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void HttpServer::stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
}

void HttpServer::serve() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (stopping_) break;
      if (errno == EMFILE || errno == ENFILE) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      break;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (active_ >= limits_.max_connections) {
        HttpResponse r{503, "application/json", error_json("too many connections")};
        std::string head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                           std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n";
        send_all(fd, head + r.body);
        ::close(fd);
        continue;
      }
      active_++;
    }
    std::thread([this, fd] {
      handle_connection(fd);
      ::close(fd);
      std::lock_guard<std::mutex> lk(mu_);
      active_--;
      cv_.notify_all();
    }).detach();
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return active_ == 0; });
}

void HttpServer::handle_connection(int fd) {
  timeval tv{limits_.read_timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string raw;
  HttpRequest req;
  HttpResponse resp;
  char buf[16384];
  int status = -1;
  while (status == -1) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (raw.empty()) return;  // client went away before sending anything
      status = (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ? 408 : 400;
      break;
    }
    raw.append(buf, size_t(n));
    status = parse_http_request(raw, limits_, req);
  }
  if (status == 0) {
    try {
      resp = handler_(req);
    } catch (const std::exception& e) {
      resp = {500, "application/json", error_json(e.what())};
    }
  } else {
    resp = {status, "application/json", error_json(http_reason(status))};
  }
  std::string head = "HTTP/1.1 " + std::to_string(resp.status) + " " + http_reason(resp.status) +
                     "\r\nContent-Type: " + resp.content_type + "\r\nContent-Length: " +
                     std::to_string(resp.body.size()) + "\r\nConnection: close\r\n\r\n";
  send_all(fd, head + resp.body);
}

}  // namespace lowrank::serve
