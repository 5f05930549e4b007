#include "io/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/mmap_file.h"

namespace lowrank {

namespace {

constexpr uint64_t kMaxAlignment = uint64_t(1) << 30;
constexpr uint32_t kMaxDims = 4;

bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Rounds v up to a multiple of a (a power of two); false on overflow.
bool align_up(uint64_t v, uint64_t a, uint64_t* out) {
  if (v > std::numeric_limits<uint64_t>::max() - (a - 1)) return false;
  *out = (v + a - 1) & ~(a - 1);
  return true;
}

bool is_int_type(uint32_t t) {
  switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_U16: case GGUF_I16: case GGUF_U32: case GGUF_I32:
    case GGUF_U64: case GGUF_I64:
      return true;
    default:
      return false;
  }
}
bool is_float_type(uint32_t t) { return t == GGUF_F32 || t == GGUF_F64; }

// Decodes one scalar of type t from its little-endian bits (zero-extended) as int64
// (u64 values above INT64_MAX are reported through *overflow).
int64_t scalar_int(uint32_t t, uint64_t bits, bool* overflow) {
  *overflow = false;
  switch (t) {
    case GGUF_U8: return int64_t(uint8_t(bits));
    case GGUF_I8: return int64_t(int8_t(uint8_t(bits)));
    case GGUF_U16: return int64_t(uint16_t(bits));
    case GGUF_I16: return int64_t(int16_t(uint16_t(bits)));
    case GGUF_U32: return int64_t(uint32_t(bits));
    case GGUF_I32: return int64_t(int32_t(uint32_t(bits)));
    case GGUF_U64:
      if (bits > uint64_t(std::numeric_limits<int64_t>::max())) *overflow = true;
      return int64_t(bits & uint64_t(std::numeric_limits<int64_t>::max()));
    case GGUF_I64: return int64_t(bits);
    case GGUF_BOOL: return (bits & 0xff) != 0 ? 1 : 0;
    default: return 0;
  }
}

double scalar_double(uint32_t t, uint64_t bits) {
  if (t == GGUF_F32) {
    uint32_t u = uint32_t(bits);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  if (t == GGUF_F64) {
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
  }
  if (t == GGUF_U64) return double(bits);
  bool ovf;
  return double(scalar_int(t, bits, &ovf));
}

uint64_t load_bits(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

// Bounds-checked little-endian cursor over the file image.
struct Cursor {
  const uint8_t* p;
  size_t size;
  size_t pos = 0;
  const std::string& file;

  size_t left() const { return size - pos; }
  void need(size_t n, const std::string& what) const {
    if (n > left()) {
      fail(file, ": truncated GGUF file: ", what, " at offset ", pos, " needs ", n,
           " bytes but only ", left(), " remain");
    }
  }
  uint64_t bits(size_t n, const std::string& what) {
    need(n, what);
    uint64_t v = load_bits(p + pos, n);
    pos += n;
    return v;
  }
  uint32_t u32(const std::string& what) { return uint32_t(bits(4, what)); }
  uint64_t u64(const std::string& what) { return bits(8, what); }
  std::string str(const std::string& what) {
    size_t at = pos;
    uint64_t len = u64(what + " length");
    if (len > left()) {
      fail(file, ": ", what, " at offset ", at, " has length ", len,
           ", past the end of the file (", left(), " bytes remain)");
    }
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
    pos += size_t(len);
    return s;
  }
};

GgufValue read_value(Cursor& c, uint32_t type, const std::string& what) {
  GgufValue v;
  v.type = type;
  if (type == GGUF_STRING) {
    v.str = c.str(what);
    return v;
  }
  if (type == GGUF_ARRAY) {
    v.elem_type = c.u32(what + " array element type");
    size_t at = c.pos;
    v.count = c.u64(what + " array count");
    if (v.elem_type == GGUF_ARRAY) fail(c.file, ": ", what, ": nested arrays are not supported");
    if (v.elem_type == GGUF_STRING) {
      // Each string takes at least its 8-byte length.
      if (v.count > c.left() / 8) {
        fail(c.file, ": ", what, ": array count ", v.count, " at offset ", at,
             " is past the end of the file (", c.left(), " bytes remain)");
      }
      v.strs.reserve(size_t(v.count));
      for (uint64_t i = 0; i < v.count; i++) v.strs.push_back(c.str(what + " element"));
      return v;
    }
    size_t es = gguf_scalar_size(v.elem_type);
    if (es == 0) fail(c.file, ": ", what, ": unknown array element type ", v.elem_type);
    if (v.count > c.left() / es) {
      fail(c.file, ": ", what, ": array count ", v.count, " at offset ", at,
           " is past the end of the file (", c.left(), " bytes remain)");
    }
    size_t n = size_t(v.count) * es;
    v.raw.assign(c.p + c.pos, c.p + c.pos + n);
    c.pos += n;
    return v;
  }
  size_t es = gguf_scalar_size(type);
  if (es == 0) fail(c.file, ": ", what, ": unknown value type ", type);
  v.bits = c.bits(es, what + " value");
  return v;
}

// Natural alignment the engine's kernels rely on when reading tensor data in place.
uint64_t dtype_alignment(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::F16: case DType::BF16: return 2;
    default: return 1;  // block decoders read with memcpy
  }
}

}  // namespace

const char* gguf_type_name(uint32_t type) {
  switch (type) {
    case GGUF_U8: return "u8";
    case GGUF_I8: return "i8";
    case GGUF_U16: return "u16";
    case GGUF_I16: return "i16";
    case GGUF_U32: return "u32";
    case GGUF_I32: return "i32";
    case GGUF_F32: return "f32";
    case GGUF_BOOL: return "bool";
    case GGUF_STRING: return "string";
    case GGUF_ARRAY: return "array";
    case GGUF_U64: return "u64";
    case GGUF_I64: return "i64";
    case GGUF_F64: return "f64";
    default: return "unknown";
  }
}

size_t gguf_scalar_size(uint32_t type) {
  switch (type) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
  }
}

