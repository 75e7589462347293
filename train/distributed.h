// Data-parallel training over several processes (docs/distributed.md): rank discovery, MPI
// collectives that give up after a deadline instead of hanging, and the per-step gradient sum
// (MPI_Iallreduce over flattened buckets on the CPU, NCCL all-reduce on a side stream on CUDA).
//
// Launch: `mpirun -np N psvae train-...`. main() calls init_from_environment(), which starts MPI
// only when a launcher started the process (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE in the
// environment): a plain `psvae ...` never touches MPI, so it behaves exactly as a build without
// it (MPI_Init as a singleton would spawn an orted helper and can fail in sandboxes).
//
// Failure: every collective is non-blocking and polled against train.collective_timeout_s. Each
// rank announces to rank 0 (and rank 0 to everyone) the sequence number of the collective it
// enters, on a separate communicator, so the rank that times out can name who never arrived:
// "rank 1 (pid 4242 on node-b) did not reach the gradient all-reduce of step 13 within ...".
// The exception ends the command with status 1 and finalize() turns that into MPI_Abort, which
// stops every rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "tensor/device.h"
#include "train/data/loader.h"

namespace psvae::train::dist {

// ---- the process group (one per process) --------------------------------------------------------

// First thing in main(). Under a launcher: MPI_Init_thread(FUNNELED), rank / world from MPI, the
// ranks' pids and hosts gathered for messages, and, when several ranks share a node and
// CUDA_VISIBLE_DEVICES does not already name exactly one GPU, CUDA_VISIBLE_DEVICES narrowed to
// the rank's GPU (local rank k sees GPU k as cuda:0), before anything initialises CUDA. Throws
// when launched with several ranks by a psvae built without MPI.
void init_from_environment(int* argc, char*** argv);

// Last thing in main(), with the command's exit code. MPI_Finalize when it is 0; otherwise, with
// several ranks, MPI_Abort(exit_code) so that the other ranks stop instead of waiting for this one
// in their next collective. Returns the exit code to use.
int finalize(int exit_code);

bool launched();  // MPI is initialised: the trainer synchronises (even with one rank)
int rank();
int world();
int local_rank();  // index of this rank among the ranks on its node
bool is_root();    // rank 0: the one that writes checkpoints, logs, grids and reports
// "rank 1 (pid 4242 on node-b)"; "rank 1" before the group is known.
std::string describe_rank(int r);
bool built_with_mpi();
bool built_with_nccl();

// ---- sharding ----------------------------------------------------------------------------------

// Images of a global batch of `global` that rank `r` of `w` takes (entries r, r+w, ...: the
// loader's sharding, train/data/loader.h).
int64_t shard_size(int64_t global, int r, int w);
// Sets lo.rank and lo.world from the process group (no change in a single process).
void shard_loader(LoaderOptions& lo);

// The Philox counter distance between the ranks' random streams: rank r draws its step's noise
// from offset + r * kRankStreamStride, so no two ranks share noise. 2^50 counters = 4.5e15 values
// per rank for the whole run, for up to 16384 ranks before the 64-bit offset wraps.
constexpr uint64_t kRankStreamStride = uint64_t{1} << 50;

// ---- gradient buckets --------------------------------------------------------------------------

// A run of consecutive parameters [first, last) whose gradients travel in one all-reduce: elements
// [offset, offset + numel) of the flattened gradient.
struct Bucket {
  size_t first = 0, last = 0;
  int64_t offset = 0, numel = 0;
};
// Buckets of at most `bucket_bytes` (a parameter larger than that gets a bucket of its own),
// filled in parameter order. The order is the same on every rank, which is what makes the
// collectives match.
std::vector<Bucket> plan_buckets(const std::vector<int64_t>& numels, size_t elem_bytes,
                                 size_t bucket_bytes);

// ---- the trainer's collectives -----------------------------------------------------------------

struct CollectiveOptions {
  double timeout_s = 300;           // train.collective_timeout_s
  size_t bucket_bytes = 25u << 20;  // train.bucket_mb
};

// The collectives of one training run, over the whole process group. Every rank must make the same
// calls in the same order. Each one throws std::runtime_error naming the missing rank when it does
// not complete within the timeout.
class Collectives {
 public:
  // `params`: the trainable parameters (f32), all on `device`. On CUDA this creates the NCCL
  // communicator (its unique id broadcast through MPI) and a side stream.
  Collectives(std::vector<ag::Var> params, Device device, const CollectiveOptions& opt);
  ~Collectives();
  Collectives(const Collectives&) = delete;
  Collectives& operator=(const Collectives&) = delete;

  // The optimiser step being computed, for messages.
  void set_step(int64_t step);
  // Element-wise sum of `v` over the ranks, in place (host doubles: losses, flags, counts).
  void allreduce_sum(std::vector<double>& v, const std::string& what);
  // Every rank's `value`, by rank.
  std::vector<int64_t> allgather(int64_t value, const std::string& what);
  // Overwrites `vars` (parameters on any device, any dtype) with rank 0's values.
  void broadcast(const std::vector<ag::Var>& vars, const std::string& what);
  // Sums the trainable parameters' gradients over the ranks, in place. A parameter whose gradient
  // is undefined here counts as zeros; its gradient is left undefined only when
  // defined_anywhere[i] is false (no rank produced one), as AdamW then skips it everywhere.
  void allreduce_gradients(const std::vector<bool>& defined_anywhere);

  size_t num_buckets() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace psvae::train::dist
