// The process group, deadline-bounded MPI collectives and the gradient sum (see distributed.h).
//
// Gradient sum on the CPU: the trainable gradients are copied into one flat f32 buffer, bucket by
// bucket (train.bucket_mb, 25 MiB by default); each bucket's MPI_Iallreduce(SUM, in place) starts
// as soon as it is packed, so packing bucket k+1 overlaps the reduction of bucket k; then every
// bucket is waited for against the deadline and copied back into fresh gradient tensors.
// On CUDA the same buckets go through ncclAllReduce on a side stream, each one waiting (an event)
// only for its own packing copies on the compute stream.
//
// The engine has no per-parameter gradient hook (autograd/engine.cpp accumulates into leaves with
// no callback), so the buckets start after the last micro-batch's backward, not during it: the
// communication overlaps the packing and the other buckets, not the backward compute.
#include "train/distributed.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>

#include "tensor/cuda_runtime.h"

#ifndef PSVAE_WITH_MPI
#define PSVAE_WITH_MPI 0
#endif
#ifndef PSVAE_WITH_NCCL
#define PSVAE_WITH_NCCL 0
#endif
#if PSVAE_WITH_MPI
#include <mpi.h>
#endif
#if PSVAE_WITH_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace psvae::train::dist {

namespace {

using Clock = std::chrono::steady_clock;

// A positive integer from the environment, or -1.
long env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return -1;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && x >= 0) ? x : -1;
}

// Whether a launcher started this process, and the world size it announces (-1: unknown).
bool launcher_present(long* size) {
  *size = -1;
  for (const char* k : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    long s = env_int(k);
    if (s > 0) {
      *size = s;
      return true;
    }
  }
  long r = env_int("PMIX_RANK");
  if (r >= 0) {
    if (r > 0) *size = r + 1;  // at least
    return true;
  }
  return false;
}

struct Group {
  bool launched = false;
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
  std::vector<std::string> where;  // by rank: "pid 4242 on node-b"
#if PSVAE_WITH_MPI
  MPI_Comm coll = MPI_COMM_NULL;  // the collectives
  MPI_Comm side = MPI_COMM_NULL;  // arrival notices, kept apart from the collectives
  // Arrival notices: each collective entered gets the next sequence number; rank r != 0 sends it
  // to rank 0, rank 0 sends it to everyone. heard[r] is the last number received from rank r
  // (rank 0 hears every rank; the others hear rank 0 only).
  int64_t seq = 0;
  std::vector<int64_t> heard;
  std::vector<int> sources;  // the ranks this rank hears from
  std::vector<int64_t> inbox;
  std::vector<MPI_Request> recvs;
  std::vector<std::pair<MPI_Request, std::unique_ptr<int64_t>>> sends;
#endif
};

Group& group() {
  static Group g;
  return g;
}

#if PSVAE_WITH_MPI
constexpr int kArrivalTag = 7;

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(fmt::format("rank {}: {} failed: {}", group().rank, what,
                                       std::string(msg, static_cast<size_t>(len))));
}

void post_receive(Group& g, size_t s) {
  mpi_check(MPI_Irecv(&g.inbox[s], 1, MPI_INT64_T, g.sources[s], kArrivalTag, g.side, &g.recvs[s]),
            "MPI_Irecv (arrival notice)");
}

// Takes in every arrival notice received so far and forgets the sends that completed.
void poll_arrivals(Group& g) {
  for (size_t s = 0; s < g.recvs.size(); ++s) {
    for (;;) {
      int done = 0;
      MPI_Test(&g.recvs[s], &done, MPI_STATUS_IGNORE);
      if (!done) break;
      int64_t& h = g.heard[static_cast<size_t>(g.sources[s])];
      h = std::max(h, g.inbox[s]);
      post_receive(g, s);
    }
  }
  g.sends.erase(std::remove_if(g.sends.begin(), g.sends.end(),
                               [](auto& sr) {
                                 int done = 0;
                                 MPI_Test(&sr.first, &done, MPI_STATUS_IGNORE);
                                 return done != 0;
                               }),
                g.sends.end());
}

