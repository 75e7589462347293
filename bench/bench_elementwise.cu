// Elementwise and softmax kernels against the copy ceiling: add (3 tensors moved), gelu_tanh
// forward (2) and backward (3 of the 4 operands: x, gy read, gx written), softmax forward (2) and
// backward (3), in f32 and bf16, on DiT-sized activations (batch x 256 tokens x width).
#include <cuda_runtime.h>

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
  int n_in;   // inputs taken from the pool (x, y, gy ...)
  int moved;  // tensors the op must move at least (reads + writes)
  const char* what;
};

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  const Device gpu = Device::cuda(0);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  const bench::Ceilings ceil = bench::print_header("bench_elementwise", timer, s, false);
  bench::Table table({"op", "shape", "dtype", "time (us)", "GB/s", "% of copy"});

  const std::vector<Case> cases = {
      {Op::add, 2, 3, "a + b"},
      {Op::gelu_tanh, 1, 2, "GELU (tanh)"},
      {Op::gelu_tanh_bwd, 3, 3, "GELU backward"},
      {Op::softmax, 1, 2, "softmax over the last dim"},
      {Op::softmax_bwd, 2, 3, "softmax backward"},
  };
  // DiT-B (width 768) and DiT-XL (1152) activations at batch 256 x 256 tokens; the MLP hidden
  // width 4 x 1152; softmax rows as attention scores of 256 and 1024 keys.
  const std::vector<Shape> shapes = {{65536, 768}, {65536, 1152}, {65536, 4608}};
  const std::vector<Shape> softmax_shapes = {{256 * 16 * 256, 256}, {16 * 16 * 1024, 1024}};
  Generator g(1);
  for (const Case& c : cases) {
    const bool is_softmax = c.op == Op::softmax || c.op == Op::softmax_bwd;
    for (const Shape& shape : is_softmax ? softmax_shapes : shapes) {
      for (DType dt : {DType::F32, DType::BF16}) {
        kernels::OpCall call;
        for (int i = 0; i < c.n_in; ++i) {
          Tensor t = Tensor::empty(shape, dt, gpu);
          g.uniform_(t, -1, 1);
          call.in.push_back(t);
        }
        call.out = {Tensor::empty(shape, dt, gpu)};
        const double ms = timer.median_ms([&] { kernels::run(c.op, call); });
        const double bytes = static_cast<double>(c.moved) * static_cast<double>(shape.numel()) *
                             static_cast<double>(dtype_size(dt));
        table.row({kernels::op_name(c.op), shape.str(), dtype_name(dt)},
                  bench::bandwidth_cells(bytes, ms, ceil.copy_gbs));
      }
    }
  }
  return 0;
}
