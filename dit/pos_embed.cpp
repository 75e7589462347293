#include "dit/pos_embed.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "nn/module.h"

namespace psvae::dit {

namespace {
// t (N) of any real or integer dtype -> host doubles.
std::vector<double> host_doubles(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  std::vector<double> v(static_cast<size_t>(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) {
    double x = 0;
    switch (h.dtype()) {
      case DType::F32: x = h.data<float>()[i]; break;
      case DType::F64: x = h.data<double>()[i]; break;
      case DType::BF16: x = static_cast<float>(h.data<bf16>()[i]); break;
      case DType::I32: x = h.data<int32_t>()[i]; break;
      case DType::I64: x = static_cast<double>(h.data<int64_t>()[i]); break;
    }
    v[static_cast<size_t>(i)] = x;
  }
  return v;
}
}  // namespace

Tensor sincos_1d(const std::vector<double>& pos, int64_t dim) {
  check(dim > 0 && dim % 2 == 0, fmt::format("sincos_1d: embedding width {} must be even", dim));
  const int64_t half = dim / 2, M = static_cast<int64_t>(pos.size());
  std::vector<double> omega(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k)
    omega[static_cast<size_t>(k)] =
        1.0 / std::pow(10000.0, static_cast<double>(k) / (static_cast<double>(dim) / 2.0));
  Tensor out = Tensor::empty({M, dim}, DType::F64);
  double* o = out.data<double>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < half; ++k) {
      const double a = pos[static_cast<size_t>(m)] * omega[static_cast<size_t>(k)];
      o[m * dim + k] = std::sin(a);
      o[m * dim + half + k] = std::cos(a);
    }
  return out;
}

Tensor get_2d_sincos_pos_embed(int64_t dim, int64_t grid) {
  check(dim > 0 && dim % 4 == 0 && grid > 0,
        fmt::format("get_2d_sincos_pos_embed: width {} must be a multiple of 4, grid {} > 0", dim,
                    grid));
  // grid[0][i][j] = j (column), grid[1][i][j] = i (row), flattened row-major.
  std::vector<double> col, row;
  for (int64_t i = 0; i < grid; ++i)
    for (int64_t j = 0; j < grid; ++j) {
      col.push_back(static_cast<double>(j));
      row.push_back(static_cast<double>(i));
    }
  Tensor e0 = sincos_1d(col, dim / 2), e1 = sincos_1d(row, dim / 2);  // (G*G, D/2) each
  const int64_t T = grid * grid, half = dim / 2;
  Tensor out = Tensor::empty({T, dim}, DType::F64);
  double* o = out.data<double>();
  const double* a = e0.data<double>();
  const double* b = e1.data<double>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < half; ++k) {
      o[t * dim + k] = a[t * half + k];
      o[t * dim + half + k] = b[t * half + k];
    }
  return out;
}

Tensor timestep_embedding(const Tensor& t, int64_t dim, DType out_dtype, double max_period) {
  check(t.rank() == 1, fmt::format("timestep_embedding: t must be (N), got {}", t.shape().str()));
  check(dim > 0 && dim % 2 == 0, fmt::format("timestep_embedding: dim {} must be even", dim));
  const int64_t N = t.size(0), half = dim / 2;
  // freqs = exp(-log(max_period) * arange(half, float32) / half), each step rounded to float32.
  const float neg_log = static_cast<float>(-std::log(max_period));
  std::vector<float> freqs(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k)
    freqs[static_cast<size_t>(k)] =
        std::exp((neg_log * static_cast<float>(k)) / static_cast<float>(half));
  const std::vector<double> tv = host_doubles(t);
  Tensor out = Tensor::empty({N, dim}, DType::F64);
  double* o = out.data<double>();
  const bool f64 = out_dtype == DType::F64;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < half; ++k) {
      if (f64) {
        const double a =
            tv[static_cast<size_t>(n)] * static_cast<double>(freqs[static_cast<size_t>(k)]);
        o[n * dim + k] = std::cos(a);
        o[n * dim + half + k] = std::sin(a);
      } else {
        const float a =
            static_cast<float>(tv[static_cast<size_t>(n)]) * freqs[static_cast<size_t>(k)];
        o[n * dim + k] = static_cast<double>(std::cos(a));
        o[n * dim + half + k] = static_cast<double>(std::sin(a));
      }
    }
  return nn::convert_float(out, out_dtype);
}

}  // namespace psvae::dit
