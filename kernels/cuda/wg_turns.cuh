// Two warpgroups that take turns (FlashAttention-3's "ping-pong" scheduling, Shah et al. 2024,
// Section 3.1): each issues its tensor-core work only in its turn, so the work of one runs while
// the other does what is not tensor-core work (the softmax), and the tensor cores see the two
// warpgroups' GEMMs one after the other instead of interleaved at random.
//
// The protocol, over two named barriers (mma_sm90.cuh), ids kFirstId + c for warpgroup c = 0, 1,
// each instance 256 threads: the 128 of the warpgroup whose turn it opens (bar.sync) and the 128
// of the other (bar.arrive, at the end of its own turn). Each warpgroup takes turns 0 .. last:
//   begin(i)  warpgroup 0 waits on its barrier from turn 1 on (its turn 0 is free); warpgroup 1
//             waits on its barrier for every turn;
//   end(i)    hands the turn on: arrives at the other's barrier, except warpgroup 1 after its last
//             turn (nothing follows it).
// So the turns go 0:0, 1:0, 0:1, 1:1, ..., 1:last, and every instance of either barrier gets its
// 128 waiters and its 128 arrivals: barrier kFirstId + 0 completes `last` times, kFirstId + 1
// `last + 1` times, and none is left half arrived when the block ends. Both warpgroups must take
// the same number of turns. Used by attention_fwd_wgmma_tma_sm90a.cu; its emulator test is in
// tests/tensor/test_cuda_emu.cpp.
#pragma once

#include "kernels/cuda/mma_sm90.cuh"

namespace psvae::kernels::cuda {

template <int kFirstId>
struct WarpgroupTurns {
  static_assert(kFirstId >= 1 && kFirstId + 1 <= 15,
                "named barrier ids 1..15 (0 is __syncthreads')");
  static constexpr int kCount = 2 * 128;  // both warpgroups' threads
  int c;                                  // this warpgroup: 0 or 1

  // (Two branches, one per warpgroup, so that each barrier id is an immediate.)
  __device__ __forceinline__ void begin(int i) const {
    if (c == 0 && i > 0) sm90::named_barrier_sync<kFirstId, kCount>();
    if (c == 1) sm90::named_barrier_sync<kFirstId + 1, kCount>();
  }
  __device__ __forceinline__ void end(int i, int last) const {
    if (c == 0) sm90::named_barrier_arrive<kFirstId + 1, kCount>();
    if (c == 1 && i < last) sm90::named_barrier_arrive<kFirstId, kCount>();
  }
};

}  // namespace psvae::kernels::cuda
