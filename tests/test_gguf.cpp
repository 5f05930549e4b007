// GGUF reader/writer tests: a round trip through GgufWriter with metadata of every type and
// F32/F16/Q8_0 tensors; files built byte by byte (independent of the writer); corrupt
// variants that must each throw lowrank::Error; and the real TinyLlama file when present.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quants/dequant.h"
#include "io/gguf.h"
#include "fixture_util.h"
#include "model/gguf_model.h"
#include "model/model.h"

using namespace lowrank;
namespace fs = std::filesystem;

namespace {

std::string temp_dir() {
  static std::string dir = [] {
    std::string d = (fs::temp_directory_path() / ("lowrank_gguf_test_" + std::to_string(getpid())))
                        .string();
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Expects parsing to throw lowrank::Error whose message contains every given part.
void expect_error(const std::vector<uint8_t>& b, std::vector<std::string> parts,
                  const std::string& name = "mem.gguf") {
  try {
    GgufFile::from_memory(b.data(), b.size(), name);
    ADD_FAILURE() << "no error; expected one mentioning '" << parts.at(0) << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

// Little-endian byte builder that remembers where named fields were written.
struct Builder {
  std::vector<uint8_t> b;
  std::map<std::string, size_t> at;
  void mark(const std::string& n) { at[n] = b.size(); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; i++) b.push_back(uint8_t(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; i++) b.push_back(uint8_t(v >> (8 * i)));
  }
  void str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void pad(size_t a) {
    while (b.size() % a) b.push_back(0);
  }
  void set_u32(const std::string& n, uint32_t v) {
    for (int i = 0; i < 4; i++) b[at.at(n) + i] = uint8_t(v >> (8 * i));
  }
  void set_u64(const std::string& n, uint64_t v) {
    for (int i = 0; i < 8; i++) b[at.at(n) + i] = uint8_t(v >> (8 * i));
  }
};

// A small hand-made file: 2 metadata entries and 2 F32 tensors ("t0" ne=[32,2], "t1" ne=[32]).
struct HandSpec {
  uint32_t version = 3;
  std::vector<uint64_t> ne0 = {32, 2};
  uint32_t type0 = 0;  // F32
  uint64_t offset1 = 256;
  std::string name1 = "t1";
};

Builder hand_file(const HandSpec& s = HandSpec()) {
  Builder w;
  w.b = {'G', 'G', 'U', 'F'};
  w.mark("version");
  w.u32(s.version);
  w.mark("n_tensors");
  w.u64(2);
  w.mark("n_kv");
  w.u64(2);
  w.mark("key0_len");
  w.str("general.name");
  w.mark("kv0_type");
  w.u32(GGUF_STRING);
  w.mark("val0_len");
  w.str("tiny");
  w.str("a.arr");
  w.mark("kv1_type");
  w.u32(GGUF_ARRAY);
  w.mark("arr_elem");
  w.u32(GGUF_I32);
  w.mark("arr_count");
  w.u64(3);
  for (uint32_t v : {7u, uint32_t(-8), 9u}) w.u32(v);
  w.mark("t0_name");
  w.str("t0");
  w.mark("t0_ndims");
  w.u32(uint32_t(s.ne0.size()));
  w.mark("t0_ne");
  for (uint64_t e : s.ne0) w.u64(e);
  w.mark("t0_type");
  w.u32(s.type0);
  w.mark("t0_offset");
  w.u64(0);
  w.str(s.name1);
  w.u32(1);
  w.u64(32);
  w.u32(0);
  w.mark("t1_offset");
  w.u64(s.offset1);
  w.pad(32);
  w.mark("data");
  // t0: 64 f32 values i * 0.5 at data+0; t1: 32 f32 values -i at data+256.
  for (int i = 0; i < 64; i++) {
    float f = float(i) * 0.5f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    w.u32(u);
  }
  for (int i = 0; i < 32; i++) {
    float f = -float(i);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    w.u32(u);
  }
  return w;
}

// Two hand-made Q8_0 blocks (2 x 34 bytes): d = 0.5 and 0.25, q[j] = j - 16 and 3 - j.
std::vector<uint8_t> q8_blocks() {
  std::vector<uint8_t> b;
  const uint16_t d[2] = {0x3800, 0x3400};
  for (int k = 0; k < 2; k++) {
    b.push_back(uint8_t(d[k] & 0xff));
    b.push_back(uint8_t(d[k] >> 8));
    for (int j = 0; j < 32; j++) b.push_back(uint8_t(int8_t(k == 0 ? j - 16 : 3 - j)));
  }
  return b;
}

}  // namespace

TEST(Gguf, HandBuiltFileParses) {
  Builder w = hand_file();
  GgufFile f = GgufFile::from_memory(w.b.data(), w.b.size(), "hand.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), w.at["data"]);
  EXPECT_EQ(f.get_string("general.name", ""), "tiny");
  EXPECT_EQ(f.get_int_array("a.arr"), (std::vector<int32_t>{7, -8, 9}));
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensorInfo* t0 = f.tensor("t0");
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(t0->ne, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(t0->dtype, DType::F32);
  EXPECT_EQ(t0->nbytes, 256u);
  EXPECT_EQ(static_cast<const float*>(t0->data)[63], 31.5f);
  Tensor t1 = f.tensor_as("t1");
  EXPECT_EQ(t1.shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(t1.f32()[5], -5.0f);
  Matrix m = f.matrix("t0");
  EXPECT_EQ(m.rows, 2);
  EXPECT_EQ(m.cols, 32);
  EXPECT_EQ(static_cast<const float*>(m.data)[32], 16.0f);  // row 1, col 0
  EXPECT_THROW(f.matrix("t1"), Error);                      // 1-D
  EXPECT_THROW(f.tensor_as("nope"), Error);
  EXPECT_EQ(f.tensor("nope"), nullptr);

  // Version 2 has the same layout.
  w.set_u32("version", 2);
  EXPECT_EQ(GgufFile::from_memory(w.b.data(), w.b.size(), "v2.gguf").version(), 2u);
}

TEST(Gguf, WriteReadRoundTrip) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_raw("k.u8", GgufValue::u8(200));
  w.set_raw("k.i8", GgufValue::i8(-100));
  w.set_raw("k.u16", GgufValue::u16(60000));
  w.set_raw("k.i16", GgufValue::i16(-30000));
  w.set_u32("k.u32", 4000000000u);
  w.set_i32("k.i32", -2000000000);
  w.set_f32("k.f32", 1.25f);
  w.set_bool("k.bool", true);
  w.set_string("k.str", std::string("h\xc3\xa9llo\0x", 8));  // UTF-8 and an embedded NUL
  w.set_u64("k.u64", 0xfedcba9876543210ull);
  w.set_i64("k.i64", -1234567890123ll);
  w.set_f64("k.f64", 3.141592653589793);
  w.set_string_array("k.strs", {"a", "", "<s>", std::string(300, 'x')});
  w.set_f32_array("k.f32s", {0.5f, -1.0f, 1e30f});
  w.set_i32_array("k.i32s", {1, -2, 2147483647});
  w.set_raw("k.u8s", GgufValue::scalar_array(GGUF_U8, 3, {1, 2, 255}));
  w.set_raw("k.empty", GgufValue::f32_array({}));
  w.set_u32("k.u32", 7);  // replaces in place, keeps position

  // t_f32: ne = [4, 3] (3 rows of 4), values r*10 + c.
  std::vector<float> f32(12);
  for (int i = 0; i < 12; i++) f32[i] = float((i / 4) * 10 + i % 4);
  w.add_tensor("t_f32", {4, 3}, DType::F32, f32.data(), f32.size() * 4);
  // t_f16: ne = [8, 2], values i / 4 - 1 (exact in f16).
  std::vector<float> f16src(16);
  for (int i = 0; i < 16; i++) f16src[i] = float(i) / 4.0f - 1.0f;
  w.add_tensor_f16("t_f16", {8, 2}, f16src.data());
  // t_q8: ne = [32, 2]: two hand-made Q8_0 blocks (one per row).
  std::vector<uint8_t> q8 = q8_blocks();
  w.add_tensor("t_q8", {32, 2}, DType::Q8_0, q8.data(), q8.size());
  // t_3d: ne = [2, 3, 4] F32 (PyTorch shape [4, 3, 2]).
  std::vector<float> t3(24);
  for (int i = 0; i < 24; i++) t3[i] = float(i);
  w.add_tensor_f32("t_3d", {2, 3, 4}, t3.data());
  // t_empty: zero elements.
  w.add_tensor("t_empty", {0}, DType::F32, nullptr, 0);

  const std::string path = temp_dir() + "/round.gguf";
  w.write(path);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(w.to_bytes().size(), fs::file_size(path));

  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.file_size(), fs::file_size(path));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.data_offset() % 32, 0u);

  // Metadata, in file order.
  const auto& md = f.metadata();
  ASSERT_EQ(md.size(), 18u);
  EXPECT_EQ(md[0].first, "general.architecture");
  EXPECT_EQ(md[5].first, "k.u32");
  EXPECT_EQ(md[17].first, "k.empty");
  EXPECT_EQ(f.find("k.u8")->type, uint32_t(GGUF_U8));
  EXPECT_EQ(f.get_int("k.u8", 0), 200);
  EXPECT_EQ(f.get_int("k.i8", 0), -100);
  EXPECT_EQ(f.get_int("k.u16", 0), 60000);
  EXPECT_EQ(f.get_int("k.i16", 0), -30000);
  EXPECT_EQ(f.get_int("k.u32", 0), 7);
  EXPECT_EQ(f.get_int("k.i32", 0), -2000000000);
  EXPECT_EQ(f.get_float("k.f32", 0), 1.25f);
  EXPECT_TRUE(f.get_bool("k.bool", false));
  EXPECT_EQ(f.get_string("k.str", ""), std::string("h\xc3\xa9llo\0x", 8));
  EXPECT_EQ(f.find("k.u64")->as_u64(), 0xfedcba9876543210ull);
  EXPECT_THROW(f.get_int("k.u64", 0), Error);  // does not fit int64
  EXPECT_EQ(f.get_int("k.i64", 0), -1234567890123ll);
  EXPECT_EQ(f.find("k.f64")->as_double(), 3.141592653589793);
  EXPECT_EQ(f.get_string_array("k.strs"),
            (std::vector<std::string>{"a", "", "<s>", std::string(300, 'x')}));
  EXPECT_EQ(f.get_float_array("k.f32s"), (std::vector<float>{0.5f, -1.0f, 1e30f}));
  EXPECT_EQ(f.get_int_array("k.i32s"), (std::vector<int32_t>{1, -2, 2147483647}));
  EXPECT_EQ(f.get_int_array("k.u8s"), (std::vector<int32_t>{1, 2, 255}));
  EXPECT_TRUE(f.get_float_array("k.empty").empty());
  EXPECT_EQ(f.find("k.empty")->elem_type, uint32_t(GGUF_F32));
  // Absent keys give defaults; wrong types throw naming the file and key.
  EXPECT_EQ(f.get_int("absent", 42), 42);
  EXPECT_EQ(f.get_string("absent", "dflt"), "dflt");
  EXPECT_TRUE(f.get_string_array("absent").empty());
  EXPECT_EQ(f.find("absent"), nullptr);
  try {
    f.get_int("k.str", 0);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k.str"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
  EXPECT_THROW(f.get_string("k.u8", ""), Error);
  EXPECT_THROW(f.get_string_array("k.f32s"), Error);
  EXPECT_THROW(f.get_int_array("k.f32s"), Error);
  EXPECT_EQ(f.get_float("k.i32", 0), -2000000000.0f);  // integers read as float

  // Tensors.
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.tensors()[0].name, "t_f32");
  EXPECT_EQ(f.tensors()[4].name, "t_empty");
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ((static_cast<const uint8_t*>(t.data) - static_cast<const uint8_t*>(
                   f.tensors()[0].data)) % 32, 0) << t.name;
  }
  const GgufTensorInfo* tf = f.tensor("t_f32");
  ASSERT_NE(tf, nullptr);
  EXPECT_EQ(tf->ggml_type, 0u);
  EXPECT_EQ(tf->nbytes, 48u);
  EXPECT_EQ(std::memcmp(tf->data, f32.data(), 48), 0);
  Matrix m = f.matrix("t_f32");
  EXPECT_EQ(m.dtype, DType::F32);
  EXPECT_EQ(m.rows, 3);
  EXPECT_EQ(m.cols, 4);
  EXPECT_EQ(static_cast<const float*>(m.data)[2 * 4 + 1], 21.0f);

  const GgufTensorInfo* th = f.tensor("t_f16");
  ASSERT_NE(th, nullptr);
  EXPECT_EQ(th->dtype, DType::F16);
  EXPECT_EQ(th->ggml_type, 1u);
  EXPECT_EQ(th->nbytes, 32u);
  std::vector<float> back(16);
  to_f32(DType::F16, th->data, back.data(), 16);
  EXPECT_EQ(back, f16src);

  const GgufTensorInfo* tq = f.tensor("t_q8");
  ASSERT_NE(tq, nullptr);
  EXPECT_EQ(tq->dtype, DType::Q8_0);
  EXPECT_EQ(tq->ggml_type, 8u);
  EXPECT_EQ(tq->nbytes, 68u);
  EXPECT_EQ(std::memcmp(tq->data, q8.data(), 68), 0);
  Matrix mq = f.matrix("t_q8");
  EXPECT_EQ(mq.dtype, DType::Q8_0);
  EXPECT_EQ(mq.rows, 2);
  EXPECT_EQ(mq.cols, 32);
  std::vector<float> q(64);
  dequantize(DType::Q8_0, mq.data, q.data(), 64);
  for (int j = 0; j < 32; j++) {
    EXPECT_EQ(q[j], 0.5f * float(j - 16));
    EXPECT_EQ(q[32 + j], 0.25f * float(3 - j));
  }

  Tensor t3d = f.tensor_as("t_3d");
  EXPECT_EQ(t3d.shape, (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(t3d.nbytes, 96u);
  EXPECT_EQ(t3d.f32()[23], 23.0f);
  EXPECT_THROW(f.matrix("t_3d"), Error);
  EXPECT_EQ(f.tensor("t_empty")->nbytes, 0u);

  // Tensor/Matrix keep the mapping alive after the GgufFile is gone.
  Tensor keep;
  {
    GgufFile g = GgufFile::open(path);
    keep = g.tensor_as("t_f32");
  }
  EXPECT_EQ(keep.f32()[11], 23.0f);

  // Copying all metadata into a new writer reproduces identical bytes.
  GgufWriter w2;
  for (const auto& [k, v] : f.metadata()) w2.set_raw(k, v);
  for (const GgufTensorInfo& t : f.tensors()) {
    w2.add_tensor(t.name, t.ne, t.ggml_type, t.data, t.nbytes);
  }
  EXPECT_EQ(w2.to_bytes(), w.to_bytes());
}

TEST(Gguf, CustomAlignment) {
  GgufWriter w;
  w.set_u32("general.alignment", 64);
  std::vector<float> a(8, 1.0f), b(16, 2.0f);
  w.add_tensor("a", {8}, DType::F32, a.data(), 32);
  w.add_tensor("b", {16}, DType::F32, b.data(), 64);
  std::vector<uint8_t> bytes = w.to_bytes();
  GgufFile f = GgufFile::from_memory(bytes.data(), bytes.size(), "align.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.tensor("b")->offset, 64u);
  EXPECT_EQ(static_cast<const float*>(f.tensor("b")->data)[15], 2.0f);
  EXPECT_EQ(bytes.size() % 64, 0u);

  GgufWriter bad;
  bad.set_u32("general.alignment", 12);
  EXPECT_THROW(bad.to_bytes(), Error);
}

TEST(Gguf, WriterRejectsBadInput) {
  GgufWriter w;
  std::vector<float> a(64);
  w.add_tensor("a", {32, 2}, DType::F32, a.data(), 256);
  EXPECT_THROW(w.add_tensor("a", {32, 2}, DType::F32, a.data(), 256), Error);   // duplicate
  EXPECT_THROW(w.add_tensor("b", {32, 2}, DType::F32, a.data(), 255), Error);   // size
  EXPECT_THROW(w.add_tensor("c", {48}, DType::Q8_0, a.data(), 51), Error);      // block
  EXPECT_THROW(w.add_tensor("d", {1, 1, 1, 1, 1}, DType::F32, a.data(), 4), Error);
  EXPECT_THROW(w.add_tensor("e", {4}, uint32_t(99), a.data(), 16), Error);
  EXPECT_THROW(w.add_tensor("f", {4}, DType::U8, a.data(), 4), Error);  // no ggml type for U8
  GgufValue broken = GgufValue::f32_array({1, 2});
  broken.count = 3;
  EXPECT_THROW(w.set_raw("x", broken), Error);
  // I/O failure: the directory does not exist.
  EXPECT_THROW(w.write(temp_dir() + "/no/such/dir/x.gguf"), Error);
}

TEST(Gguf, OpenErrorsNameTheFile) {
  const std::string missing = temp_dir() + "/missing.gguf";
  try {
    GgufFile::open(missing);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos);
  }
  const std::string empty = temp_dir() + "/empty.gguf";
  write_bytes(empty, {});
  EXPECT_THROW(GgufFile::open(empty), Error);
  EXPECT_THROW(GgufFile::open(temp_dir()), Error);  // a directory

  Builder w = hand_file();
  for (size_t cut : {size_t(3), size_t(20), w.at["t0_ne"] + 3, w.b.size() - 1}) {
    const std::string p = temp_dir() + "/cut" + std::to_string(cut) + ".gguf";
    write_bytes(p, std::vector<uint8_t>(w.b.begin(), w.b.begin() + long(cut)));
    try {
      GgufFile::open(p);
      ADD_FAILURE() << "cut " << cut;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
}

TEST(Gguf, TruncationAtEveryOffset) {
  // Written file: every cut before the end of the last tensor's data must throw; cuts in
  // the trailing padding are still valid files.
  GgufWriter wr;
  wr.set_string("general.name", "cut");
  wr.set_string_array("k.strs", {"ab", "cd"});
  wr.set_f32_array("k.f32s", {1, 2, 3});
  wr.set_u64("k.u64", 5);
  std::vector<uint8_t> q8 = q8_blocks();
  wr.add_tensor("q", {32, 2}, DType::Q8_0, q8.data(), q8.size());
  std::vector<float> v(3, 1.0f);
  wr.add_tensor("v", {3}, DType::F32, v.data(), 12);
  std::vector<uint8_t> full = wr.to_bytes();
  GgufFile ok = GgufFile::from_memory(full.data(), full.size(), "full.gguf");
  size_t end = 0;
  for (const auto& t : ok.tensors()) {
    end = std::max<size_t>(end, size_t(ok.data_offset() + t.offset + t.nbytes));
  }
  ASSERT_LT(end, full.size());
  for (size_t n = 0; n < full.size(); n++) {
    if (n < end) {
      EXPECT_THROW(GgufFile::from_memory(full.data(), n, "cut.gguf"), Error) << "cut at " << n;
    } else {
      EXPECT_NO_THROW(GgufFile::from_memory(full.data(), n, "cut.gguf")) << "cut at " << n;
    }
  }
  // Same for the hand-built file.
  Builder h = hand_file();
  for (size_t n = 0; n < h.b.size(); n++) {
    EXPECT_THROW(GgufFile::from_memory(h.b.data(), n, "cut.gguf"), Error) << "cut at " << n;
  }
}

TEST(Gguf, CorruptHeader) {
  Builder w = hand_file();
  {
    auto b = w.b;
    b[0] = 'X';
    expect_error(b, {"magic"});
  }
  {
    Builder v = hand_file();
    v.set_u32("version", 1);
    expect_error(v.b, {"version 1"});
    v.set_u32("version", 4);
    expect_error(v.b, {"version 4"});
    v.set_u32("version", 0x03000000);
    expect_error(v.b, {"version"});
  }
  {
    Builder v = hand_file();
    v.set_u64("n_tensors", uint64_t(1) << 60);
    expect_error(v.b, {"tensor count"});
    v = hand_file();
    v.set_u64("n_kv", ~uint64_t(0));
    expect_error(v.b, {"metadata count"});
    v = hand_file();
    v.set_u64("n_tensors", 3);  // one more than present: runs into the data
    EXPECT_THROW(GgufFile::from_memory(v.b.data(), v.b.size(), "x.gguf"), Error);
  }
}

TEST(Gguf, CorruptMetadata) {
  {
    Builder v = hand_file();
    v.set_u64("key0_len", ~uint64_t(0) - 3);  // huge key length
    expect_error(v.b, {"length", "past the end"});
  }
  {
    Builder v = hand_file();
    v.set_u64("val0_len", uint64_t(1) << 40);  // huge string value
    expect_error(v.b, {"general.name", "past the end"});
  }
  {
    Builder v = hand_file();
    v.set_u64("arr_count", uint64_t(1) << 61);  // absurd array count
    expect_error(v.b, {"a.arr", "array count"});
  }
  {
    Builder v = hand_file();
    v.set_u32("kv0_type", 13);  // unknown value type
    expect_error(v.b, {"general.name", "unknown value type 13"});
  }
  {
    Builder v = hand_file();
    v.set_u32("arr_elem", 77);
    expect_error(v.b, {"a.arr", "element type 77"});
  }
  {
    Builder v = hand_file();
    v.set_u32("arr_elem", GGUF_ARRAY);
    expect_error(v.b, {"a.arr", "nested"});
  }
  {
    Builder v = hand_file();
    v.set_u64("arr_count", 4);  // reads one element too many; later fields misparse
    EXPECT_THROW(GgufFile::from_memory(v.b.data(), v.b.size(), "x.gguf"), Error);
  }
  {
    GgufWriter wr;
    wr.set_u32("a", 1);
    wr.set_u32("b", 2);
    std::vector<uint8_t> b = wr.to_bytes();
    // Rename key "b" to "a": the second key string is the last 'b' before its type field.
    size_t kb = 0;
    for (size_t i = 0; i < b.size(); i++) {
      if (b[i] == 'b') kb = i;
    }
    b[kb] = 'a';
    expect_error(b, {"duplicate metadata key 'a'"});
  }
  {
    GgufWriter wr;
    wr.set_u64("general.alignment", 3);
    wr.remove("general.alignment");
    wr.set_raw("general.alignment", GgufValue::u32(48));  // not a power of two
    std::vector<uint8_t> b;
    EXPECT_THROW(b = wr.to_bytes(), Error);  // the writer refuses it too
    Builder h;
    h.b = {'G', 'G', 'U', 'F'};
    h.u32(3);
    h.u64(0);
    h.u64(1);
    h.str("general.alignment");
    h.u32(GGUF_U32);
    h.u32(48);
    expect_error(h.b, {"general.alignment"});
    Builder s;
    s.b = {'G', 'G', 'U', 'F'};
    s.u32(3);
    s.u64(0);
    s.u64(1);
    s.str("general.alignment");
    s.u32(GGUF_STRING);
    s.str("32");
    expect_error(s.b, {"general.alignment"});
  }
}

TEST(Gguf, CorruptTensorInfo) {
  {
    Builder v = hand_file();
    v.set_u32("t0_ndims", 5);
    expect_error(v.b, {"'t0'", "n_dims 5"});
    v.set_u32("t0_ndims", 0);
    expect_error(v.b, {"'t0'", "n_dims 0"});
  }
  {
    HandSpec s;
    s.ne0 = {uint64_t(1) << 40, uint64_t(1) << 30};  // 2^70 elements
    expect_error(hand_file(s).b, {"'t0'", "overflow"});
    s.ne0 = {~uint64_t(0), 1};  // > INT64_MAX
    expect_error(hand_file(s).b, {"'t0'", "overflow"});
    s.ne0 = {uint64_t(1) << 61, 1};  // elements fit, bytes do not
    expect_error(hand_file(s).b, {"'t0'"});
  }
  {
    HandSpec s;
    s.type0 = 99;  // past ggml's type table
    expect_error(hand_file(s).b, {"'t0'", "unknown ggml tensor type 99"});
    s.type0 = quants::kGgmlTypeCount;  // the first id past the table
    expect_error(hand_file(s).b, {"'t0'", "unknown ggml tensor type 43"});
    s.type0 = 4;  // Q4_2: removed from ggml
    expect_error(hand_file(s).b, {"'t0'", "type 4 was removed"});
    s.type0 = 40;  // NVFP4: a real ggml type that this engine does not decode
    expect_error(hand_file(s).b, {"'t0'", "unsupported ggml tensor type 40 (NVFP4)"});
  }
  {
    HandSpec s;
    s.type0 = 8;  // Q8_0 with rows of 32: fine in size terms (2 blocks = 68 bytes)
    GgufFile f = GgufFile::from_memory(hand_file(s).b.data(), hand_file(s).b.size(), "q.gguf");
    EXPECT_EQ(f.tensor("t0")->nbytes, 68u);
    s.ne0 = {48, 2};  // row length not a multiple of 32
    expect_error(hand_file(s).b, {"'t0'", "row length 48"});
  }
  {
    HandSpec s;
    s.offset1 = 1 << 20;  // past the end
    expect_error(hand_file(s).b, {"'t1'", "out of range"});
    s.offset1 = ~uint64_t(0) & ~uint64_t(31);  // offset + size would overflow
    expect_error(hand_file(s).b, {"'t1'", "out of range"});
    s.offset1 = 260;  // not a multiple of the alignment
    expect_error(hand_file(s).b, {"'t1'", "alignment"});
    s.offset1 = 224;  // overlaps t0 [0, 256)
    expect_error(hand_file(s).b, {"overlap"});
    s.offset1 = 256;
    s.name1 = "t0";  // duplicate name
    expect_error(hand_file(s).b, {"duplicate tensor name 't0'"});
  }
}

TEST(Gguf, FromMemoryCopiesInput) {
  Builder w = hand_file();
  GgufFile f = GgufFile::from_memory(w.b.data(), w.b.size(), "copy.gguf");
  std::fill(w.b.begin(), w.b.end(), 0);
  EXPECT_EQ(static_cast<const float*>(f.tensor("t0")->data)[3], 1.5f);
  EXPECT_EQ(f.path(), "copy.gguf");
}

// ---------------------------------------------------------------- real model (optional)


TEST(GgufTinyLlama, OpenAndDequantize) {
  const std::string path = tinyllama_path();
  if (path.empty()) {
    GTEST_SKIP() << "tinyllama-1.1b-chat-v1.0.IQ2_XXS.gguf not found in $LOWRANK_CACHE or "
                    "$HOME/.cache/lowrank; run scripts/fetch-tinyllama to download it";
  }
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get_string("general.architecture", ""), "llama");
  for (const char* k :
       {"llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.chat_template"}) {
    EXPECT_NE(f.find(k), nullptr) << k;
  }
  EXPECT_EQ(f.get_int("llama.embedding_length", 0), 2048);
  EXPECT_EQ(f.get_int("llama.block_count", 0), 22);
  EXPECT_EQ(f.get_int("llama.feed_forward_length", 0), 5632);
  EXPECT_EQ(f.get_int("llama.attention.head_count", 0), 32);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv", 0), 4);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model", ""), "llama");
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(f.get_float_array("tokenizer.ggml.scores").size(), tokens.size());
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), tokens.size());
  EXPECT_GT(f.get_float("llama.attention.layer_norm_rms_epsilon", 0), 0.0f);

  // Tensor type summary.
  std::map<std::string, int> count;
  for (const GgufTensorInfo& t : f.tensors()) count[dtype_name(t.dtype)]++;
  std::cout << "[ INFO     ] " << f.tensors().size() << " tensors:";
  for (const auto& [n, c] : count) std::cout << " " << n << "=" << c;
  std::cout << "\n";
  EXPECT_EQ(f.tensors().size(), 201u);  // 22 blocks x 9 + token_embd, output_norm, output
  EXPECT_EQ(f.tensor("token_embd.weight")->dtype, DType::Q2_K);
  EXPECT_EQ(f.tensor("output.weight")->dtype, DType::Q5_K);
  EXPECT_EQ(f.tensor("blk.0.attn_v.weight")->dtype, DType::Q4_K);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight")->dtype, DType::IQ2_XXS);
  EXPECT_EQ(f.tensor("output_norm.weight")->dtype, DType::F32);
  Matrix emb = f.matrix("token_embd.weight");
  EXPECT_EQ(emb.rows, 32000);
  EXPECT_EQ(emb.cols, 2048);

  // Dequantize a few rows of the first tensor of each type: finite, sensible magnitude.
  std::map<DType, bool> seen;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (seen[t.dtype]) continue;
    seen[t.dtype] = true;
    const int64_t cols = t.ne[0];
    const int64_t rows = std::min<int64_t>(t.n_elements / cols, 4);
    const size_t row_bytes = dtype_bytes(t.dtype, cols);
    std::vector<float> y(size_t(rows * cols));  // (rows, cols) row-major
    for (int64_t r = 0; r < rows; r++) {
      to_f32(t.dtype, static_cast<const uint8_t*>(t.data) + r * row_bytes, y.data() + r * cols,
             cols);
    }
    double sum = 0, sum_abs = 0, max_abs = 0;
    for (float x : y) {
      ASSERT_TRUE(std::isfinite(x)) << t.name;
      sum += x;
      sum_abs += std::fabs(x);
      max_abs = std::max(max_abs, double(std::fabs(x)));
    }
    const double mean_abs = sum_abs / double(y.size());
    std::cout << "[ INFO     ] " << t.name << " " << dtype_name(t.dtype) << " ne=[" << t.ne[0]
              << (t.ne.size() > 1 ? ", " + std::to_string(t.ne[1]) : std::string()) << "]"
              << " rows 0.." << rows - 1 << ": mean|x|=" << mean_abs << " max|x|=" << max_abs
              << "\n";
    EXPECT_GT(mean_abs, 1e-4) << t.name;
    EXPECT_LT(max_abs, 10.0) << t.name;
    // Weight matrices are roughly zero-centred; a wrong sign/offset decode would show here.
    if (dtype_is_quantized(t.dtype)) {
      EXPECT_LT(std::fabs(sum / double(y.size())), 0.25 * mean_abs) << t.name;
    }
  }
}

namespace {
int64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}
}  // namespace

