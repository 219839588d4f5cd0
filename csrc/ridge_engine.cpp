// Cholesky / ridge-solve engine; see ridge_engine.hpp for the conventions.
//
// Own kernels (N <= kOwnMaxN, P <= kOwnMaxP; see own_route) work on kLanes problems at once
// in a lane-interleaved ("compact") scratch: element e of lane v lives at buf[e·kLanes + v],
// so every scalar step of the algorithm is one SIMD operation across kLanes problems.
// Row-by-row kernels on one small problem spend their time in short, ragged vector loops
// (measured: no faster than LAPACK per problem at N = 8..64); the interleaved ones do not.
// Everything else goes to the BLAS through blas.hpp, single-threaded: one potrf call per
// problem, or for a large one with our threads allowed, the tiled factorisation below; the
// solves are blocked substitutions (gemm + small trsm), see solve_in_place.
//
// The factorisation works on W = [U | B] with rows N + P long, U = Lᵀ (the lower triangle
// of the input, transposed): right-looking, every update is "row i −= u·row k". Because the
// P right-hand sides ride along in the same rows, the forward substitution Y = L⁻¹B happens
// inside the factorisation ("augmented" Cholesky: chol([A B; Bᵀ ·]) = [U Y; 0 ·]) while the
// rows are in cache; the back substitution U·X = Y follows.
//
// The hot loops are compiled twice, for the baseline ISA and for AVX2+FMA (their bodies are
// always_inline and take the target of the function they are inlined into), and picked at
// run time as the Gram engine's row kernels are.
//
// Files: this one chooses the route (own_route, fused_route) and holds the public functions;
// the routes are ridge_lanes.cpp (with the kernels in ridge_lanes.hpp), ridge_fused.cpp and
// ridge_lapack.cpp, their thresholds and entry points in ridge_internal.hpp.
#include "ridge_engine.hpp"

#include "gram_engine.hpp"
#include "ridge_internal.hpp"

