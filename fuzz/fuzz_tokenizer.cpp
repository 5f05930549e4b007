// libFuzzer target: arbitrary bytes as tokenizer.json (bytes after a first NUL, if any, are the
// tokenizer_config.json). Loading must either succeed or throw lowrank::Error; a loaded
// tokenizer must encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1u << 20)) return 0;
  std::string json(reinterpret_cast<const char*>(data), size);
  std::string config;
  size_t nul = json.find('\0');
  if (nul != std::string::npos) {
    config = json.substr(nul + 1);
    json.resize(nul);
  }
  try {
    lowrank::Tokenizer tok = lowrank::Tokenizer::from_json(json, config, "fuzz/tokenizer.json");
    for (const char* text : {"Hello world! 123 <s> na\xC3\xAFve \xF0\x9F\xA6\x80\n\n  x", "", "\xFF\xFE bad utf8 \xC3"}) {
      std::vector<int32_t> ids = tok.encode(text);
      tok.decode(ids);
      tok.decode(ids, true);
      tok.encode(text, false);
    }
    tok.decode({-1, 0, 1, 2, 3, tok.vocab_size() - 1, tok.vocab_size(), 1 << 30});
    tok.token_to_id("a");
    tok.id_to_token(0);
  } catch (const lowrank::Error&) {
  }
  return 0;
}