// The quantized base stays quantized in memory: loading the 2-bit TinyLlama and running a
// forward that touches every weight grows the resident set by less than 0.6 GB (the f32
// model would be 4.4 GB).
TEST(GgufTinyLlama, ResidentWeightMemoryUnderBudget) {
  const std::string path = tinyllama_path();
  if (path.empty()) GTEST_SKIP() << "tinyllama GGUF not found; run scripts/fetch-tinyllama";
  const int64_t before = rss_bytes();
  ASSERT_GT(before, 0);
  std::unique_ptr<Model> m = load_model(path);
  Batch b;
  b.B = 1;
  b.T = 4;
  b.ids = {1, 450, 7483, 310};
  b.targets = {450, 7483, 310, 3444};
  b.row_adapters.resize(1);
  const double loss = m->forward(b, false);
  EXPECT_TRUE(std::isfinite(loss));
  const int64_t grown = rss_bytes() - before;
  std::cout << "[ INFO     ] resident set grew by " << double(grown) / 1e6 << " MB (file "
            << double(fs::file_size(path)) / 1e6 << " MB)\n";
  EXPECT_LT(grown, int64_t(600) * 1000 * 1000);
}

// Every weight type of the ggml table is read (block geometry from the table), and corrupt
// quantized data gives one error naming the file and the tensor: a row length that does not
// divide the block size, data that needs more bytes than the tensor has before the next one
// (or before the end of the file), a type id past ggml's table.
TEST(Gguf, EveryWeightTypeAndCorruptBlocks) {
  for (int i = 0; i < quants::kDTypeCount; i++) {
    const DType t = DType(i);
    uint32_t id;
    if (!dtype_is_weight(t) || !quants::dtype_to_ggml_id(t, &id)) continue;
    const int64_t be = dtype_block_elems(t), bb = dtype_block_bytes(t);
    SCOPED_TRACE(dtype_name(t));
    HandSpec s;
    s.type0 = id;
    const int64_t rows = 256 / bb;  // as many rows of one block as fit before t1 at 256
    s.ne0 = {uint64_t(be), uint64_t(rows)};
    {
      Builder b = hand_file(s);
      GgufFile f = GgufFile::from_memory(b.b.data(), b.b.size(), "all.gguf");
      const GgufTensorInfo* ti = f.tensor("t0");
      ASSERT_NE(ti, nullptr);
      EXPECT_EQ(ti->dtype, t);
      EXPECT_EQ(ti->nbytes, size_t(rows * bb));
      Matrix m = f.matrix("t0");
      std::vector<float> y(size_t(rows * be));
      m.rows_f32(0, rows, y.data());  // decodes (the bytes are the f32 test data)
    }
    if (be > 1) {
      s.ne0 = {uint64_t(be + be / 2), 1};
      expect_error(hand_file(s).b, {"'t0'", "row length " + std::to_string(be + be / 2), dtype_name(t)});
      s.ne0 = {uint64_t(be / 2), 2};
      expect_error(hand_file(s).b, {"'t0'", "block size " + std::to_string(be)});
    }
    s.ne0 = {uint64_t(be), uint64_t(rows + 1)};  // one block too many: runs into t1 (or, for
    if ((rows + 1) * bb <= 384) {                // the largest blocks, past the 384-byte data)
      expect_error(hand_file(s).b, {"'t0'", "'t1'", "overlap"});
    } else {
      expect_error(hand_file(s).b, {"'t0'", "out of range"});
    }
    s.offset1 = 0;                                    // t1 shares t0's start ...
    s.ne0 = {uint64_t(be), uint64_t(384 / bb + 1)};   // ... and t0 runs past the file's end
    expect_error(hand_file(s).b, {"'t0'", "out of range"});
  }
}