// Entering the next collective: tell the ranks that watch for this one.
void announce(Group& g) {
  // Take in the notices that arrived meanwhile: a collective that completes at its first test
  // never polls, and unread notices would pile up over a long run.
  poll_arrivals(g);
  ++g.seq;
  auto send = [&](int dst) {
    auto buf = std::make_unique<int64_t>(g.seq);
    MPI_Request req;
    mpi_check(MPI_Isend(buf.get(), 1, MPI_INT64_T, dst, kArrivalTag, g.side, &req),
              "MPI_Isend (arrival notice)");
    g.sends.emplace_back(req, std::move(buf));
  };
  if (g.rank == 0) {
    for (int r = 1; r < g.world; ++r) send(r);
  } else {
    send(0);
  }
}

void close_arrivals(Group& g) {
  poll_arrivals(g);
  for (MPI_Request& r : g.recvs) {
    MPI_Cancel(&r);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
  }
  g.recvs.clear();
  // Small notices complete eagerly; whatever is left is waited for (every rank is alive here).
  for (auto& sr : g.sends) MPI_Wait(&sr.first, MPI_STATUS_IGNORE);
  g.sends.clear();
}
#endif

}  // namespace

// ---- the process group -------------------------------------------------------------------------

bool built_with_mpi() { return PSVAE_WITH_MPI != 0; }
bool built_with_nccl() { return PSVAE_WITH_NCCL != 0; }
bool launched() { return group().launched; }
int rank() { return group().rank; }
int world() { return group().world; }
int local_rank() { return group().local_rank; }
bool is_root() { return group().rank == 0; }

std::string describe_rank(int r) {
  const Group& g = group();
  if (r >= 0 && static_cast<size_t>(r) < g.where.size())
    return fmt::format("rank {} ({})", r, g.where[static_cast<size_t>(r)]);
  return fmt::format("rank {}", r);
}

void init_from_environment(int* argc, char*** argv) {
  Group& g = group();
  if (g.launched) return;
  long size = -1;
  if (!launcher_present(&size)) return;
#if !PSVAE_WITH_MPI
  if (size > 1)
    throw std::runtime_error(fmt::format(
        "started by an MPI launcher with {} ranks, but this psvae was built without MPI "
        "(-DPSVAE_MPI=OFF); install libopenmpi-dev and rebuild to train on several ranks",
        size));
  (void)argc;
  (void)argv;
#else
  int provided = 0;
  // FUNNELED: only the main thread calls MPI (the loader's threads never do).
  mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  g.launched = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g.world);
  mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &g.coll), "MPI_Comm_dup");
  mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &g.side), "MPI_Comm_dup");
  MPI_Comm node = MPI_COMM_NULL;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g.rank, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  MPI_Comm_rank(node, &g.local_rank);
  MPI_Comm_size(node, &g.local_world);
  MPI_Comm_free(&node);

  // pid and host of every rank, for messages (a blocking collective: at start-up a rank that
  // fails to come up is the launcher's business).
  char host[64] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string me = fmt::format("pid {} on {}", static_cast<long>(getpid()), host);
  std::vector<char> mine(128, '\0'), all(128 * static_cast<size_t>(g.world), '\0');
  std::memcpy(mine.data(), me.data(), std::min<size_t>(me.size(), 127));
  mpi_check(MPI_Allgather(mine.data(), 128, MPI_CHAR, all.data(), 128, MPI_CHAR, MPI_COMM_WORLD),
            "MPI_Allgather (rank names)");
  for (int r = 0; r < g.world; ++r) g.where.emplace_back(all.data() + 128 * r);

  g.heard.assign(static_cast<size_t>(g.world), 0);
  if (g.rank == 0) {
    for (int r = 1; r < g.world; ++r) g.sources.push_back(r);
  } else {
    g.sources.push_back(0);
  }
  g.inbox.assign(g.sources.size(), 0);
  g.recvs.assign(g.sources.size(), MPI_REQUEST_NULL);
  for (size_t s = 0; s < g.sources.size(); ++s) post_receive(g, s);

  // One GPU per rank: local rank k sees GPU k as cuda:0, unless the launcher (or the user) already
  // gave each rank its own single GPU. Nothing has touched CUDA yet.
  if (g.local_world > 1) {
    const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES");
    std::vector<std::string> ids;
    if (cvd == nullptr) {
      for (int k = 0; k < g.local_world; ++k) ids.push_back(std::to_string(k));
    } else {
      std::string s = cvd;
      size_t p = 0;
      while (p <= s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        if (q > p) ids.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    }
    if (ids.size() >= static_cast<size_t>(g.local_world))
      setenv("CUDA_VISIBLE_DEVICES", ids[static_cast<size_t>(g.local_rank)].c_str(), 1);
  }
#endif
}

