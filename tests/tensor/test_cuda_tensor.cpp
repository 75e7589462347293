// The CUDA side of the tensor layer: the caching allocator's statistics and steady state, copies,
// fills, and the Philox fills against the CPU's. Compiled in every build; without a usable device
// (CPU-only build, or no GPU/driver on this machine) each case reports itself skipped.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/test_util.h"
#include "tensor/cuda_runtime.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

using namespace psvae;

namespace {

const Device kGpu = Device::cuda(0);

// Element i of each tensor compared by bit pattern; returns the number of differing elements.
int64_t bit_mismatches(const Tensor& a, const Tensor& b) {
  Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  REQUIRE(ha.nbytes() == hb.nbytes());
  return test::bit_mismatches_host(ha, hb);
}

}  // namespace

TEST_CASE("cuda: device query does not throw") {
  // Must hold on machines without a driver too: cudaGetDeviceCount errors mean 0 devices.
  CHECK_NOTHROW(cuda_device_count());
  CHECK(cuda_available() == (cuda_device_count() > 0));
  CHECK_NOTHROW(cuda::empty_cache());
}

TEST_CASE("cuda allocator: statistics follow alloc, free and peak") {
  PSVAE_REQUIRE_CUDA();
  cuda::synchronize(0);
  const cuda::AllocatorStats s0 = cuda::allocator_stats(0);

  void* small = cuda::device_alloc(1000, 0);  // rounded up to 512 bytes: 1024
  cuda::AllocatorStats s1 = cuda::allocator_stats(0);
  CHECK(reinterpret_cast<uintptr_t>(small) % 512 == 0);
  CHECK(s1.in_use == s0.in_use + 1024);
  CHECK(s1.num_allocs == s0.num_allocs + 1);
  CHECK(s1.reserved >= s1.in_use);

  const size_t big_bytes = (5u << 20) + 1;  // large: rounded to 512 B, segment of 6 MiB
  void* big = cuda::device_alloc(big_bytes, 0);
  cuda::AllocatorStats s2 = cuda::allocator_stats(0);
  CHECK(s2.in_use == s1.in_use + (5u << 20) + 512);
  CHECK(s2.peak_in_use >= s2.in_use);
  CHECK(s2.reserved >= s2.in_use);

  cuda::device_free(big, 0);
  cuda::device_free(small, 0);
  cuda::AllocatorStats s3 = cuda::allocator_stats(0);
  CHECK(s3.in_use == s0.in_use);
  CHECK(s3.peak_in_use >= s2.in_use);  // the high-water mark stays until reset
  CHECK(s3.reserved == s2.reserved);   // freed blocks stay cached

  cuda::reset_peak_stats(0);
  CHECK(cuda::allocator_stats(0).peak_in_use == s0.in_use);

  CHECK_THROWS_AS(cuda::device_free(small, 0), std::invalid_argument);  // already freed

  cuda::empty_cache();
  cuda::AllocatorStats s4 = cuda::allocator_stats(0);
  CHECK(s4.reserved <= s3.reserved);
  CHECK(s4.reserved >= s4.in_use);
  CHECK(s4.num_device_allocs == s3.num_device_allocs);
}

TEST_CASE("cuda allocator: steady state needs no cudaMalloc") {
  PSVAE_REQUIRE_CUDA();
  // Sizes across both pools, several per segment, not multiples of the rounding.
  const std::vector<size_t> sizes = {
      4, 1000, 4096, 12345, 1u << 20, 3u << 20, (17u << 20) + 123, 100000, 7, (2u << 20) + 1};
  auto round_trip = [&] {
    std::vector<void*> ps;
    for (size_t n : sizes) ps.push_back(cuda::device_alloc(n, 0));
    for (size_t i = 0; i < ps.size(); ++i) cuda::device_free(ps[(i * 7) % ps.size()], 0);
  };
  const uint64_t in_use0 = cuda::allocator_stats(0).in_use;
  round_trip();
  const cuda::AllocatorStats first = cuda::allocator_stats(0);
  for (int r = 0; r < 100; ++r) round_trip();
  const cuda::AllocatorStats last = cuda::allocator_stats(0);
  CHECK(last.num_device_allocs == first.num_device_allocs);
  CHECK(last.reserved == first.reserved);
  CHECK(last.num_allocs == first.num_allocs + 100 * sizes.size());
  CHECK(last.in_use == in_use0);
}

TEST_CASE("cuda: storage freeing returns memory") {
  PSVAE_REQUIRE_CUDA();
  const size_t in_use0 = cuda::allocator_stats(0).in_use;
  {
    Tensor t = Tensor::empty({1 << 20}, DType::F32, kGpu);
    Tensor v = t.reshape({1024, 1024});  // a view shares the storage
    CHECK(cuda::allocator_stats(0).in_use == in_use0 + (4u << 20));
    Tensor u = Tensor::zeros({3, 5}, DType::BF16, kGpu);
    CHECK(cuda::allocator_stats(0).in_use > in_use0 + (4u << 20));
  }
  CHECK(cuda::allocator_stats(0).in_use == in_use0);
}

