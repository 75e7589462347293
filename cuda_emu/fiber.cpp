// The CUDA emulator's scheduler (cuda_emu/cuda_emu.h has the model): blocks one after the other,
// each block's threads as fibers, barriers and warp collectives as points where a fiber yields.
//
// Fibers: one stack each (128 KiB, a guard page below, reused across blocks), switched by
// swap_stack: on x86-64 six callee-saved registers and the stack pointer (a dozen instructions,
// no system call: an MMA-heavy test makes millions of switches); elsewhere ucontext.
// Scheduling: the block's ready fibers run in thread order, each until it blocks or ends; a
// barrier that every live thread has reached (or a warp collective every lane in its mask has
// reached) makes its waiters ready again. __nanosleep (a spin-wait's pause) yields and stays
// runnable. When no fiber can run, or a whole round ran only fibers that went back to sleep
// (nothing they poll can change: other blocks do not run meanwhile), and some have not ended,
// the block is deadlocked: the launch fails naming where the threads wait.
// Order (env PSVAE_EMU_ORDER): "forward" (the default: blocks in index order, and in each round
// the ready threads in index order), "reverse" (both reversed), "shuffle" (a fresh permutation
// of the blocks per launch and of the threads per round, from PSVAE_EMU_SEED) or "warps" (blocks
// in index order; in each round the warps in index order, each run until all its lanes wait at a
// block-level point: a barrier, an mbarrier, a spin, the end). A kernel whose result depends on
// the order has a race: a missing __syncthreads or __syncwarp (thread t reads a slot thread u
// writes, which works when u happens to run first), or a block that reads another block's output.
// Running the tests in more than one order finds the races one order hides. The first three run
// every thread to its next yield point before any runs on, so a missing __syncthreads between
// two segments that warp collectives separate (stores, then a shuffle, ldmatrix or wgmma that
// reads them) is hidden in all three; "warps" lets warp 0 pass such collectives before the other
// warps have stored. No order finds races that need two threads interleaved within one segment.
// Async copies and wgmma (env PSVAE_EMU_ASYNC), two opposite extremes of what a GPU may do:
//   "deferred" (the default): each cp.async lands at the wait that retires its group (the latest)
//     and each wgmma reads shared memory when issued (the earliest), so a read that comes before
//     the data (a missing wait or barrier) sees the poison or a stale tile;
//   "eager": each cp.async lands when issued (the earliest) and each wgmma is computed at a wait
//     that retires it, for its whole warpgroup, once no thread of the block can run on without
//     it (the latest), so a buffer refilled while a read of it is still due (a
//     pending wgmma, a thread not yet past a barrier) is read after it was overwritten, and an
//     accumulator read before its wait is stale.
// Each mode finds one half of the async hazards: read too early, refill too early. Bulk tensor
// copies (TMA) follow the same two modes: deferred, a copy lands when a thread waits on its
// mbarrier (the latest it can); eager, when issued.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emu/cuda_emu.h"
#include "cuda_emu/runtime_state.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {

namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // without the opt-in
constexpr size_t kMaxDynamicSmem = 227 * 1024;     // sm_90's opt-in limit

