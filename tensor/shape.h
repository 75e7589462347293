// Shape: up to kMaxRank dims, stored inline (no heap) because shapes are copied on every op.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace psvae {

constexpr int kMaxRank = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(norm(i))]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(norm(i))]; }
  int64_t numel() const;
  // Negative dims count from the end, as in PyTorch; throws on out-of-range.
  int norm(int dim) const;

  std::vector<int64_t> vec() const { return {dims_.begin(), dims_.begin() + rank_}; }
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + rank_; }
  void push_back(int64_t d);
  // Row-major strides in elements.
  std::array<int64_t, kMaxRank> strides() const;
  // Product of dims in [from, to).
  int64_t prod(int from, int to) const;

  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "(2, 3, 4)"

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

}  // namespace psvae