TEST_CASE("cuda: host/device round trip of every dtype") {
  PSVAE_REQUIRE_CUDA();
  const Shape s{3, 37};  // 111 elements: not a multiple of any vector width
  std::vector<float> f(111);
  std::vector<double> d(111);
  std::vector<bf16> h(111);
  std::vector<int32_t> i32(111);
  std::vector<int64_t> i64(111);
  for (size_t i = 0; i < 111; ++i) {
    f[i] = 0.25f * static_cast<float>(i) - 7.0f;
    d[i] = 1.0 / (1.0 + static_cast<double>(i));
    h[i] = bf16(static_cast<float>(i) * -0.5f);
    i32[i] = static_cast<int32_t>(i * 1000003u) - 5;
    i64[i] = (static_cast<int64_t>(i) << 40) - 3;
  }
  CHECK(Tensor::from_vector(f, s, kGpu).to_vector<float>() == f);
  CHECK(Tensor::from_vector(d, s, kGpu).to_vector<double>() == d);
  CHECK(Tensor::from_vector(i32, s, kGpu).to_vector<int32_t>() == i32);
  CHECK(Tensor::from_vector(i64, s, kGpu).to_vector<int64_t>() == i64);
  std::vector<bf16> hb = Tensor::from_vector(h, s, kGpu).to_vector<bf16>();
  for (size_t i = 0; i < 111; ++i) CHECK(hb[i].bits == h[i].bits);

  // Device-to-device (clone), then a view at a row offset.
  Tensor g = Tensor::from_vector(d, s, kGpu);
  Tensor c = g.clone();
  CHECK(c.device() == kGpu);
  CHECK(c.to_vector<double>() == d);
  std::vector<double> row1 = c.slice0(1, 2).to_vector<double>();
  CHECK(row1 == std::vector<double>(d.begin() + 37, d.begin() + 74));
}

TEST_CASE("cuda: fill_ of every dtype") {
  PSVAE_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64}) {
    for (int64_t n : {1, 3, 1001, 4096}) {  // odd counts take the unwidened fill path
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(n);
      Tensor t = Tensor::full({n}, -3.0, dt, kGpu);
      for (double v : test::as_doubles(t)) CHECK(v == -3.0);
      t.zero_();
      for (double v : test::as_doubles(t)) CHECK(v == 0.0);
    }
  }
  // The poison: NaN for floats, 0xA5 bytes for integers (a byte-pattern fill).
  const bool was = poison_new_tensors();
  set_poison_new_tensors(true);
  Tensor p = Tensor::empty({7}, DType::BF16, kGpu);
  for (double v : test::as_doubles(p)) CHECK(std::isnan(v));
  Tensor q = Tensor::empty({5}, DType::I32, kGpu);
  for (int32_t v : q.to_vector<int32_t>()) CHECK(static_cast<uint32_t>(v) == 0xA5A5A5A5u);
  Tensor r = Tensor::empty({3}, DType::I64, kGpu);  // 24 bytes
  for (int64_t v : r.to_vector<int64_t>()) CHECK(static_cast<uint64_t>(v) == 0xA5A5A5A5A5A5A5A5u);
  set_poison_new_tensors(was);
}

TEST_CASE("cuda: Philox uniform fill is bit-identical to the CPU's") {
  PSVAE_REQUIRE_CUDA();
  const int64_t n = 1000003;  // a partial last Philox block
  for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
    CAPTURE(std::string(dtype_name(dt)));
    Tensor cpu = Tensor::empty({n}, dt), gpu = Tensor::empty({n}, dt, kGpu);
    fill_uniform(cpu, 1234, 77, -0.3, 2.5);
    fill_uniform(gpu, 1234, 77, -0.3, 2.5);
    CHECK(bit_mismatches(cpu, gpu) == 0);
  }
}

TEST_CASE("cuda: Philox normal fill matches the CPU's") {
  PSVAE_REQUIRE_CUDA();
  // f32 and bf16 may differ only when a 1-ulp libm difference in double crosses a rounding
  // boundary (~1e-9 per element; see tensor/cuda/random.cu): allow 2 in a million.
  const int64_t n = 1000000;
  for (DType dt : {DType::F32, DType::BF16}) {
    CAPTURE(std::string(dtype_name(dt)));
    Tensor cpu = Tensor::empty({n}, dt), gpu = Tensor::empty({n}, dt, kGpu);
    fill_normal(cpu, 99, 5, 0.5, 2.0);
    fill_normal(gpu, 99, 5, 0.5, 2.0);
    CHECK(bit_mismatches(cpu, gpu) <= 2);
  }
  // f64 keeps the libm differences: close, not identical.
  Tensor cpu = Tensor::empty({4097}, DType::F64), gpu = Tensor::empty({4097}, DType::F64, kGpu);
  fill_normal(cpu, 7, 0);
  fill_normal(gpu, 7, 0);
  test::Comparison cmp = test::compare(gpu, cpu, 1e-14);
  CHECK_MESSAGE(cmp.ok, cmp.why);
}