#if defined(__x86_64__)
// swap_stack(save, to): pushes rbp, rbx, r12-r15, stores rsp in *save, loads `to` and pops the
// same registers from it, then returns into whatever that stack holds.
extern "C" void cuda_emu_swap_stack(void** save, void* to);
asm(R"(
  .text
  .globl cuda_emu_swap_stack
  .type cuda_emu_swap_stack, @function
cuda_emu_swap_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_swap_stack, .-cuda_emu_swap_stack
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

// Spinning: in __nanosleep, runnable (a spin-wait's next poll), see run_block.
enum class State { Ready, Spinning, AtBarrier, AtNamedBarrier, AtWarp, AtMbarrier, Done };

// One thread's asynchronous operations of one kind (cp.async copies, wgmma) in commit groups, as
// the PTX ISA counts them: the open group, then committed groups oldest first. wait(n) retires
// every committed group but the newest n, applying `done` to each operation, oldest first.
template <class Op>
struct AsyncGroups {
  std::vector<Op> open;
  std::deque<std::vector<Op>> committed;
  void commit() {
    committed.push_back(std::move(open));
    open.clear();
  }
  template <class Done>
  void wait(int pending_groups, Done done) {
    while (static_cast<int>(committed.size()) > pending_groups) {
      for (const Op& op : committed.front()) done(op);
      committed.pop_front();
    }
  }
  bool empty() const { return open.empty() && committed.empty(); }
  void clear() {
    open.clear();
    committed.clear();
  }
};

struct Fiber {
  unsigned char* stack = nullptr;  // lowest usable byte (the guard page is below)
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  State state = State::Done;
  ThreadIds ids;
  int linear = 0;
  struct Copy {
    void* dst;
    const void* src;
    int bytes;
  };
  AsyncGroups<Copy> copies;
  struct Wgmma {
    float* d;  // null: already computed when issued (PSVAE_EMU_ASYNC=deferred)
    int n;
    uint64_t desc_a, desc_b;
    bool trans_a, trans_b;
    bool a_in_regs;  // A is a_regs (rows g and g + 8 of the warp), read when issued, not desc_a
    float a_regs[2][16];
  };
  AsyncGroups<Wgmma> wgmma;
  bool wg_fenced = false;   // a wgmma.fence since the last wgmma.wait_group
  uint64_t wg_retired = 0;  // wgmma groups this thread's waits have retired (the next one's number)
  bool wg_waiting = false;  // spinning in an eager wgmma.wait_group on a group all have issued
  uint32_t wait_bar = 0;    // State::AtMbarrier: the mbarrier waited on
  int wait_named = 0;       // State::AtNamedBarrier: the barrier's id
};

// A named barrier's instance in flight (bar.sync / bar.arrive with an id and a thread count): the
// count its first arrival gave (0: none in flight) and the threads arrived so far.
struct NamedBarrier {
  int count = 0, arrived = 0;
};
constexpr int kNamedBarriers = 16;  // ids 0..15; 0 is __syncthreads' here (named_barrier)

// An mbarrier's state (PTX ISA, "Parallel Synchronization and Communication Instructions:
// mbarrier"): the arrivals a phase expects, those still pending, the transaction bytes still due
// (negative when bytes completed before their expect_tx), and the phase number.
struct MBarrier {
  int count = 0, pending = 0;
  int64_t tx = 0;
  uint32_t phase = 0;
};

// A bulk tensor copy issued and not yet landed (PSVAE_EMU_ASYNC=deferred): the map as it was when
// issued (the kernel parameter it came from may be gone by the time it lands).
struct TmaCopy {
  uint32_t dst;
  TensorMap map;
  int c[TensorMap::kMaxRank];  // the box's first element; 0 past the map's rank
  uint32_t bar;
};

// A warp's one collective in flight: which lanes it waits for, who has arrived, their deposits.
// Deposits are double-buffered by generation: a lane that has left collective k and reached k+1
// writes the other buffer, while slower lanes still read k's.
struct Warp {
  unsigned mask = 0;     // lanes of the collective in flight (0: none)
  unsigned arrived = 0;  // bitmask
  int gen = 0;
  unsigned char slots[2][32][64];
};

struct Block {
  int nthreads = 0;
  int live = 0;
  int at_barrier = 0;
  std::vector<Warp> warps;
  const std::function<void()>* body = nullptr;
  std::string error;
  std::map<uint32_t, MBarrier> mbars;  // by shared-window address
  std::deque<TmaCopy> tma;             // deferred bulk tensor copies, in issue order
  bool wgmma_flush = false;  // eager: the next wgmma waiter computes its group (retire_...)
  NamedBarrier named[kNamedBarriers];
};

// Scheduler state of the launching OS thread (launches from several host threads are serialised
// by a mutex in run_grid, so one of these is enough).
struct Sched {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  Fiber* cur = nullptr;
  Block* block = nullptr;
};
Sched g_sched;

std::vector<Fiber>& fiber_pool() {
  static std::vector<Fiber>* pool = new std::vector<Fiber>(kMaxThreads);  // leaked: stacks live
  return *pool;
}
// Thread i of the running block (blocks reuse the pool's first nthreads fibers).
Fiber& fiber(int i) { return fiber_pool()[static_cast<size_t>(i)]; }

unsigned char* new_stack() {
  void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
  if (mprotect(p, kGuardBytes, PROT_NONE) != 0)
    throw std::runtime_error("cuda_emu: cannot protect a fiber stack's guard page");
  return static_cast<unsigned char*>(p) + kGuardBytes;
}

alignas(16) unsigned char g_dynamic_smem[kMaxDynamicSmem];
size_t g_dynamic_smem_bytes = 0;  // of the running launch
// The shared-window address of g_dynamic_smem[0] (cuda_emu.h: off the 1024-byte boundary).
constexpr uint32_t kSmemWindowBase = 16;

struct Schedule {
  Order order = Order::Forward;
  AsyncMode async = AsyncMode::Deferred;  // PSVAE_EMU_ASYNC
  std::mt19937_64 rng;
  // Fills `ix` with 0..n-1 in this schedule's order (a fresh draw each call when shuffling).
  void permutation(std::vector<int>& ix, int n) {
    ix.resize(static_cast<size_t>(n));
    std::iota(ix.begin(), ix.end(), 0);
    if (order == Order::Reverse) std::reverse(ix.begin(), ix.end());
    if (order == Order::Shuffle) std::shuffle(ix.begin(), ix.end(), rng);
  }
};
Schedule& schedule() {
  static Schedule* s = [] {
    auto* r = new Schedule;
    const char* o = std::getenv("PSVAE_EMU_ORDER");
    const std::string order = o ? o : "";
    if (order == "reverse")
      r->order = Order::Reverse;
    else if (order == "shuffle")
      r->order = Order::Shuffle;
    else if (order == "warps")
      r->order = Order::Warps;
    else if (!order.empty() && order != "forward")
      std::fprintf(stderr,
                   "cuda_emu: PSVAE_EMU_ORDER=%s is not forward, reverse, shuffle or warps; "
                   "using forward\n",
                   order.c_str());
    const char* a = std::getenv("PSVAE_EMU_ASYNC");
    const std::string async = a ? a : "";
    if (async == "eager")
      r->async = AsyncMode::Eager;
    else if (!async.empty() && async != "deferred")
      std::fprintf(stderr,
                   "cuda_emu: PSVAE_EMU_ASYNC=%s is not deferred or eager; using deferred\n",
                   async.c_str());
    const char* seed = std::getenv("PSVAE_EMU_SEED");
    r->rng.seed(seed && *seed ? std::strtoull(seed, nullptr, 10) : 1);
    return r;
  }();
  return *s;
}

void to_scheduler() {
  Fiber* f = g_sched.cur;
#if defined(__x86_64__)
  cuda_emu_swap_stack(&f->sp, g_sched.sp);
#else
  swapcontext(&f->ctx, &g_sched.ctx);
#endif
}

void release_barrier(Block& b) {
  for (int i = 0; i < b.nthreads; ++i) {
    Fiber& f = fiber(i);
    if (f.state == State::AtBarrier) f.state = State::Ready;
  }
  b.at_barrier = 0;
}

// Lanes of warp w that exist in this block (the last warp may be partial).
unsigned lanes_of(const Block& b, int w) {
  const int n = std::min(32, b.nthreads - 32 * w);
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

void fiber_main() {
  Fiber* f = g_sched.cur;
  Block& b = *g_sched.block;
  (*b.body)();
  f->state = State::Done;
  --b.live;
  // A warp collective waiting for this lane can never complete.
  Warp& w = b.warps[static_cast<size_t>(f->linear / 32)];
  if (w.mask != 0 && (w.mask >> (f->linear % 32) & 1u) && !(w.arrived >> (f->linear % 32) & 1u))
    fail("a lane exited while its warp waits for it in a *_sync collective");
  // Volta and later: exited threads no longer count at __syncthreads.
  if (b.at_barrier > 0 && b.at_barrier == b.live) release_barrier(b);
  to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
extern "C" void cuda_emu_fiber_entry() { fiber_main(); }

void start_fiber(Fiber& f) {
  // The stack as swap_stack leaves it: six register slots, then the address to "return" to.
  // At the entry's first instruction rsp must be 8 mod 16, as after a call.
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  auto* s = reinterpret_cast<void**>(top);
  *--s = nullptr;                                         // fake return address
  *--s = reinterpret_cast<void*>(&cuda_emu_fiber_entry);  // popped by ret
  for (int i = 0; i < 6; ++i) *--s = nullptr;             // r15 .. rbp
  f.sp = s;
}
#else
void start_fiber(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main, 0);
}
#endif

void resume(Fiber& f) {
  g_sched.cur = &f;
#if defined(__x86_64__)
  cuda_emu_swap_stack(&g_sched.sp, f.sp);
#else
  swapcontext(&g_sched.ctx, &f.ctx);
#endif
  g_sched.cur = nullptr;
}

std::string where_waiting(const Block& b) {
  int barrier = 0, named = 0, warp = 0, mbar = 0, spin = 0;
  for (int i = 0; i < b.nthreads; ++i) {
    const Fiber& f = fiber(i);
    if (f.state == State::AtBarrier) ++barrier;
    if (f.state == State::AtNamedBarrier) ++named;
    if (f.state == State::AtWarp) ++warp;
    if (f.state == State::AtMbarrier) ++mbar;
    if (f.state == State::Spinning) ++spin;
  }
  return std::to_string(barrier) + " thread(s) at __syncthreads, " + std::to_string(named) +
         " at a named barrier, " + std::to_string(warp) + " at a warp collective, " +
         std::to_string(mbar) + " waiting on an mbarrier, " + std::to_string(spin) +
         " spinning in __nanosleep on a value no thread will change, " + std::to_string(b.live) +
         " of " + std::to_string(b.nthreads) + " not yet exited";
}

// Runs one block to completion; returns false (b.error set) on a failure.
bool run_block(Block& b) {
  for (int i = 0; i < b.nthreads; ++i) {
    Fiber& f = fiber(i);
    if (!f.stack) f.stack = new_stack();
    f.state = State::Ready;
    f.copies.clear();
    f.wgmma.clear();
    f.wg_fenced = false;
    f.wg_retired = 0;
    f.wg_waiting = false;
    start_fiber(f);
  }
  b.mbars.clear();
  b.tma.clear();
  b.wgmma_flush = false;
  for (NamedBarrier& n : b.named) n = NamedBarrier{};
  g_sched.block = &b;
  static std::vector<int> order;
  for (;;) {
    // progress: some thread that ran did more than poll and go back to sleep (__nanosleep). A
    // round without it ran only spin-waits that saw nothing change, and the next would be the
    // same: a deadlock, as a round where nothing could run at all.
    bool progress = false;
    if (schedule().order == Order::Warps) {
      // Each warp in turn: its ready lanes again and again (a warp collective that completes
      // makes its lanes ready), then its spinning lanes once (they poll other warps' stores).
      for (int w0 = 0; w0 < b.nthreads; w0 += 32) {
        const int w1 = std::min(w0 + 32, b.nthreads);
        for (bool ran = true; ran;) {
          ran = false;
          for (int i = w0; i < w1; ++i) {
            Fiber& f = fiber(i);
            if (f.state != State::Ready) continue;
            resume(f);
            ran = progress = true;
            if (!b.error.empty()) return false;
          }
        }
        for (int i = w0; i < w1; ++i) {
          Fiber& f = fiber(i);
          if (f.state != State::Spinning) continue;
          resume(f);
          if (f.state != State::Spinning) progress = true;
          if (!b.error.empty()) return false;
        }
      }
    } else {
      schedule().permutation(order, b.nthreads);
      for (const int i : order) {
        Fiber& f = fiber(i);
        if (f.state != State::Ready && f.state != State::Spinning) continue;
        resume(f);
        if (f.state != State::Spinning) progress = true;
        if (!b.error.empty()) return false;
      }
    }
    if (b.live == 0) {
      for (int i = 0; i < b.nthreads; ++i)
        if (!fiber(i).wgmma.empty()) {
          b.error = "thread " + std::to_string(i) +
                    " exited with wgmma operations not retired by wgmma.wait_group";
          return false;
        }
      if (!b.tma.empty()) {
        b.error = "the block ended with " + std::to_string(b.tma.size()) +
                  " bulk tensor copies that no thread waited for on their mbarrier";
        return false;
      }
      for (int id = 0; id < kNamedBarriers; ++id)
        if (b.named[id].arrived != 0) {
          b.error = "the block ended with named barrier " + std::to_string(id) + " holding " +
                    std::to_string(b.named[id].arrived) + " of its " +
                    std::to_string(b.named[id].count) + " arrivals (a bar.arrive no one matched)";
          return false;
        }
      return true;
    }
    if (!progress) {
      // Nothing could run but threads waiting for wgmma groups every warp has issued: the
      // latest moment those complete (PSVAE_EMU_ASYNC=eager; retire_warpgroup_group).
      bool wgmma_waiters = false;
      for (int i = 0; i < b.nthreads; ++i) wgmma_waiters = wgmma_waiters || fiber(i).wg_waiting;
      if (wgmma_waiters && !b.wgmma_flush) {
        b.wgmma_flush = true;
        continue;
      }
      b.error = "deadlock: " + where_waiting(b);
      return false;
    }
  }
}

std::mutex g_launch_mutex;

}  // namespace

// ---- the running thread ----------------------------------------------------------------------
const ThreadIds& ids() {
  if (!g_sched.cur) {
    std::fprintf(stderr, "cuda_emu: threadIdx/blockIdx read outside a kernel\n");
    std::abort();
  }
  return g_sched.cur->ids;
}
int lane_id() {
  (void)ids();  // aborts outside a kernel
  return g_sched.cur->linear % 32;
}

[[noreturn]] void fail(const char* what) {
  Block& b = *g_sched.block;
  if (b.error.empty()) {
    // The block is named by run_grid's message, which every failure of a block reaches.
    const ThreadIds& t = g_sched.cur->ids;
    b.error = std::string(what) + " (thread " + std::to_string(t.thread.x) + "," +
              std::to_string(t.thread.y) + "," + std::to_string(t.thread.z) + ")";
  }
  g_sched.cur->state = State::Done;
  to_scheduler();
  std::abort();  // never resumed
}

void nanosleep_yield() {
  Fiber* f = g_sched.cur;
  f->state = State::Spinning;
  to_scheduler();
  f->state = State::Ready;
}

void syncthreads() {
  Block& b = *g_sched.block;
  Fiber* f = g_sched.cur;
  f->state = State::AtBarrier;
  if (++b.at_barrier == b.live) {
    release_barrier(b);
    return;
  }
  to_scheduler();
}

void named_barrier(int id, int count, bool wait) {
  Block& b = *g_sched.block;
  Fiber* f = g_sched.cur;
  if (id < 1 || id >= kNamedBarriers)
    fail("bar.sync/bar.arrive: barrier id outside 1..15 (0 is __syncthreads')");
  if (count < 32 || count % 32 != 0 || count > 32 * static_cast<int>(b.warps.size()))
    fail("bar.sync/bar.arrive: the thread count is not a multiple of 32 up to the block's warps");
  NamedBarrier& n = b.named[id];
  if (n.arrived == 0) n.count = count;
  if (n.count != count) fail("bar.sync/bar.arrive: arrivals at one barrier name different counts");
  if (++n.arrived == n.count) {
    n = NamedBarrier{};
    for (int i = 0; i < b.nthreads; ++i) {
      Fiber& o = fiber(i);
      if (o.state == State::AtNamedBarrier && o.wait_named == id) o.state = State::Ready;
    }
    // As an mbarrier arrival that completes a phase: the released threads may run first.
    to_scheduler();
    f->state = State::Ready;
    return;
  }
  if (!wait) return;
  f->state = State::AtNamedBarrier;
  f->wait_named = id;
  to_scheduler();
}

namespace {
// The shared part of exchange and gather: deposit, wait for the mask, return the generation's
// slots.
unsigned char (*arrive(unsigned mask, const void* in, size_t bytes))[64] {
  Block& b = *g_sched.block;
  Fiber* f = g_sched.cur;
  const int lane = f->linear % 32;
  Warp& w = b.warps[static_cast<size_t>(f->linear / 32)];
  const unsigned exist = lanes_of(b, f->linear / 32);
  if (!(mask >> lane & 1u)) fail("a warp collective called by a lane outside its mask");
  if (mask & ~exist) mask &= exist;  // lanes past the block's end do not exist on a GPU either
  if (bytes > 64) fail("cuda_emu: a warp collective deposit above 64 bytes");
  if (w.mask != 0 && w.mask != mask)
    fail("two different warp collectives (masks differ) are in flight in one warp");
  // Every lane the collective waits for must still be running.
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const Fiber& o = fiber(32 * (f->linear / 32) + l);
    if (o.state == State::Done) fail("a warp collective's mask names a lane that has exited");
  }
  const int gen = w.gen;
  if (bytes) std::memcpy(w.slots[gen][lane], in, bytes);
  w.mask = mask;
  w.arrived |= 1u << lane;
  if (w.arrived == mask) {
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& o = fiber(32 * (f->linear / 32) + l);
      if (o.state == State::AtWarp) o.state = State::Ready;
    }
    w.mask = 0;
    w.arrived = 0;
    w.gen ^= 1;
  } else {
    f->state = State::AtWarp;
    to_scheduler();
  }
  return w.slots[gen];
}
}  // namespace

