#include "core/json_error.h"

namespace lowrank {

std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  // "[json.exception.parse_error.101] " prefix: the kind is said by the rest of the text.
  if (s.rfind("[json.exception.", 0) == 0) {
    size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  // "; last read: '<input>'" possibly followed by "; expected <token kind>".
  size_t lr = s.find("; last read:");
  if (lr != std::string::npos) {
    size_t exp = s.rfind("; expected ");
    std::string tail = exp != std::string::npos && exp > lr ? s.substr(exp) : std::string();
    s = s.substr(0, lr) + tail;
  }
  return s;
}

}  // namespace lowrank
