// Running programs from tests without a shell: argv is passed as given (paths may hold quotes,
// spaces or semicolons), stdout/stderr go to files, and a run past its time limit is killed.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <utility>
#include <string>
#include <thread>
#include <vector>

struct ProcResult {
  int rc = -1;             // exit code, or 128 + signal
  bool timed_out = false;  // killed after timeout_s
};

// Runs argv[0] (looked up in PATH when it has no '/') with cwd (empty: the current one), stdin
// from /dev/null and stdout/stderr into the given files (empty: /dev/null). Leading NAME=VALUE
// entries of argv are set in the child's environment, as a shell would.
inline ProcResult run_process(const std::vector<std::string>& argv, const std::string& out_path,
                              const std::string& err_path, const std::string& cwd = "", double timeout_s = 600) {
  ProcResult r;
  std::vector<char*> args;
  std::vector<std::pair<std::string, std::string>> env;
  for (const std::string& a : argv) {
    const size_t eq = a.find('=');
    const bool assignment = args.empty() && eq != std::string::npos && eq > 0 &&
                            a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == eq;
    if (assignment) env.push_back({a.substr(0, eq), a.substr(eq + 1)});
    else args.push_back(const_cast<char*>(a.c_str()));
  }
  if (args.empty()) return r;
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return r;
  if (pid == 0) {
    int in = open("/dev/null", O_RDONLY);
    int out = open(out_path.empty() ? "/dev/null" : out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.empty() ? "/dev/null" : err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(126);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(126);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    execvp(args[0], args.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int st = 0;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return r;
}

// Splits a command line written with the test's q() quoting ('...', with '\'' for a quote)
// and plain words into argv, without a shell.
inline std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  bool have = false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    if (c == '\'') {
      have = true;
      size_t j = s.find('\'', i + 1);
      if (j == std::string::npos) j = s.size();
      cur += s.substr(i + 1, j - i - 1);
      i = j;
    } else if (c == '\\' && i + 1 < s.size()) {
      cur += s[++i];
      have = true;
    } else if (c == ' ' || c == '\t' || c == '\n') {
      if (have) out.push_back(cur);
      cur.clear();
      have = false;
    } else {
      cur += c;
      have = true;
    }
  }
  if (have) out.push_back(cur);
  return out;
}
