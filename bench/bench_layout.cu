// Data movement and spatial kernels against the copy ceiling (kernels/cuda/layout.cu and
// kernels/cuda/spatial.cu), f32 and bf16, on DiT / VAE sized tensors:
//   permute   (B,T,H,d) -> (B,H,T,d) at (256,256,16,72) and (32,1024,16,64) (the run-copy path),
//             and (64,1152,256) -> (64,256,1152) (the 32x33 tile transpose);
//   concat    three (64,256,384) along the last dim, two (64,256,1152) along the tokens;
//   pad       (16,256,64,64) by 1 on H and W;
//   embedding 65536 ids into a (1000,1152) table, and its backward (sort + ordered sums);
//   upsample  nearest and bilinear x2 of (16,256,64,64), forward and backward;
//   pooling   avg 2x2/2 and max 2x2/2, 3x3/2 pad 1 of (16,256,128,128), forward and backward.
// GB/s counts the bytes each op must move at least: every input read once, every output written
// once (argmax as 8 bytes per output; embedding's table rows once per id).
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"

using namespace psvae;
using kernels::Op;

namespace {

const Device kGpu = Device::cuda(0);

struct Run {
  Op op;
  kernels::OpCall call;
  double bytes;  // minimum bytes moved
};

double nbytes(const Tensor& t) { return static_cast<double>(t.nbytes()); }

Run permute_run(Generator& g, const Shape& s, const std::vector<int64_t>& perm, DType dt) {
  Run r{Op::permute, {}, 0};
  Tensor x = bench::uniform_gpu(g, s, dt);
  std::vector<int64_t> od;
  for (size_t i = 0; i < perm.size(); ++i) {
    od.push_back(s[static_cast<int>(perm[i])]);
    r.call.ints[i] = perm[i];
  }
  r.call.in = {x};
  r.call.out = {Tensor::empty(Shape(od), dt, kGpu)};
  r.bytes = 2 * nbytes(x);
  return r;
}

Run concat_run(Generator& g, const std::vector<Shape>& shapes, int dim, DType dt) {
  Run r{Op::concat, {}, 0};
  Shape os = shapes[0];
  os[dim] = 0;
  for (const Shape& s : shapes) {
    r.call.in.push_back(bench::uniform_gpu(g, s, dt));
    os[dim] += s[dim];
  }
  r.call.out = {Tensor::empty(os, dt, kGpu)};
  r.call.ints[0] = dim;
  r.bytes = 2 * nbytes(r.call.out[0]);
  return r;
}

Run pad_run(Generator& g, const Shape& s, DType dt) {
  Run r{Op::pad, {}, 0};
  Tensor x = bench::uniform_gpu(g, s, dt);
  r.call.in = {x};
  r.call.out = {Tensor::empty({s[0], s[1], s[2] + 2, s[3] + 2}, dt, kGpu)};
  r.call.ints = {0, 0, 1, 1};
  r.bytes = nbytes(x) + nbytes(r.call.out[0]);
  return r;
}

Tensor random_ids(int64_t n, int64_t V) {
  std::mt19937_64 rng(5);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t& e : v) e = static_cast<int64_t>(rng() % static_cast<uint64_t>(V));
  return Tensor::from_vector(v, {n}).to(kGpu);
}

Run embedding_run(Generator& g, int64_t n, int64_t V, int64_t D, DType dt, bool bwd) {
  Tensor ids = random_ids(n, V);
  if (!bwd) {
    Run r{Op::embedding, {}, 0};
    r.call.in = {bench::uniform_gpu(g, {V, D}, dt), ids};
    r.call.out = {Tensor::empty({n, D}, dt, kGpu)};
    r.bytes = 2 * nbytes(r.call.out[0]) + nbytes(ids);
    return r;
  }
  Run r{Op::embedding_bwd, {}, 0};
  r.call.in = {bench::uniform_gpu(g, {n, D}, dt), ids};
  r.call.out = {Tensor::empty({V, D}, dt, kGpu)};
  r.bytes = nbytes(r.call.in[0]) + nbytes(ids) + nbytes(r.call.out[0]);
  return r;
}

// Upsampling by `f`: forward x (s) -> y, backward gy (s * f) -> gx (s).
Run upsample_run(Generator& g, Op op, const Shape& s, int64_t f, DType dt, int64_t align = 0) {
  const bool bwd = op == Op::upsample_nearest_bwd || op == Op::upsample_bilinear_bwd;
  const Shape big{s[0], s[1], s[2] * f, s[3] * f};
  Run r{op, {}, 0};
  r.call.in = {bench::uniform_gpu(g, bwd ? big : s, dt)};
  r.call.out = {Tensor::empty(bwd ? s : big, dt, kGpu)};
  r.call.ints[0] = align;
  r.bytes = nbytes(r.call.in[0]) + nbytes(r.call.out[0]);
  return r;
}

struct PoolP {
  int64_t k, st, p;
};

