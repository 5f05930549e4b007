// Read-only memory-mapped file. Shared ownership so tensors can keep the mapping alive.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lowrank {

class MappedFile {
 public:
  // Maps the whole file read-only (regular files only); throws lowrank::Error naming the path.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Size caps for read_text_file: what a file of that kind can need. config.json,
// adapter_config.json, safetensors index and trainer state files are kilobytes; tokenizer
// files of the largest vocabularies (262k tokens) are tens of megabytes.
constexpr size_t kSmallFileCap = size_t(16) << 20;
constexpr size_t kTokenizerFileCap = size_t(512) << 20;

// Reads a whole regular file into a string (after following symlinks; FIFOs, devices and
// directories are refused without reading, so /dev/zero or a pipe can neither exhaust memory
// nor hang). Files larger than max_bytes are refused. Throws lowrank::Error naming the path.
std::string read_text_file(const std::string& path, size_t max_bytes = kSmallFileCap);
// Throws lowrank::Error unless path is (a symlink to) a regular file that can be opened.
void check_regular_file(const std::string& path);
// Writes data to path atomically: path + ".tmp" then rename. Throws lowrank::Error.
void write_file_atomic(const std::string& path, const void* data, size_t n);
bool file_exists(const std::string& path);

}  // namespace lowrank
