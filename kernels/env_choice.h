// One reader for the environment variables that pick a kernel variant (PSVAE_ATTN, PSVAE_ATTN_FWD,
// PSVAE_ATTN_BWD, PSVAE_CONV, PSVAE_GEMM_TMA_GRID, PSVAE_GEMM_TMA_SCHEDULE; docs/user-guide.md
// lists them). Each is read on every call, so a test or a benchmark can switch variants between
// calls; a getenv costs nothing next to a kernel launch.
#pragma once

#include <initializer_list>
#include <string>

namespace psvae::kernels {

// The index in `values` of the value of environment variable `name`: 0 (values' first entry, the
// default) when the variable is unset or empty. Any other value throws std::invalid_argument
// "<prefix><name> must be a, b or c, got '<value>'".
int env_choice(const char* name, std::initializer_list<const char*> values,
               const std::string& prefix = "");

}  // namespace psvae::kernels
