// Ordered hand-offs between the blocks of one grid, for a sum that several blocks add to in turn
// and that must add in a fixed order to be deterministic (the fused attention backward's gq,
// attention_bwd.cu): a ticket that numbers blocks in the order they started, and counters that
// one block publishes with release semantics and the next waits on with acquire semantics.
//
// Why a ticket and not blockIdx: a block may only wait for blocks that are certain to run. CUDA
// promises nothing about the order in which blocks start, and a block spinning on one that has
// not started holds its SM slot, which may be the slot the other one needs. A block that drew
// ticket L started after every block with a smaller ticket drew its own, so those are resident or
// finished: a block that waits only on smaller tickets cannot deadlock, however many blocks fit
// on the GPU at once (the argument of CUB's decoupled look-back, which numbers tiles the same way).
//
// Memory ordering is the pattern of cooperative groups' grid sync: a block's threads write, meet
// at __syncthreads, then thread 0 fences (fence.sc.gpu, cumulative over the writes the barrier
// ordered before it) and stores the counter; the waiting block's thread 0 spins on the counter,
// fences, and a __syncthreads hands the ordering on to every thread of that block.
//
// Emulation build (cuda_emu/): blocks run one at a time and memory is sequentially consistent, so
// the fences do nothing and a counter a block waits on was either written already or never will
// be; __nanosleep yields, and a block that only spins is failed as deadlocked.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/spin_guard.cuh"

namespace psvae::kernels::cuda::block_order {

// This block's ticket from *counter (zero before the launch, one per launch): 0, 1, ... in the
// order the blocks reach this call. Every thread of the block gets it; contains a __syncthreads.
__device__ __forceinline__ unsigned block_ticket(unsigned* counter) {
  __shared__ unsigned ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(counter, 1u);
  __syncthreads();
  return ticket;
}

// Spins until *count == value, then fences, so that what the block that stored `value` wrote
// before its release is visible to this thread (and, after a following __syncthreads, to the
// whole block). Called by one thread. Traps after spin_guard.cuh's limit.
__device__ __forceinline__ void wait_count(const unsigned* count, unsigned value) {
  SpinGuard guard;
  while (*static_cast<const volatile unsigned*>(count) != value) {
    __nanosleep(64);
    guard.poll_failed();
  }
  __threadfence();
}

// Publishes `value` in *count after everything this block wrote before the __syncthreads that
// precedes the call. Called by one thread, after that __syncthreads.
__device__ __forceinline__ void release_count(unsigned* count, unsigned value) {
  __threadfence();
  *static_cast<volatile unsigned*>(count) = value;
}

}  // namespace psvae::kernels::cuda::block_order
