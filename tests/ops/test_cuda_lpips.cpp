// The fused LPIPS tap on CUDA (kernels/cuda/lpips.cu) against the CPU kernel in f64 on the same
// dtype-rounded inputs, outputs poisoned: d (N) and both feature gradients, relative norm error
// under 1e-5 (f32), 1e-2 (bf16), 1e-12 (f64). Shapes: the five VGG taps of a 64x64 image pair at
// width 1/8, odd sizes, one channel, a zero feature vector. Skipped without a CUDA device.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "common/cuda_compare.h"
#include "common/test_util.h"
#include "kernels/ops.h"

using namespace psvae;
using test::check_close;
using test::rounded;

namespace {

const Device kGpu = Device::cuda(0);

}  // namespace

TEST_CASE("cuda kernels: the fused LPIPS tap, forward and backward, matches the CPU") {
  PSVAE_REQUIRE_CUDA();
  test::PoisonScope poison;
  Generator g(41);
  const std::vector<Shape> shapes = {{2, 8, 64, 64}, {2, 16, 32, 32}, {2, 32, 16, 16},
                                     {2, 64, 8, 8},  {2, 64, 4, 4},   {3, 5, 7, 9},
                                     {1, 1, 1, 1},   {4, 512, 14, 14}};
  for (const Shape& s : shapes) {
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      CAPTURE(s.str());
      CAPTURE(std::string(dtype_name(dt)));
      const double tol = test::tolerance(dt);
      Tensor f0 = rounded(test::normal(g, s), dt), f1 = rounded(test::normal(g, s), dt);
      if (s[1] > 1) {  // a dead (all-zero) feature vector at position 0 of sample 0
        Tensor z = f0.clone();
        for (int64_t c = 0; c < s[1]; ++c) z.data<double>()[c * s[2] * s[3]] = 0.0;
        f0 = z;
      }
      const Tensor w = rounded(test::uniform(g, Shape{s[1]}, 0.0, 1.0), dt);
      const Tensor gd = rounded(test::uniform(g, Shape{s[0]}, -1.0, 1.0), dt);
      const Tensor d_ref = ops::lpips_tap(f0, f1, w, 1e-10, 1e-20);
      auto [g0_ref, g1_ref] = ops::lpips_tap_bwd(gd, f0, f1, w, 1e-10, 1e-20);
      auto dev = [&](const Tensor& t) { return ops::cast(t, dt).to(kGpu); };
      const Tensor d = ops::lpips_tap(dev(f0), dev(f1), dev(w), 1e-10, 1e-20);
      if (s[1] == 1) {  // d = w (sign f0 - sign f1)^2 up to eps: 0 or 4w, judged against 4 w
        const double w0 = test::as_doubles(w)[0];
        CHECK(test::abs_norm_error(d, d_ref) <= tol * 4 * w0);
      } else {
        check_close(d, d_ref, tol, "d");
      }
      auto [g0, g1] = ops::lpips_tap_bwd(dev(gd), dev(f0), dev(f1), dev(w), 1e-10, 1e-20);
      if (s[1] == 1) {
        // One channel: the normalised feature is sign(f) up to the eps of the norm, so both
        // gradients are eps-sized (about 1e-10) and in f32/bf16 below the dtype's resolution,
        // where each side returns its own rounding noise: a relative error cannot judge that.
        // The absolute error is checked at the tolerance times ||gd|| instead.
        const double gd_norm = test::l2_norm(gd);
        CHECK(test::abs_norm_error(g0, g0_ref) <= tol * gd_norm);
        CHECK(test::abs_norm_error(g1, g1_ref) <= tol * gd_norm);
      } else {
        check_close(g0, g0_ref, tol, "g0");
        check_close(g1, g1_ref, tol, "g1");
      }
      // Deterministic: a second run is bit-identical.
      const Tensor d2 = ops::lpips_tap(dev(f0), dev(f1), dev(w), 1e-10, 1e-20);
      CHECK(test::bit_mismatches_host(d.to(Device::cpu()), d2.to(Device::cpu())) == 0);
    }
  }
}
