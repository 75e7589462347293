// The loader (semantics in loader.h). Every random choice is a pure function of (seed, epoch,
// position), and each batch is assembled from its position alone, so the threads only change
// when a batch is ready, never what it holds: any workers/prefetch setting, and a resume from a
// stored LoaderState, give the same batches bit for bit.
//
// Random streams: Philox4x32-10 keyed by the seed, with the 128-bit counter
//   (word 0, word 1) = index inside the stream, word 2 = epoch (low 32 bits),
//   word 3 = stream tag | (epoch >> 32) << 8,
// tags 1 (permutation draws) and 2 (flips). tensor/random.h's fills keep words 2 and 3 at zero, so
// the data order never shares numbers with model initialisation under the same seed.
#include "train/data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <iostream>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <thread>

#include "tensor/philox.h"

namespace psvae::train {

namespace {

constexpr uint32_t kPermStream = 1, kFlipStream = 2;

philox::U32x4 stream_block(uint64_t seed, uint32_t tag, uint64_t epoch, uint64_t index) {
  philox::U32x4 ctr{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                     static_cast<uint32_t>(epoch), tag | static_cast<uint32_t>(epoch >> 32) << 8}};
  return philox::philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Fisher-Yates driven by 64-bit Philox draws (two words per draw). The modulo's bias is below
// n / 2^64, far below anything a training run could notice.
std::vector<int64_t> permutation(uint64_t seed, uint64_t epoch, int64_t n, bool shuffle) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  if (!shuffle) return p;
  for (int64_t j = n - 1, k = 0; j > 0; --j, ++k) {
    const philox::U32x4 b = stream_block(seed, kPermStream, epoch, static_cast<uint64_t>(k / 2));
    const int w = static_cast<int>(k % 2) * 2;
    const uint64_t r = static_cast<uint64_t>(b.v[w]) << 32 | b.v[w + 1];
    std::swap(p[static_cast<size_t>(j)], p[static_cast<size_t>(r % static_cast<uint64_t>(j + 1))]);
  }
  return p;
}

bool flip_at(uint64_t seed, uint64_t epoch, int64_t position) {
  return stream_block(seed, kFlipStream, epoch, static_cast<uint64_t>(position)).v[0] >> 31;
}

}  // namespace

struct Loader::Impl {
  // One batch on its way: slots are filled by the workers (each slot by one thread).
  struct Pending {
    LoaderState pos;
    std::shared_ptr<const std::vector<int64_t>> perm;
    Tensor images;  // (B, 3, S, S)
    std::vector<int64_t> labels, indices, bad;
    std::vector<std::string> captions;
    int remaining = 0;  // slots not yet done; guarded by Impl::mu
    std::exception_ptr error;
  };

  std::shared_ptr<const Dataset> ds;
  LoaderOptions opt;
  int64_t n = 0, bpe = 0, local = 0;
  int side = 0;

  // Main-thread state.
  LoaderState next_pos;   // the batch next() returns next
  LoaderState sched_pos;  // the batch to schedule next
  int64_t bad_total = 0;
  uint64_t perm_epoch = 0;
  std::shared_ptr<const std::vector<int64_t>> perm_cache;

  // Shared with the workers.
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::deque<std::pair<std::shared_ptr<Pending>, int64_t>> tasks;
  std::deque<std::shared_ptr<Pending>> pending;  // scheduled batches, in delivery order
  bool stop = false;
  std::vector<std::thread> threads;

  // What decoding has learned about bad entries (any thread).
  std::mutex bad_mu;
  std::set<int64_t> bad_indices;

  void advance(LoaderState& s) const {
    if (++s.batch == bpe) {
      s.batch = 0;
      ++s.epoch;
    }
  }

  std::shared_ptr<const std::vector<int64_t>> perm_for(uint64_t epoch) {
    if (!perm_cache || perm_epoch != epoch) {
      perm_cache = std::make_shared<const std::vector<int64_t>>(
          permutation(opt.seed, epoch, n, opt.shuffle));
      perm_epoch = epoch;
    }
    return perm_cache;
  }

