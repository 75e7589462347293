// Fixed sinusoidal embeddings of the DiT (facebookresearch/DiT models.py): the 2D sin-cos position
// table of the patch tokens and the sinusoidal timestep features.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace psvae::dit {

// 1D: positions pos (M) -> (M, E) = [sin(pos * omega), cos(pos * omega)] (sin first), with
// omega_k = 1 / 10000^(k / (E/2)), k < E/2, all in float64 (upstream's numpy code). E even.
Tensor sincos_1d(const std::vector<double>& pos, int64_t dim);

// 2D for a G x G grid -> (G*G, D) float64, tokens row-major (t = i*G + j). As upstream:
// grid = meshgrid(grid_w, grid_h) puts the COLUMN index j in grid[0], so the first D/2 channels
// encode the column and the last D/2 the row. D divisible by 4.
Tensor get_2d_sincos_pos_embed(int64_t dim, int64_t grid);

// Timestep features t (N) -> (N, dim) = [cos(t f), sin(t f)] (cos first!), with
// f_k = exp(-ln(max_period) * k / half), k < half = dim/2, computed in float32 as upstream. The
// products t*f and cos/sin run in float32 (out_dtype F32/BF16/F16) or float64 (out_dtype F64,
// for gradient checks); the result has out_dtype on the CPU. t may be any real or integer dtype.
Tensor timestep_embedding(const Tensor& t, int64_t dim, DType out_dtype = DType::F32,
                          double max_period = 10000.0);

}  // namespace psvae::dit
