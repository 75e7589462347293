// The loader: order from (seed, epoch), sharding, exact resume, thread-independence, flips and
// the replacement of samples that fail to decode.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "train/data/loader.h"

using namespace psvae;
using namespace psvae::train;

namespace {

// Image i is a 3x4x4 ramp that encodes i and the column, so flips and mix-ups are visible; the
// indices in `bad` fail to decode like a truncated file.
class IndexDataset : public Dataset {
 public:
  explicit IndexDataset(int64_t n, std::set<int64_t> bad = {}) : n_(n), bad_(std::move(bad)) {}
  int64_t size() const override { return n_; }
  Sample get(int64_t index) const override {
    if (bad_.count(index))
      throw DataError("item" + std::to_string(index) + ".png: cannot decode image: bad");
    std::vector<float> v(3 * 4 * 4);
    for (size_t k = 0; k < v.size(); ++k)
      v[k] = static_cast<float>(index) / 1000.0f + static_cast<float>(k % 4) / 10.0f;
    Sample s;
    s.image = Tensor::from_vector(v, Shape{3, 4, 4});
    s.label = index % 7;
    s.caption = "item " + std::to_string(index);
    s.source = "item" + std::to_string(index) + ".png";
    return s;
  }
  int64_t num_classes() const override { return 7; }
  std::string class_name(int64_t label) const override { return std::to_string(label); }
  int image_size() const override { return 4; }
  std::string describe() const override { return "index dataset"; }

 private:
  int64_t n_;
  std::set<int64_t> bad_;
};

std::shared_ptr<const Dataset> index_ds(int64_t n, std::set<int64_t> bad = {}) {
  return std::make_shared<IndexDataset>(n, std::move(bad));
}

LoaderOptions opts(int64_t batch, int workers = 0, uint64_t seed = 1) {
  LoaderOptions o;
  o.global_batch = batch;
  o.workers = workers;
  o.seed = seed;
  return o;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

bool same(const Batch& a, const Batch& b) {
  return a.indices == b.indices && a.captions == b.captions && same(a.images, b.images) &&
         same(a.labels, b.labels);
}

std::vector<Batch> take(Loader& l, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(l.next());
  return out;
}

}  // namespace

TEST_CASE("loader: each epoch is a permutation, deterministic in (seed, epoch)") {
  auto ds = index_ds(42);
  Loader a(ds, opts(8)), b(ds, opts(8));
  CHECK(a.batches_per_epoch() == 5);  // 42 / 8, the partial batch dropped
  std::vector<std::vector<int64_t>> epochs(3);
  for (int e = 0; e < 3; ++e) {
    for (int k = 0; k < 5; ++k) {
      CHECK(a.state().epoch == static_cast<uint64_t>(e));
      CHECK(a.state().batch == k);
      Batch x = a.next(), y = b.next();
      CHECK(same(x, y));
      REQUIRE(x.images.shape() == Shape({8, 3, 4, 4}));
      CHECK(x.labels.dtype() == DType::I64);
      CHECK(x.captions.size() == 8);
      for (size_t j = 0; j < 8; ++j) {
        CHECK(x.captions[j] == "item " + std::to_string(x.indices[j]));
        CHECK(x.labels.data<int64_t>()[j] == x.indices[j] % 7);
        CHECK(x.images.data<float>()[j * 48] == doctest::Approx(x.indices[j] / 1000.0));
      }
      epochs[static_cast<size_t>(e)].insert(epochs[static_cast<size_t>(e)].end(), x.indices.begin(),
                                            x.indices.end());
    }
    const auto& ep = epochs[static_cast<size_t>(e)];
    CHECK(std::set<int64_t>(ep.begin(), ep.end()).size() == 40);  // no repeats within an epoch
  }
  CHECK(epochs[0] != epochs[1]);
  CHECK(epochs[1] != epochs[2]);
  CHECK(a.state().epoch == 3);
  // A different seed, a different order.
  Loader c(ds, opts(8, 0, 2));
  std::vector<int64_t> other;
  for (int k = 0; k < 5; ++k) {
    Batch x = c.next();
    other.insert(other.end(), x.indices.begin(), x.indices.end());
  }
  CHECK(other != epochs[0]);
  // Every index of an evenly divisible dataset appears exactly once per epoch.
  Loader d(index_ds(40), opts(8));
  std::vector<int64_t> all;
  for (int k = 0; k < 5; ++k) {
    Batch x = d.next();
    all.insert(all.end(), x.indices.begin(), x.indices.end());
  }
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 40; ++i) CHECK(all[static_cast<size_t>(i)] == i);
}

