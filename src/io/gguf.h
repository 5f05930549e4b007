// GGUF container: reading (memory-mapped, fully validated) and writing (atomic).
// Format facts are in the project's GGUF notes: little-endian header, key/value metadata,
// tensor infos (ne[0] fastest), then an aligned data section.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace lowrank {

// GGUF metadata value type ids.
enum GgufType : uint32_t {
  GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
  GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10, GGUF_I64 = 11,
  GGUF_F64 = 12,
};
const char* gguf_type_name(uint32_t type);

// ggml tensor type id <-> DType (only the types this engine decodes).
bool ggml_type_to_dtype(uint32_t ggml_type, DType* out);
uint32_t dtype_to_ggml_type(DType t);  // throws for I32/I64/U8
// Name of a ggml type id ("Q3_K", ...; "type 99" for unknown ids), for messages.
std::string ggml_type_name(uint32_t ggml_type);

// One metadata value: a scalar, a string, or an array of scalars or strings (no nesting).
// Accessors throw lowrank::Error when the stored type does not fit.
struct GgufValue {
  uint32_t type = GGUF_U8;
  uint32_t elem_type = GGUF_U8;  // arrays: element type
  uint64_t bits = 0;             // scalars: the value's little-endian bytes, zero-extended
  std::string str;               // GGUF_STRING
  uint64_t count = 0;            // arrays: number of elements
  std::vector<uint8_t> raw;      // arrays of scalars: count * elem_size bytes, as in the file
  std::vector<std::string> strs; // arrays of strings: count strings

  bool is_int() const;     // any integer scalar type
  bool is_float() const;   // f32 or f64 scalar
  bool is_array() const { return type == GGUF_ARRAY; }
  int64_t as_int() const;       // integer types and bool; u64 above INT64_MAX throws
  uint64_t as_u64() const;      // non-negative integers
  double as_double() const;     // float and integer types
  float as_float() const { return float(as_double()); }
  bool as_bool() const;         // bool (and integers: non-zero)
  const std::string& as_string() const;
  std::vector<std::string> as_string_array() const;
  std::vector<float> as_float_array() const;    // arrays of float or integer types
  std::vector<int64_t> as_int_array() const;    // arrays of integer or bool types
  std::string to_string(size_t max_elems = 8) const;  // short human-readable form

  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue f32_array(const std::vector<float>& v);
  static GgufValue i32_array(const std::vector<int32_t>& v);
  // An array of a scalar element type from its little-endian bytes (count * elem size).
  static GgufValue scalar_array(uint32_t elem_type, uint64_t count, std::vector<uint8_t> raw);
};
// Bytes per element of a scalar type; 0 for string/array/unknown.
size_t gguf_scalar_size(uint32_t type);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;   // ggml order: ne[0] is the row length (fastest varying)
  uint32_t ggml_type = 0;
  uint64_t offset = 0;       // relative to the data section
  DType dtype = DType::F32;
  int64_t n_elements = 0;
  size_t nbytes = 0;
  const void* data = nullptr;  // into the file's mapping
};

class GgufFile {
 public:
  // Maps the file read-only, parses and validates header, metadata and tensor infos.
  // Throws lowrank::Error naming the file (and key/tensor) on any problem.
  static GgufFile open(const std::string& path);
  // Parses a copy of an in-memory image (name is used in messages and path()).
  static GgufFile from_memory(const uint8_t* data, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section

  const GgufValue* find(const std::string& key) const;  // nullptr if absent
  // Typed getters: the default when absent; a present key of the wrong type throws.
  int64_t get_int(const std::string& key, int64_t def) const;
  float get_float(const std::string& key, float def) const;
  bool get_bool(const std::string& key, bool def) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  // Arrays: empty when absent.
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  std::vector<int32_t> get_int_array(const std::string& key) const;
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return meta_; }

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* tensor(const std::string& name) const;  // nullptr if absent
  // The tensor as a lowrank::Tensor (shape outermost first) sharing the mapping.
  Tensor tensor_as(const std::string& name) const;
  // A 2-D weight (ne = [cols, rows], extra dims of 1 allowed) as a Matrix pointing into the
  // mapping; quantized data stays quantized.
  Matrix matrix(const std::string& name) const;

  const std::string& path() const { return path_; }
  size_t file_size() const { return size_; }
  // Keeps the mapping alive (for Tensor/Matrix owners built by callers).
  const std::shared_ptr<const void>& owner() const { return owner_; }

