// Broadcasting and reduction kernels (kernels/cuda/broadcast.cu, reduce.cu) against the copy
// ceiling, f32 and bf16, on DiT-XL-sized tensors (batch 256 x 256 tokens x width 1152):
//   sum_to   (65536, 1152) -> (1152)   the bias gradient: a column reduction split over R
//   sum_dim  over the last dim (rows of 1152) and over the first (as sum_to)
//   max_dim, var_dim over the last dim
//   mul      (N, T, D) * (N, 1, D)     adaLN-style gate, the broadcast operand from L2
//   add      (N, T, D) + (D)           bias
//   expand   (D) -> (N*T, D)
// GB/s counts each input read once and each output written once (the broadcast operand once, at
// its own size), so 100% of the copy ceiling is the best a memory-bound kernel can do.
#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/op_table.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"

using namespace psvae;
using kernels::Op;

namespace {

struct Case {
  Op op;
  std::string shape;  // for the table
  std::vector<Shape> in;
  std::vector<Shape> out;
  bool arg_out;  // the second output is an i64 argmax
  std::vector<int64_t> ints;
};

double bytes_of(const std::vector<Shape>& shapes, DType dt) {
  double b = 0;
  for (const Shape& s : shapes)
    b += static_cast<double>(s.numel()) * static_cast<double>(dtype_size(dt));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  const Device gpu = Device::cuda(0);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_reduce", timer, s, false);
  bench::Table table({"op", "shape", "dtype", "time (us)", "GB/s", "% of copy"});

  const int64_t N = 256, T = 256, D = 1152, M = N * T;
  const std::vector<Case> cases = {
      {Op::sum_to, "(65536, 1152) -> (1152)", {{M, D}}, {{D}}, false, {}},
      {Op::sum_dim, "(65536, 1152) over dim 1", {{M, D}}, {{M}}, false, {1}},
      {Op::sum_dim, "(65536, 1152) over dim 0", {{M, D}}, {{D}}, false, {0}},
      {Op::max_dim, "(65536, 1152) over dim 1", {{M, D}}, {{M}, {M}}, true, {1}},
      {Op::var_dim, "(65536, 1152) over dim 1", {{M, D}}, {{M}, {M}}, false, {1, 1}},
      {Op::mul,
       "(256, 256, 1152) * (256, 1, 1152)",
       {{N, T, D}, {N, 1, D}},
       {{N, T, D}},
       false,
       {}},
      {Op::add, "(256, 256, 1152) + (1152)", {{N, T, D}, {D}}, {{N, T, D}}, false, {}},
      {Op::expand, "(1152) -> (65536, 1152)", {{D}}, {{M, D}}, false, {}},
  };
  Generator g(1);
  for (const Case& c : cases) {
    for (DType dt : {DType::F32, DType::BF16}) {
      kernels::OpCall call;
      for (const Shape& shape : c.in) {
        Tensor t = Tensor::empty(shape, dt, gpu);
        g.uniform_(t, -1, 1);
        call.in.push_back(t);
      }
      for (size_t i = 0; i < c.out.size(); ++i)
        call.out.push_back(Tensor::empty(c.out[i], c.arg_out && i == 1 ? DType::I64 : dt, gpu));
      for (size_t i = 0; i < c.ints.size(); ++i) call.ints[i] = c.ints[i];
      const double ms = timer.median_ms([&] { kernels::run(c.op, call); });
      double bytes = bytes_of(c.in, dt) + bytes_of(c.out, dt);
      if (c.arg_out)  // the argmax is 8 bytes an element, not dtype-sized
        bytes +=
            static_cast<double>(c.out[1].numel()) * (8.0 - static_cast<double>(dtype_size(dt)));
      table.row({kernels::op_name(c.op), c.shape, dtype_name(dt)},
                bench::bandwidth_cells(bytes, ms, ceil.copy_gbs));
    }
  }
  return 0;
}
