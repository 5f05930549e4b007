// safetensors: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "core/tensor.h"

namespace lowrank {

class SafetensorsFile {
 public:
  // Maps and validates the file: header bounds, JSON, dtypes, shapes vs byte ranges,
  // ranges inside the data section and not overlapping. Throws lowrank::Error naming the file.
  static SafetensorsFile open(const std::string& path);
  // Parses from memory (for fuzzing); `name` is used in messages. Data is not copied.
  static SafetensorsFile parse(const uint8_t* bytes, size_t size, const std::string& name);

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // Throws "<file>: missing tensor <name>" when absent.
  const Tensor& get(const std::string& name) const;
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: raw bytes already in `dtype`.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
TensorToWrite tensor_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
// Converts f32 values into dtype (F32/F16/BF16) for writing.
TensorToWrite tensor_convert(const std::string& name, std::vector<int64_t> shape, const float* data, DType dtype);

// Writes a safetensors file the way the reference implementation lays it out (metadata
// first, tensors ordered by dtype size then name, header padded with spaces to 8 bytes),
// atomically (temp file + rename).
void safetensors_write(const std::string& path, std::vector<TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace lowrank
