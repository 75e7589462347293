// The op table at run time: one OpDef per entry of kernels/op_list.h, holding the op's name, its
// documentation and its CPU and CUDA kernels. `run` dispatches on the device of the tensors.
// A kernel researcher swaps or studies one kernel by looking it up here by name.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/op_list.h"
#include "tensor/tensor.h"

namespace psvae::kernels {

enum class Op : int {
#define PSVAE_OP_ENUM(name, family, doc) name,
  PSVAE_ALL_OPS(PSVAE_OP_ENUM)
#undef PSVAE_OP_ENUM
      kCount
};
constexpr int kNumOps = static_cast<int>(Op::kCount);

// The dtype of the GEMM-side operand of the fused DiT ops (layernorm_modulate's y and gy,
// gated_residual's h and gh) beside their main tensor: the main dtype, or bf16 beside f32 (bf16
// autocast: an f32 residual stream, bf16 GEMMs; the kernels read and write it as it is, saving a
// cast's pass). Checked by the ops layer and by the CUDA kernels' own entry points.
inline bool gemm_side_dtype_ok(DType side, DType main) {
  return side == main || (main == DType::F32 && side == DType::BF16);
}

// One call of a kernel: inputs, caller-allocated outputs, and the op's parameters (meaning per op
// in op_list.h). Tensors are handles, so a kernel writes outputs through a const OpCall.
struct OpCall {
  std::vector<Tensor> in;
  std::vector<Tensor> out;
  std::array<int64_t, 16> ints{};
  std::array<double, 8> reals{};
};

using KernelFn = void (*)(const OpCall&);

struct OpDef {
  Op op;
  const char* name;
  const char* family;
  const char* doc;
  KernelFn cpu = nullptr;
  KernelFn cuda = nullptr;
};

class OpTable {
 public:
  OpDef& operator[](Op op) { return defs_[static_cast<size_t>(op)]; }
  const OpDef& operator[](Op op) const { return defs_[static_cast<size_t>(op)]; }
  const std::array<OpDef, kNumOps>& all() const { return defs_; }
  OpTable();

 private:
  std::array<OpDef, kNumOps> defs_;
};

// The process-wide table, filled on first use by the backends' register functions.
const OpTable& op_table();
const OpDef& op_def(Op op);
const char* op_name(Op op);
// Looks an op up by name ("layernorm_bwd"); throws naming the unknown op.
Op op_by_name(const std::string& name);

// Runs `op` on the device of call.in[0] (or call.out[0] when there are no inputs). Throws when a
// tensor is undefined or on another device, or when that device has no kernel for the op.
void run(Op op, const OpCall& call);

// Backend registration, one function per kernel family file (kernels/cpu/*.cpp,
// kernels/cuda/*.cu). Each sets the .cpu / .cuda pointers of the ops it implements.
namespace cpu {
void register_elementwise(OpTable& t);
void register_reduce(OpTable& t);
void register_linalg(OpTable& t);
void register_norm(OpTable& t);
void register_spatial(OpTable& t);
void register_layout(OpTable& t);
void register_attention(OpTable& t);
void register_loss(OpTable& t);
void register_optim(OpTable& t);
void register_lpips(OpTable& t);
void register_adaln(OpTable& t);
}  // namespace cpu
namespace cuda {
void register_all(OpTable& t);  // kernels/cuda/register.cu; absent in a CPU-only build
}  // namespace cuda

}  // namespace psvae::kernels