  std::shared_ptr<Pending> make_pending(const LoaderState& pos) {
    auto p = std::make_shared<Pending>();
    p->pos = pos;
    p->perm = perm_for(pos.epoch);
    p->images = Tensor::empty({local, 3, side, side}, DType::F32);
    p->labels.assign(static_cast<size_t>(local), 0);
    p->indices.assign(static_cast<size_t>(local), 0);
    p->bad.assign(static_cast<size_t>(local), 0);
    p->captions.assign(static_cast<size_t>(local), "");
    p->remaining = static_cast<int>(local);
    return p;
  }

  bool known_bad(int64_t index) {
    std::lock_guard<std::mutex> lk(bad_mu);
    return bad_indices.count(index) != 0;
  }

  void mark_bad(int64_t index, const std::string& why) {
    std::lock_guard<std::mutex> lk(bad_mu);
    // The DataError message starts with the path, so this reads "skipping <path>: <reason>".
    if (bad_indices.insert(index).second) std::cerr << "warning: skipping " << why << "\n";
  }

  // Slot j of a batch: permutation position b*G + rank + j*W, or, when that entry cannot be
  // decoded, the first entry after it (wrapping round the epoch) that can.
  void decode_slot(Pending& p, int64_t j) {
    const int64_t position = p.pos.batch * opt.global_batch + opt.rank + j * opt.world;
    const std::vector<int64_t>& perm = *p.perm;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t index = perm[static_cast<size_t>((position + k) % n)];
      if (known_bad(index)) continue;
      Sample s;
      try {
        s = ds->get(index);
      } catch (const DataError& e) {
        mark_bad(index, e.what());
        continue;
      }
      store(p, j, index, k, s, opt.hflip && flip_at(opt.seed, p.pos.epoch, position));
      return;
    }
    throw DataError("loader: none of the " + std::to_string(n) + " entries of '" + ds->describe() +
                    "' can be decoded");
  }

  void store(Pending& p, int64_t j, int64_t index, int64_t skipped, const Sample& s, bool flip) {
    const Tensor& img = s.image;
    if (img.device() != Device::cpu() || img.dtype() != DType::F32 || img.rank() != 3 ||
        img.size(0) != 3 || img.size(1) != side || img.size(2) != side)
      throw std::runtime_error(s.source + ": dataset returned " + img.str() + ", expected (3, " +
                               std::to_string(side) + ", " + std::to_string(side) + ") f32 on cpu");
    const float* src = img.data<float>();
    float* dst = p.images.data<float>() + j * 3 * side * side;
    if (!flip) {
      std::memcpy(dst, src, static_cast<size_t>(3 * side * side) * sizeof(float));
    } else {
      for (int64_t row = 0; row < 3 * side; ++row)
        for (int64_t x = 0; x < side; ++x) dst[row * side + x] = src[row * side + side - 1 - x];
    }
    p.labels[static_cast<size_t>(j)] = s.label;
    p.indices[static_cast<size_t>(j)] = index;
    p.captions[static_cast<size_t>(j)] = s.caption;
    p.bad[static_cast<size_t>(j)] = skipped;
  }

  void worker() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      work_cv.wait(lk, [&] { return stop || !tasks.empty(); });
      if (stop) return;
      auto [p, j] = tasks.front();
      tasks.pop_front();
      lk.unlock();
      std::exception_ptr err;
      try {
        decode_slot(*p, j);
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      if (err && !p->error) p->error = err;
      if (--p->remaining == 0) done_cv.notify_all();
    }
  }

  // Keeps `prefetch` batches scheduled; called with mu held.
  void fill() {
    bool added = false;
    while (static_cast<int>(pending.size()) < opt.prefetch) {
      auto p = make_pending(sched_pos);
      advance(sched_pos);
      pending.push_back(p);
      for (int64_t j = 0; j < local; ++j) tasks.emplace_back(p, j);
      added = true;
    }
    if (added) work_cv.notify_all();
  }

  // Forgets everything scheduled; called with mu held. Workers busy on a dropped batch finish
  // into memory nobody reads (their shared_ptr keeps it alive).
  void drop_scheduled() {
    tasks.clear();
    pending.clear();
    sched_pos = next_pos;
  }

  Batch finish(Pending& p) {
    Batch b;
    b.images = p.images;
    b.labels = Tensor::from_vector(p.labels, Shape{local});
    b.captions = std::move(p.captions);
    b.indices = std::move(p.indices);
    for (int64_t k : p.bad) bad_total += k;
    return b;
  }
};

