// Fused attention (kernels/cuda/attention*.cu), forward and backward, against the cuBLAS bf16 GEMM
// ceiling. Rows: bf16 on the tensor-core path at head dims 64 and 128 and 256 to 4096 tokens,
// with batch x heads such that B * T * H = 1M token-heads (B*H = 4096 at 256 tokens, 256 at 4096);
// then, for reference, the SIMT path (f32 and bf16) at 1024 tokens with B*H = 256.
// FLOPs as FlashAttention-2 counts them: forward 4 B H T^2 d (Q K^T and P V), backward 2.5x the
// forward (5 GEMMs of the same size). The tensor-core backward is timed in both its forms
// (PSVAE_ATTN_BWD): "mma fused" does those 5 GEMMs, its key tiles adding to gq in a fixed order;
// "mma split" does 7, rebuilding S and dP in a separate dq kernel, and is credited with 5 too so
// the figures compare with other implementations; on an sm_90a device "mma wgmma" is the fused
// form on Hopper's warpgroup MMA. The tensor-core forward is timed on both its kernels
// (PSVAE_ATTN_FWD): "mma" on mma.sync and, on an sm_90a device, "mma wgmma", "mma wgmma_tma"
// (the wgmma forward fed by a TMA copy warpgroup, its softmax under the previous tile's P V) and
// "mma wgmma_pingpong" (that one with its two consumers taking turns at the tensor cores).
// No key mask, self attention, scale 1/sqrt(d).
//
// Also d = 72 at 256 tokens, B = 256, H = 16: DiT-XL's attention (1152 / 16), padded to 80 inside
// (128 in the wgmma kernels). That shape and d = 64 at 1024 tokens are timed once more as
// attention_qkv, the op nn::Attention calls: q, k, v read in place from packed qkv rows (row
// stride 3 H d) and one gqkv written, beside the dense rows of the same kernels; the rows show
// what the strided operands cost the kernels (the copies they save are not in either row).
// The PyTorch SDPA comparison is taken by a separate script; rows carry stable keys (op,
// direction, dtype, path, B, H, T, d). cuDNN's fused attention is measured there too, through
// PyTorch's cuDNN SDPA backend: calling it directly needs the cuDNN graph (frontend) API, which is
// not in Debian and which this project does not vendor.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/op_table.h"
#include "tensor/cuda/launch.cuh"
#include "tensor/random.h"

using namespace psvae;
using kernels::Op;