int finalize(int exit_code) {
  Group& g = group();
  if (!g.launched) return exit_code;
#if PSVAE_WITH_MPI
  if (exit_code != 0 && g.world > 1) {
    // The others may be inside a collective waiting for this rank: stop them all now rather than
    // let them wait for their timeout.
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    return exit_code;  // not reached
  }
  close_arrivals(g);
  MPI_Comm_free(&g.side);
  MPI_Comm_free(&g.coll);
  MPI_Finalize();
#endif
  g.launched = false;
  return exit_code;
}

// ---- sharding ----------------------------------------------------------------------------------

int64_t shard_size(int64_t global, int r, int w) {
  if (w <= 1) return global;
  return r < global ? (global - r + w - 1) / w : 0;
}

void shard_loader(LoaderOptions& lo) {
  lo.rank = group().rank;
  lo.world = group().world;
}

std::vector<Bucket> plan_buckets(const std::vector<int64_t>& numels, size_t elem_bytes,
                                 size_t bucket_bytes) {
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes / elem_bytes));
  std::vector<Bucket> out;
  int64_t offset = 0;
  for (size_t i = 0; i < numels.size(); ++i) {
    if (out.empty() || (out.back().numel > 0 && out.back().numel + numels[i] > cap)) {
      Bucket b;
      b.first = b.last = i;
      b.offset = offset;
      out.push_back(b);
    }
    out.back().last = i + 1;
    out.back().numel += numels[i];
    offset += numels[i];
  }
  return out;
}

// ---- Collectives -------------------------------------------------------------------------------

struct Collectives::Impl {
  std::vector<ag::Var> params;
  std::vector<int64_t> numels, offsets;  // per parameter, in the flat gradient
  std::vector<Bucket> buckets;
  Device device;
  CollectiveOptions opt;
  int64_t step = 0;
  std::vector<float> host_flat;  // CPU gradients

#if PSVAE_WITH_NCCL
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
  float* dev_flat = nullptr;
  size_t dev_flat_bytes = 0;
#endif

  std::string at_step(const std::string& what) const {
    return fmt::format("{} of step {}", what, step + 1);
  }

#if PSVAE_WITH_MPI
  // Polls `reqs` until they complete; past the deadline, names the rank that never arrived and
  // throws. The sleep backs off from 10 us to 1 ms so that a waiting rank leaves the cores to one
  // still computing (oversubscribed CPU runs).
  void wait_all(std::vector<MPI_Request>& reqs, const std::string& what) {
    Group& g = group();
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(opt.timeout_s);
    int64_t sleep_us = 10;
    for (int spin = 0;; ++spin) {
      int done_all = 0;
      mpi_check(
          MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done_all, MPI_STATUSES_IGNORE),
          what.c_str());
      if (done_all) return;
      poll_arrivals(g);
      if (Clock::now() >= deadline) {
        timed_out(reqs, what);
        return;
      }
      if (spin > 100) {
        std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        sleep_us = std::min<int64_t>(1000, sleep_us * 2);
      }
    }
  }

  [[noreturn]] void fail(const std::string& msg) {
    throw std::runtime_error(
        fmt::format("{}: {}; stopping every rank (a rank that died, hangs or is far slower than "
                    "the others; rank 0's checkpoints and sample grids count against the timeout)",
                    describe_rank(group().rank), msg));
  }

  // Called past the deadline: returns only when the collective completes during the grace period
  // given to rank 0 (which names the missing rank and stops the job).
  void timed_out(std::vector<MPI_Request>& reqs, const std::string& what) {
    Group& g = group();
    const std::string within =
        fmt::format("within train.collective_timeout_s = {:g} s", opt.timeout_s);
    std::vector<int> missing;
    for (int r : g.sources)
      if (g.heard[static_cast<size_t>(r)] < g.seq) missing.push_back(r);
    if (!missing.empty()) {
      std::string names;
      for (int r : missing) names += (names.empty() ? "" : ", ") + describe_rank(r);
      fail(fmt::format("{} did not reach the {} {}", names, what, within));
    }
    // Rank 0 heard from everyone it watches (the others watch rank 0 only): give rank 0, which
    // knows who is missing, time to say so and stop the job.
    const auto grace = Clock::now() + std::chrono::duration<double>(std::min(opt.timeout_s, 10.0));
    while (Clock::now() < grace) {
      int done_all = 0;
      MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done_all, MPI_STATUSES_IGNORE);
      if (done_all) return;
      poll_arrivals(g);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    fail(fmt::format("the {} did not complete {}{}", what, within,
                     g.rank == 0 ? " although every rank reached it (an MPI or network failure)"
                                 : "; rank 0 reached it, so another rank is missing"));
  }