void exchange(unsigned mask, const void* in, size_t bytes, const std::function<int(int)>& src_of,
              void* out) {
  const int lane = g_sched.cur->linear % 32;
  unsigned char(*slots)[64] = arrive(mask, in, bytes);
  if (!out) return;
  int src = src_of(lane);
  if (src < 0 || src >= 32 || !(mask >> src & 1u)) src = lane;
  std::memcpy(out, slots[src], bytes);
}

void gather(unsigned mask, const void* in, size_t bytes, void* all) {
  unsigned char(*slots)[64] = arrive(mask, in, bytes);
  auto* dst = static_cast<unsigned char*>(all);
  for (int l = 0; l < 32; ++l) {
    if (mask >> l & 1u)
      std::memcpy(dst + l * bytes, slots[l], bytes);
    else
      std::memset(dst + l * bytes, 0, bytes);
  }
}

// ---- dynamic shared memory and the async copies -----------------------------------------------
unsigned char* dynamic_smem() { return g_dynamic_smem; }

namespace {
// One cp.async's effect: src_bytes copied, the rest of the 16 zero-filled.
void land(const Fiber::Copy& c) {
  auto* d = static_cast<unsigned char*>(c.dst);
  if (c.bytes > 0) std::memcpy(d, c.src, static_cast<size_t>(c.bytes));
  std::memset(d + c.bytes, 0, static_cast<size_t>(16 - c.bytes));
}
}  // namespace

