#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_error.h"

namespace lowrank {

using json = nlohmann::json;

static DType parse_dtype(const std::string& s, const std::string& file, const std::string& tensor) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "U8") return DType::U8;
  fail(file, ": tensor ", tensor, ": unsupported dtype \"", s, "\" (expected F32, F16 or BF16)");
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto f = MappedFile::open(path);
  SafetensorsFile st = parse(f->data(), f->size(), path);
  st.file_ = f;
  for (Tensor& t : st.tensors_)
    if (!t.owner) t.owner = f;  // aligned copies own their bytes
  return st;
}

SafetensorsFile SafetensorsFile::parse(const uint8_t* bytes, size_t size, const std::string& name) {
  SafetensorsFile st;
  st.path_ = name;
  if (size < 8) fail(name, ": truncated safetensors file (", size, " bytes, no header length)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > size - 8)
    fail(name, ": header length ", header_len, " runs past the end of the file (", size, " bytes)");
  if (header_len > (100u << 20)) fail(name, ": header length ", header_len, " is too large");
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const std::exception& e) {
    fail(name, ": header is not valid JSON: ", json_error_text(e));
  }
  if (!header.is_object()) fail(name, ": header is not a JSON object");
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Range { uint64_t begin, end; std::string name; };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (!it->is_object()) fail(name, ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) st.metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const json& info = *it;
    if (!info.is_object()) fail(name, ": tensor ", key, ": entry is not an object");
    if (!info.contains("dtype") || !info["dtype"].is_string())
      fail(name, ": tensor ", key, ": missing dtype");
    if (!info.contains("shape") || !info["shape"].is_array())
      fail(name, ": tensor ", key, ": missing shape");
    if (!info.contains("data_offsets") || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2)
      fail(name, ": tensor ", key, ": missing data_offsets [begin, end]");
    Tensor t;
    t.name = key;
    t.dtype = parse_dtype(info["dtype"].get<std::string>(), name, key);
    uint64_t numel = 1;
    for (const json& d : info["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        fail(name, ": tensor ", key, ": shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      if (v > (uint64_t(1) << 40) || (v && numel > (uint64_t(1) << 50) / v))
        fail(name, ": tensor ", key, ": shape is too large");
      numel *= v;
      t.shape.push_back(int64_t(v));
    }
    const json& off = info["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(name, ": tensor ", key, ": data_offsets must be non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) fail(name, ": tensor ", key, ": data_offsets end ", e, " < begin ", b);
    if (e > data_size)
      fail(name, ": tensor ", key, ": data_offsets [", b, ", ", e, "] run past the end of the data (",
           data_size, " bytes; file truncated?)");
    uint64_t want = numel * uint64_t(dtype_block_bytes(t.dtype));
    if (e - b != want)
      fail(name, ": tensor ", key, ": shape ", shape_str(t.shape), " of ", dtype_name(t.dtype), " needs ",
           want, " bytes but data_offsets cover ", e - b);
    t.data = data + b;
    t.nbytes = size_t(e - b);
    // Data at an offset that is not a multiple of the element size (legal in the format) is
    // copied once into an aligned buffer, so every reader may use typed pointers on it.
    const size_t align = size_t(dtype_block_bytes(t.dtype));
    if (align > 1 && reinterpret_cast<uintptr_t>(t.data) % align != 0) {
      auto copy = std::shared_ptr<uint8_t[]>(new uint8_t[std::max<size_t>(t.nbytes, 1)]);
      std::memcpy(copy.get(), t.data, t.nbytes);
      t.data = copy.get();
      t.owner = std::shared_ptr<const void>(copy, copy.get());
    }
    ranges.push_back({b, e, key});
    st.index_[key] = st.tensors_.size();
    st.tensors_.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); i++)
    if (ranges[i].begin < ranges[i - 1].end)
      fail(name, ": tensors ", ranges[i - 1].name, " and ", ranges[i].name, " overlap in the data section");
  return st;
}

const Tensor& SafetensorsFile::get(const std::string& tname) const {
  auto it = index_.find(tname);
  if (it == index_.end()) fail(path_, ": missing tensor ", tname);
  return tensors_[it->second];
}

TensorToWrite tensor_f32(const std::string& name, std::vector<int64_t> shape, const float* data) {
  return tensor_convert(name, std::move(shape), data, DType::F32);
}

TensorToWrite tensor_convert(const std::string& name, std::vector<int64_t> shape, const float* data, DType dtype) {
  TensorToWrite t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(size_t(n) * size_t(dtype_block_bytes(dtype)));
  if (dtype == DType::F32) {
    std::memcpy(t.bytes.data(), data, size_t(n) * 4);
  } else if (dtype == DType::F16 || dtype == DType::BF16) {
    uint16_t* out = reinterpret_cast<uint16_t*>(t.bytes.data());
    for (int64_t i = 0; i < n; i++) out[i] = dtype == DType::F16 ? f32_to_f16(data[i]) : f32_to_bf16(data[i]);
  } else {
    fail("cannot write tensor ", name, " as ", dtype_name(dtype));
  }
  return t;
}

void safetensors_write(const std::string& path, std::vector<TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorToWrite& a, const TensorToWrite& b) {
    int64_t sa = dtype_block_bytes(a.dtype), sb = dtype_block_bytes(b.dtype);
    if (sa != sb) return sa > sb;
    return a.name < b.name;
  });
  // Build the header by hand to control key order (metadata first, then tensor order).
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":" + json(metadata).dump();
    first = false;
  }
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (!first) header += ",";
    first = false;
    json shape = json::array();
    for (int64_t d : t.shape) shape.push_back(d);
    header += json(t.name).dump() + ":{\"dtype\":\"" + dtype_name(t.dtype) + "\",\"shape\":" + shape.dump() +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::vector<uint8_t> out(8 + header.size() + offset);
  uint64_t hl = header.size();
  std::memcpy(out.data(), &hl, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  size_t pos = 8 + header.size();
  for (const TensorToWrite& t : tensors) {
    if (!t.bytes.empty()) std::memcpy(out.data() + pos, t.bytes.data(), t.bytes.size());
    pos += t.bytes.size();
  }
  write_file_atomic(path, out.data(), out.size());
}

}  // namespace lowrank