bool ggml_type_to_dtype(uint32_t ggml_type, DType* out) { return quants::ggml_id_to_dtype(ggml_type, out); }

uint32_t dtype_to_ggml_type(DType t) {
  uint32_t id;
  if (!quants::dtype_to_ggml_id(t, &id)) fail("dtype ", dtype_name(t), " cannot be stored in a GGUF file");
  return id;
}

std::string ggml_type_name(uint32_t ggml_type) {
  if (const char* n = quants::ggml_id_name(ggml_type)) return n;
  return "type " + std::to_string(ggml_type);
}

// ---------------------------------------------------------------- GgufValue

bool GgufValue::is_int() const { return is_int_type(type); }
bool GgufValue::is_float() const { return is_float_type(type); }

int64_t GgufValue::as_int() const {
  if (!is_int_type(type) && type != GGUF_BOOL) {
    fail("expected an integer, found ", gguf_type_name(type));
  }
  bool ovf;
  int64_t v = scalar_int(type, bits, &ovf);
  if (ovf) fail("value ", bits, " does not fit in int64");
  return v;
}

uint64_t GgufValue::as_u64() const {
  if (type == GGUF_U64) return bits;
  int64_t v = as_int();
  if (v < 0) fail("expected a non-negative integer, found ", v);
  return uint64_t(v);
}

double GgufValue::as_double() const {
  if (!is_int_type(type) && !is_float_type(type)) {
    fail("expected a number, found ", gguf_type_name(type));
  }
  return scalar_double(type, bits);
}

bool GgufValue::as_bool() const {
  if (type != GGUF_BOOL && !is_int_type(type)) fail("expected a bool, found ", gguf_type_name(type));
  return bits != 0;
}

const std::string& GgufValue::as_string() const {
  if (type != GGUF_STRING) fail("expected a string, found ", gguf_type_name(type));
  return str;
}

std::vector<std::string> GgufValue::as_string_array() const {
  if (type != GGUF_ARRAY || elem_type != GGUF_STRING) {
    fail("expected an array of strings, found ", type == GGUF_ARRAY ? "an array of " : "",
         gguf_type_name(type == GGUF_ARRAY ? elem_type : type));
  }
  return strs;
}