#endif

#if PSVAE_WITH_NCCL
  static void cuda_ok(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
      throw std::runtime_error(fmt::format("{}: {} failed: {}", describe_rank(group().rank), what,
                                           cudaGetErrorString(e)));
  }
  static void nccl_ok(ncclResult_t r, const char* what) {
    if (r != ncclSuccess)
      throw std::runtime_error(fmt::format("{}: {} failed: {}", describe_rank(group().rank), what,
                                           ncclGetErrorString(r)));
  }

  void init_nccl() {
    Group& g = group();
    cuda_ok(cudaSetDevice(device.index), "cudaSetDevice");
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (g.rank == 0) nccl_ok(ncclGetUniqueId(&id), "ncclGetUniqueId");
    announce(g);
    std::vector<MPI_Request> req(1);
    mpi_check(MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, g.coll, req.data()), "MPI_Ibcast");
    wait_all(req, "broadcast of the NCCL unique id");
    // Blocking init: every rank answered the broadcast just above, so all are alive and joining.
    nccl_ok(ncclCommInitRank(&comm, g.world, id, g.rank), "ncclCommInitRank");
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_ok(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
    cuda_ok(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  }

  // Host-side wait for the side stream's `done` event against the deadline; aborts the
  // communicator (so no kernel stays stuck) and throws when it passes.
  void wait_nccl(const std::string& what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(opt.timeout_s);
    int64_t sleep_us = 5;
    for (;;) {
      cudaError_t e = cudaEventQuery(done);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) cuda_ok(e, what.c_str());
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        ncclCommAbort(comm);
        comm = nullptr;
        nccl_ok(async, what.c_str());
      }
      if (Clock::now() >= deadline) {
        ncclCommAbort(comm);
        comm = nullptr;
        throw std::runtime_error(fmt::format(
            "{}: the {} did not complete within train.collective_timeout_s = {:g} s (a rank died "
            "or hangs inside NCCL); stopping every rank",
            describe_rank(group().rank), what, opt.timeout_s));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
      sleep_us = std::min<int64_t>(500, sleep_us * 2);
    }
  }

  void allreduce_gradients_nccl(const std::vector<bool>& defined_anywhere) {
    const int dev = device.index;
    auto compute = static_cast<cudaStream_t>(cuda::current_stream(dev));
    for (const Bucket& b : buckets) {
      for (size_t i = b.first; i < b.last; ++i) {
        float* dst = dev_flat + offsets[i];
        const Tensor& gr = params[i].grad();
        if (gr.defined())
          cuda::memcpy_d2d(dst, gr.raw_data(), static_cast<size_t>(numels[i]) * sizeof(float), dev);
        else
          cuda::fill_pattern(dst, numels[i], sizeof(float), 0, dev);
      }
      // The side stream waits for this bucket's copies only, then sums it while the compute
      // stream packs the next one.
      cuda_ok(cudaEventRecord(ready, compute), "cudaEventRecord");
      cuda_ok(cudaStreamWaitEvent(stream, ready, 0), "cudaStreamWaitEvent");
      nccl_ok(ncclAllReduce(dev_flat + b.offset, dev_flat + b.offset, static_cast<size_t>(b.numel),
                            ncclFloat32, ncclSum, comm, stream),
              "ncclAllReduce");
    }
    cuda_ok(cudaEventRecord(done, stream), "cudaEventRecord");
    wait_nccl(at_step("gradient all-reduce (NCCL)"));
    for (size_t i = 0; i < params.size(); ++i) {
      if (!defined_anywhere[i]) continue;
      Tensor fresh = Tensor::empty(params[i].shape(), DType::F32, device);
      cuda::memcpy_d2d(fresh.raw_data(), dev_flat + offsets[i],
                       static_cast<size_t>(numels[i]) * sizeof(float), dev);
      params[i].set_grad(fresh);
    }
  }
