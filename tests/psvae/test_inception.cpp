// The FID Inception-v3 (psvae/inception.h) against pytorch-fid's architecture written in plain
// torch (tests/reference/inception_golden.py) on Philox weights both sides generate, two 40x40
// images resized to 299x299: the generated weights (checksums), the spatial means of blocks 0-2
// and the 2048-d pool3 features. Then loading: the state_dict names round-trip through a file
// with the keys pytorch-fid's checkpoint adds (fc, num_batches_tracked), and bad files give
// errors naming the file and key.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <map>

#include "common/test_util.h"
#include "kernels/ops.h"
#include "psvae/inception.h"
#include "tensor/safetensors.h"

using namespace psvae;
using psvae::test::TempDir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("inception: pool3 features match pytorch-fid's architecture (Philox weights)") {
  auto io = test::as_map(safetensors::load(test::golden("inception_io.safetensors")));
  InceptionV3 m;
  m.init_philox(2015);  // inception_golden.py's SEED

  // Every generated tensor: its first value bit for bit and its exact sum.
  int checked = 0;
  for (const auto& [name, t] : m.state_dict()) {
    const std::string key = "ck." + name;
    REQUIRE_MESSAGE(io.count(key + ".sum"), "no checksum for ", name);
    CHECK_MESSAGE(t.data<float>()[0] == io[key + ".first"].data<float>()[0], name);
    long double sum = 0, abs_sum = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      sum += t.data<float>()[i];
      abs_sum += std::fabs(t.data<float>()[i]);
    }
    const double ref = io[key + ".sum"].data<double>()[0];
    CHECK_MESSAGE(std::fabs(static_cast<double>(sum) - ref) <= 1e-12 * static_cast<double>(abs_sum),
                  name);
    ++checked;
  }
  CHECK(checked == 470);  // 94 BasicConv2d x (conv.weight + 4 BatchNorm tensors)

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Tensor> blocks = m.forward_blocks(io["images"]);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(blocks.size() == 4);
  CHECK(blocks[0].shape() == Shape{2, 64, 73, 73});
  CHECK(blocks[1].shape() == Shape{2, 192, 35, 35});
  CHECK(blocks[2].shape() == Shape{2, 768, 17, 17});
  CHECK(blocks[3].shape() == Shape{2, 2048});
  for (int k = 0; k < 3; ++k) {
    const Tensor& b = blocks[static_cast<size_t>(k)];
    Tensor means = ops::mean(b.reshape({b.size(0), b.size(1), -1}), 2);
    auto c = test::compare(means, io[fmt::format("block{}_mean", k)], 1e-4);
    MESSAGE("block ", k, " mean rel err ", c.rel_err);
    CHECK_MESSAGE(c.ok, "block ", k, ": ", c.why);
  }
  auto c = test::compare(blocks[3], io["pool3"], 1e-4);
  MESSAGE(fmt::format("pool3 rel err {:.2e}; 2 images at 299x299 in {:.2f} s", c.rel_err, secs));
  CHECK_MESSAGE(c.ok, c.why);
  // forward() is block 3 alone.
  CHECK(test::bit_mismatches_host(m.forward(io["images"]), blocks[3]) == 0);
}

TEST_CASE("inception: loading a state_dict file, and bad files") {
  TempDir tmp("inception");
  InceptionV3 src;
  src.init_philox(7);
  // The checkpoint as torch saves it: + the classifier and BatchNorm's step counters (ignored).
  safetensors::NamedTensors sd;
  for (auto& [n, t] : src.state_dict()) sd.emplace_back(n, t);
  sd.emplace_back("Conv2d_1a_3x3.bn.num_batches_tracked", Tensor::zeros({}, DType::I64));
  sd.emplace_back("fc.weight", Tensor::zeros({1008, 2048}));
  sd.emplace_back("fc.bias", Tensor::zeros({1008}));
  safetensors::save(tmp / "inception.safetensors", sd);
  auto m = InceptionV3::load(tmp / "inception.safetensors");
  auto a = test::as_map(src.state_dict()), b = test::as_map(m->state_dict());
  REQUIRE(a.size() == b.size());
  for (const auto& [n, t] : a) CHECK_MESSAGE(test::bit_mismatches_host(t, b[n]) == 0, n);

  // A key missing and a wrong shape: both named, with the file.
  safetensors::NamedTensors broken;
  for (auto& [n, t] : src.state_dict()) {
    if (n == "Mixed_6b.branch7x7_2.conv.weight") continue;
    broken.emplace_back(n, n == "Mixed_7c.branch_pool.bn.bias" ? Tensor::zeros({191}) : t);
  }
  safetensors::save(tmp / "broken.safetensors", broken);
  std::string e = error_of([&] { InceptionV3::load(tmp / "broken.safetensors"); });
  INFO(e);
  CHECK(has(e, tmp / "broken.safetensors"));
  CHECK(has(e, "Mixed_6b.branch7x7_2.conv.weight"));
  CHECK(has(e, "Mixed_7c.branch_pool.bn.bias"));

  // Not Inception weights at all, and the .pth itself.
  safetensors::save(tmp / "other.safetensors", {{"features.0.weight", Tensor::zeros({4})}});
  e = error_of([&] { InceptionV3::load(tmp / "other.safetensors"); });
  CHECK(has(e, "not the pytorch-fid Inception weights"));
  e = error_of([&] { InceptionV3::load(tmp / "pt_inception-2015-12-05-6726825d.pth"); });
  CHECK(has(e, "convert it to safetensors"));
  CHECK_THROWS(InceptionV3::load(tmp / "missing.safetensors"));

  CHECK_THROWS_WITH(src.forward(Tensor::zeros({2, 1, 32, 32})), doctest::Contains("(N,3,H,W)"));
}
