#include "tensor/random.h"

#include <fmt/format.h>

#include "tensor/cuda_runtime.h"
#include "tensor/philox.h"

namespace psvae {

namespace {
template <class T, class F>
void fill_host(Tensor& t, F value_at) {
  T* p = t.data<T>();
  int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(value_at(i));
}

template <class F>
void fill_any(Tensor& t, const char* what, F value_at) {
  switch (t.dtype()) {
    case DType::F32: fill_host<float>(t, value_at); break;
    case DType::F64: fill_host<double>(t, value_at); break;
    case DType::BF16: {
      bf16* p = t.data<bf16>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = bf16(static_cast<float>(value_at(i)));
      break;
    }
    default:
      throw std::invalid_argument(
          fmt::format("{}: needs a floating tensor, got {}", what, dtype_name(t.dtype())));
  }
}
}  // namespace

void fill_uniform(Tensor& t, uint64_t seed, uint64_t offset, double lo, double hi) {
  if (t.device().is_cuda()) {
    cuda::fill_uniform(t.raw_data(), t.numel(), static_cast<int>(t.dtype()), seed, offset, lo, hi,
                       t.device().index);
    return;
  }
  fill_any(t, "fill_uniform",
           [&](int64_t i) { return lo + (hi - lo) * philox::uniform_at(seed, offset, i); });
}

void fill_normal(Tensor& t, uint64_t seed, uint64_t offset, double mean, double std) {
  if (t.device().is_cuda()) {
    cuda::fill_normal(t.raw_data(), t.numel(), static_cast<int>(t.dtype()), seed, offset, mean, std,
                      t.device().index);
    return;
  }
  fill_any(t, "fill_normal",
           [&](int64_t i) { return mean + std * philox::normal_at(seed, offset, i); });
}

void Generator::uniform_(Tensor& t, double lo, double hi) {
  fill_uniform(t, seed_, reserve(t.numel()), lo, hi);
}
void Generator::normal_(Tensor& t, double mean, double std) {
  fill_normal(t, seed_, reserve(t.numel()), mean, std);
}

}  // namespace psvae
