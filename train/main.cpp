// The `psvae` binary: every command lives in the registry of train/cli.cpp.
#include <fmt/format.h>

#include <exception>

#include "train/cli.h"

int main(int argc, char** argv) {
  // Commands report their own errors; this is the last net, so a stray exception still ends in
  // one readable line and exit status 1 instead of std::terminate's abort.
  try {
    return psvae::train::dispatch(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "psvae: {}\n", e.what());
  } catch (...) {
    fmt::print(stderr, "psvae: unknown error\n");
  }
  return 1;
}