TEST_CASE("loader: shuffle off visits the dataset in order") {
  LoaderOptions o = opts(4);
  o.shuffle = false;
  Loader l(index_ds(10), o);
  CHECK(l.next().indices == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(l.next().indices == std::vector<int64_t>{4, 5, 6, 7});
  CHECK(l.next().indices == std::vector<int64_t>{0, 1, 2, 3});  // 8, 9 dropped
}

TEST_CASE("loader: rank shards interleave into the single-process global batch") {
  auto ds = index_ds(50);
  Loader whole(ds, opts(8));
  LoaderOptions o0 = opts(8), o1 = opts(8);
  o0.world = o1.world = 2;
  o1.rank = 1;
  o1.workers = 2;
  Loader r0(ds, o0), r1(ds, o1);
  for (int k = 0; k < 9; ++k) {  // crosses an epoch boundary (6 batches per epoch)
    Batch g = whole.next(), a = r0.next(), b = r1.next();
    REQUIRE(a.indices.size() == 4);
    REQUIRE(b.indices.size() == 4);
    CHECK(a.images.shape() == Shape({4, 3, 4, 4}));
    for (size_t j = 0; j < 4; ++j) {
      CHECK(a.indices[j] == g.indices[2 * j]);
      CHECK(b.indices[j] == g.indices[2 * j + 1]);
    }
  }
  LoaderOptions bad = opts(9);
  bad.world = 2;
  CHECK_THROWS_WITH_AS(Loader(ds, bad),
                       "loader: global batch 9 is not divisible by the world size 2",
                       std::invalid_argument);
  bad = opts(8);
  bad.world = 2;
  bad.rank = 2;
  CHECK_THROWS_AS(Loader(ds, bad), std::invalid_argument);
  CHECK_THROWS_AS(Loader(index_ds(5), opts(8)), std::invalid_argument);  // less than one batch
}

TEST_CASE("loader: set_state resumes exactly, also mid-prefetch") {
  auto ds = index_ds(37);
  LoaderOptions o = opts(6, 2);
  o.hflip = true;
  o.prefetch = 3;
  Loader ref(ds, o);
  std::vector<Batch> want = take(ref, 14);  // 6 batches per epoch: crosses two boundaries

  Loader first(ds, o);
  take(first, 5);
  LoaderState s = first.state();
  CHECK(s.epoch == 0);
  CHECK(s.batch == 5);
  Loader resumed(ds, o);
  resumed.set_state(s);
  for (size_t k = 5; k < 14; ++k) CHECK(same(resumed.next(), want[k]));

  // Rewinding a loader with work in flight drops that work.
  Loader l(ds, o);
  take(l, 3);
  l.set_state({1, 2});
  CHECK(same(l.next(), want[8]));
  CHECK(l.state().epoch == 1);
  CHECK(l.state().batch == 3);
  l.set_state({0, 0});
  CHECK(same(l.next(), want[0]));
  CHECK_THROWS_AS(l.set_state({0, 6}), std::invalid_argument);
}

TEST_CASE("loader: the number of workers and the prefetch depth do not change the batches") {
  auto ds = index_ds(64, {5, 6, 30});
  LoaderOptions o = opts(8, 0, 9);
  o.hflip = true;
  Loader sync(ds, o);
  std::vector<Batch> want = take(sync, 20);
  for (auto [workers, prefetch] : {std::pair{3, 1}, std::pair{3, 4}, std::pair{1, 2}}) {
    LoaderOptions w = o;
    w.workers = workers;
    w.prefetch = prefetch;
    Loader l(ds, w);
    for (size_t k = 0; k < want.size(); ++k) CHECK(same(l.next(), want[k]));
    CHECK(l.num_bad_samples() == sync.num_bad_samples());
  }
}

TEST_CASE("loader: flips are drawn per (seed, epoch, position)") {
  auto ds = index_ds(64);
  LoaderOptions o = opts(16, 2, 4);
  o.hflip = true;
  Loader a(ds, o), b(ds, o);
  int flipped = 0, total = 0;
  for (int k = 0; k < 12; ++k) {
    Batch x = a.next();
    CHECK(same(x, b.next()));
    for (size_t j = 0; j < 16; ++j) {
      const float* p = x.images.data<float>() + j * 48;
      const float base = static_cast<float>(x.indices[j]) / 1000.0f;
      // Unflipped rows read base + (0, .1, .2, .3); flipped ones the reverse.
      const bool flip = p[0] > p[3];
      CHECK(p[flip ? 3 : 0] == doctest::Approx(base));
      CHECK(p[flip ? 0 : 3] == doctest::Approx(base + 0.3));
      flipped += flip;
      ++total;
    }
  }
  CHECK(flipped > total * 3 / 10);
  CHECK(flipped < total * 7 / 10);
  // Without hflip nothing is flipped.
  Loader plain(ds, opts(16, 2, 4));
  Batch x = plain.next();
  for (size_t j = 0; j < 16; ++j)
    CHECK(x.images.data<float>()[j * 48] < x.images.data<float>()[j * 48 + 3]);
}

TEST_CASE("loader: samples that fail to decode are replaced and counted; all failing throws") {
  auto ds = index_ds(40, {3, 17});
  for (int workers : {0, 2}) {
    Loader l(ds, opts(8, workers));
    std::set<int64_t> seen;
    for (int k = 0; k < 5; ++k) {
      Batch b = l.next();
      CHECK(b.indices.size() == 8);
      seen.insert(b.indices.begin(), b.indices.end());
    }
    CHECK(seen.count(3) == 0);
    CHECK(seen.count(17) == 0);
    CHECK(l.num_bad_samples() >= 2);
  }
  std::set<int64_t> everything;
  for (int64_t i = 0; i < 8; ++i) everything.insert(i);
  for (int workers : {0, 2}) {
    Loader l(index_ds(8, everything), opts(4, workers));
    CHECK_THROWS_AS(l.next(), DataError);
  }
}