#endif
};

Collectives::Collectives(std::vector<ag::Var> params, Device device, const CollectiveOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (!group().launched)
    throw std::logic_error("dist::Collectives needs an MPI launch (dist::launched())");
  m.params = std::move(params);
  m.device = device;
  m.opt = opt;
  int64_t offset = 0;
  for (const ag::Var& p : m.params) {
    if (p.dtype() != DType::F32)
      throw std::runtime_error(fmt::format(
          "distributed training sums f32 gradients; a trainable parameter of shape {} is {}",
          p.shape().str(), dtype_name(p.dtype())));
    if (p.device() != device)
      throw std::runtime_error(fmt::format(
          "distributed training needs every trainable parameter on {}; one of shape {} is on {}",
          device.str(), p.shape().str(), p.device().str()));
    m.numels.push_back(p.numel());
    m.offsets.push_back(offset);
    offset += p.numel();
  }
  m.buckets = plan_buckets(m.numels, sizeof(float), opt.bucket_bytes);
  for (const Bucket& b : m.buckets)
    if (b.numel > INT_MAX)
      throw std::runtime_error(fmt::format(
          "a parameter of {} elements exceeds one MPI all-reduce (2^31 - 1 elements)", b.numel));
  if (device.is_cuda()) {
#if PSVAE_WITH_NCCL
    m.init_nccl();
    m.dev_flat_bytes = static_cast<size_t>(offset) * sizeof(float);
    m.dev_flat = static_cast<float*>(cuda::device_alloc(m.dev_flat_bytes, device.index));
#else
    throw std::runtime_error(
        "distributed training on CUDA needs NCCL, and this psvae was built without it (a CUDA "
        "build finds nccl.h and libnccl beside the toolkit)");
#endif
  } else {
    m.host_flat.resize(static_cast<size_t>(offset));
  }
}

Collectives::~Collectives() {
#if PSVAE_WITH_NCCL
  Impl& m = *impl_;
  if (m.dev_flat != nullptr) {
    cuda::synchronize(m.device.index);
    if (m.stream != nullptr) cudaStreamSynchronize(m.stream);
    cuda::device_free(m.dev_flat, m.device.index);
  }
  if (m.comm != nullptr) ncclCommDestroy(m.comm);
  if (m.ready != nullptr) cudaEventDestroy(m.ready);
  if (m.done != nullptr) cudaEventDestroy(m.done);
  if (m.stream != nullptr) cudaStreamDestroy(m.stream);
#endif
}

void Collectives::set_step(int64_t step) { impl_->step = step; }

size_t Collectives::num_buckets() const { return impl_->buckets.size(); }

#if PSVAE_WITH_MPI

void Collectives::allreduce_sum(std::vector<double>& v, const std::string& what) {
  Group& g = group();
  announce(g);
  std::vector<MPI_Request> req(1);
  mpi_check(MPI_Iallreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM,
                           g.coll, req.data()),
            "MPI_Iallreduce");
  impl_->wait_all(req, impl_->at_step(what));
}

std::vector<int64_t> Collectives::allgather(int64_t value, const std::string& what) {
  Group& g = group();
  announce(g);
  std::vector<int64_t> out(static_cast<size_t>(g.world));
  std::vector<MPI_Request> req(1);
  mpi_check(MPI_Iallgather(&value, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, g.coll, req.data()),
            "MPI_Iallgather");
  impl_->wait_all(req, what);
  return out;
}

