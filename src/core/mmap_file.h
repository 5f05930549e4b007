// Read-only memory-mapped file. Shared ownership so tensors can keep the mapping alive.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lowrank {

class MappedFile {
 public:
  // Maps the whole file read-only; throws lowrank::Error naming the path on failure.
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

// Reads a whole (small) file into a string; throws lowrank::Error naming the path.
std::string read_text_file(const std::string& path);
// Writes data to path atomically: path + ".tmp" then rename. Throws lowrank::Error.
void write_file_atomic(const std::string& path, const void* data, size_t n);
bool file_exists(const std::string& path);

}  // namespace lowrank
