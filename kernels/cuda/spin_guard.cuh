// A time limit on the device-side spin-waits (block_order.cuh's counters, the TMA GEMM's
// mbarriers): past it the waiting thread traps, so that a hand-off that never comes (a
// memory-ordering or transaction-count mistake that the emulator cannot see) fails the launch
// with an error instead of hanging the process until something outside kills it.
//
// Why 60 s: a correct wait lasts as long as one block's work on a neighbouring tile, microseconds
// to milliseconds on an H200; compute-sanitizer's racecheck slows shared-memory-heavy kernels by
// 100x or more, and the limit must not fire there. A hang then costs at most this long, not a
// whole 10-minute device call. __trap leaves the CUDA context unusable: the next synchronising
// call reports cudaErrorLaunchFailure ("unspecified launch failure") and every later CUDA call of
// the process fails too; the test or bench log shows which case it was.
//
// No printf naming the wait: printf is a function call, and with one in the kernel ptxas spilled
// the fused attention backward (kD = 64: 4 B of spill stores became 64, loads 4 became 160) and
// serialised every wgmma of the TMA GEMM (its warning C7510, "wgmma pipeline crossing function
// boundary"). The timer is %globaltimer (nanoseconds), read only after a poll has failed, so a
// wait that succeeds at once costs nothing. Emulation build (cuda_emu/): no timer; the emulator
// fails a block whose threads only spin as deadlocked, which is the same check made exactly.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace psvae::kernels::cuda {

constexpr uint64_t kSpinLimitNs = 60ull * 1000 * 1000 * 1000;

class SpinGuard {
 public:
  // Call after each failed poll.
  __device__ __forceinline__ void poll_failed() {
#ifndef PSVAE_CUDA_EMULATION
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (start_ == 0)
      start_ = now;
    else if (now - start_ > kSpinLimitNs)
      __trap();
#endif
  }

 private:
  uint64_t start_ = 0;
};

}  // namespace psvae::kernels::cuda
