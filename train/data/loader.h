// The loader: shuffled, sharded, prefetched batches with an exactly resumable position.
//
// Order: epoch e visits the dataset in a permutation drawn from Philox(seed, e); the global batch
// b of an epoch is entries [b*G, (b+1)*G) of that permutation (G = global batch size, last partial
// batch dropped). Rank r of W takes every W-th entry of each global batch (r, r+W, ...), so the
// global batch does not depend on the number of ranks. Horizontal flips are drawn from Philox too,
// per (seed, epoch, position), so a resumed run sees exactly the images an uninterrupted run would.
// Background threads decode the next `prefetch` batches; results are delivered in order.
// A sample that fails to decode is reported with its path, counted, and replaced by the next
// entry of the permutation that decodes (deterministically).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/data/dataset.h"

namespace psvae::train {

struct Batch {
  Tensor images;                      // (B, 3, H, W) f32 in [-1, 1], on the CPU
  Tensor labels;                      // (B) i64
  std::vector<std::string> captions;  // B entries
  std::vector<int64_t> indices;       // dataset indices, for messages and tests
};

struct LoaderOptions {
  int64_t global_batch = 32;
  int rank = 0, world = 1;  // this process's shard
  uint64_t seed = 0;
  bool shuffle = true;
  bool hflip = false;  // random horizontal flip, p = 0.5
  int workers = 2;     // decoding threads
  int prefetch = 2;    // batches decoded ahead
};

// Where the loader stands: the next batch is global batch `batch` of epoch `epoch`.
struct LoaderState {
  uint64_t epoch = 0;
  int64_t batch = 0;
};

class Loader {
 public:
  Loader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& opt);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch next();                          // this rank's shard of the next global batch
  LoaderState state() const;             // position of the next batch to be returned
  void set_state(const LoaderState& s);  // resume (drops anything prefetched)
  int64_t batches_per_epoch() const;
  int64_t num_bad_samples() const;  // decode failures replaced so far
  const Dataset& dataset() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace psvae::train