void Collectives::broadcast(const std::vector<ag::Var>& vars, const std::string& what) {
  Group& g = group();
  Impl& m = *impl_;
  // Into fresh tensors, then set_data: a parameter's storage may be a read-only memory map of the
  // checkpoint it was loaded from.
  std::vector<Tensor> fresh(vars.size());
  std::vector<MPI_Request> reqs;
  bool any_cuda = false;
  for (size_t i = 0; i < vars.size(); ++i) {
    const Tensor& t = vars[i].data();
    if (t.nbytes() > static_cast<size_t>(INT_MAX))
      throw std::runtime_error(
          fmt::format("{}: a tensor of {} bytes exceeds one MPI broadcast", what, t.nbytes()));
    if (t.device().is_cuda()) {
      any_cuda = true;
      continue;
    }
    fresh[i] = g.rank == 0 ? t : Tensor::empty(t.shape(), t.dtype(), t.device());
    announce(g);
    reqs.emplace_back();
    mpi_check(MPI_Ibcast(fresh[i].raw_data(), static_cast<int>(t.nbytes()), MPI_BYTE, 0, g.coll,
                         &reqs.back()),
              "MPI_Ibcast");
  }
  if (!reqs.empty()) m.wait_all(reqs, what);
  if (any_cuda) {
#if PSVAE_WITH_NCCL
    if (m.comm == nullptr)
      throw std::runtime_error(
          fmt::format("{}: CUDA tensors but the trainer is on {}", what, m.device.str()));
    auto compute = static_cast<cudaStream_t>(cuda::current_stream(m.device.index));
    Impl::cuda_ok(cudaEventRecord(m.ready, compute), "cudaEventRecord");
    Impl::cuda_ok(cudaStreamWaitEvent(m.stream, m.ready, 0), "cudaStreamWaitEvent");
    Impl::nccl_ok(ncclGroupStart(), "ncclGroupStart");
    for (size_t i = 0; i < vars.size(); ++i) {
      const Tensor& t = vars[i].data();
      if (!t.device().is_cuda()) continue;
      fresh[i] = g.rank == 0 ? t : Tensor::empty(t.shape(), t.dtype(), t.device());
      Impl::nccl_ok(ncclBroadcast(t.raw_data(), fresh[i].raw_data(), t.nbytes(), ncclUint8, 0,
                                  m.comm, m.stream),
                    "ncclBroadcast");
    }
    Impl::nccl_ok(ncclGroupEnd(), "ncclGroupEnd");
    Impl::cuda_ok(cudaEventRecord(m.done, m.stream), "cudaEventRecord");
    m.wait_nccl(what);
#else
    throw std::runtime_error(fmt::format("{}: CUDA tensors need NCCL, not in this build", what));
#endif
  }
  if (g.rank != 0)
    for (size_t i = 0; i < vars.size(); ++i) {
      ag::Var v = vars[i];
      v.set_data(fresh[i]);
    }
}

void Collectives::allreduce_gradients(const std::vector<bool>& defined_anywhere) {
  Impl& m = *impl_;
  Group& g = group();
  if (defined_anywhere.size() != m.params.size())
    throw std::logic_error("allreduce_gradients: one flag per trainable parameter");
  if (m.device.is_cuda()) {
#if PSVAE_WITH_NCCL
    m.allreduce_gradients_nccl(defined_anywhere);
#endif
    return;
  }
  std::vector<MPI_Request> reqs;
  reqs.reserve(m.buckets.size());
  for (const Bucket& b : m.buckets) {
    for (size_t i = b.first; i < b.last; ++i) {
      float* dst = m.host_flat.data() + m.offsets[i];
      const Tensor& gr = m.params[i].grad();
      if (gr.defined())
        std::memcpy(dst, gr.data<float>(), static_cast<size_t>(m.numels[i]) * sizeof(float));
      else
        std::fill(dst, dst + m.numels[i], 0.0f);
    }
    announce(g);
    reqs.emplace_back();
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, m.host_flat.data() + b.offset, static_cast<int>(b.numel),
                             MPI_FLOAT, MPI_SUM, g.coll, &reqs.back()),
              "MPI_Iallreduce");
    int ignored = 0;  // a nudge: MPI progresses non-blocking collectives inside its calls
    MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &ignored, MPI_STATUSES_IGNORE);
  }
  m.wait_all(reqs, m.at_step("gradient all-reduce"));
  for (size_t i = 0; i < m.params.size(); ++i) {
    if (!defined_anywhere[i]) continue;
    Tensor fresh = Tensor::empty(m.params[i].shape(), DType::F32, Device::cpu());
    std::memcpy(fresh.data<float>(), m.host_flat.data() + m.offsets[i],
                static_cast<size_t>(m.numels[i]) * sizeof(float));
    m.params[i].set_grad(fresh);
  }
}

#else  // built without MPI: launched() is never true, so the trainer never calls these.

void Collectives::allreduce_sum(std::vector<double>&, const std::string&) {}
std::vector<int64_t> Collectives::allgather(int64_t value, const std::string&) { return {value}; }
void Collectives::broadcast(const std::vector<ag::Var>&, const std::string&) {}
void Collectives::allreduce_gradients(const std::vector<bool>&) {}

#endif

}  // namespace psvae::train::dist
