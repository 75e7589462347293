// CPU kernels: layout family (permute, concat, slice, pad, embedding and its backward).
//
// Data movement does no arithmetic, so permute/concat/slice copy raw elements and work for every
// dtype (index and mask tensors get permuted too). Each kernel walks the *output* in rows: every
// output row is written by exactly one iteration, so rows parallelise without races and the
// result does not depend on the thread count.
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_common.h"

namespace psvae::kernels::cpu {

namespace {

// Flat index of a row of `dims[0..n)` -> per-dim indices (row-major).
inline void decode(int64_t row, const int64_t* dims, int n, int64_t* idx) {
  for (int d = n - 1; d >= 0; --d) {
    idx[d] = row % dims[d];
    row /= dims[d];
  }
}

// ---- permute
// ------------------------------------------------------------------------------------- The output
// is seen as (head[0], ..., head[n-1], block): the trailing dims that the permutation leaves in
// place are contiguous in both tensors and move as one block of `block` elements, so (B,T,H,d) ->
// (B,H,T,d) is a memcpy of d elements per step. E moves one element (uint32_t moves an f32 or an
// i32 alike).
template <class E>
void permute_blocks(const E* src, E* dst, const std::vector<int64_t>& head,
                    const std::vector<int64_t>& in_stride, int64_t block) {
  const int n = static_cast<int>(head.size());
  const int64_t last = head[static_cast<size_t>(n - 1)];
  int64_t rows = 1;
  for (int d = 0; d < n - 1; ++d) rows *= head[static_cast<size_t>(d)];
  const int64_t last_stride = in_stride[static_cast<size_t>(n - 1)];
#pragma omp parallel for if (rows * last * block > kParallelGrain)
  for (int64_t row = 0; row < rows; ++row) {
    int64_t idx[kMaxRank];
    decode(row, head.data(), n - 1, idx);
    int64_t base = 0;
    for (int d = 0; d < n - 1; ++d) base += idx[d] * in_stride[static_cast<size_t>(d)];
    E* out = dst + row * last * block;
    if (block == 1) {
      for (int64_t j = 0; j < last; ++j) out[j] = src[base + j * last_stride];
    } else {
      for (int64_t j = 0; j < last; ++j)
        std::memcpy(out + j * block, src + base + j * last_stride,
                    static_cast<size_t>(block) * sizeof(E));
    }
  }
}

template <class Fn>
void by_element_size(DType dt, const char* op, Fn&& fn) {
  switch (dtype_size(dt)) {
    case 2: fn(uint16_t{}); return;
    case 4: fn(uint32_t{}); return;
    case 8: fn(uint64_t{}); return;
    default:
      throw std::invalid_argument(fmt::format("{}: unsupported dtype {}", op, dtype_name(dt)));
  }
}

// y.shape[i] = x.shape[perm[i]]; ints: perm.
void permute_cpu(const OpCall& c) {
  const Tensor& x = c.in[0];
  const Tensor& y = c.out[0];
  const int r = x.rank();
  if (y.numel() == 0) return;
  int keep = r;  // dims [keep, r) stay in place
  while (keep > 0 && c.ints[static_cast<size_t>(keep - 1)] == keep - 1) --keep;
  if (keep == 0) {  // identity permutation (or rank 0)
    std::memcpy(y.raw_data(), x.raw_data(), x.nbytes());
    return;
  }
  const int64_t block = x.shape().prod(keep, r);
  const auto xstr = x.shape().strides();
  std::vector<int64_t> head, in_stride;
  for (int i = 0; i < keep; ++i) {
    auto p = static_cast<size_t>(c.ints[static_cast<size_t>(i)]);
    head.push_back(x.size(static_cast<int>(p)));
    in_stride.push_back(xstr[p]);
  }
  by_element_size(x.dtype(), "permute", [&](auto tag) {
    using E = decltype(tag);
    permute_blocks(static_cast<const E*>(x.raw_data()), static_cast<E*>(y.raw_data()), head,
                   in_stride, block);
  });
}

// ---- concat
// -------------------------------------------------------------------------------------- Along dim:
// the output is (outer, sum_i chunk_i) where chunk_i = x_i.size(dim) * inner; each outer row is the
// inputs' chunks side by side.
void concat_cpu(const OpCall& c) {
  const Tensor& y = c.out[0];
  const int dim = static_cast<int>(c.ints[0]);
  const int64_t outer = y.shape().prod(0, dim);
  const size_t es = dtype_size(y.dtype());
  const size_t row_bytes = static_cast<size_t>(y.shape().prod(dim, y.rank())) * es;
  auto* dst = static_cast<char*>(y.raw_data());
  std::vector<size_t> chunk;
  std::vector<const char*> src;
  for (const Tensor& x : c.in) {
    chunk.push_back(static_cast<size_t>(x.shape().prod(dim, x.rank())) * es);
    src.push_back(static_cast<const char*>(x.raw_data()));
  }
#pragma omp parallel for if (y.numel() > kParallelGrain)
  for (int64_t o = 0; o < outer; ++o) {
    char* out = dst + static_cast<size_t>(o) * row_bytes;
    for (size_t i = 0; i < chunk.size(); ++i) {
      if (chunk[i]) std::memcpy(out, src[i] + static_cast<size_t>(o) * chunk[i], chunk[i]);
      out += chunk[i];
    }
  }
}

// ---- slice
// --------------------------------------------------------------------------------------- y[i] =
// x[start + i] for every dim; ints: start per dim. Each output row (last dim) is a contiguous run
// of the input.
void slice_cpu(const OpCall& c) {
  const Tensor& x = c.in[0];
  const Tensor& y = c.out[0];
  if (y.numel() == 0) return;
  const int r = x.rank();
  const size_t es = dtype_size(x.dtype());
  if (r == 0) {
    std::memcpy(y.raw_data(), x.raw_data(), es);
    return;
  }
  const auto xstr = x.shape().strides();
  const int64_t last = y.size(r - 1);
  const int64_t rows = y.numel() / last;
  const auto* src = static_cast<const char*>(x.raw_data());
  auto* dst = static_cast<char*>(y.raw_data());
#pragma omp parallel for if (y.numel() > kParallelGrain)
  for (int64_t row = 0; row < rows; ++row) {
    int64_t idx[kMaxRank];
    decode(row, y.shape().begin(), r - 1, idx);
    int64_t off = c.ints[static_cast<size_t>(r - 1)];
    for (int d = 0; d < r - 1; ++d)
      off += (idx[d] + c.ints[static_cast<size_t>(d)]) * xstr[static_cast<size_t>(d)];
    std::memcpy(dst + static_cast<size_t>(row * last) * es, src + static_cast<size_t>(off) * es,
                static_cast<size_t>(last) * es);
  }
}

// ---- pad
// ----------------------------------------------------------------------------------------- x
// placed at offset `before` in y, the rest set to `value`; ints: before per dim, reals: value. Each
// output row is written once: all value, or value | x row | value.
template <class T>
void pad_typed(const OpCall& c) {
  const Tensor& x = c.in[0];
  const Tensor& y = c.out[0];
  if (y.numel() == 0) return;
  const int r = y.rank();
  const T v = static_cast<T>(c.reals[0]);
  const T* src = static_cast<const T*>(x.raw_data());
  T* dst = static_cast<T*>(y.raw_data());
  if (r == 0) {
    dst[0] = src[0];
    return;
  }
  const auto xstr = x.shape().strides();
  const int64_t last = y.size(r - 1), xlast = x.size(r - 1);
  const int64_t before = c.ints[static_cast<size_t>(r - 1)];
  const int64_t rows = y.numel() / last;
#pragma omp parallel for if (y.numel() > kParallelGrain)
  for (int64_t row = 0; row < rows; ++row) {
    int64_t idx[kMaxRank];
    decode(row, y.shape().begin(), r - 1, idx);
    T* out = dst + row * last;
    bool inside = xlast > 0;
    int64_t off = 0;
    for (int d = 0; d < r - 1 && inside; ++d) {
      int64_t i = idx[d] - c.ints[static_cast<size_t>(d)];
      inside = i >= 0 && i < x.size(d);
      off += i * xstr[static_cast<size_t>(d)];
    }
    if (!inside) {
      for (int64_t j = 0; j < last; ++j) out[j] = v;
      continue;
    }
    for (int64_t j = 0; j < before; ++j) out[j] = v;
    std::memcpy(out + before, src + off, static_cast<size_t>(xlast) * sizeof(T));
    for (int64_t j = before + xlast; j < last; ++j) out[j] = v;
  }
}

void pad_cpu(const OpCall& c) {
  switch (c.in[0].dtype()) {
    case DType::F32: pad_typed<float>(c); return;
    case DType::F64: pad_typed<double>(c); return;
    case DType::I32: pad_typed<int32_t>(c); return;
    case DType::I64: pad_typed<int64_t>(c); return;
    default:
      throw std::invalid_argument(
          fmt::format("pad: CPU kernel has no {} support", dtype_name(c.in[0].dtype())));
  }
}

// ---- embedding
// ----------------------------------------------------------------------------------- Ids are
// validated serially before the parallel loop: an exception cannot leave an OpenMP region.
void check_ids(const Tensor& ids, int64_t rows, const char* op) {
  for (int64_t i = 0; i < ids.numel(); ++i) {
    int64_t id = id_at(ids, i);
    if (id < 0 || id >= rows)
      throw std::out_of_range(
          fmt::format("{}: id {} at position {} is outside [0, {}) (table has {} rows)", op, id, i,
                      rows, rows));
  }
}

// (table (V,D), ids (...)) -> y (..., D): y[i] = table[ids[i]].
void embedding_cpu(const OpCall& c) {
  const Tensor& table = c.in[0];
  const Tensor& ids = c.in[1];
  const Tensor& y = c.out[0];
  check_ids(ids, table.size(0), "embedding");
  const int64_t n = ids.numel();
  const size_t row = static_cast<size_t>(table.size(1)) * dtype_size(table.dtype());
  const auto* src = static_cast<const char*>(table.raw_data());
  auto* dst = static_cast<char*>(y.raw_data());
#pragma omp parallel for if (y.numel() > kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + static_cast<size_t>(i) * row, src + static_cast<size_t>(id_at(ids, i)) * row,
                row);
}

// (gy (..., D), ids (...)) -> gtable (V,D). A counting sort groups the positions of each id (in
// input order); then each table row sums its positions serially in double. Parallel over table
// rows, so the order of every sum is fixed: bit-identical for any thread count, no atomics.
template <class T>
void embedding_bwd_typed(const OpCall& c) {
  const Tensor& gy = c.in[0];
  const Tensor& ids = c.in[1];
  const Tensor& gt = c.out[0];
  const int64_t V = gt.size(0), D = gt.size(1), n = ids.numel();
  check_ids(ids, V, "embedding_bwd");
  std::vector<int64_t> start(static_cast<size_t>(V + 1), 0), pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ++start[static_cast<size_t>(id_at(ids, i) + 1)];
  for (int64_t v = 0; v < V; ++v)
    start[static_cast<size_t>(v + 1)] += start[static_cast<size_t>(v)];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i)
      pos[static_cast<size_t>(fill[static_cast<size_t>(id_at(ids, i))]++)] = i;
  }
  const T* g = gy.data<T>();
  T* out = gt.data<T>();
#pragma omp parallel if (V * D > kParallelGrain)
  {
    std::vector<double> acc(static_cast<size_t>(D));
#pragma omp for
    for (int64_t v = 0; v < V; ++v) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = start[static_cast<size_t>(v)]; p < start[static_cast<size_t>(v + 1)]; ++p) {
        const T* grow = g + pos[static_cast<size_t>(p)] * D;
        for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += grow[d];
      }
      for (int64_t d = 0; d < D; ++d) out[v * D + d] = static_cast<T>(acc[static_cast<size_t>(d)]);
    }
  }
}

void embedding_bwd_cpu(const OpCall& c) {
  dispatch_float(c.in[0].dtype(), "embedding_bwd",
                 [&](auto tag) { embedding_bwd_typed<decltype(tag)>(c); });
}

}  // namespace

void register_layout(OpTable& t) {
  t[Op::permute].cpu = &permute_cpu;
  t[Op::concat].cpu = &concat_cpu;
  t[Op::slice].cpu = &slice_cpu;
  t[Op::pad].cpu = &pad_cpu;
  t[Op::embedding].cpu = &embedding_cpu;
  t[Op::embedding_bwd].cpu = &embedding_bwd_cpu;
}

}  // namespace psvae::kernels::cpu