std::vector<float> GgufValue::as_float_array() const {
  if (type != GGUF_ARRAY || !(is_float_type(elem_type) || is_int_type(elem_type))) {
    fail("expected an array of numbers, found ", type == GGUF_ARRAY ? "an array of " : "",
         gguf_type_name(type == GGUF_ARRAY ? elem_type : type));
  }
  size_t es = gguf_scalar_size(elem_type);
  std::vector<float> out(static_cast<size_t>(count));
  for (size_t i = 0; i < out.size(); i++) {
    out[i] = float(scalar_double(elem_type, load_bits(raw.data() + i * es, es)));
  }
  return out;
}

std::vector<int64_t> GgufValue::as_int_array() const {
  if (type != GGUF_ARRAY || !(is_int_type(elem_type) || elem_type == GGUF_BOOL)) {
    fail("expected an array of integers, found ", type == GGUF_ARRAY ? "an array of " : "",
         gguf_type_name(type == GGUF_ARRAY ? elem_type : type));
  }
  size_t es = gguf_scalar_size(elem_type);
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (size_t i = 0; i < out.size(); i++) {
    bool ovf;
    out[i] = scalar_int(elem_type, load_bits(raw.data() + i * es, es), &ovf);
    if (ovf) fail("array element ", i, " does not fit in int64");
  }
  return out;
}

std::string GgufValue::to_string(size_t max_elems) const {
  std::ostringstream os;
  auto scalar = [&](uint32_t t, uint64_t b) {
    if (t == GGUF_BOOL) {
      os << ((b & 0xff) ? "true" : "false");
    } else if (is_float_type(t)) {
      os << scalar_double(t, b);
    } else if (t == GGUF_U64) {
      os << b;
    } else {
      bool ovf;
      os << scalar_int(t, b, &ovf);
    }
  };
  if (type == GGUF_STRING) {
    os << '"' << str << '"';
  } else if (type == GGUF_ARRAY) {
    os << gguf_type_name(elem_type) << "[" << count << "] [";
    size_t n = size_t(std::min<uint64_t>(count, max_elems));
    size_t es = gguf_scalar_size(elem_type);
    for (size_t i = 0; i < n; i++) {
      if (i) os << ", ";
      if (elem_type == GGUF_STRING) {
        os << '"' << strs[i] << '"';
      } else {
        scalar(elem_type, load_bits(raw.data() + i * es, es));
      }
    }
    if (count > n) os << ", ...";
    os << "]";
  } else {
    scalar(type, bits);
  }
  return os.str();
}

static GgufValue make_scalar(uint32_t type, uint64_t bits) {
  GgufValue v;
  v.type = type;
  v.bits = bits;
  return v;
}