void cp_async16(void* dst, const void* src, int src_bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) & 15) != 0)
    fail("cp.async: the shared-memory destination is not 16-byte aligned");
  if (src_bytes > 0 && (reinterpret_cast<uintptr_t>(src) & 15) != 0)
    fail("cp.async: the global source is not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src-size outside 0..16");
  if (schedule().async == AsyncMode::Eager) {
    land(Fiber::Copy{dst, src, src_bytes});
    return;
  }
  g_sched.cur->copies.open.push_back({dst, src, src_bytes});
}

void cp_async_commit() { g_sched.cur->copies.commit(); }

void cp_async_wait(int pending_groups) { g_sched.cur->copies.wait(pending_groups, land); }

// ---- ldmatrix and mma -------------------------------------------------------------------------
void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr, bool trans) {
  if ((reinterpret_cast<uintptr_t>(row_addr) & 15) != 0)
    fail("ldmatrix: a row address is not 16-byte aligned");
  const unsigned char* rows[32];
  gather(0xffffffffu, &row_addr, sizeof(row_addr), rows);
  const int lane = g_sched.cur->linear % 32;
  // Matrix i's rows are the addresses of lanes 8i .. 8i+7. Lane l gets (row l/4, columns 2(l%4)
  // and 2(l%4)+1) of each matrix; with .trans the transpose's, i.e. (rows 2(l%4), 2(l%4)+1,
  // column l/4). The lower column (row) goes to the low half.
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* row = rows[8 * i + lane / 4];
      std::memcpy(&lo, row + 2 * (2 * (lane % 4)), 2);
      std::memcpy(&hi, row + 2 * (2 * (lane % 4) + 1), 2);
    } else {
      std::memcpy(&lo, rows[8 * i + 2 * (lane % 4)] + 2 * (lane / 4), 2);
      std::memcpy(&hi, rows[8 * i + 2 * (lane % 4) + 1] + 2 * (lane / 4), 2);
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

namespace {
float bf16_half(uint32_t reg, int half) {
  const uint32_t bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace

void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Frag {
    uint32_t a[4], b[2];
  };
  Frag mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  Frag all[32];
  gather(0xffffffffu, &mine, sizeof mine, all);
  // PTX ISA, "Matrix fragments for mma.m16n8k16" (g = lane / 4, q = lane % 4):
  //   A(r, k): lane 4 (r % 8) + (k % 8) / 2, register (r >= 8) + 2 (k >= 8), half k % 2
  //   B(k, n): lane 4 n + (k % 8) / 2, register (k >= 8), half k % 2
  //   D(r, n): lane 4 (r % 8) + n / 2, element 2 (r >= 8) + n % 2
  auto A = [&](int r, int k) {
    return bf16_half(all[4 * (r % 8) + (k % 8) / 2].a[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
  };
  auto B = [&](int k, int n) {
    return bf16_half(all[4 * n + (k % 8) / 2].b[k >= 8 ? 1 : 0], k % 2);
  };
  const int lane = g_sched.cur->linear % 32;
  for (int e = 0; e < 4; ++e) {
    const int r = lane / 4 + 8 * (e / 2), n = 2 * (lane % 4) + e % 2;
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);  // each product exact in f32
    d[e] += s;
  }
}

// ---- sm_90a: wgmma ------------------------------------------------------------------------------
uint32_t smem_window_address(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < g_dynamic_smem || c >= g_dynamic_smem + kMaxDynamicSmem)
    fail("smem address: the pointer is not in the dynamic shared memory");
  return kSmemWindowBase + static_cast<uint32_t>(c - g_dynamic_smem);
}

void fence_proxy_async() {}

void wgmma_fence() { g_sched.cur->wg_fenced = true; }

namespace {

// The `bytes` of dynamic shared memory from window address `addr`; fails the launch with `what`
// when any of them lies outside the launch's allocation.
unsigned char* window_bytes(uint32_t addr, uint64_t bytes, const char* what) {
  if (addr < kSmemWindowBase || addr - kSmemWindowBase + bytes > g_dynamic_smem_bytes) fail(what);
  return g_dynamic_smem + (addr - kSmemWindowBase);
}

// Element (mn, k) of a 128-byte-swizzled bf16 operand (cuda_emu.h; PTX ISA, "Shared Memory Matrix
// Layout", canonical layouts with Swizzle<3, 4, 3>), as a float. K-major: rows are mn, groups of
// 8 rows `sbo` apart, k contiguous. MN-major: rows are k, groups of 8 k rows `sbo` apart, 64
// contiguous mn per row, blocks of 64 mn `lbo` apart. The swizzle acts on the address: its 16-byte
// chunk bits (4-6) are XORed with its 128-byte row bits (7-9).
float wgmma_operand(uint64_t desc, bool mn_major, int mn, int k) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  if ((desc >> 62) != 1) fail("wgmma: only the 128-byte swizzle is modelled by the emulator");
  if (((desc >> 49) & 7) != 0) fail("wgmma: a non-zero matrix base offset is not modelled");
  // Base offset 0 says the swizzle pattern (8 rows of 128 B) starts on a 1024-byte boundary: the
  // start address may sit inside a 128-byte row (a k step) but its row must be the pattern's
  // first (the ISA's base offset is (start >> 7) & 7 otherwise).
  if (((start >> 7) & 7) != 0)
    fail(
        "wgmma: the 128-byte swizzle pattern does not start on a 1024-byte boundary (base "
        "offset 0)");
  uint32_t addr;
  if (!mn_major)
    addr = start + static_cast<uint32_t>(mn / 8) * sbo + static_cast<uint32_t>(mn % 8) * 128 +
           static_cast<uint32_t>(k) * 2;
  else
    addr = start + static_cast<uint32_t>(mn / 64) * lbo + static_cast<uint32_t>(mn % 64) * 2 +
           static_cast<uint32_t>(k / 8) * sbo + static_cast<uint32_t>(k % 8) * 128;
  addr ^= ((addr >> 7) & 7) << 4;
  uint16_t h;
  std::memcpy(&h,
              window_bytes(addr, 2,
                           "wgmma: a descriptor addresses shared memory outside the launch's "
                           "dynamic allocation"),
              2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// One queued wgmma for the running thread: its fragment rows 16 w + g (+ 8), columns 8 i + 2 q
// (+ 1) of the warpgroup's 64 x n tile.
void run_wgmma(const Fiber::Wgmma& op, int linear) {
  const int t = linear % 128, w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
  float a[2][16];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k)
      a[h][k] = op.a_in_regs ? op.a_regs[h][k]
                             : wgmma_operand(op.desc_a, op.trans_a, 16 * w + g + 8 * h, k);
  for (int i = 0; i < op.n / 8; ++i)
    for (int j = 0; j < 2; ++j) {
      float b[16];
      for (int k = 0; k < 16; ++k)
        b[k] = wgmma_operand(op.desc_b, op.trans_b, 8 * i + 2 * q + j, k);
      for (int h = 0; h < 2; ++h) {
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += a[h][k] * b[k];  // each product exact in f32
        op.d[4 * i + 2 * h + j] += s;
      }
    }
}

// The checks and queueing shared by both forms: .sync.aligned, so every lane of the warp issues
// the same shape, descriptors and transposes (and, for the register form, its part of A, which
// `regs` gathers: lane l's 4 registers at regs[l]).
void issue_wgmma(Fiber::Wgmma op, const uint32_t* a_regs) {
  Fiber* f = g_sched.cur;
  if (g_sched.block->nthreads % 128 != 0)
    fail("wgmma: the block's thread count is not a multiple of a warpgroup (128)");
  if (!f->wg_fenced) fail("wgmma: no wgmma.fence since the last wgmma.wait_group");
  if (op.n % 8 != 0 || op.n < 8 || op.n > 256) fail("wgmma: N is not a multiple of 8 in 8..256");
  struct Issue {
    uint64_t a, b;
    int n, trans;
    uint32_t regs[4];
  };
  Issue mine{op.desc_a,
             op.desc_b,
             op.n,
             (op.trans_a ? 1 : 0) | (op.trans_b ? 2 : 0) | (op.a_in_regs ? 4 : 0),
             {0, 0, 0, 0}};
  if (a_regs) std::memcpy(mine.regs, a_regs, sizeof mine.regs);
  Issue all[32];
  gather(0xffffffffu, &mine, sizeof mine, all);
  for (const Issue& o : all)
    if (o.a != mine.a || o.b != mine.b || o.n != mine.n || o.trans != mine.trans)
      fail("wgmma: the lanes of a warp issued different descriptors, shapes or transposes");
  if (op.a_in_regs) {
    // PTX ISA, A fragment of wgmma .bf16 from registers (as mma.m16n8k16's A): A(r, k), r the
    // row within the warp's 16, is in lane 4 (r % 8) + (k % 8) / 2, register (r >= 8) +
    // 2 (k >= 8), half k % 2.
    const int g = f->linear % 32 / 4;
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 16; ++k)
        op.a_regs[h][k] = bf16_half(all[4 * g + (k % 8) / 2].regs[h + (k >= 8 ? 2 : 0)], k % 2);
  }
  if (schedule().async == AsyncMode::Deferred) {
    // Deferred copies, early reads: the wgmma reads shared memory now, the earliest a GPU may.
    // The group still counts (a null entry) for the waits and the exit check.
    run_wgmma(op, f->linear);
    op.d = nullptr;
  }
  f->wgmma.open.push_back(op);  // eager copies, late reads: computed at the wait that retires it
}

}  // namespace

void wgmma_bf16(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b) {
  issue_wgmma(Fiber::Wgmma{d, n, desc_a, desc_b, trans_a, trans_b, false, {}}, nullptr);
}

void wgmma_bf16_rs(float* d, int n, const uint32_t (&a)[4], uint64_t desc_b, bool trans_b) {
  issue_wgmma(Fiber::Wgmma{d, n, 0, desc_b, false, trans_b, true, {}}, a);
}

void wgmma_commit() { g_sched.cur->wgmma.commit(); }

namespace {

// PSVAE_EMU_ASYNC=eager: retires group `seq` (the seq-th this thread committed) for the running
// thread, computing it for every thread of its warpgroup that has not retired it yet.
// A wgmma is one operation of the whole warpgroup: it cannot start before all four warps have
// issued it (A and the accumulators are spread over them), and a warp whose wait_group sees it
// complete sees all of it complete, its shared-memory reads included (which is why a copy
// pipeline may let one signalling thread free a stage once its own wait returns). So the group
// is computed once for all 128 threads, and as late as any schedule allows: the waiters spin
// until no thread of the block can run on without them (run_block then sets wgmma_flush), so
// whatever the other threads do before their own waits (a stage freed too early, and its
// refill) comes first. A warp that never issues the group is a deadlock.
void retire_warpgroup_group(Fiber* f, uint64_t seq) {
  Block& b = *g_sched.block;
  const int first = f->linear / 128 * 128;
  auto group_of = [&](Fiber& o) -> std::vector<Fiber::Wgmma>& {
    return o.wgmma.committed[static_cast<size_t>(seq - o.wg_retired)];
  };
  for (;;) {
    bool all = true, pending = false;
    for (int u = first; u < first + 128; ++u) {
      Fiber& o = fiber(u);
      if (o.wg_retired > seq) continue;  // it has waited for the group already
      if (o.wg_retired + o.wgmma.committed.size() <= seq) {
        if (o.state == State::Done)
          fail("wgmma.wait_group: a thread of the warpgroup exited without the group waited for");
        all = false;
        continue;
      }
      for (const Fiber::Wgmma& op : group_of(o)) pending = pending || op.d != nullptr;
    }
    if (all && !pending) return;  // computed by another thread's wait
    if (all && b.wgmma_flush) break;
    f->wg_waiting = all;
    nanosleep_yield();
    f->wg_waiting = false;
  }
  b.wgmma_flush = false;
  const size_t ops = f->wgmma.committed.front().size();
  for (int u = first; u < first + 128; ++u) {
    Fiber& o = fiber(u);
    if (o.wg_retired > seq) continue;
    std::vector<Fiber::Wgmma>& group = group_of(o);
    if (group.size() != ops)
      fail("wgmma.wait_group: the threads of a warpgroup committed different wgmma groups");
    for (Fiber::Wgmma& op : group)
      if (op.d) {
        run_wgmma(op, u);
        op.d = nullptr;
      }
  }
}

}  // namespace

void wgmma_wait(int pending_groups) {
  Fiber* f = g_sched.cur;
  while (static_cast<int>(f->wgmma.committed.size()) > pending_groups) {
    // Deferred: every op was computed when issued (d is null); eager: now, warpgroup-wide.
    if (schedule().async == AsyncMode::Eager) retire_warpgroup_group(f, f->wg_retired);
    f->wgmma.committed.pop_front();
    ++f->wg_retired;
  }
  f->wg_fenced = false;
}

// ---- sm_90: mbarriers and bulk tensor copies ----------------------------------------------------
namespace {

// The signature an mbarrier's 8 bytes hold while the emulator tracks it ("mbar" and the address).
uint64_t mbar_signature(uint32_t bar) { return 0x6d62617200000000ull | bar; }

// The state of the mbarrier at `bar`, after checking that it was initialised and that its bytes
// still hold the signature (nothing has stored over it).
MBarrier& mbar_state(uint32_t bar) {
  Block& b = *g_sched.block;
  auto it = b.mbars.find(bar);
  if (it == b.mbars.end()) fail("mbarrier: used before mbarrier.init (or not an mbarrier)");
  uint64_t sig;
  std::memcpy(&sig, window_bytes(bar, 8, "mbarrier: outside the dynamic shared memory"), 8);
  if (sig != mbar_signature(bar))
    fail("mbarrier: its 8 bytes of shared memory were overwritten while in use");
  return it->second;
}

// Completes the current phase when nothing is due any more, and wakes the threads waiting on it.
// Makes the threads asleep on mbarrier `bar` runnable: they check its phase again.
void wake_mbarrier_waiters(uint32_t bar) {
  Block& b = *g_sched.block;
  for (int i = 0; i < b.nthreads; ++i) {
    Fiber& f = fiber(i);
    if (f.state == State::AtMbarrier && f.wait_bar == bar) f.state = State::Ready;
  }
}

void mbar_maybe_complete(uint32_t bar, MBarrier& m) {
  if (m.pending != 0 || m.tx != 0) return;
  ++m.phase;
  m.pending = m.count;
  wake_mbarrier_waiters(bar);
}

// One bulk tensor copy's effect: the box, element by element (zeros out of bounds), into shared
// memory with the map's swizzle applied to each destination address; then its bytes complete on
// its mbarrier.
void land_tma(const TmaCopy& c) {
  const TensorMap& m = c.map;
  constexpr int kR = TensorMap::kMaxRank;
  uint64_t box_elems = 1;
  for (int d = 0; d < kR; ++d) box_elems *= m.box[d];
  const uint64_t box_bytes = box_elems * m.elem;
  window_bytes(c.dst, box_bytes, "bulk tensor copy: the box runs past the dynamic shared memory");
  uint32_t i[kR] = {};  // the element's index in the box, innermost first
  for (uint64_t o = 0; o < box_bytes; o += m.elem) {
    bool inside = true;
    uint64_t src = 0;
    for (int d = 0; d < kR; ++d) {
      const int64_t g = int64_t(c.c[d]) + i[d];
      inside = inside && g >= 0 && static_cast<uint64_t>(g) < m.dim[d];
      src += static_cast<uint64_t>(g) * m.stride[d];
    }
    uint32_t addr = c.dst + static_cast<uint32_t>(o);
    if (m.swizzle_bytes == 128) addr ^= ((addr >> 7) & 7) << 4;
    unsigned char* dst = g_dynamic_smem + (addr - kSmemWindowBase);
    if (inside)
      std::memcpy(dst, m.base + src, m.elem);
    else
      std::memset(dst, 0, m.elem);
    for (int d = 0; d < kR && ++i[d] == m.box[d]; ++d) i[d] = 0;  // the next index, odometer-wise
  }
  MBarrier& bar = mbar_state(c.bar);
  bar.tx -= static_cast<int64_t>(box_bytes);
  mbar_maybe_complete(c.bar, bar);
}

}  // namespace

void mbarrier_init(uint32_t bar, int count) {
  if (bar % 8 != 0) fail("mbarrier.init: the address is not 8-byte aligned");
  if (count < 1 || count > (1 << 20) - 1) fail("mbarrier.init: count outside 1..2^20-1");
  const uint64_t sig = mbar_signature(bar);
  std::memcpy(window_bytes(bar, 8, "mbarrier.init: outside the dynamic shared memory"), &sig, 8);
  MBarrier& m = g_sched.block->mbars[bar];
  m = MBarrier{};
  m.count = m.pending = count;
}

void mbarrier_arrive(uint32_t bar, uint32_t expect_tx_bytes) {
  MBarrier& m = mbar_state(bar);
  if (m.pending == 0) fail("mbarrier.arrive: more arrivals than the phase expects");
  m.tx += expect_tx_bytes;
  --m.pending;
  const uint32_t phase = m.phase;
  mbar_maybe_complete(bar, m);
  // An arrival that completes a phase lets its waiters run on, on a GPU possibly before the
  // arriving thread's next instruction: yield to them (they run before it in the next round).
  // Without this a thread that frees a buffer (arrives) and only then waits for its own last read
  // of it (wgmma.wait_group), or stores what its arrival should have published, is never
  // overtaken. (Only completing arrivals yield: a yield at every arrival would also split a copy
  // producer's arrive.expect_tx from its copy, which hides the first race in index order.)
  if (m.phase != phase) {
    Fiber* f = g_sched.cur;
    to_scheduler();
    f->state = State::Ready;
  }
}

void mbarrier_wait(uint32_t bar, int parity) {
  Block& b = *g_sched.block;
  Fiber* f = g_sched.cur;
  for (;;) {
    const MBarrier& m = mbar_state(bar);
    if (static_cast<int>(m.phase & 1) != (parity & 1)) return;  // that phase has completed
    // Deferred copies on this barrier land now, in issue order: the latest a GPU could.
    bool landed = false;
    for (auto it = b.tma.begin(); it != b.tma.end();) {
      if (it->bar != bar) {
        ++it;
        continue;
      }
      const TmaCopy c = *it;
      it = b.tma.erase(it);
      land_tma(c);
      landed = true;
    }
    if (landed) continue;
    f->state = State::AtMbarrier;
    f->wait_bar = bar;
    to_scheduler();
  }
}

void tma_load(uint32_t dst, const void* tensor_map, const int* coords, int rank, uint32_t bar) {
  TmaCopy c{dst, {}, {}, bar};
  std::memcpy(&c.map, tensor_map, sizeof c.map);
  if (c.map.magic != TensorMap::kMagic)
    fail("bulk tensor copy: the tensor map was not written by cuTensorMapEncodeTiled");
  if (static_cast<uint32_t>(rank) != c.map.rank)
    fail("bulk tensor copy: the instruction's dimensions differ from the tensor map's rank");
  for (int d = 0; d < rank; ++d) c.c[d] = coords[d];
  if (dst % 128 != 0)
    fail("bulk tensor copy: the shared-memory destination is not 128-byte aligned");
  if (c.map.swizzle_bytes == 128 && dst % 1024 != 0)
    fail("bulk tensor copy: a 128-byte-swizzled box must start on the 1024-byte pattern boundary");
  (void)mbar_state(bar);
  if (schedule().async == AsyncMode::Eager) {
    land_tma(c);
  } else {
    g_sched.block->tma.push_back(c);
    // A deferred copy lands when a thread waits on its mbarrier. Threads already asleep there
    // went to sleep before it existed: wake them to land it, as the copy engine would complete it
    // on its own. (Without this, consumers that wait before the producer issues slept forever:
    // a deadlock the GPU does not have, seen in one shuffled order of the TMA GEMM's test.)
    wake_mbarrier_waiters(bar);
  }
}

void setmaxnreg(int regs) {
  if (regs < 24 || regs > 256 || regs % 8 != 0)
    fail("setmaxnreg: the register count is not a multiple of 8 in 24..256");
}

// ---- launches ----------------------------------------------------------------------------------
Order schedule_order() { return schedule().order; }
void set_schedule_order(Order order) { schedule().order = order; }
AsyncMode async_mode() { return schedule().async; }
void set_async_mode(AsyncMode mode) { schedule().async = mode; }

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  std::string bad;
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64)
    bad = "block of " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
          std::to_string(block.z) + " threads (at most 1024, z at most 64)";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
           grid.z > 65535)
    bad = "grid of " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
          std::to_string(grid.z) + " blocks";
  else if (smem > max_dynamic_smem(kernel))
    bad = std::to_string(smem) + " bytes of dynamic shared memory (this kernel's limit is " +
          std::to_string(max_dynamic_smem(kernel)) +
          "; above 48 KiB needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize))";
  if (!bad.empty()) {
    set_launch_error(cudaErrorInvalidConfiguration, "invalid launch configuration: " + bad);
    return;
  }
  const uint64_t nblocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  if (nblocks > 0x7fffffffu) {
    set_launch_error(cudaErrorInvalidConfiguration,
                     "cuda_emu: a grid of " + std::to_string(nblocks) +
                         " blocks is more than the emulator runs (2^31 - 1)");
    return;
  }
  Block b;
  b.nthreads = static_cast<int>(nthreads);
  b.warps.resize(static_cast<size_t>((nthreads + 31) / 32));
  b.body = &body;
  std::vector<int> blocks;
  schedule().permutation(blocks, static_cast<int>(nblocks));
  for (const int linear : blocks) {
    const unsigned x = static_cast<unsigned>(linear) % grid.x,
                   y = static_cast<unsigned>(linear) / grid.x % grid.y,
                   z = static_cast<unsigned>(linear) / grid.x / grid.y;
    std::memset(g_dynamic_smem, 0xff, smem);  // poison: NaN in f32 and bf16
    g_dynamic_smem_bytes = smem;
    b.live = b.nthreads;
    b.at_barrier = 0;
    for (Warp& w : b.warps) {  // the slots need no reset: a collective writes before reading
      w.mask = 0;
      w.arrived = 0;
      w.gen = 0;
    }
    int i = 0;
    for (unsigned tz = 0; tz < block.z; ++tz)
      for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx, ++i) {
          Fiber& f = fiber(i);
          f.ids.thread = uint3{tx, ty, tz};
          f.ids.block = uint3{x, y, z};
          f.ids.block_dim = block;
          f.ids.grid_dim = grid;
          f.linear = i;
        }
    if (!run_block(b)) {
      set_launch_error(cudaErrorLaunchFailure, "kernel failed in the emulator: " + b.error +
                                                   " (block " + std::to_string(x) + "," +
                                                   std::to_string(y) + "," + std::to_string(z) +
                                                   ")");
      g_sched.block = nullptr;
      return;
    }
    g_sched.block = nullptr;
  }
}

size_t default_dynamic_smem() { return kDefaultDynamicSmem; }
size_t max_opt_in_dynamic_smem() { return kMaxDynamicSmem; }

}  // namespace cuda_emu
