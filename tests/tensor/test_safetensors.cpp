// safetensors: bit-exact round trips of every psvae dtype, conversions of the other file dtypes
// from bytes built here by hand, one malformed file per validation rule (each asserting its
// specific message), zero-copy lifetime, and the atomic writer's guarantees.
#include "tensor/safetensors.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/test_util.h"

using namespace psvae;
namespace st = psvae::safetensors;
namespace fs = std::filesystem;

using psvae::test::TempDir;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// [u64 N][header][data] with N = header.size() unless `claimed` overrides it.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               int64_t claimed = -1) {
  uint64_t n = claimed >= 0 ? static_cast<uint64_t>(claimed) : header.size();
  write_bytes(path, u64_le(n) + header + data);
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(&s[0], v.data(), s.size());
  return s;
}

// Builds a file tensor by tensor, offsets laid end to end; the header is not padded, so data can
// start at any byte (the converted and unaligned paths must cope).
struct RawFile {
  std::string header = "{", data;
  void add(const std::string& name, const std::string& dtype, const std::string& shape,
           const std::string& bytes) {
    if (header.size() > 1) header += ",";
    header += fmt::format(R"("{}":{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}})", name, dtype,
                          shape, data.size(), data.size() + bytes.size());
    data += bytes;
  }
  void write(const std::string& path) const { write_raw(path, header + "}", data); }
};

std::string open_error(const std::string& path) {
  try {
    st::File::open(path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST_CASE("round trip of every psvae dtype is bit-exact, metadata kept, data zero-copy") {
  TempDir tmp("safetensors");
  // Awkward values on purpose: NaN payloads, -0, subnormals, extremes.
  Tensor f32 = Tensor::from_vector<float>({bits_float(0x7fc00001u), -0.0f, bits_float(1u),
                                           std::numeric_limits<float>::max(), 1.f, -2.f},
                                          {2, 3});
  Tensor f64 = Tensor::from_vector<double>({-0.0, 1e-310, M_PI, -INFINITY}, {2, 1, 2});
  Tensor b16 = Tensor::from_vector<bf16>({bf16(1.f), bf16(-3.5f), bf16(INFINITY)}, {3});
  Tensor i32 = Tensor::from_vector<int32_t>({std::numeric_limits<int32_t>::min(), 0, 7}, {3, 1});
  Tensor i64 =
      Tensor::from_vector<int64_t>({std::numeric_limits<int64_t>::max(), -1}, {1, 1, 1, 1, 1, 2});
  Tensor scalar = Tensor::scalar(2.5, DType::F32);
  Tensor empty_f64 = Tensor::zeros({0}, DType::F64);
  Tensor empty_i32 = Tensor::zeros({3, 0, 2}, DType::I32);
  Tensor odd_bf16 = Tensor::from_vector<bf16>({bf16(0.5f)}, {1});
  st::NamedTensors in = {{"z.f32", f32},
                         {"a.f64", f64},
                         {"m.bf16", b16},
                         {"odd", odd_bf16},
                         {"i32", i32},
                         {"i64", i64},
                         {"scalar", scalar},
                         {"empty_f64", empty_f64},
                         {"empty_i32", empty_i32}};
  st::Metadata meta = {{"format", "pt"}, {"step", "1200"}, {"note", "quote \" and \xc3\xa9"}};
  std::string path = tmp / "all.safetensors";
  st::save(path, in, meta);
  size_t data_bytes = 0;
  for (const auto& [n, t] : in) data_bytes += t.nbytes();
  CHECK((fs::file_size(path) - data_bytes) % 8 == 0);  // the header is padded to 8

  std::shared_ptr<st::File> f = st::File::open(path);
  CHECK(f->metadata() == meta);
  // Data layout: larger elements first, the given order within a size (so every tensor is
  // aligned); zero-byte tensors share an offset with a neighbour and sort first there.
  CHECK(f->names() == std::vector<std::string>{"a.f64", "i64", "empty_f64", "z.f32", "i32",
                                               "scalar", "empty_i32", "m.bf16", "odd"});
  for (const auto& [name, t] : in) {
    CAPTURE(name);
    REQUIRE(f->contains(name));
    Tensor got = f->get(name);
    CHECK(same_bytes(got, t));
    CHECK(got.storage().get() == f->get("z.f32").storage().get());  // all views of the one mapping
  }
  CHECK(f->info("i64").dtype == st::FileDType::I64);
  CHECK(f->info("i64").shape == Shape{1, 1, 1, 1, 1, 2});
  CHECK(f->info("a.f64").begin == 0);
  CHECK(f->info("a.f64").end == 32);
  CHECK(f->info("z.f32").begin == 48);

  st::Metadata meta2;
  st::NamedTensors loaded = st::load(path, &meta2);
  CHECK(meta2 == meta);
  REQUIRE(loaded.size() == in.size());
  CHECK(loaded[3].first == "z.f32");
  CHECK(same_bytes(loaded[3].second, f32));

  // No metadata: no "__metadata__" key at all.
  st::save(path, {{"x", scalar}});
  std::ifstream raw(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(raw)), std::istreambuf_iterator<char>());
  CHECK_FALSE(contains(text, "__metadata__"));
  CHECK(st::File::open(path)->metadata().empty());
}

TEST_CASE("tensors outlive their File; writes to them never reach the file") {
  TempDir tmp("safetensors");
  std::string path = tmp / "w.safetensors";
  st::save(path, {{"w", Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2})}});
  Tensor t;
  {
    std::shared_ptr<st::File> f = st::File::open(path);
    t = f->get("w");
  }  // the File is gone; the mapping must live on in t's storage
  CHECK(t.to_vector<float>() == std::vector<float>{1, 2, 3, 4});
  t.fill_(9);  // copy-on-write mapping: fine in memory, invisible on disk
  CHECK(t.to_vector<float>() == std::vector<float>(4, 9.f));
  CHECK(st::load(path)[0].second.to_vector<float>() == std::vector<float>{1, 2, 3, 4});
  Tensor view = t.slice0(1, 2);
  t = Tensor();
  CHECK(view.to_vector<float>() == std::vector<float>(2, 9.f));
}

