// LPIPS v0.1: parity with PyTorch (tests/reference/lpips_golden.py: narrow seeded backbones, and
// the full-width networks with the real lin weights on a Philox backbone both sides regenerate),
// gradients, d(x,x) = 0, symmetry, gradcheck, the disabled path, load errors and the shipped lin
// weights.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "common/test_util.h"
#include "psvae/lpips.h"

using namespace psvae;

namespace {

using test::golden;
const std::filesystem::path kRoot = test::repo_root();

// tests/psvae/test_lpips.cpp -> the repository root.

std::map<std::string, Tensor> load_map(const std::string& path) {
  std::map<std::string, Tensor> m;
  for (auto& [n, t] : safetensors::load(path)) m[n] = t;
  return m;
}

std::string nm(LPIPS::Net net) { return LPIPS::net_name(net); }

LPIPS::Config narrow(LPIPS::Net net) {
  LPIPS::Config c;
  c.net = net;
  c.width_div = 8;  // as lpips_golden.py
  return c;
}

std::shared_ptr<LPIPS> golden_model(LPIPS::Net net) {
  std::string n = nm(net);
  return LPIPS::load(narrow(net), {golden("lpips_" + n + "_backbone.safetensors"),
                                   golden("lpips_" + n + "_lin.safetensors")});
}

std::string temp_path(const std::string& stem) {
  return (std::filesystem::temp_directory_path() /
          (stem + "_" + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// d, the per-tap terms and both input gradients of `m` against an lpips_golden.py io file.
void check_against(const LPIPS& m, std::map<std::string, Tensor>& io, const std::string& label) {
  ag::Var x0(io["x0"], true), x1(io["x1"], true);
  std::vector<ag::Var> layers;
  ag::Var d = m.forward(x0, x1, &layers);

  auto c = test::compare(d.data(), io["d"], 1e-4);
  MESSAGE(label, " d rel err ", c.rel_err);
  CHECK_MESSAGE(c.ok, c.why);
  for (int k = 0; k < LPIPS::kTaps; ++k) {
    auto ck = test::compare(layers[static_cast<size_t>(k)].data(),
                            io["d_layer" + std::to_string(k)], 1e-4);
    MESSAGE(label, " tap ", k, " rel err ", ck.rel_err);
    CHECK_MESSAGE(ck.ok, "tap ", k, ": ", ck.why);
  }

  ag::sum_all(d).backward();
  auto g0 = test::compare(x0.grad(), io["grad_x0"], 1e-4);
  auto g1 = test::compare(x1.grad(), io["grad_x1"], 1e-4);
  MESSAGE(label, " grad rel err x0 ", g0.rel_err, " x1 ", g1.rel_err);
  CHECK_MESSAGE(g0.ok, "grad_x0: ", g0.why);
  CHECK_MESSAGE(g1.ok, "grad_x1: ", g1.why);

  // As a metric: no graph, same values.
  ag::NoGradGuard ng;
  ag::Var dm = m.forward(x0, x1);
  CHECK(dm.is_leaf());
  CHECK(test::bit_mismatches_host(dm.data(), d.data()) == 0);
}

void check_parity(LPIPS::Net net) {
  auto m = golden_model(net);
  REQUIRE(m->enabled());
  auto io = load_map(golden(std::string("lpips_") + nm(net) + "_io.safetensors"));
  check_against(*m, io, nm(net));
}

// The generated backbone against the checksums lpips_golden.py wrote from its numpy Philox: the
// first 8 values bit for bit, the sum of all f32 bit patterns (exact over every element) and the
// f64 sum. Every backbone parameter must have checksums and vice versa.
void check_backbone_checksums(const LPIPS& m, std::map<std::string, Tensor>& io) {
  size_t checked = 0;
  for (const auto& [name, t] : m.state_dict()) {
    if (name.rfind("features.", 0) != 0) continue;
    const std::string key = "ck." + name;
    REQUIRE_MESSAGE(io.count(key + ".first8"), "no checksum for ", name);
    REQUIRE(t.dtype() == DType::F32);
    const float* p = t.data<float>();
    const Tensor& first8 = io[key + ".first8"];
    for (int64_t i = 0; i < 8; ++i)
      CHECK_MESSAGE(p[i] == first8.data<float>()[i], name, "[", i, "]");
    uint64_t bitsum = 0;
    long double sum = 0, abs_sum = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + i, 4);
      bitsum += bits;
      sum += p[i];
      abs_sum += std::fabs(p[i]);
    }
    CHECK_MESSAGE(bitsum == static_cast<uint64_t>(io[key + ".bitsum"].data<int64_t>()[0]), name);
    const double ref = io[key + ".sum"].data<double>()[0];
    CHECK_MESSAGE(std::abs(static_cast<double>(sum) - ref) <= 1e-12 * static_cast<double>(abs_sum),
                  name, ": sum ", static_cast<double>(sum), " vs ", ref);
    ++checked;
  }
  size_t expected = 0;
  for (const auto& [k, v] : io) expected += k.size() > 7 && k.rfind(".first8") == k.size() - 7;
  CHECK(checked == expected);
}

// Full-width network, real v0.1 lin weights, Philox backbone (seed as lpips_golden.py's FULL).
void check_full_parity(LPIPS::Net net, uint64_t seed) {
  LPIPS::Config c;
  c.net = net;
  // Lin weights only: load() warns and disables; the Philox backbone then enables it.
  auto m = LPIPS::load(c, {(kRoot / "psvae/weights/lpips" / (nm(net) + ".safetensors")).string()});
  m->init_backbone_philox(seed);
  REQUIRE(m->enabled());
  auto io = load_map(golden("lpips_" + nm(net) + "_full_io.safetensors"));
  check_backbone_checksums(*m, io);
  check_against(*m, io, nm(net) + " full");
}

}  // namespace

TEST_CASE("LPIPS vgg matches PyTorch: distances, per-tap terms and input gradients") {
  check_parity(LPIPS::Net::vgg);
}

TEST_CASE("LPIPS alex matches PyTorch: distances, per-tap terms and input gradients") {
  check_parity(LPIPS::Net::alex);
}

TEST_CASE("LPIPS vgg at full width, real lin weights, Philox backbone matches PyTorch") {
  check_full_parity(LPIPS::Net::vgg, 1234);
}

TEST_CASE("LPIPS alex at full width, real lin weights, Philox backbone matches PyTorch") {
  check_full_parity(LPIPS::Net::alex, 5678);
}

TEST_CASE("LPIPS d(x, x) is exactly 0 and d is symmetric") {
  for (auto net : {LPIPS::Net::vgg, LPIPS::Net::alex}) {
    auto m = golden_model(net);
    auto io = load_map(golden(std::string("lpips_") + nm(net) + "_io.safetensors"));
    ag::NoGradGuard ng;
    ag::Var x0(io["x0"]), x1(io["x1"]);
    for (double v : test::as_doubles(m->forward(x0, x0).data())) CHECK(v == 0.0);
    for (double v : test::as_doubles(m->forward(x1, x1).data())) CHECK(v == 0.0);
    auto s = test::compare(m->forward(x1, x0).data(), m->forward(x0, x1).data(), 1e-6);
    CHECK_MESSAGE(s.ok, nm(net), ": ", s.why);
  }
}

TEST_CASE("LPIPS gradcheck in f64 (narrow random backbones)") {
  // Each checked element costs two forwards. AlexNet needs 31 pixels to keep its second pool
  // non-empty, so it checks x0 only (x1 runs the same code).
  struct Case {
    LPIPS::Net net;
    int64_t size;  // VGG taps at 16: 16, 8, 4, 2, 1; AlexNet at 32: 7, 3, 1, 1, 1
    bool wrt_x1;
  };
  for (Case cs : {Case{LPIPS::Net::vgg, 16, true}, Case{LPIPS::Net::alex, 32, false}}) {
    Generator g(7);
    LPIPS m(narrow(cs.net), g);
    m.to(DType::F64);
    Tensor x0 = test::uniform(g, {1, 3, cs.size, cs.size});
    Tensor x1 = test::uniform(g, {1, 3, cs.size, cs.size});
    auto r = ag::gradcheck([&](const std::vector<ag::Var>& v) { return m.forward(v[0], v[1]); },
                           {x0, x1}, {true, cs.wrt_x1});
    CHECK_MESSAGE(r.ok, nm(cs.net), ": ", r.report);
  }
}

TEST_CASE("LPIPS without backbone weights warns and is disabled") {
  auto m = LPIPS::load(LPIPS::Config{}, {(kRoot / "psvae/weights/lpips/vgg.safetensors").string()});
  CHECK_FALSE(m->enabled());
  CHECK(m->warning() == "LPIPS: no backbone weights given; the perceptual term is off");
  ag::Var x(Tensor::zeros({1, 3, 32, 32}));
  CHECK(error_of([&] { m->forward(x, x); }).find("disabled") != std::string::npos);
  CHECK_FALSE(std::static_pointer_cast<LPIPS>(m->clone())->enabled());

  auto none = LPIPS::load(narrow(LPIPS::Net::alex), {});
  CHECK_FALSE(none->enabled());
  CHECK_FALSE(none->warning().empty());

  // Seeded random weights are an explicit choice (tests), not a fallback.
  Generator g(1);
  CHECK(LPIPS(narrow(LPIPS::Net::vgg), g).enabled());
}

TEST_CASE("LPIPS load errors name the key and both shapes") {
  // Real lin weights (64 channels at tap 0) against a width_div 8 backbone (8 channels).
  std::string e = error_of([] {
    LPIPS::load(narrow(LPIPS::Net::vgg),
                {golden("lpips_vgg_backbone.safetensors"),
                 (kRoot / "psvae/weights/lpips/vgg.safetensors").string()});
  });
  CHECK(e.find("lin0.model.1.weight") != std::string::npos);
  CHECK(e.find("(1, 8, 1, 1)") != std::string::npos);
  CHECK(e.find("(1, 64, 1, 1)") != std::string::npos);
  CHECK(e.find("vgg.safetensors") != std::string::npos);

  // The same key in two files.
  e = error_of([] {
    LPIPS::load(narrow(LPIPS::Net::alex),
                {golden("lpips_alex_lin.safetensors"), golden("lpips_alex_lin.safetensors")});
  });
  CHECK(e.find("lin0.model.1.weight") != std::string::npos);
  CHECK(e.find("in both") != std::string::npos);

  // A backbone without its lin weights: the missing keys are named.
  e = error_of(
      [] { LPIPS::load(narrow(LPIPS::Net::alex), {golden("lpips_alex_backbone.safetensors")}); });
  CHECK(e.find("missing key 'lin4.model.1.weight'") != std::string::npos);
}

TEST_CASE("LPIPS loads one merged torchvision-style file, ignoring classifier.*") {
  auto sd = safetensors::load(golden("lpips_alex_backbone.safetensors"));
  for (auto& kv : safetensors::load(golden("lpips_alex_lin.safetensors"))) sd.push_back(kv);
  sd.emplace_back("classifier.1.weight", Tensor::zeros({4, 4}));
  std::string path = temp_path("lpips_merged");
  safetensors::save(path, sd);
  auto m = LPIPS::load(narrow(LPIPS::Net::alex), {path});
  std::filesystem::remove(path);
  CHECK(m->enabled());
  auto io = load_map(golden("lpips_alex_io.safetensors"));
  ag::NoGradGuard ng;
  auto c = test::compare(m->forward(ag::Var(io["x0"]), ag::Var(io["x1"])).data(), io["d"], 1e-4);
  CHECK_MESSAGE(c.ok, c.why);
}

TEST_CASE("LPIPS shipped v0.1 lin weights have the published shapes and sums") {
  struct Expect {
    LPIPS::Net net;
    double sums[5];  // /work/shared/data/lpips/README.md
  };
  for (const Expect& ex :
       {Expect{LPIPS::Net::vgg, {6.925992, 8.858335, 17.515005, 51.521324, 47.034851}},
        Expect{LPIPS::Net::alex, {2.349532, 16.143028, 39.268440, 27.197178, 20.317177}}}) {
    LPIPS::Config c;
    c.net = ex.net;
    std::string path = (kRoot / "psvae/weights/lpips" / (nm(ex.net) + ".safetensors")).string();
    auto m = LPIPS::load(c, {path});  // lin only: disabled, but the lin weights are loaded
    std::map<std::string, Tensor> sd;
    for (auto& [n, t] : m->state_dict()) sd[n] = t;
    std::vector<int64_t> ch = LPIPS::tap_channels(c);
    for (int k = 0; k < LPIPS::kTaps; ++k) {
      const Tensor& w = sd.at("lin" + std::to_string(k) + ".model.1.weight");
      CHECK(w.shape() == Shape{1, ch[static_cast<size_t>(k)], 1, 1});
      double s = 0;
      for (double v : test::as_doubles(w)) s += v;
      CHECK_MESSAGE(std::abs(s - ex.sums[k]) < 1e-5, nm(ex.net), " lin", k, ": ", s);
    }
  }
  CHECK(LPIPS::tap_channels(LPIPS::Config{}) == std::vector<int64_t>{64, 128, 256, 512, 512});
}

TEST_CASE("LPIPS gradients stay finite at dead (all-zero) feature vectors") {
  // A bias of -1e3 on the first conv zeroes every feature: upstream's sqrt(0) backward gives NaN
  // here; the floor under the square root gives d = 0 and zero gradients.
  Generator g(3);
  LPIPS m(narrow(LPIPS::Net::alex), g);
  for (auto& [n, v] : m.named_parameters())
    if (n == "features.0.bias") Tensor(v.data()).fill_(-1e3);  // shares v's storage
  ag::Var x0(ops::cast(test::uniform(g, {1, 3, 32, 32}), DType::F32), true);
  ag::Var x1(ops::cast(test::uniform(g, {1, 3, 32, 32}), DType::F32));
  ag::Var d = m.forward(x0, x1);
  CHECK(d.data().item() == 0.0);
  ag::sum_all(d).backward();
  for (double v : test::as_doubles(x0.grad())) REQUIRE(v == 0.0);
}