namespace {

struct Run {
  DType dt;
  const char* path;  // PSVAE_ATTN value
  int64_t B, H, T, d;
  bool packed = false;  // attention_qkv on (B,T,3,H,d) rows instead of attention on q, k, v
};

struct Buffers {
  kernels::OpCall fwd, bwd;
};

// Inputs, outputs and one forward (the backward's o and lse) for run r.
Buffers make_buffers(Generator& g, const Run& r) {
  const Device gpu = Device::cuda(0);
  auto randn = [&](const Shape& s) {
    Tensor t = Tensor::empty(s, r.dt, gpu);
    g.normal_(t, 0.0, 1.0);
    return t;
  };
  const Shape s{r.B, r.T, r.H, r.d}, packed{r.B, r.T, 3, r.H, r.d};
  Buffers b;
  b.fwd.in = r.packed ? std::vector<Tensor>{randn(packed)}
                      : std::vector<Tensor>{randn(s), randn(s), randn(s)};
  b.fwd.out = {Tensor::empty(s, r.dt, gpu), Tensor::empty({r.B, r.H, r.T}, r.dt, gpu)};
  b.fwd.reals[0] = 1.0 / std::sqrt(static_cast<double>(r.d));
  kernels::run(r.packed ? Op::attention_qkv : Op::attention, b.fwd);
  b.bwd.in = {randn(s)};
  b.bwd.in.insert(b.bwd.in.end(), b.fwd.in.begin(), b.fwd.in.end());
  b.bwd.in.push_back(b.fwd.out[0]);
  b.bwd.in.push_back(b.fwd.out[1]);
  b.bwd.out = r.packed
                  ? std::vector<Tensor>{Tensor::empty(packed, r.dt, gpu)}
                  : std::vector<Tensor>{Tensor::empty(s, r.dt, gpu), Tensor::empty(s, r.dt, gpu),
                                        Tensor::empty(s, r.dt, gpu)};
  b.bwd.reals[0] = b.fwd.reals[0];
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::Options::parse(argc, argv);
  cudaStream_t s = ::psvae::cuda::stream(0);
  bench::Timer timer(s, opt);
  // The SIMT rows are 10-20x slower: fewer runs keep the whole bench under a minute.
  bench::Options slow_opt = opt;
  slow_opt.warmup = std::min(opt.warmup, 2);
  slow_opt.iters = std::min(opt.iters, 10);
  bench::Timer slow_timer(s, slow_opt);
  const bench::Ceilings ceil = bench::print_header("bench_attention", timer, s, true);
  bench::Table table({"op", "direction", "dtype", "path", "B", "H", "T", "d", "time (ms)",
                      "TFLOP/s", "% of cuBLAS"});

  std::vector<Run> runs;
  const std::vector<int64_t> lengths =
      opt.quick ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{256, 1024, 2048, 4096};
  for (int64_t d : {64, 128})
    for (int64_t T : lengths) runs.push_back({DType::BF16, "mma", 65536 / T, 16, T, d});
  runs.push_back({DType::BF16, "mma", 256, 16, 256, 72});  // DiT-XL
  runs.push_back({DType::BF16, "mma", 256, 16, 256, 72, true});
  runs.push_back({DType::BF16, "mma", 64, 16, 1024, 64, true});
  for (int64_t d : {64, 128})
    for (DType dt : {DType::BF16, DType::F32}) runs.push_back({dt, "simt", 16, 16, 1024, d});

  Generator g(1);
  for (const Run& r : runs) {
    ::setenv("PSVAE_ATTN", r.path, 1);
    Buffers b = make_buffers(g, r);
    bench::Timer& t = std::string(r.path) == "simt" ? slow_timer : timer;
    const double fwd_flops = 4.0 * static_cast<double>(r.B * r.H) * static_cast<double>(r.T) *
                             static_cast<double>(r.T) * static_cast<double>(r.d);
    const bool mma = std::string(r.path) == "mma";
    // (direction, PSVAE_ATTN_FWD, PSVAE_ATTN_BWD, the row's path label)
    struct Variant {
      const char *dir, *fwd, *bwd, *label;
    };
    std::vector<Variant> variants = {{"fwd", "mma", "auto", r.path}};
    if (mma) {
      const bool wgmma = kernels::cuda::detail::gemm_wgmma_available(0);
      if (wgmma) variants.push_back({"fwd", "wgmma", "auto", "mma wgmma"});
      if (kernels::cuda::detail::gemm_wgmma_tma_available(0)) {
        variants.push_back({"fwd", "wgmma_tma", "auto", "mma wgmma_tma"});
        variants.push_back({"fwd", "wgmma_pingpong", "auto", "mma wgmma_pingpong"});
      }
      variants.push_back({"bwd", "auto", "fused", "mma fused"});
      variants.push_back({"bwd", "auto", "split", "mma split"});
      if (wgmma) variants.push_back({"bwd", "auto", "wgmma", "mma wgmma"});
    } else {
      variants.push_back({"bwd", "auto", "auto", r.path});
    }
    const Op fwd_op = r.packed ? Op::attention_qkv : Op::attention;
    const Op bwd_op = r.packed ? Op::attention_qkv_bwd : Op::attention_bwd;
    for (const Variant& v : variants) {
      const bool fwd = v.dir[0] == 'f';
      ::setenv("PSVAE_ATTN_FWD", v.fwd, 1);
      ::setenv("PSVAE_ATTN_BWD", v.bwd, 1);
      const double ms =
          t.median_ms([&] { kernels::run(fwd ? fwd_op : bwd_op, fwd ? b.fwd : b.bwd); });
      const double tflops = (fwd ? 1.0 : 2.5) * fwd_flops / (ms * 1e-3) / 1e12;
      table.row({r.packed ? "attention_qkv" : "attention", v.dir, dtype_name(r.dt), v.label,
                 std::to_string(r.B), std::to_string(r.H), std::to_string(r.T), std::to_string(r.d),
                 bench::fmt(ms, 3), bench::fmt(tflops, 1), bench::pct(tflops, ceil.gemm_tflops)});
    }
  }
  ::unsetenv("PSVAE_ATTN");
  ::unsetenv("PSVAE_ATTN_FWD");
  ::unsetenv("PSVAE_ATTN_BWD");
  return 0;
}