Run pool_run(Generator& g, Op op, const Shape& s, PoolP pp, DType dt) {
  const int64_t Ho = (s[2] + 2 * pp.p - pp.k) / pp.st + 1,
                Wo = (s[3] + 2 * pp.p - pp.k) / pp.st + 1;
  const Shape ys{s[0], s[1], Ho, Wo};
  Run r{op, {}, 0};
  r.call.ints = {pp.k, pp.k, pp.st, pp.st, pp.p, pp.p};
  switch (op) {
    case Op::avg_pool2d:
      r.call.in = {bench::uniform_gpu(g, s, dt)};
      r.call.out = {Tensor::empty(ys, dt, kGpu)};
      break;
    case Op::avg_pool2d_bwd:
      r.call.in = {bench::uniform_gpu(g, ys, dt)};
      r.call.out = {Tensor::empty(s, dt, kGpu)};
      break;
    case Op::max_pool2d:
      r.call.in = {bench::uniform_gpu(g, s, dt)};
      r.call.out = {Tensor::empty(ys, dt, kGpu), Tensor::empty(ys, DType::I64, kGpu)};
      break;
    default: {  // max_pool2d_bwd with the argmax of a real forward
      kernels::OpCall f;
      f.in = {bench::uniform_gpu(g, s, dt)};
      f.out = {Tensor::empty(ys, dt, kGpu), Tensor::empty(ys, DType::I64, kGpu)};
      f.ints = r.call.ints;
      kernels::run(Op::max_pool2d, f);
      r.call.in = {bench::uniform_gpu(g, ys, dt), f.out[1]};
      r.call.out = {Tensor::empty(s, dt, kGpu)};
    }
  }
  for (const Tensor& t : r.call.in) r.bytes += nbytes(t);
  for (const Tensor& t : r.call.out) r.bytes += nbytes(t);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_layout", timer, s, false);
  bench::Table table({"op", "case", "dtype", "time (us)", "GB/s", "% of copy"});
  Generator g(1);

  // Each entry builds its tensors when run, so only one case's memory is live at a time.
  std::vector<std::pair<std::string, std::function<Run(DType)>>> cases = {
      {"(256,256,16,72) -> (B,H,T,d)",
       [&](DType dt) {
         return permute_run(g, {256, 256, 16, 72}, {0, 2, 1, 3}, dt);
       }},
      {"(32,1024,16,64) -> (B,H,T,d)",
       [&](DType dt) {
         return permute_run(g, {32, 1024, 16, 64}, {0, 2, 1, 3}, dt);
       }},
      {"(64,1152,256) -> (64,256,1152) tile",
       [&](DType dt) {
         return permute_run(g, {64, 1152, 256}, {0, 2, 1}, dt);
       }},
      {"3 x (64,256,384) along -1",
       [&](DType dt) {
         return concat_run(g, {{64, 256, 384}, {64, 256, 384}, {64, 256, 384}}, 2, dt);
       }},
      {"2 x (64,256,1152) along 1",
       [&](DType dt) {
         return concat_run(g, {{64, 256, 1152}, {64, 256, 1152}}, 1, dt);
       }},
      {"(16,256,64,64) by 1 on H, W",
       [&](DType dt) {
         return pad_run(g, {16, 256, 64, 64}, dt);
       }},
      {"65536 ids, table (1000,1152)",
       [&](DType dt) { return embedding_run(g, 65536, 1000, 1152, dt, false); }},
      {"bwd: 65536 ids, table (1000,1152)",
       [&](DType dt) { return embedding_run(g, 65536, 1000, 1152, dt, true); }},
      {"nearest x2 (16,256,64,64)",
       [&](DType dt) {
         return upsample_run(g, Op::upsample_nearest, {16, 256, 64, 64}, 2, dt);
       }},
      {"nearest x2 bwd (16,256,64,64)",
       [&](DType dt) {
         return upsample_run(g, Op::upsample_nearest_bwd, {16, 256, 64, 64}, 2, dt);
       }},
      {"bilinear x2 (16,256,64,64)",
       [&](DType dt) {
         return upsample_run(g, Op::upsample_bilinear, {16, 256, 64, 64}, 2, dt);
       }},
      {"bilinear x2 bwd (16,256,64,64)",
       [&](DType dt) {
         return upsample_run(g, Op::upsample_bilinear_bwd, {16, 256, 64, 64}, 2, dt);
       }},
      {"avg 2x2/2 (16,256,128,128)",
       [&](DType dt) {
         return pool_run(g, Op::avg_pool2d, {16, 256, 128, 128}, {2, 2, 0}, dt);
       }},
      {"avg 2x2/2 bwd",
       [&](DType dt) {
         return pool_run(g, Op::avg_pool2d_bwd, {16, 256, 128, 128}, {2, 2, 0}, dt);
       }},
      {"max 2x2/2 (16,256,128,128)",
       [&](DType dt) {
         return pool_run(g, Op::max_pool2d, {16, 256, 128, 128}, {2, 2, 0}, dt);
       }},
      {"max 2x2/2 bwd",
       [&](DType dt) {
         return pool_run(g, Op::max_pool2d_bwd, {16, 256, 128, 128}, {2, 2, 0}, dt);
       }},
      {"max 3x3/2 pad 1 (16,256,128,128)",
       [&](DType dt) {
         return pool_run(g, Op::max_pool2d, {16, 256, 128, 128}, {3, 2, 1}, dt);
       }},
      {"max 3x3/2 pad 1 bwd",
       [&](DType dt) {
         return pool_run(g, Op::max_pool2d_bwd, {16, 256, 128, 128}, {3, 2, 1}, dt);
       }},
  };
  for (auto& [name, make] : cases) {
    for (DType dt : {DType::F32, DType::BF16}) {
      Run r = make(dt);
      const double ms = timer.median_ms([&] { kernels::run(r.op, r.call); });
      table.row({kernels::op_name(r.op), name, dtype_name(dt)},
                bench::bandwidth_cells(r.bytes, ms, ceil.copy_gbs));
    }
  }
  return 0;
}