 private:
  void parse();
  const GgufTensorInfo& need_tensor(const std::string& name) const;

  std::string path_;
  std::shared_ptr<const void> owner_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> meta_;  // file order
  std::unordered_map<std::string, size_t> meta_index_;
  std::vector<GgufTensorInfo> tensors_;                   // file order
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Builds a GGUF (version 3) file. Metadata keeps insertion order (setting a key again
// replaces its value in place). Tensor data is referenced, not copied, unless added through
// the *_copy / add_tensor_f16 helpers: it must stay valid until write().
// general.alignment (default 32) is honoured when set (a power of two, at least 8).
class GgufWriter {
 public:
  void set_u8(const std::string& key, uint8_t v) { set_raw(key, GgufValue::u8(v)); }
  void set_u32(const std::string& key, uint32_t v) { set_raw(key, GgufValue::u32(v)); }
  void set_i32(const std::string& key, int32_t v) { set_raw(key, GgufValue::i32(v)); }
  void set_u64(const std::string& key, uint64_t v) { set_raw(key, GgufValue::u64(v)); }
  void set_i64(const std::string& key, int64_t v) { set_raw(key, GgufValue::i64(v)); }
  void set_f32(const std::string& key, float v) { set_raw(key, GgufValue::f32(v)); }
  void set_f64(const std::string& key, double v) { set_raw(key, GgufValue::f64(v)); }
  void set_bool(const std::string& key, bool v) { set_raw(key, GgufValue::boolean(v)); }
  void set_string(const std::string& key, const std::string& v) {
    set_raw(key, GgufValue::string(v));
  }
  void set_string_array(const std::string& key, const std::vector<std::string>& v) {
    set_raw(key, GgufValue::string_array(v));
  }
  void set_f32_array(const std::string& key, const std::vector<float>& v) {
    set_raw(key, GgufValue::f32_array(v));
  }
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
    set_raw(key, GgufValue::i32_array(v));
  }
  // Any value, e.g. copied from GgufFile::metadata().
  void set_raw(const std::string& key, const GgufValue& v);
  void remove(const std::string& key);
  const GgufValue* find(const std::string& key) const;

  // ne in ggml order (ne[0] = row length). nbytes must match ne and the type.
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, DType dtype,
                  const void* data, size_t nbytes);
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, uint32_t ggml_type,
                  const void* data, size_t nbytes);
  // Same, but the writer keeps its own copy of the bytes.
  void add_tensor_copy(const std::string& name, const std::vector<int64_t>& ne, DType dtype,
                       const void* data, size_t nbytes);
  // A tensor whose nbytes bytes are made by producer(dst) when write() reaches it, so a
  // converter holds one tensor at a time (the producer must stay valid until write()).
  void add_tensor_lazy(const std::string& name, const std::vector<int64_t>& ne, DType dtype, size_t nbytes,
                       std::function<void(uint8_t* dst)> producer);
  // f32 values (ne[0]*ne[1]*... of them, row-major with ne[0] fastest) stored as F32 / F16.
  void add_tensor_f32(const std::string& name, const std::vector<int64_t>& ne,
                      const float* data);
  void add_tensor_f16(const std::string& name, const std::vector<int64_t>& ne,
                      const float* data);
  size_t tensor_count() const { return tensors_.size(); }

  // Writes path + ".tmp", then renames it to path. Throws lowrank::Error on failure.
  void write(const std::string& path) const;
  // The same bytes as write() would produce.
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Pending {
    std::string name;
    std::vector<int64_t> ne;
    uint32_t ggml_type;
    const void* data;
    size_t nbytes;
    std::shared_ptr<const void> owned;
    std::function<void(uint8_t* dst)> producer;  // lazy tensors
  };
  uint64_t alignment() const;
  std::vector<uint8_t> header_bytes(uint64_t align, std::vector<uint64_t>* offsets) const;
  template <typename Sink>
  void emit(Sink&& sink) const;

  std::vector<std::pair<std::string, GgufValue>> meta_;
  std::vector<Pending> tensors_;
};

// n f32 values converted to IEEE half (round to nearest even), for F16 tensors.
std::vector<uint16_t> f32_to_f16_vector(const float* src, int64_t n);
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n);

}  // namespace lowrank