GgufValue GgufValue::u8(uint8_t v) { return make_scalar(GGUF_U8, v); }
GgufValue GgufValue::i8(int8_t v) { return make_scalar(GGUF_I8, uint8_t(v)); }
GgufValue GgufValue::u16(uint16_t v) { return make_scalar(GGUF_U16, v); }
GgufValue GgufValue::i16(int16_t v) { return make_scalar(GGUF_I16, uint16_t(v)); }
GgufValue GgufValue::u32(uint32_t v) { return make_scalar(GGUF_U32, v); }
GgufValue GgufValue::i32(int32_t v) { return make_scalar(GGUF_I32, uint32_t(v)); }
GgufValue GgufValue::u64(uint64_t v) { return make_scalar(GGUF_U64, v); }
GgufValue GgufValue::i64(int64_t v) { return make_scalar(GGUF_I64, uint64_t(v)); }
GgufValue GgufValue::f32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return make_scalar(GGUF_F32, u);
}
GgufValue GgufValue::f64(double v) {
  uint64_t u;
  std::memcpy(&u, &v, 8);
  return make_scalar(GGUF_F64, u);
}
GgufValue GgufValue::boolean(bool v) { return make_scalar(GGUF_BOOL, v ? 1 : 0); }
GgufValue GgufValue::string(std::string s) {
  GgufValue v;
  v.type = GGUF_STRING;
  v.str = std::move(s);
  return v;
}
GgufValue GgufValue::string_array(std::vector<std::string> s) {
  GgufValue v;
  v.type = GGUF_ARRAY;
  v.elem_type = GGUF_STRING;
  v.count = s.size();
  v.strs = std::move(s);
  return v;
}
GgufValue GgufValue::scalar_array(uint32_t elem_type, uint64_t count, std::vector<uint8_t> raw) {
  size_t es = gguf_scalar_size(elem_type);
  if (es == 0) fail("GGUF array of ", gguf_type_name(elem_type), " elements is not a scalar array");
  if (raw.size() / es != count || raw.size() % es != 0) {
    fail("GGUF array: ", raw.size(), " bytes do not hold ", count, " ", gguf_type_name(elem_type),
         " elements");
  }
  GgufValue v;
  v.type = GGUF_ARRAY;
  v.elem_type = elem_type;
  v.count = count;
  v.raw = std::move(raw);
  return v;
}
GgufValue GgufValue::f32_array(const std::vector<float>& a) {
  // raw: a.size() little-endian f32 values.
  std::vector<uint8_t> raw(a.size() * 4);
  if (!a.empty()) std::memcpy(raw.data(), a.data(), raw.size());
  return scalar_array(GGUF_F32, a.size(), std::move(raw));
}
GgufValue GgufValue::i32_array(const std::vector<int32_t>& a) {
  // raw: a.size() little-endian i32 values.
  std::vector<uint8_t> raw(a.size() * 4);
  if (!a.empty()) std::memcpy(raw.data(), a.data(), raw.size());
  return scalar_array(GGUF_I32, a.size(), std::move(raw));
}

// ---------------------------------------------------------------- GgufFile

GgufFile GgufFile::open(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  GgufFile f;
  f.path_ = path;
  f.base_ = m->data();
  f.size_ = m->size();
  f.owner_ = std::shared_ptr<const void>(m, m->data());
  f.parse();
  return f;
}

GgufFile GgufFile::from_memory(const uint8_t* data, size_t size, const std::string& name) {
  // Copy into 8-byte-aligned storage: (size + 7) / 8 words, at least one.
  auto buf = std::make_shared<std::vector<uint64_t>>(std::max<size_t>(1, (size + 7) / 8));
  if (size) std::memcpy(buf->data(), data, size);
  GgufFile f;
  f.path_ = name;
  f.base_ = reinterpret_cast<const uint8_t*>(buf->data());
  f.size_ = size;
  f.owner_ = std::shared_ptr<const void>(buf, buf->data());
  f.parse();
  return f;
}

