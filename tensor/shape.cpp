#include "tensor/shape.h"

#include <fmt/format.h>

#include <stdexcept>

namespace psvae {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  if (dims.size() > kMaxRank)
    throw std::invalid_argument(
        fmt::format("shape rank {} exceeds the maximum {}", dims.size(), kMaxRank));
  for (int64_t d : dims) {
    if (d < 0) throw std::invalid_argument(fmt::format("negative dimension {} in shape", d));
    dims_[static_cast<size_t>(rank_++)] = d;
  }
}

int64_t Shape::numel() const { return prod(0, rank_); }

int64_t Shape::prod(int from, int to) const {
  int64_t n = 1;
  for (int i = from; i < to; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

int Shape::norm(int dim) const {
  int d = dim < 0 ? dim + rank_ : dim;
  if (d < 0 || d >= rank_)
    throw std::out_of_range(fmt::format("dim {} out of range for shape {}", dim, str()));
  return d;
}

void Shape::push_back(int64_t d) {
  if (rank_ == kMaxRank)
    throw std::invalid_argument(fmt::format("shape rank would exceed the maximum {}", kMaxRank));
  dims_[static_cast<size_t>(rank_++)] = d;
}

std::array<int64_t, kMaxRank> Shape::strides() const {
  std::array<int64_t, kMaxRank> s{};
  int64_t acc = 1;
  for (int i = rank_ - 1; i >= 0; --i) {
    s[static_cast<size_t>(i)] = acc;
    acc *= dims_[static_cast<size_t>(i)];
  }
  return s;
}

bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (dims_[static_cast<size_t>(i)] != o.dims_[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "(";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[static_cast<size_t>(i)]);
  }
  return s + ")";
}

}  // namespace psvae
