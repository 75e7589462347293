// The `psvae` binary: every command lives in the registry of train/cli.cpp.
#include <fmt/format.h>

#include <exception>

#include "kernels/profile.h"
#include "train/cli.h"
#include "train/distributed.h"

int main(int argc, char** argv) {
  int rc = 1;
  // Commands report their own errors; this is the last net, so a stray exception still ends in
  // one readable line and exit status 1 instead of std::terminate's abort.
  try {
    // Under mpirun: MPI_Init and the rank's GPU, before anything touches CUDA. A plain run:
    // nothing.
    psvae::train::dist::init_from_environment(&argc, &argv);
    rc = psvae::train::dispatch(argc, argv);
    // PSVAE_PROFILE=1: where the run's time went, op by op (kernels/profile.h), on stderr so
    // that the commands' own output stays clean.
    if (psvae::kernels::profile_enabled())
      fmt::print(stderr, "\nop profile (PSVAE_PROFILE):\n{}", psvae::kernels::profile_report());
  } catch (const std::exception& e) {
    fmt::print(stderr, "psvae: {}\n", e.what());
  } catch (...) {
    fmt::print(stderr, "psvae: unknown error\n");
  }
  // MPI_Finalize, or MPI_Abort when this rank failed so that the others do not wait for it.
  return psvae::train::dist::finalize(rc);
}
