// The op profiler (kernels/profile.h): calls and bytes per op must be exact, times non-negative
// and summed per op, rows sorted by time, nothing recorded while off, and the report must list
// what ran. On the CPU and, through CUDA events, on a GPU (or the
// emulator, where the times are host times).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "common/test_util.h"
#include "kernels/ops.h"
#include "kernels/profile.h"
#include "tensor/random.h"

using namespace psvae;

namespace {

// Turns profiling on for one test and leaves it off and empty afterwards.
struct Profiling {
  Profiling() {
    kernels::profile_reset();
    kernels::profile_enable(true);
  }
  ~Profiling() {
    kernels::profile_enable(false);
    kernels::profile_reset();
  }
};

const kernels::ProfileRow* find_row(const std::vector<kernels::ProfileRow>& rows,
                                    const std::string& name) {
  for (const auto& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

void check_counts(Device dev) {
  Generator g(5);
  Tensor a = Tensor::empty({64, 32}, DType::F32, Device::cpu());
  Tensor b = Tensor::empty({32, 16}, DType::F32, Device::cpu());
  g.normal_(a);
  g.normal_(b);
  a = a.to(dev), b = b.to(dev);
  {
    Profiling on;
    for (int i = 0; i < 3; ++i) (void)ops::add(a, a);
    (void)ops::matmul(a, b);
    const auto rows = kernels::profile_rows();
    const kernels::ProfileRow* add = find_row(rows, "add");
    const kernels::ProfileRow* mm = find_row(rows, "matmul");
    REQUIRE(add != nullptr);
    REQUIRE(mm != nullptr);
    CHECK(add->device == dev.str());
    CHECK(add->calls == 3);
    CHECK(add->bytes == 3.0 * 3 * 64 * 32 * 4);  // two inputs and an output per call
    CHECK(add->total_ms >= 0.0);
    CHECK(mm->calls == 1);
    CHECK(mm->bytes == (64.0 * 32 + 32 * 16 + 64 * 16) * 4);
    for (size_t i = 1; i < rows.size(); ++i) CHECK(rows[i - 1].total_ms >= rows[i].total_ms);
    const std::string report = kernels::profile_report();
    CHECK(report.find("| add | " + dev.str() + " | 3 |") != std::string::npos);
    CHECK(report.find("| matmul |") != std::string::npos);
    CHECK(report.find("| total |") != std::string::npos);
  }
  // Off: nothing is recorded, and the reset left no rows.
  (void)ops::add(a, a);
  CHECK(kernels::profile_rows().empty());
  CHECK(kernels::profile_report().find("nothing recorded") != std::string::npos);
}

}  // namespace

TEST_CASE("op profiler: exact calls and bytes per op on the CPU, nothing while off") {
  check_counts(Device::cpu());
}

TEST_CASE("op profiler: a bf16 op on the CPU is one row of bf16 bytes") {
  // The CPU runs bf16 ops widened to f32 inside kernels::run; the row counts the caller's bf16
  // tensors, and the widening casts are not rows of their own.
  Profiling on;
  Tensor x = Tensor::zeros({8, 8}, DType::BF16, Device::cpu());
  (void)ops::add(x, x);
  const auto rows = kernels::profile_rows();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].name == "add");
  CHECK(rows[0].bytes == 3.0 * 64 * 2);
}

TEST_CASE("op profiler: a ProfileScope adds a named row; a null name or profiling off adds none") {
  Profiling on;
  { const kernels::ProfileScope s("my_kernel", Device::cpu(), 123.0); }
  { const kernels::ProfileScope s("my_kernel", Device::cpu(), 7.0); }
  { const kernels::ProfileScope s(nullptr, Device::cpu(), 1.0); }
  kernels::profile_enable(false);
  { const kernels::ProfileScope s("while_off", Device::cpu(), 1.0); }
  const auto rows = kernels::profile_rows();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].name == "my_kernel");
  CHECK(rows[0].calls == 2);
  CHECK(rows[0].bytes == 130.0);
}

TEST_CASE("cuda op profiler: exact calls and bytes per op, timed by events") {
  PSVAE_REQUIRE_CUDA();
  check_counts(Device::cuda(0));
}
