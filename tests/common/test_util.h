// Helpers shared by the test suites: random tensors, comparisons against references, temporary
// directories.
#pragma once
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "tensor/random.h"
#include "tensor/safetensors.h"
#include "tensor/tensor.h"

// First statement of a CUDA test case: reports the case skipped and returns when there is no
// usable device (CPU-only build, or no GPU/driver on this machine). Needs doctest at the use site.
#define PSVAE_REQUIRE_CUDA()              \
  do {                                    \
    if (!psvae::cuda_available()) {       \
      MESSAGE("skipped: no CUDA device"); \
      return;                             \
    }                                     \
  } while (0)

namespace psvae::test {

// The repository root (this file is tests/common/test_util.h), for files the tests read from the
// source tree: golden outputs, shipped weights, configs.
inline std::filesystem::path repo_root() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}
// A golden file written by a script in tests/reference/.
inline std::string golden(const std::string& name) {
  return (repo_root() / "tests" / "reference" / "golden" / name).string();
}
// A file's tensors by name.
inline std::map<std::string, Tensor> as_map(const safetensors::NamedTensors& sd) {
  return std::map<std::string, Tensor>(sd.begin(), sd.end());
}

// Poisons every new tensor (NaN fill) while in scope, restoring the previous setting after, so a
// kernel that leaves an output element unwritten shows up as a NaN.
struct PoisonScope {
  bool prev = poison_new_tensors();
  PoisonScope() { set_poison_new_tensors(true); }
  ~PoisonScope() { set_poison_new_tensors(prev); }
};

// Sets an environment variable for a scope and restores its previous value (or absence) after.
struct EnvScope {
  std::string name, prev;
  bool had = false;
  EnvScope(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) had = true, prev = v;
    ::setenv(n, value, 1);
  }
  ~EnvScope() {
    if (had)
      ::setenv(name.c_str(), prev.c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;
};

// f64 CPU tensor, uniform in [lo, hi).
inline Tensor uniform(Generator& g, const Shape& s, double lo = -1.0, double hi = 1.0) {
  Tensor t = Tensor::empty(s, DType::F64);
  g.uniform_(t, lo, hi);
  return t;
}
inline Tensor normal(Generator& g, const Shape& s, double mean = 0.0, double std = 1.0) {
  Tensor t = Tensor::empty(s, DType::F64);
  g.normal_(t, mean, std);
  return t;
}

// Element values as double, from any dtype on any device.
inline std::vector<double> as_doubles(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  std::vector<double> v(static_cast<size_t>(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) {
    switch (h.dtype()) {
      case DType::F32: v[static_cast<size_t>(i)] = h.data<float>()[i]; break;
      case DType::F64: v[static_cast<size_t>(i)] = h.data<double>()[i]; break;
      case DType::BF16: v[static_cast<size_t>(i)] = static_cast<float>(h.data<bf16>()[i]); break;
      case DType::I32: v[static_cast<size_t>(i)] = h.data<int32_t>()[i]; break;
      case DType::I64: v[static_cast<size_t>(i)] = static_cast<double>(h.data<int64_t>()[i]); break;
    }
  }
  return v;
}

// How many elements of two host tensors of equal byte size differ in their bit patterns (callers
// check that the tensors are comparable first).
inline int64_t bit_mismatches_host(const Tensor& ha, const Tensor& hb) {
  const size_t es = dtype_size(ha.dtype());
  const char* pa = static_cast<const char*>(ha.raw_data());
  const char* pb = static_cast<const char*>(hb.raw_data());
  int64_t bad = 0;
  for (int64_t i = 0; i < ha.numel(); ++i) bad += std::memcmp(pa + i * es, pb + i * es, es) != 0;
  return bad;
}

struct Comparison {
  bool ok = false;
  double rel_err = 0;  // ||out - ref|| / ||ref|| over the finite reference entries
  std::string why;     // set when !ok
};

// Relative norm error, the project's tolerance measure: ||out - ref||_2 / ||ref||_2 (absolute
// when ||ref|| is 0). Shapes must match exactly; a non-finite reference entry must be matched by
// the same non-finite value; a NaN in the output where the reference is finite always fails.
inline Comparison compare(const Tensor& out, const Tensor& ref, double tol) {
  Comparison c;
  if (out.shape() != ref.shape()) {
    c.why = fmt::format("shape {} vs reference {}", out.shape().str(), ref.shape().str());
    return c;
  }
  std::vector<double> o = as_doubles(out), r = as_doubles(ref);
  long double num = 0, den = 0;
  for (size_t i = 0; i < o.size(); ++i) {
    if (!std::isfinite(r[i])) {
      bool same = std::isnan(r[i]) ? std::isnan(o[i]) : o[i] == r[i];
      if (!same) {
        c.why = fmt::format("element {}: {} where the reference has {}", i, o[i], r[i]);
        return c;
      }
      continue;
    }
    if (!std::isfinite(o[i])) {
      c.why = fmt::format("element {}: {} where the reference has {}", i, o[i], r[i]);
      return c;
    }
    long double d = static_cast<long double>(o[i]) - r[i];
    num += d * d;
    den += static_cast<long double>(r[i]) * r[i];
  }
  c.rel_err = static_cast<double>(den > 0 ? std::sqrt(num / den) : std::sqrt(num));
  c.ok = c.rel_err <= tol;
  if (!c.ok) c.why = fmt::format("relative error {:.3e} > tolerance {:.1e}", c.rel_err, tol);
  return c;
}

// A fresh, empty directory under the system temp dir, removed with everything in it when the
// object goes out of scope. The name is psvae_<tag>_<pid>_<serial>: the pid keeps concurrent test
// processes (ctest -j, several build dirs) apart, and the process-wide serial keeps two instances
// in one process apart, even with the same tag (a name from the pid alone would be shared, and the
// first destructor would delete the second one's files).
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static std::atomic<int> serial{0};
    path_ = std::filesystem::temp_directory_path() /
            fmt::format("psvae_{}_{}_{}", tag, ::getpid(), serial++);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);  // a leftover of an earlier process with this pid
    std::filesystem::create_directories(path_);
  }
  // Never throws: a destructor that throws while a failed check unwinds would abort the suite.
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;  // a copy would remove the directory a second time
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The path of `name` inside the directory, as a string (what the APIs under test take).
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  // The names of the entries directly inside, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace psvae::test
