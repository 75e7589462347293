// fmt formatters for Shape "(2, 3)", DType "f32", Device "cuda:0" and Tensor, so error messages
// and debug prints can say fmt::format("{} vs {}", a.shape(), b) directly.
//
// A Tensor prints like PyTorch: its header line "Tensor(f32, (2, 3), cpu)", then the values
// nested in brackets and right-aligned to one width. Above 1000 elements (PyTorch's print
// threshold) each dim shows only its first and last 3 entries (PyTorch's edgeitems) around "...",
// so printing a (4096, 4096) weight costs 49 values, not 16M. CUDA tensors are copied to the
// host first. Floats use 4 decimals, or scientific notation when the magnitudes shown span
// beyond [1e-4, 1e8).
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace psvae::format_detail {

constexpr int64_t kSummariseAbove = 1000;
constexpr int64_t kEdgeItems = 3;

// Indices shown along a dim of size n; -1 marks the "..." gap.
inline std::vector<int64_t> shown(int64_t n, bool summarise) {
  std::vector<int64_t> idx;
  if (!summarise || n <= 2 * kEdgeItems) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  for (int64_t i = 0; i < kEdgeItems; ++i) idx.push_back(i);
  idx.push_back(-1);
  for (int64_t i = n - kEdgeItems; i < n; ++i) idx.push_back(i);
  return idx;
}

// Linear indices of the elements that will be printed, in print order.
inline void collect(const Shape& s, int dim, int64_t base, bool summarise,
                    std::vector<int64_t>& out) {
  if (dim == s.rank()) {
    out.push_back(base);
    return;
  }
  int64_t stride = s.prod(dim + 1, s.rank());
  for (int64_t i : shown(s[dim], summarise))
    if (i >= 0) collect(s, dim + 1, base + i * stride, summarise, out);
}

inline double value_at(const Tensor& h, int64_t i) {
  switch (h.dtype()) {
    case DType::F32: return h.data<float>()[i];
    case DType::F64: return h.data<double>()[i];
    case DType::BF16: return static_cast<float>(h.data<bf16>()[i]);
    case DType::I32: return h.data<int32_t>()[i];
    case DType::I64: return static_cast<double>(h.data<int64_t>()[i]);
  }
  return 0;
}

// Nested brackets; `cells` holds the formatted elements in collect() order.
inline void emit(std::string& out, const Shape& s, int dim, bool summarise,
                 const std::vector<std::string>& cells, size_t& next) {
  if (dim == s.rank()) {
    out += cells[next++];
    return;
  }
  out += '[';
  std::vector<int64_t> idx = shown(s[dim], summarise);
  bool innermost = dim == s.rank() - 1;
  for (size_t k = 0; k < idx.size(); ++k) {
    if (k > 0) {
      if (innermost) {
        out += ", ";
      } else {  // one newline per remaining dim, as PyTorch: blank lines between matrices
        out += ',';
        out.append(static_cast<size_t>(s.rank() - dim - 1), '\n');
        out.append(static_cast<size_t>(dim + 1), ' ');
      }
    }
    if (idx[k] < 0) {
      out += "...";
    } else {
      emit(out, s, dim + 1, summarise, cells, next);
    }
  }
  out += ']';
}

inline std::string tensor_to_string(const Tensor& t) {
  if (!t.defined()) return t.str();
  Tensor h = t.to(Device::cpu());
  const Shape& s = h.shape();
  bool summarise = h.numel() > kSummariseAbove;
  std::vector<int64_t> idx;
  collect(s, 0, 0, summarise, idx);

  std::vector<std::string> cells;
  cells.reserve(idx.size());
  if (is_floating(h.dtype())) {
    double lo = INFINITY, hi = 0;
    for (int64_t i : idx) {
      double a = std::fabs(value_at(h, i));
      if (!std::isfinite(a) || a == 0) continue;
      lo = std::min(lo, a);
      hi = std::max(hi, a);
    }
    bool sci = hi >= 1e8 || lo < 1e-4;
    for (int64_t i : idx)
      cells.push_back(sci ? fmt::format("{:.4e}", value_at(h, i))
                          : fmt::format("{:.4f}", value_at(h, i)));
  } else {
    for (int64_t i : idx)
      cells.push_back(h.dtype() == DType::I64 ? fmt::format("{}", h.data<int64_t>()[i])
                                              : fmt::format("{}", h.data<int32_t>()[i]));
  }
  size_t width = 0;
  for (const std::string& c : cells) width = std::max(width, c.size());
  for (std::string& c : cells) c.insert(0, width - c.size(), ' ');

  std::string out = t.str() + '\n';  // names the tensor's own device, not the host copy
  size_t next = 0;
  emit(out, s, 0, summarise, cells, next);
  return out;
}

}  // namespace psvae::format_detail

template <>
struct fmt::formatter<psvae::Shape> : fmt::formatter<fmt::string_view> {
  auto format(const psvae::Shape& s, fmt::format_context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(s.str(), ctx);
  }
};

template <>
struct fmt::formatter<psvae::DType> : fmt::formatter<fmt::string_view> {
  auto format(psvae::DType d, fmt::format_context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(psvae::dtype_name(d), ctx);
  }
};

template <>
struct fmt::formatter<psvae::Device> : fmt::formatter<fmt::string_view> {
  auto format(const psvae::Device& d, fmt::format_context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(d.str(), ctx);
  }
};

template <>
struct fmt::formatter<psvae::Tensor> : fmt::formatter<fmt::string_view> {
  auto format(const psvae::Tensor& t, fmt::format_context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(psvae::format_detail::tensor_to_string(t), ctx);
  }
};