TEST_CASE("unaligned native data is copied, aligned data is mapped") {
  TempDir tmp("safetensors");
  std::string path = tmp / "u.safetensors";
  RawFile rf;
  rf.add("a", "F32", "[3]", bytes_of<float>({1.5f, -2.f, 3.f}));
  rf.add("b", "F64", "[1]", bytes_of<double>({0.25}));
  rf.write(path);
  std::shared_ptr<st::File> f = st::File::open(path);
  size_t start = 8 + rf.header.size() + 1;
  REQUIRE(start % 4 != 0);  // this header leaves both tensors misaligned (start = 118)
  Tensor a = f->get("a"), b = f->get("b");
  CHECK(a.to_vector<float>() == std::vector<float>{1.5f, -2.f, 3.f});
  CHECK(b.to_vector<double>() == std::vector<double>{0.25});
  CHECK(reinterpret_cast<uintptr_t>(a.raw_data()) % alignof(float) == 0);
  CHECK(reinterpret_cast<uintptr_t>(b.raw_data()) % alignof(double) == 0);
  CHECK(a.storage().get() != f->get("a").storage().get());  // copies, one per get
  CHECK(b.storage().get() != f->get("b").storage().get());
}

TEST_CASE("converted file dtypes: F16, BOOL, U8, I8, I16, U16, U32, U64") {
  TempDir tmp("safetensors");
  std::string path = tmp / "conv.safetensors";
  RawFile rf;
  // 1, -2, 2^-24 (smallest subnormal), 1023 * 2^-24 (largest subnormal), 2^-14 (smallest normal),
  // 65504 (largest), inf, -inf, NaN, -0, 1/3 rounded (0x3555 = 0.333251953125)
  rf.add("f16", "F16", "[11]",
         bytes_of<uint16_t>({0x3c00, 0xc000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00,
                             0x8000, 0x3555}));
  rf.add("bool", "BOOL", "[2, 2]", bytes_of<uint8_t>({0, 1, 1, 0}));
  rf.add("u8", "U8", "[3]", bytes_of<uint8_t>({0, 128, 255}));
  rf.add("i8", "I8", "[3]", bytes_of<int8_t>({-128, -1, 127}));
  rf.add("i16", "I16", "[2]", bytes_of<int16_t>({-32768, 32767}));
  rf.add("u16", "U16", "[2]", bytes_of<uint16_t>({0, 65535}));
  rf.add("u32", "U32", "[2]", bytes_of<uint32_t>({0, 4294967295u}));
  rf.add("u64", "U64", "[2]", bytes_of<uint64_t>({0, 9223372036854775807ull}));
  rf.add("u64big", "U64", "[1]", bytes_of<uint64_t>({9223372036854775808ull}));
  rf.add("f8", "F8_E4M3", "[2]", bytes_of<uint8_t>({0x38, 0x40}));
  rf.add("f8b", "F8_E5M2", "[]", bytes_of<uint8_t>({0x3c}));
  rf.add("f16empty", "F16", "[0, 4]", "");
  rf.write(path);
  std::shared_ptr<st::File> f = st::File::open(path);

  Tensor h = f->get("f16");
  REQUIRE(h.dtype() == DType::F32);
  std::vector<float> v = h.to_vector<float>();
  CHECK(v[0] == 1.0f);
  CHECK(v[1] == -2.0f);
  CHECK(v[2] == std::ldexp(1.0f, -24));
  CHECK(v[3] == std::ldexp(1023.0f, -24));
  CHECK(v[4] == std::ldexp(1.0f, -14));
  CHECK(v[5] == 65504.0f);
  CHECK(v[6] == INFINITY);
  CHECK(v[7] == -INFINITY);
  CHECK(std::isnan(v[8]));
  CHECK(v[9] == 0.0f);
  CHECK(std::signbit(v[9]));
  CHECK(v[10] == 0.333251953125f);

  auto i32 = [&](const char* n) {
    Tensor t = f->get(n);
    CHECK(t.dtype() == DType::I32);
    return t.to_vector<int32_t>();
  };
  auto i64 = [&](const char* n) {
    Tensor t = f->get(n);
    CHECK(t.dtype() == DType::I64);
    return t.to_vector<int64_t>();
  };
  CHECK(f->get("bool").shape() == Shape{2, 2});
  CHECK(i32("bool") == std::vector<int32_t>{0, 1, 1, 0});
  CHECK(i32("u8") == std::vector<int32_t>{0, 128, 255});
  CHECK(i32("i8") == std::vector<int32_t>{-128, -1, 127});
  CHECK(i32("i16") == std::vector<int32_t>{-32768, 32767});
  CHECK(i32("u16") == std::vector<int32_t>{0, 65535});
  CHECK(i64("u32") == std::vector<int64_t>{0, 4294967295ll});
  CHECK(i64("u64") == std::vector<int64_t>{0, std::numeric_limits<int64_t>::max()});
  CHECK(f->get("f16empty").shape() == Shape{0, 4});
  CHECK(f->get("f16empty").dtype() == DType::F32);

  CHECK_THROWS_WITH_AS(
      f->get("u64big"),
      (path + ": tensor 'u64big': U64 element 0 = 9223372036854775808 does not fit in i64").c_str(),
      std::runtime_error);
  CHECK(f->info("f8").dtype == st::FileDType::F8_E4M3);
  CHECK_THROWS_WITH_AS(f->get("f8"), (path + ": unsupported dtype F8_E4M3 for tensor 'f8'").c_str(),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(f->get("f8b"),
                       (path + ": unsupported dtype F8_E5M2 for tensor 'f8b'").c_str(),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(f->info("nope"),
                       (path + ": no tensor named 'nope' (the file has 12)").c_str(),
                       std::runtime_error);
  CHECK_FALSE(f->contains("nope"));
  CHECK(std::string(st::file_dtype_name(st::FileDType::BOOL)) == "BOOL");
  CHECK(st::file_dtype_size(st::FileDType::U16) == 2);
}

TEST_CASE("malformed files: each rule gives its own message, prefixed by the path") {
  TempDir tmp("safetensors");
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\x01');
  struct Case {
    const char* what;
    std::string bytes;  // the whole file
    std::string expect;
  };
  auto file = [](const std::string& header, const std::string& data) {
    return u64_le(header.size()) + header + data;
  };
  const std::vector<Case> cases = {
      {"empty file", "", "file is 0 bytes, shorter than the 8-byte header length"},
      {"truncated length", std::string("\x05\x00\x00", 3), "file is 3 bytes, shorter than"},
      {"header length past the end", u64_le(1000) + "{}",
       "header length 1000 runs past the end of the file (10 bytes)"},
      {"header over 100 MB", u64_le(200000000) + "{}",
       "header length 200000000 exceeds the 100000000 byte limit"},
      {"zero header length", u64_le(0), "header does not start with '{' (first byte none)"},
      {"not starting with {", file("[1, 2]", ""),
       "header does not start with '{' (first byte 0x5b)"},
      {"leading space", file(" {}", ""), "header does not start with '{' (first byte 0x20)"},
      {"bad JSON", file(R"({"a": {"dtype": "F32",)", ""), "header is not valid JSON"},
      {"garbage after the object", file("{} x", ""), "header is not valid JSON"},
      {"entry not an object", file(R"({"a": 5})", ""),
       "tensor 'a': entry is number, expected an object"},
      {"missing dtype", file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': missing \"dtype\""},
      {"dtype not a string", file(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': \"dtype\" is number 4, expected a string"},
      {"unknown dtype", file(R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': unknown dtype 'F17'"},
      {"shape not an array", file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight),
       "tensor 'a': \"shape\" is number 2, expected an array"},
      {"negative shape", file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': shape entry -2 is negative"},
      {"fractional shape",
       file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", eight),
       "tensor 'a': shape entry 2.5 is not a non-negative integer"},
      {"rank 7",
       file(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': shape [1,1,1,1,1,1,2] has rank 7, above the maximum 6"},
      {"shape overflows",
       file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})",
            eight),
       "tensor 'a': shape [4294967296,4294967296,4] of F32 is too large to address"},
      {"missing data_offsets", file(R"({"a":{"dtype":"F32","shape":[2]}})", eight),
       "tensor 'a': missing \"data_offsets\""},
      {"three data_offsets",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", eight),
       "tensor 'a': data_offsets [0,4,8] should be [begin, end]"},
      {"negative offset", file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight),
       "tensor 'a': data_offsets entry -8 is negative"},
      {"begin > end", file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight),
       "tensor 'a': data_offsets [8, 0) have begin > end"},
      {"shape/size mismatch",
       file(R"({"blocks.0.attn.qkv.weight":{"dtype":"F32","shape":[5,6],"data_offsets":[0,100]}})",
            std::string(100, '\0')),
       "tensor 'blocks.0.attn.qkv.weight': data_offsets [0, 100) hold 100 bytes but shape (5, 6) "
       "of "
       "F32 needs 120"},
      {"offsets past the data",
       file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight),
       "tensor 'a': data_offsets [0, 16) run past the end of the data section (8 bytes)"},
      {"overlapping tensors",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0')),
       "tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
      {"hole between tensors",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
            std::string(20, '\0')),
       "hole of 4 unused bytes between tensors 'a' (ends at 8) and 'b' (begins at 12)"},
      {"hole before the first tensor",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0')),
       "hole of 4 unused bytes before the first tensor 'a' (begins at 4)"},
      {"trailing bytes", file("{" + ok_entry + "}", eight + "xyz"),
       "3 trailing bytes after the last tensor 'a' (data ends at 8, the data section has 11 "
       "bytes)"},
      {"bytes but no tensors", file("{}", "abcd"), "4 trailing bytes in a file with no tensors"},
      {"duplicate tensor names", file("{" + ok_entry + "," + ok_entry + "}", eight),
       "duplicate tensor name 'a' in the header"},
      {"duplicate key inside an entry",
       file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight),
       "duplicate key 'dtype' inside header entry 'a'"},
      {"duplicate __metadata__", file(R"({"__metadata__":{},"__metadata__":{}})", ""),
       "duplicate key '__metadata__' in the header"},
      {"non-string metadata value",
       file(R"({"__metadata__":{"k":"v","step":12},)" + ok_entry + "}", eight),
       "__metadata__ value for 'step' is number 12, expected a string"},
      {"metadata not an object", file(R"({"__metadata__":"hello"})", ""),
       "__metadata__ is string, expected an object of strings"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    CAPTURE(c.what);
    std::string path = tmp / fmt::format("bad{}.safetensors", i);
    write_bytes(path, c.bytes);
    std::string err = open_error(path);
    CAPTURE(err);
    CHECK(err.rfind(path + ": ", 0) == 0);
    CHECK(contains(err, c.expect));
  }
  // The same through doctest's matcher, for the example message of the brief.
  std::string path = tmp / "w.safetensors";
  write_raw(path,
            R"({"blocks.0.attn.qkv.weight":{"dtype":"F32","shape":[5,6],"data_offsets":[0,100]}})",
            std::string(100, '\0'));
  CHECK_THROWS_WITH_AS(st::File::open(path),
                       doctest::Contains("data_offsets [0, 100) hold 100 bytes but shape (5, 6) "
                                         "of F32 needs 120"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::File::open(tmp.path().string()),
                       (tmp.path().string() + ": not a regular file").c_str(), std::runtime_error);
  CHECK_THROWS_WITH_AS(st::File::open(tmp / "missing.safetensors"),
                       doctest::Contains("missing.safetensors: cannot open"), std::runtime_error);
}

TEST_CASE("valid edge cases: padded header, empty file of tensors, zero-size tensors anywhere") {
  TempDir tmp("safetensors");
  std::string path = tmp / "e.safetensors";
  write_raw(path, "{}      ", "");  // padding spaces are JSON whitespace
  std::shared_ptr<st::File> f = st::File::open(path);
  CHECK(f->names().empty());
  CHECK(f->all().empty());

  write_raw(path,
            R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
            R"("z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
            R"("e":{"dtype":"F64","shape":[3,0],"data_offsets":[4,4]}})",
            bytes_of<int32_t>({42}));
  f = st::File::open(path);
  CHECK(f->names() == std::vector<std::string>{"z", "a", "e"});
  CHECK(f->get("a").item() == 42);
  CHECK(f->get("e").shape() == Shape{3, 0});

  st::save(path, {});                // a file of no tensors is valid too
  CHECK(fs::file_size(path) == 16);  // 8 + "{}" padded to 8
  CHECK(st::load(path).empty());
}

TEST_CASE("atomic writer: no temp file left, failures throw naming the path and leave nothing") {
  TempDir tmp("safetensors");
  std::string path = tmp / "model.safetensors";
  Tensor t = Tensor::from_vector<float>({1, 2}, {2});
  st::save(path, {{"t", t}});
  st::save(path, {{"t", Tensor::from_vector<float>({3, 4, 5}, {3})}});  // replaces the old file
  CHECK(tmp.listing() == std::vector<std::string>{"model.safetensors"});
  CHECK(st::load(path)[0].second.to_vector<float>() == std::vector<float>{3, 4, 5});

  std::string missing = tmp / "no/such/dir/x.safetensors";
  CHECK_THROWS_WITH_AS(st::save(missing, {{"t", t}}),
                       doctest::Contains((missing + ": cannot create").c_str()),
                       std::runtime_error);
  CHECK_FALSE(fs::exists(missing));

  std::string p2 = tmp / "bad.safetensors";
  CHECK_THROWS_WITH_AS(st::save(p2, {{"t", t}, {"t", t}}),
                       (p2 + ": duplicate tensor name 't'").c_str(), std::runtime_error);
  CHECK_THROWS_WITH_AS(st::save(p2, {{"", t}}), (p2 + ": tensor with an empty name").c_str(),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::save(p2, {{"__metadata__", t}}),
                       doctest::Contains("'__metadata__' is reserved"), std::runtime_error);
  CHECK_THROWS_WITH_AS(st::save(p2, {{"u", Tensor()}}), (p2 + ": tensor 'u' is undefined").c_str(),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::save(p2, {{std::string("bad\xff"), t}}),
                       doctest::Contains((p2 + ": cannot encode the header").c_str()),
                       std::runtime_error);
  CHECK(tmp.listing() == std::vector<std::string>{"model.safetensors"});

  // The target is a directory: the rename fails, and the temp file must not stay behind.
  fs::create_directories(tmp.path() / "adir");
  std::string dir_target = tmp / "adir";
  CHECK_THROWS_WITH_AS(st::save(dir_target, {{"t", t}}),
                       doctest::Contains((dir_target + ": cannot rename into place").c_str()),
                       std::runtime_error);
  std::vector<std::string> after = tmp.listing();
  std::sort(after.begin(), after.end());
  CHECK(after == std::vector<std::string>{"adir", "model.safetensors"});
}

TEST_CASE("save copies CUDA tensors to the host") {
  if (!cuda_available()) return;
  TempDir tmp("safetensors");
  std::string path = tmp / "g.safetensors";
  Tensor h = Tensor::from_vector<float>({1, 2, 3}, {3});
  st::save(path, {{"g", h.to(Device::cuda())}});
  CHECK(same_bytes(st::load(path)[0].second, h));
}