void GgufFile::parse() {
  const std::string& file = path_;
  Cursor c{base_, size_, 0, file};
  c.need(4, "magic");
  if (std::memcmp(base_, "GGUF", 4) != 0) {
    fail(file, ": not a GGUF file (bad magic bytes ", int(base_[0]), " ", int(base_[1]), " ",
         int(base_[2]), " ", int(base_[3]), ")");
  }
  c.pos = 4;
  version_ = c.u32("version");
  if (version_ != 2 && version_ != 3) {
    if (version_ == 1) fail(file, ": GGUF version 1 is not supported (only 2 and 3)");
    fail(file, ": unsupported GGUF version ", version_,
         (version_ >= 0x01000000 ? " (a big-endian file?)" : ""), "; only 2 and 3 are supported");
  }
  uint64_t n_tensors = c.u64("tensor count");
  uint64_t n_kv = c.u64("metadata count");
  // Each entry needs at least 12 bytes (key length + type), each tensor info at least 24.
  if (n_kv > c.left() / 12) {
    fail(file, ": metadata count ", n_kv, " is impossible for a file of ", size_, " bytes");
  }
  if (n_tensors > c.left() / 24) {
    fail(file, ": tensor count ", n_tensors, " is impossible for a file of ", size_, " bytes");
  }

  meta_.reserve(size_t(n_kv));
  for (uint64_t i = 0; i < n_kv; i++) {
    std::string key = c.str("metadata key " + std::to_string(i));
    std::string what = "metadata key '" + key + "'";
    uint32_t type = c.u32(what + " type");
    GgufValue v = read_value(c, type, what);
    if (!meta_index_.emplace(key, meta_.size()).second) {
      fail(file, ": duplicate metadata key '", key, "'");
    }
    meta_.emplace_back(std::move(key), std::move(v));
  }

  alignment_ = 32;
  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_int()) {
      fail(file, ": general.alignment must be an integer, found ", gguf_type_name(a->type));
    }
    bool ovf;
    int64_t v = scalar_int(a->type, a->bits, &ovf);
    if (ovf || v <= 0 || !is_pow2(uint64_t(v)) || uint64_t(v) > kMaxAlignment) {
      fail(file, ": general.alignment ", a->to_string(), " is not a power of two up to ",
           kMaxAlignment);
    }
    alignment_ = uint64_t(v);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; i++) {
    GgufTensorInfo t;
    t.name = c.str("tensor name " + std::to_string(i));
    std::string what = "tensor '" + t.name + "'";
    uint32_t n_dims = c.u32(what + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      fail(file, ": ", what, ": n_dims ", n_dims, " is not between 1 and ", kMaxDims);
    }
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      uint64_t e = c.u64(what + " ne");
      if (e > uint64_t(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(n, int64_t(e), &n)) {
        fail(file, ": ", what, ": element count overflows (ne[", d, "] = ", e, ")");
      }
      t.ne.push_back(int64_t(e));
    }
    t.n_elements = n;
    t.ggml_type = c.u32(what + " type");
    t.offset = c.u64(what + " offset");
    if (!ggml_type_to_dtype(t.ggml_type, &t.dtype)) {
      if (t.ggml_type >= quants::kGgmlTypeCount) {
        fail(file, ": ", what, ": unknown ggml tensor type ", t.ggml_type, " (ggml's types are 0 to ",
             quants::kGgmlTypeCount - 1, ")");
      }
      if (!quants::ggml_id_name(t.ggml_type)) {
        fail(file, ": ", what, ": ggml tensor type ", t.ggml_type, " was removed from ggml (not a valid GGUF type)");
      }
      fail(file, ": ", what, ": unsupported ggml tensor type ", t.ggml_type, " (", ggml_type_name(t.ggml_type), ")");
    }
    int64_t be = dtype_block_elems(t.dtype);
    if (t.ne[0] % be != 0) {
      fail(file, ": ", what, ": row length ", t.ne[0], " is not a multiple of the ",
           dtype_name(t.dtype), " block size ", be);
    }
    uint64_t nb;
    if (__builtin_mul_overflow(uint64_t(n / be), uint64_t(dtype_block_bytes(t.dtype)), &nb) ||
        nb > std::numeric_limits<size_t>::max()) {
      fail(file, ": ", what, ": byte size overflows");
    }
    t.nbytes = size_t(nb);
    if (t.offset % alignment_ != 0) {
      fail(file, ": ", what, ": data offset ", t.offset, " is not a multiple of the alignment ",
           alignment_);
    }
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      fail(file, ": duplicate tensor name '", t.name, "'");
    }
    tensors_.push_back(std::move(t));
  }

  if (!align_up(c.pos, alignment_, &data_offset_)) fail(file, ": data offset overflows");
  if (!tensors_.empty() && data_offset_ > size_) {
    fail(file, ": truncated GGUF file: data section would start at ", data_offset_,
         " but the file has ", size_, " bytes");
  }
  const uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      fail(file, ": tensor '", t.name, "': data [", t.offset, ", +", t.nbytes,
           ") is out of range of the data section (", data_size, " bytes; file truncated?)");
    }
    const uint64_t abs = data_offset_ + t.offset;
    if (abs % dtype_alignment(t.dtype) != 0) {
      fail(file, ": tensor '", t.name, "': ", dtype_name(t.dtype), " data at file offset ", abs,
           " is not aligned to ", dtype_alignment(t.dtype), " bytes");
    }
    t.data = base_ + abs;
  }
  // No two tensors may share bytes.
  std::vector<size_t> order(tensors_.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  const GgufTensorInfo* prev = nullptr;
  for (size_t i : order) {
    const GgufTensorInfo& t = tensors_[i];
    if (t.nbytes == 0) continue;
    if (prev && prev->offset + prev->nbytes > t.offset) {
      fail(file, ": tensors '", prev->name, "' and '", t.name, "' overlap in the data section");
    }
    prev = &t;
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = meta_index_.find(key);
  return it == meta_index_.end() ? nullptr : &meta_[it->second].second;
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  try {
    return v->as_int();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

float GgufFile::get_float(const std::string& key, float def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  try {
    return v->as_float();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

bool GgufFile::get_bool(const std::string& key, bool def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  try {
    return v->as_bool();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  try {
    return v->as_string();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  try {
    return v->as_string_array();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  try {
    return v->as_float_array();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
}

std::vector<int32_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  std::vector<int64_t> a;
  try {
    a = v->as_int_array();
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what());
  }
  std::vector<int32_t> out(a.size());
  for (size_t i = 0; i < a.size(); i++) {
    if (a[i] < std::numeric_limits<int32_t>::min() || a[i] > std::numeric_limits<int32_t>::max()) {
      fail(path_, ": metadata key '", key, "': element ", i, " = ", a[i], " does not fit in int32");
    }
    out[i] = int32_t(a[i]);
  }
  return out;
}

const GgufTensorInfo* GgufFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::need_tensor(const std::string& name) const {
  const GgufTensorInfo* t = tensor(name);
  if (!t) fail(path_, ": no tensor named '", name, "'");
  return *t;
}

Tensor GgufFile::tensor_as(const std::string& name) const {
  const GgufTensorInfo& t = need_tensor(name);
  Tensor out;
  out.name = t.name;
  out.dtype = t.dtype;
  out.shape.assign(t.ne.rbegin(), t.ne.rend());
  out.data = t.data;
  out.nbytes = t.nbytes;
  out.owner = owner_;
  return out;
}

Matrix GgufFile::matrix(const std::string& name) const {
  const GgufTensorInfo& t = need_tensor(name);
  bool ok = t.ne.size() >= 2;
  for (size_t i = 2; i < t.ne.size(); i++) ok = ok && t.ne[i] == 1;
  if (!ok) {
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
    fail(path_, ": tensor '", name, "' of shape ", shape_str(shape), " is not a 2-D matrix");
  }
  Matrix m;
  m.dtype = t.dtype;
  m.rows = t.ne[1];
  m.cols = t.ne[0];
  m.transposed = false;
  m.data = t.data;
  m.owner = owner_;
  return m;
}

// ---------------------------------------------------------------- GgufWriter

namespace {

void put_bits(std::vector<uint8_t>& out, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; i++) out.push_back(uint8_t(v >> (8 * i)));
}
void put_str(std::vector<uint8_t>& out, const std::string& s) {
  put_bits(out, s.size(), 8);
  out.insert(out.end(), s.begin(), s.end());
}

void check_value(const std::string& key, const GgufValue& v) {
  if (v.type == GGUF_STRING) return;
  if (v.type == GGUF_ARRAY) {
    if (v.elem_type == GGUF_STRING) {
      if (v.strs.size() != v.count) fail("GGUF key '", key, "': string array count mismatch");
      return;
    }
    size_t es = gguf_scalar_size(v.elem_type);
    if (es == 0) fail("GGUF key '", key, "': unsupported array element type ", v.elem_type);
    if (v.raw.size() % es != 0 || v.raw.size() / es != v.count) {
      fail("GGUF key '", key, "': array holds ", v.raw.size(), " bytes for ", v.count, " ",
           gguf_type_name(v.elem_type), " elements");
    }
    return;
  }
  if (gguf_scalar_size(v.type) == 0) fail("GGUF key '", key, "': unknown value type ", v.type);
}

}  // namespace

void GgufWriter::set_raw(const std::string& key, const GgufValue& v) {
  check_value(key, v);
  for (auto& kv : meta_) {
    if (kv.first == key) {
      kv.second = v;
      return;
    }
  }
  meta_.emplace_back(key, v);
}

void GgufWriter::remove(const std::string& key) {
  meta_.erase(std::remove_if(meta_.begin(), meta_.end(),
                             [&](const auto& kv) { return kv.first == key; }),
              meta_.end());
}

const GgufValue* GgufWriter::find(const std::string& key) const {
  for (const auto& kv : meta_) {
    if (kv.first == key) return &kv.second;
  }
  return nullptr;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne,
                            uint32_t ggml_type, const void* data, size_t nbytes) {
  DType dt;
  if (!ggml_type_to_dtype(ggml_type, &dt)) {
    fail("GGUF writer: tensor '", name, "': unsupported ggml type ", ggml_type, " (",
         ggml_type_name(ggml_type), ")");
  }
  if (name.empty()) fail("GGUF writer: empty tensor name");
  for (const Pending& p : tensors_) {
    if (p.name == name) fail("GGUF writer: duplicate tensor name '", name, "'");
  }
  if (ne.empty() || ne.size() > kMaxDims) {
    fail("GGUF writer: tensor '", name, "': ", ne.size(), " dimensions (1 to 4 allowed)");
  }
  int64_t n = 1;
  for (int64_t e : ne) {
    if (e < 0 || __builtin_mul_overflow(n, e, &n)) {
      fail("GGUF writer: tensor '", name, "': bad shape ", shape_str(ne));
    }
  }
  if (ne[0] % dtype_block_elems(dt) != 0) {
    fail("GGUF writer: tensor '", name, "': row length ", ne[0], " is not a multiple of the ",
         dtype_name(dt), " block size ", dtype_block_elems(dt));
  }
  size_t expect = dtype_bytes(dt, n);
  if (nbytes != expect) {
    fail("GGUF writer: tensor '", name, "' ", dtype_name(dt), " ", shape_str(ne), ": got ", nbytes,
         " bytes, expected ", expect);
  }
  if (nbytes && !data) fail("GGUF writer: tensor '", name, "': null data");
  tensors_.push_back(Pending{name, ne, ggml_type, data, nbytes, nullptr});
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, DType dtype,
                            const void* data, size_t nbytes) {
  add_tensor(name, ne, dtype_to_ggml_type(dtype), data, nbytes);
}

void GgufWriter::add_tensor_copy(const std::string& name, const std::vector<int64_t>& ne,
                                 DType dtype, const void* data, size_t nbytes) {
  // Owned copy: nbytes raw bytes in the tensor's own layout.
  auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(data),
                                                    static_cast<const uint8_t*>(data) + nbytes);
  add_tensor(name, ne, dtype, buf->data(), nbytes);
  tensors_.back().owned = std::shared_ptr<const void>(buf, buf->data());
}

void GgufWriter::add_tensor_f32(const std::string& name, const std::vector<int64_t>& ne,
                                const float* data) {
  int64_t n = 1;
  for (int64_t e : ne) {
    if (e < 0 || __builtin_mul_overflow(n, e, &n)) {
      fail("GGUF writer: tensor '", name, "': bad shape ", shape_str(ne));
    }
  }
  add_tensor_copy(name, ne, DType::F32, data, size_t(n) * 4);
}

void GgufWriter::add_tensor_f16(const std::string& name, const std::vector<int64_t>& ne,
                                const float* data) {
  int64_t n = 1;
  for (int64_t e : ne) {
    if (e < 0 || __builtin_mul_overflow(n, e, &n)) {
      fail("GGUF writer: tensor '", name, "': bad shape ", shape_str(ne));
    }
  }
  // Owned f16 copy: n halves, same element order as data.
  auto buf = std::make_shared<std::vector<uint16_t>>(f32_to_f16_vector(data, n));
  add_tensor(name, ne, DType::F16, buf->data(), size_t(n) * 2);
  tensors_.back().owned = std::shared_ptr<const void>(buf, buf->data());
}

void GgufWriter::add_tensor_lazy(const std::string& name, const std::vector<int64_t>& ne, DType dtype, size_t nbytes,
                                 std::function<void(uint8_t* dst)> producer) {
  static const uint8_t placeholder = 0;  // never read: the producer makes the bytes
  add_tensor(name, ne, dtype, &placeholder, nbytes);
  tensors_.back().producer = std::move(producer);
}

uint64_t GgufWriter::alignment() const {
  const GgufValue* a = find("general.alignment");
  if (!a) return 32;
  if (!a->is_int()) fail("GGUF writer: general.alignment must be an integer");
  int64_t v = a->as_int();
  if (v < 8 || !is_pow2(uint64_t(v)) || uint64_t(v) > kMaxAlignment) {
    fail("GGUF writer: general.alignment ", v, " must be a power of two, at least 8");
  }
  return uint64_t(v);
}

std::vector<uint8_t> GgufWriter::header_bytes(uint64_t align,
                                              std::vector<uint64_t>* offsets) const {
  std::vector<uint8_t> out;
  out.insert(out.end(), {'G', 'G', 'U', 'F'});
  put_bits(out, 3, 4);
  put_bits(out, tensors_.size(), 8);
  put_bits(out, meta_.size(), 8);
  for (const auto& [key, v] : meta_) {
    put_str(out, key);
    put_bits(out, v.type, 4);
    if (v.type == GGUF_STRING) {
      put_str(out, v.str);
    } else if (v.type == GGUF_ARRAY) {
      put_bits(out, v.elem_type, 4);
      put_bits(out, v.count, 8);
      if (v.elem_type == GGUF_STRING) {
        for (const std::string& s : v.strs) put_str(out, s);
      } else {
        out.insert(out.end(), v.raw.begin(), v.raw.end());
      }
    } else {
      put_bits(out, v.bits, gguf_scalar_size(v.type));
    }
  }
  offsets->clear();
  uint64_t off = 0;
  for (const Pending& t : tensors_) {
    put_str(out, t.name);
    put_bits(out, t.ne.size(), 4);
    for (int64_t e : t.ne) put_bits(out, uint64_t(e), 8);
    put_bits(out, t.ggml_type, 4);
    put_bits(out, off, 8);
    offsets->push_back(off);
    if (!align_up(off + t.nbytes, align, &off)) fail("GGUF writer: data size overflows");
  }
  uint64_t padded = 0;
  align_up(out.size(), align, &padded);
  out.resize(size_t(padded), 0);
  return out;
}

template <typename Sink>
void GgufWriter::emit(Sink&& sink) const {
  const uint64_t align = alignment();
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> head = header_bytes(align, &offsets);
  sink(head.data(), head.size());
  static const uint8_t zeros[256] = {};
  std::vector<uint8_t> produced;
  for (const Pending& t : tensors_) {
    if (t.producer) {
      // Lazy tensor: its bytes are made now, one tensor in memory at a time.
      produced.assign(t.nbytes, 0);
      t.producer(produced.data());
      if (t.nbytes) sink(produced.data(), t.nbytes);
    } else if (t.nbytes) {
      sink(t.data, t.nbytes);
    }
    uint64_t end = 0;
    align_up(t.nbytes, align, &end);
    for (uint64_t pad = end - t.nbytes; pad > 0;) {
      size_t k = size_t(std::min<uint64_t>(pad, sizeof zeros));
      sink(zeros, k);
      pad -= k;
    }
  }
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> out;
  emit([&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

void GgufWriter::write(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, ": cannot write: ", std::strerror(errno));
  bool ok = true;
  int err = 0;
  try {
    emit([&](const void* p, size_t n) {
      if (ok && std::fwrite(p, 1, n, f) != n) {
        ok = false;
        err = errno;
      }
    });
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (ok && std::fflush(f) != 0) ok = false, err = errno;
  if (ok && fsync(fileno(f)) != 0) ok = false, err = errno;
  if (std::fclose(f) != 0 && ok) ok = false, err = errno;
  if (!ok) {
    std::remove(tmp.c_str());
    fail(path, ": write failed: ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    fail(path, ": cannot rename temporary file: ", std::strerror(err));
  }
}

void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

std::vector<uint16_t> f32_to_f16_vector(const float* src, int64_t n) {
  std::vector<uint16_t> out(static_cast<size_t>(n));  // n halves
  f32_to_f16_row(src, out.data(), n);
  return out;
}

}  // namespace lowrank
