// UTF-8 and Unicode helpers for the tokenizer: decoding, Rust-compatible lossy conversion,
// whitespace, normalization forms (NFC/NFD/NFKC/NFKD), lowercase, GPT-2 byte<->unicode map.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace lowrank::tok {

// Length of the UTF-8 sequence introduced by a (valid) lead byte; 1 for anything else.
inline size_t utf8_seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at s[i] of a valid UTF-8 string and advances i.
uint32_t next_cp(std::string_view s, size_t& i);
// Decodes the code point that ends at s[i-1] of a valid UTF-8 string and moves i back.
uint32_t prev_cp(std::string_view s, size_t& i);
void append_utf8(std::string& out, uint32_t cp);

bool is_valid_utf8(std::string_view s);
// Like Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view s);

// Rust char::is_whitespace (Unicode White_Space).
bool is_whitespace(uint32_t cp);
// Unicode general category M*.
bool is_mark(uint32_t cp);

enum class NormForm { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, NormForm form);  // input must be valid UTF-8
std::string lowercase(std::string_view s);                 // per-character full lowercase
std::string strip_marks(std::string_view s);                // removes M* characters

// GPT-2 bytes_to_unicode: UTF-8 text of the character byte b maps to.
const std::string& byte_to_unicode(uint8_t b);
// Inverse map: the byte a code point stands for, or -1.
int unicode_to_byte(uint32_t cp);

}  // namespace lowrank::tok
