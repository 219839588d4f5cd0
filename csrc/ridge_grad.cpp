// The ridge backward's gradient with respect to K: a symmetric rank-2p product.
//
// For X = (K + λI)⁻¹ B and Ḃ = (K + λI)⁻¹ Ẋ, K̄ = α(Ḃ Xᵀ + X Ḃᵀ) with α = −½. The product is
// symmetric, so only the blocks at or below the diagonal are computed (two GEMMs each, half
// the flops of the full n × n × 2p product), each mirrored while it is still in cache; the
// block pairs run in parallel on our OpenMP threads, the BLAS single-threaded inside them.
#include "ridge_grad.hpp"

#include <algorithm>

#include "blas.hpp"
#include "lower_blocks.hpp"
#include "parallel.hpp"

namespace fastamort::ridge {
namespace {

// Rows (and columns) of one block: 256 × 256 × 4 or 8 bytes stays in L2 for the mirror.
constexpr int kBlock = 256;

}  // namespace

template <class T>
void symmetric_rank2k(int n, int p, const T* a, const T* b, T alpha, T* c, bool parallel) {
  if (n == 0) return;
  if (p == 0) {
    std::fill(c, c + static_cast<long>(n) * n, T(0));
    return;
  }
  const int nb = (n + kBlock - 1) / kBlock;
  const int n_pairs = nb * (nb + 1) / 2;
#pragma omp parallel for schedule(dynamic) if (parallel && n_pairs > 1)
  for (int pair = 0; pair < n_pairs; ++pair) {
    const auto [bi, bj] = lower_block(pair);
    const int i0 = bi * kBlock, rows = std::min(kBlock, n - i0);
    const int j0 = bj * kBlock, cols = std::min(kBlock, n - j0);
    T* cb = c + static_cast<long>(i0) * n + j0;
    const long ai = static_cast<long>(i0) * p, aj = static_cast<long>(j0) * p;
    blas::gemm<T>('N', 'T', rows, cols, p, alpha, a + ai, p, b + aj, p, T(0), cb, n);
    blas::gemm<T>('N', 'T', rows, cols, p, alpha, b + ai, p, a + aj, p, T(1), cb, n);
    mirror_block(c, n, i0, rows, j0, cols);
  }
}

template void symmetric_rank2k<float>(int, int, const float*, const float*, float, float*, bool);
template void symmetric_rank2k<double>(int, int, const double*, const double*, double, double*,
                                       bool);

}  // namespace fastamort::ridge
