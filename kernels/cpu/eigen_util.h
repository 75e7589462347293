// Eigen for the CPU kernels (linalg.cpp, spatial.cpp): the one place that includes Eigen, so
// every file that instantiates Eigen's templates sees the same configuration.
//
// Single-threaded Eigen, for determinism: Eigen's own OpenMP GEMM picks its cache blocking (the
// kc depth split, hence the order in which partial dot products are added) from the thread count,
// so a result could change with OMP_NUM_THREADS. With EIGEN_DONT_PARALLELIZE each GEMM is serial
// and the callers split the output into fixed blocks themselves, so the bits are the same for any
// thread count. Every includer must agree on the define (ODR: they instantiate the same Eigen GEMM
// templates), hence this header rather than a define per file.
//
// GCC 12 with -march=native (AVX-512) warns "'__Y' may be used uninitialized" inside its own
// intrinsics headers wherever Eigen's packet code is inlined: a false positive on the
// deliberately undefined registers of _mm256_undefined_pd / _mm512_undefined_* (GCC PR 105593,
// fixed in GCC 13). The warning is silenced with push/pop around the include only, nowhere else.
#pragma once
#define EIGEN_DONT_PARALLELIZE
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

namespace psvae::kernels::cpu {

// Row-major dynamic matrices and maps over the kernels' contiguous buffers.
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const RowMat<T>>;
template <class T>
using MutMap = Eigen::Map<RowMat<T>>;

}  // namespace psvae::kernels::cpu
