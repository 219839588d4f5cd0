// The CPU Gram engine: K(X, Y), K(X, Y)·V and their gradients for one problem.
//
// Shapes (row-major): x (M×D), y (N×D), v (N×P), K (M×N), out (M×P).
// Every op walks the M×N plane in tiles. A tile of scaled distances s is made either
//   - by the GEMM trick (D large): s = max(‖x̃‖² + ‖ỹ‖² − 2·x̃·ỹᵀ, 0)/ℓ² on points centred at
//     a robust centre (per-coordinate median of a sample), with the cross term from BLAS or
//     the fused micro-kernel; every entry whose centred norms exceed kDirectRatio times its
//     value (row_ops.hpp) is then recomputed from the raw points by a direct difference, so
//     that no offset of the points and no outlier among them costs digits; or
//   - directly on the raw points (D small, the Laplacian, or small batched problems):
//     s = Σ (x − y)²/ℓ²,
// and is then mapped in place to k(s) (forward) or w = G·dk/ds (backward) by the
// vectorised row kernels. gram() with D up to 64 fuses the two: a register-blocked
// micro-kernel forms s and k(s) is written straight into K (RowOps::gram_tile_exact). Only
// gram() writes the whole M×N matrix; gram_matmul and the backward passes keep one tile at a
// time. The backward contracts w with the points by GEMMs on the centred points, except for
// the recomputed entries (and on the direct route), whose w·(x − y) is formed directly.
#pragma once

#include <vector>

namespace fastamort::gram {

// One problem of the batch. y == nullptr means Y = X ("symmetric": exact zeros on the
// distance diagonal, K exactly symmetric).
template <class T>
struct Problem {
  const T* x;
  const T* y;
  int m, n, d;
  int kernel;
  T lengthscale;
};

// How the tiles of s are made: directly (kDirect), by the GEMM trick with BLAS (kGemm), or,
// for forward() only, by the GEMM trick in the fused tile (kFused; the other ops use BLAS).
// inner_parallel: the problem is large enough to be split over threads (see the bindings).
enum class Route { kDirect, kFused, kGemm };
Route route(int d, int kernel, bool inner_parallel);
// The largest D of the fused route (it depends on which BLAS the GEMM route would call).
int fused_max_d();

// K (M×N, row-major). With p.y == nullptr, N == M and K is exactly symmetric.
template <class T>
void forward(const Problem<T>& p, T* k, bool inner_parallel);

// out (M×P) = K·v.
template <class T>
void matmul_forward(const Problem<T>& p, const T* v, int n_cols, T* out, bool inner_parallel);

// Gradients of Σ G∘K w.r.t. x, y and ℓ, for G given densely (g: M×N, v == nullptr) or as a
// product G = g·vᵀ (g: M×P, v: N×P, the gram_matmul case). dy may be nullptr when
// p.y == nullptr: then dx holds the total gradient for X in both roles.
template <class T>
double backward(const Problem<T>& p, const T* g, const T* v, int n_cols, T* dx, T* dy,
                bool inner_parallel);

// As backward(), computing only the point gradients asked for: dx == nullptr skips x's (with
// p.y == nullptr, the point gradient altogether), dy == nullptr skips y's (p.y != nullptr);
// with neither, only the lengthscale gradient (the return value) is formed.
template <class T>
double backward_selected(const Problem<T>& p, const T* g, const T* v, int n_cols, T* dx, T* dy,
                         bool inner_parallel);

// ∂/∂ℓ of Σ G∘K from K itself (g, k: M×N, row-major), without distances: Σ g·ℓ·∂k/∂ℓ / ℓ,
// with ℓ·∂k/∂ℓ a function of k (RowOps::ell_grad_from_k). Rows are split over threads when
// parallel; the sum is the same for any thread count.
template <class T>
double ell_grad_from_k(const T* k, const T* g, long m, long n, int kernel, T lengthscale,
                       bool parallel);

}  // namespace fastamort::gram
