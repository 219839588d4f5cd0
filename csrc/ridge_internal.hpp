// Shared by the files of the ridge engine (not part of its interface, see ridge_engine.hpp):
// the route thresholds, small helpers, and the routes' entry points, one file per route:
//   ridge_lanes.cpp   own kernels: kLanes problems interleaved, one per SIMD lane;
//   ridge_fused.cpp   fused kernel ridge: the own route building K from the points;
//   ridge_lapack.cpp  LAPACK route, with the tiled Cholesky and blocked solves of one large
//                     problem on our threads;
//   ridge_engine.cpp  the route choice and the public functions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "portability.hpp"
#include "ridge_engine.hpp"

// The AVX2+FMA copies of the lane kernels (GCC and clang on x86-64; elsewhere the baseline
// kernels only).
#ifdef FASTAMORT_HAVE_AVX2_DISPATCH
#define FASTAMORT_RIDGE_AVX2 1
#endif

namespace fastamort::ridge {

// ---- route thresholds (exported as fastamort._C.ROUTE_THRESHOLDS) -------------------------

// Order up to which the own kernels are used: the largest n at which they beat LAPACK in
// float64 (in float32 they still win at 192). Evidence, on a 2-core x86-64 AVX2 VM (one thread, batches
// of ≥ 100 problems, ridge_solve with p = 1 and 17, µs per problem, own / LAPACK):
//   float64  n = 64: 11 / 19, 18 / 26;  n = 128: 69 / 79, 97 / 100;  n = 192: 203 / 193
//   float32  n = 64:  7 / 14, 10 / 19;  n = 128: 32 / 54, 51 / 72;   n = 192:  92 / 130
// cholesky_solve alone breaks even near n = 128 too. Re-measure under
// torch.set_num_threads(1): fastamort.benchmarks.ridge.bench_batched(B, n, dtype,
// torch.device("cpu"), ["cpp"]) at n = 64, 128, 192 (`fastamort bench ridge` runs n <= 64),
// one build with this constant below n and one at n.
constexpr int kOwnMaxN = 128;
// Right-hand sides up to which the own route is taken. They ride along as extra columns of
// the factorisation, while LAPACK solves them with BLAS-3 trsm. Evidence, same machine (one
// thread, own / LAPACK time): p = 64: 0.4 (n = 8) to 1.15 (n = 64, 128); p = 256: 0.85
// (n = 8) to 2.7 (n = 128). The cap also bounds the scratch, which grows with n·(n + p).
// Re-measure: ridge_solve on (B, n, n) and (B, n, p) batches at these p, one build with this
// constant below p and one at p.
constexpr int kOwnMaxP = 64;
// Problems per group on the own route: 8 lanes fill one AVX2 register of floats and two of
// doubles (two independent FMA chains).
constexpr int kLanes = 8;
// The fused route of kernel_ridge also takes groups too small for the own route up to this
// order, and a group run alone (inner_parallel) of problems with n > kFusedAloneMaxN and
// d > kFusedAloneMaxD keeps the Gram engine (see fused_route in ridge_engine.cpp).
constexpr int kFusedSmallGroupMaxN = 16;
constexpr int kFusedAloneMaxN = 64;
constexpr int kFusedAloneMaxD = 64;
// Order from which one problem is factored with our threads rather than one potrf call.
// Evidence, on a 2-core x86-64 AVX2 VM (µs, one potrf call / tiled on 2 threads): n = 128:
// 115 / 83 (float64, tiles of 32), n = 192: 215 / 157, n = 256: 585 / 365 (tiles of 64).
// Re-measure: fastamort.benchmarks.ridge.bench_single(n, 1, dtype, torch.device("cpu"),
// ["cpp"]) at n = 128-256 (`fastamort bench ridge` runs n >= 256), one build with this
// constant below n and one at n.
constexpr int kTiledMinN = 192;
// Order from which one solve is split over our threads, and the block order of the split.
// The blocked solve beats one potrs call from n = 128 up (potrs on a row-major right-hand
// side is a right-side trsm of one row for p = 1, a slow path of OpenBLAS). Evidence, same
// machine (2 threads, ms, potrs / blocked): n = 256, p = 1: 0.08 / 0.02 (float64);
// n = 4096, p = 17: 42 / 15.5; p = 256: 207 / 107. Blocks of about n/16 (at least 32, at most
// 128; 128 for many right-hand sides, where the gemm calls want the width) were best or
// within noise. Re-measure: `fastamort bench ridge --device cpu` (single solves, n = 256-4096,
// p = 1 and 17), one build with this constant below n and one at n.
constexpr int kParallelSolveMinN = 128;
// Right-hand sides from which each thread solves its own block of columns with whole-matrix
// trsm calls (no serial diagonal steps, no barriers) instead of the row-split blocked solve.
constexpr int kColumnSplitMinP = 32;

namespace detail {

template <class T>
FASTAMORT_INLINE bool good_pivot(T d) {
  // A positive normal number: a subnormal pivot (a matrix numerically zero) would "succeed"
  // and the solve overflow to ∞ and NaN. False for NaN, too: OpenBLAS's potrf lets a NaN
  // pivot through with info = 0.
  return d >= std::numeric_limits<T>::min() && d <= std::numeric_limits<T>::max();
}

template <class T>
void fill_nan(T* x, long count) {
  std::fill(x, x + count, std::numeric_limits<T>::quiet_NaN());
}

template <class Vec>
typename Vec::value_type* grown(Vec& v, long size) {
  if (static_cast<long>(v.size()) < size) v.resize(size);
  return v.data();
}

// ---- own route (ridge_lanes.cpp) ------------------------------------------------------------

// Whether the lane kernels run their AVX2+FMA copies (the Gram engine's choice: CPU features,
// FASTAMORT_ISA=baseline).
bool use_avx2();

// The own route for ridge_solve (b, x given) and cholesky (p == 0, b == x == nullptr), and for
// kernel_ridge's Gram matrices (symmetric: a fully stored, read by rows of its upper triangle;
// else a's lower triangle is read).
template <class T>
void own_ridge(int n, int p, int count, const T* a, const T* b, const double* shift, T* x, T* l,
               int32_t* info, Workspace<T>& ws, bool symmetric = false);

template <class T>
void own_solve(int n, int p, int count, const T* l, const T* b, T* x, Workspace<T>& ws);

// ---- fused kernel ridge (ridge_fused.cpp) ---------------------------------------------------

// kernel_ridge for count consecutive problems (at most kLanes) on the fused route.
template <class T>
void fused_kernel_ridge(int n, int d, int p, int m, int count, const T* x, const T* y,
                        const double* shift, int kernel, T lengthscale, const T* x_new, T* alpha,
                        T* pred, int32_t* info, Workspace<T>& ws);

// ---- LAPACK route (ridge_lapack.cpp) --------------------------------------------------------

// chol(l) in place, l n×n row-major (lower triangle): tiled on our threads from kTiledMinN
// when parallel and more than one thread, else one potrf call; returns info.
template <class T>
int factor_in_place(int n, T* l, bool parallel);

// l = chol(a + shift·I); returns info.
template <class T>
int lapack_factor(int n, const T* a, T shift, T* l, bool parallel);

// x = (l·lᵀ)⁻¹ b.
template <class T>
void lapack_solve(int n, int p, const T* l, const T* b, T* x, bool parallel);

}  // namespace detail
}  // namespace fastamort::ridge