Loader::Loader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (!dataset) throw std::invalid_argument("loader: no dataset");
  if (opt.global_batch < 1)
    throw std::invalid_argument("loader: global batch must be at least 1, got " +
                                std::to_string(opt.global_batch));
  if (opt.world < 1 || opt.rank < 0 || opt.rank >= opt.world)
    throw std::invalid_argument("loader: rank " + std::to_string(opt.rank) + " of world size " +
                                std::to_string(opt.world) + " is not a valid shard");
  if (opt.global_batch % opt.world != 0)
    throw std::invalid_argument("loader: global batch " + std::to_string(opt.global_batch) +
                                " is not divisible by the world size " + std::to_string(opt.world));
  if (opt.workers < 0) throw std::invalid_argument("loader: workers must be >= 0");
  if (opt.prefetch < 1) throw std::invalid_argument("loader: prefetch must be >= 1");
  m.ds = std::move(dataset);
  m.opt = opt;
  m.n = m.ds->size();
  if (m.n < opt.global_batch)
    throw std::invalid_argument("loader: " + m.ds->describe() + " has " + std::to_string(m.n) +
                                " images, fewer than one global batch of " +
                                std::to_string(opt.global_batch));
  m.bpe = m.n / opt.global_batch;
  m.local = opt.global_batch / opt.world;
  m.side = m.ds->image_size();
  for (int t = 0; t < opt.workers; ++t) m.threads.emplace_back([&m] { m.worker(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->work_cv.notify_all();
  for (std::thread& t : impl_->threads) t.join();
}

Batch Loader::next() {
  Impl& m = *impl_;
  if (m.opt.workers == 0) {
    auto p = m.make_pending(m.next_pos);
    for (int64_t j = 0; j < m.local; ++j) m.decode_slot(*p, j);
    m.advance(m.next_pos);
    m.sched_pos = m.next_pos;
    return m.finish(*p);
  }
  std::shared_ptr<Impl::Pending> p;
  {
    std::unique_lock<std::mutex> lk(m.mu);
    m.fill();
    p = m.pending.front();
    m.done_cv.wait(lk, [&] { return p->remaining == 0; });
    m.pending.pop_front();
    if (p->error) {
      // Fatal for this batch: leave the position on it and rebuild the queue from there.
      m.drop_scheduled();
      std::rethrow_exception(p->error);
    }
    m.advance(m.next_pos);
    m.fill();  // keep decoding ahead while the caller works on this batch
  }
  return m.finish(*p);
}

LoaderState Loader::state() const { return impl_->next_pos; }

void Loader::set_state(const LoaderState& s) {
  Impl& m = *impl_;
  if (s.batch < 0 || s.batch >= m.bpe)
    throw std::invalid_argument("loader: resume position batch " + std::to_string(s.batch) +
                                " of epoch " + std::to_string(s.epoch) + " is outside the " +
                                std::to_string(m.bpe) + " batches per epoch of " +
                                m.ds->describe());
  std::lock_guard<std::mutex> lk(m.mu);
  m.next_pos = s;
  m.drop_scheduled();
}

int64_t Loader::batches_per_epoch() const { return impl_->bpe; }
int64_t Loader::num_bad_samples() const { return impl_->bad_total; }
const Dataset& Loader::dataset() const { return *impl_->ds; }

}  // namespace psvae::train
