// kernels::env_choice, the reader of the variant-picking environment variables: unset and empty
// give the default (index 0), each listed value its index, anything else one error naming the
// variable, the values allowed and the value given. The CUDA tests check the messages the ops
// build on it (PSVAE_ATTN*, PSVAE_CONV, PSVAE_GEMM_TMA_*); this runs on every machine.
#include <doctest/doctest.h>

#include <cstdlib>
#include <stdexcept>

#include "common/test_util.h"
#include "kernels/env_choice.h"

using psvae::kernels::env_choice;

namespace {
constexpr const char* kVar = "PSVAE_TEST_ENV_CHOICE";
}

TEST_CASE("env_choice: unset and empty give the default, each value its index") {
  ::unsetenv(kVar);
  CHECK(env_choice(kVar, {"auto", "simt", "mma"}) == 0);
  {
    psvae::test::EnvScope e(kVar, "");
    CHECK(env_choice(kVar, {"auto", "simt", "mma"}) == 0);
  }
  const char* values[] = {"auto", "simt", "mma"};
  for (int i = 0; i < 3; ++i) {
    psvae::test::EnvScope e(kVar, values[i]);
    CHECK(env_choice(kVar, {"auto", "simt", "mma"}) == i);
  }
}

TEST_CASE("env_choice: another value throws naming the variable, the values and the value") {
  {
    psvae::test::EnvScope e(kVar, "MMA");  // case matters: the docs spell the values in lower case
    CHECK_THROWS_WITH_AS(env_choice(kVar, {"auto", "simt", "mma"}, "attention: "),
                         "attention: PSVAE_TEST_ENV_CHOICE must be auto, simt or mma, got 'MMA'",
                         std::invalid_argument);
  }
  {
    psvae::test::EnvScope e(kVar, "both");
    CHECK_THROWS_WITH_AS(env_choice(kVar, {"persistent", "tiles"}),
                         "PSVAE_TEST_ENV_CHOICE must be persistent or tiles, got 'both'",
                         std::invalid_argument);
  }
  {
    psvae::test::EnvScope e(kVar, " auto");  // no trimming: a stray space is a wrong value
    CHECK_THROWS_WITH_AS(env_choice(kVar, {"auto", "mma", "wgmma", "wgmma_tma"}),
                         "PSVAE_TEST_ENV_CHOICE must be auto, mma, wgmma or wgmma_tma, got ' auto'",
                         std::invalid_argument);
  }
}