namespace fastamort::ridge {

using detail::factor_in_place;
using detail::fill_nan;
using detail::fused_kernel_ridge;
using detail::grown;
using detail::lapack_factor;
using detail::lapack_solve;
using detail::own_ridge;
using detail::own_solve;

namespace {

bool own_kernel(int n) { return n <= kOwnMaxN; }

// The own route for a group of count problems with p right-hand sides. A group too small
// to fill half the lanes costs more there than LAPACK per problem (padding lanes compute).
bool own_route(int n, int p, int count) {
  return own_kernel(n) && p <= kOwnMaxP && 2 * count >= kLanes;
}

// The fused route of kernel_ridge (fused_kernel_ridge): on the own route, and also for groups
// too small for it when n <= kFusedSmallGroupMaxN. One group run alone (inner_parallel,
// B <= 8) of problems with n > kFusedAloneMaxN and d > kFusedAloneMaxD keeps the Gram engine,
// whose threaded GEMM route wins there.
// Evidence, on a 2-core x86-64 AVX2 VM (ms, fused / Gram engine per problem then own kernels
// or LAPACK; d = 4, p = 1 unless said):
//   B = 4096:  n = 8: 0.29 / 3.3 (float32), 0.40 / 4.0 (float64); n = 32: 2.0 / 8.4, 3.9 / 8.8;
//              n = 128: 46 / 71, 101 / 124;  B = 512, d = 64, n = 128: 17 / 24, 29 / 34;
//   B = 1 and 3 (LAPACK route), float64, m = 10: n = 8: 0.003 / 0.010; n = 16: 0.008 / 0.012;
//              n = 32: 0.022 / 0.017 (B = 1), 0.024 / 0.031 (B = 3);  n = 64: 0.09 / 0.04;
//   B = 8, n = 128: d = 256: 2.1 / 1.6 (float64); d = 784: 4.0 / 2.5 (float32); at n <= 64 or
//              d <= 64 the fused route still wins.
// Re-measure: `fastamort bench ridge --device cpu` times kernel_ridge_batched at B = 4096,
// n = 8-64, d = 4 (its fused_krr rows); other cases by
// fastamort.benchmarks.ridge.bench_fused(B, n, dtype, torch.device("cpu"), ["cpp"], d=d).
// Compare two builds, with the thresholds of ridge_internal.hpp on either side of the case.
bool fused_route(int n, int d, int p, int count, bool inner_parallel) {
  if (!own_kernel(n) || p > kOwnMaxP) return false;
  if (inner_parallel && n > kFusedAloneMaxN && d > kFusedAloneMaxD) return false;
  return 2 * count >= kLanes || n <= kFusedSmallGroupMaxN;
}

}  // namespace

int group_size(int n) { return own_kernel(n) ? kLanes : 1; }

template <class T>
void cholesky(int n, int count, const T* a, const double* shift, T* l, int32_t* info,
              bool inner_parallel, Workspace<T>& ws) {
  if (own_route(n, 0, count)) {
    own_ridge<T>(n, 0, count, a, nullptr, shift, nullptr, l, info, ws);
    return;
  }
  for (long i = 0; i < count; ++i)
    info[i] = lapack_factor(n, a + i * n * n, static_cast<T>(shift[i]), l + i * n * n,
                            inner_parallel);
}

template <class T>
void cholesky_solve(int n, int p, int count, const T* l, const T* b, T* x, bool inner_parallel,
                    Workspace<T>& ws) {
  if (own_route(n, p, count)) {
    own_solve(n, p, count, l, b, x, ws);
    return;
  }
  for (long i = 0; i < count; ++i)
    lapack_solve(n, p, l + i * n * n, b + i * n * p, x + i * n * p, inner_parallel);
}

template <class T>
void ridge_solve(int n, int p, int count, const T* k, const T* b, const double* shift, T* x,
                 T* l, int32_t* info, bool inner_parallel, Workspace<T>& ws) {
  if (own_route(n, p, count)) {
    own_ridge(n, p, count, k, b, shift, x, l, info, ws);
    return;
  }
  for (long i = 0; i < count; ++i) {
    T* li = l != nullptr ? l + i * n * n : grown(ws.k, static_cast<long>(n) * n);
    T* xi = x + i * n * p;
    info[i] = lapack_factor(n, k + i * n * n, static_cast<T>(shift[i]), li, inner_parallel);
    if (info[i] != 0) {
      fill_nan(xi, static_cast<long>(n) * p);
    } else {
      lapack_solve(n, p, li, b + i * n * p, xi, inner_parallel);
    }
  }
}

template <class T>
void kernel_ridge(int n, int d, int p, int m, int count, const T* x, const T* y,
                  const double* shift, int kernel, T lengthscale, const T* x_new, T* alpha,
                  T* pred, int32_t* info, bool inner_parallel, Workspace<T>& ws) {
  auto gram_into = [&](long i, T* k) {
    const gram::Problem<T> gp{x + i * n * d, nullptr, n, n, d, kernel, lengthscale};
    gram::forward<T>(gp, k, inner_parallel);
  };
  if (fused_route(n, d, p, count, inner_parallel)) {
    fused_kernel_ridge(n, d, p, m, count, x, y, shift, kernel, lengthscale, x_new, alpha, pred,
                       info, ws);
    return;
  }
  const long nn = static_cast<long>(n) * n;
  if (own_route(n, p, count)) {  // the group's Gram matrices side by side, then interleaved
    T* k = grown(ws.k, count * nn);
    for (int v = 0; v < count; ++v) gram_into(v, k + v * nn);
    own_ridge<T>(n, p, count, k, y, shift, alpha, nullptr, info, ws, true);
  } else {  // factor K in place
    T* k = grown(ws.k, nn);
    for (long i = 0; i < count; ++i) {
      gram_into(i, k);
      for (long r = 0; r < n; ++r) k[r * n + r] += static_cast<T>(shift[i]);
      info[i] = factor_in_place(n, k, inner_parallel);
      if (info[i] != 0) {
        fill_nan(alpha + i * n * p, static_cast<long>(n) * p);
      } else {
        lapack_solve(n, p, k, y + i * n * p, alpha + i * n * p, inner_parallel);
      }
    }
  }
  if (pred == nullptr) return;
  for (long i = 0; i < count; ++i) {
    T* pi = pred + i * m * p;
    if (info[i] != 0) {
      fill_nan(pi, static_cast<long>(m) * p);
      continue;
    }
    const gram::Problem<T> cross{x_new + i * m * d, x + i * n * d, m, n, d, kernel, lengthscale};
    gram::matmul_forward<T>(cross, alpha + i * n * p, p, pi, inner_parallel);
  }
}

#define FASTAMORT_RIDGE_INSTANTIATE(T)                                                         \
  template void cholesky<T>(int, int, const T*, const double*, T*, int32_t*, bool,             \
                            Workspace<T>&);                                                    \
  template void cholesky_solve<T>(int, int, int, const T*, const T*, T*, bool, Workspace<T>&); \
  template void ridge_solve<T>(int, int, int, const T*, const T*, const double*, T*, T*,       \
                               int32_t*, bool, Workspace<T>&);                                 \
  template void kernel_ridge<T>(int, int, int, int, int, const T*, const T*, const double*,    \
                                int, T, const T*, T*, T*, int32_t*, bool, Workspace<T>&);
FASTAMORT_RIDGE_INSTANTIATE(float)
FASTAMORT_RIDGE_INSTANTIATE(double)

}  // namespace fastamort::ridge