// GgufWriter stores every weight type and the reader gets the same bytes back.
TEST(Gguf, WriterRoundTripsEveryWeightType) {
  GgufWriter w;
  std::vector<std::vector<uint8_t>> keep;
  for (int i = 0; i < quants::kDTypeCount; i++) {
    const DType t = DType(i);
    uint32_t id;
    if (!dtype_is_weight(t) || !quants::dtype_to_ggml_id(t, &id)) continue;
    const int64_t be = dtype_block_elems(t);
    std::vector<uint8_t> bytes(dtype_bytes(t, 2 * 256));  // 2 rows of 256 elements
    for (size_t k = 0; k < bytes.size(); k++) bytes[k] = uint8_t((k * 29 + size_t(i)) & 0x3f);
    keep.push_back(bytes);
    w.add_tensor_copy(std::string("w.") + dtype_name(t), {256, 2}, t, bytes.data(), bytes.size());
    EXPECT_EQ(256 % be, 0);
  }
  const std::vector<uint8_t> img = w.to_bytes();
  GgufFile f = GgufFile::from_memory(img.data(), img.size(), "rt.gguf");
  size_t k = 0;
  for (int i = 0; i < quants::kDTypeCount; i++) {
    const DType t = DType(i);
    uint32_t id;
    if (!dtype_is_weight(t) || !quants::dtype_to_ggml_id(t, &id)) continue;
    const GgufTensorInfo* ti = f.tensor(std::string("w.") + dtype_name(t));
    ASSERT_NE(ti, nullptr) << dtype_name(t);
    EXPECT_EQ(ti->ggml_type, id);
    ASSERT_EQ(ti->nbytes, keep[k].size());
    EXPECT_EQ(std::memcmp(ti->data, keep[k].data(), ti->nbytes), 0) << dtype_name(t);
    k++;
  }
  EXPECT_EQ(k, 27u);  // F32, F16, BF16 and the 24 block types
}
