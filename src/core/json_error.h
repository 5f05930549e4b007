// Messages for JSON errors that never echo the input. nlohmann's parse errors quote the text
// around the error ("...; last read: 'root:x:0'"): when a config file is a symlink to a secret,
// that quote would put the secret in an error line. Only the position and the kind are kept.
#pragma once
#include <exception>
#include <string>

namespace lowrank {

// "parse error at line 1, column 5: syntax error while parsing value - invalid literal"
std::string json_error_text(const std::exception& e);

}  // namespace lowrank
