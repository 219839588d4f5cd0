// The CPU Cholesky / ridge-solve engine.
//
// Layout (row-major, C-contiguous): a, k, L (N×N), b, x (N×P), points x (N×D), x_new (M×D),
// pred (M×P); a call takes `count` consecutive problems of a batch (problem i at
// a + i·N·N, ...), with shift and info given per problem. Only the lower triangle of a / k is
// read (as LAPACK does); L is lower triangular with exact zeros above the diagonal. info
// follows LAPACK: 0 on success, k > 0 (1-based) when the leading minor of order k is not
// positive definite or its pivot is not finite; x, alpha and pred are then NaN and L is
// unspecified.
//
// Two routes, chosen per call from N, P and count (own_route in ridge_engine.cpp):
//   - own kernels (small N, few right-hand sides): up to group_size(N) problems at once, one
//     per SIMD lane, serial and without BLAS; meant to run in parallel over the groups;
//   - BLAS/LAPACK through blas.hpp, one problem after another inside the call, always with the
//     BLAS single-threaded (the bindings hold blas::SingleThreaded: OpenBLAS's own thread pool
//     busy-waits after each call and fights ours and torch's for the cores). With
//     inner_parallel (the caller runs its calls one after another), a large problem is
//     factored by a tiled Cholesky on our OpenMP threads and solved by a blocked substitution
//     split over them; without it (the caller runs calls in parallel), one potrf call each.
#pragma once

#include <cstdint>
#include <vector>

#include "buffer_pool.hpp"

namespace fastamort::ridge {

// How many consecutive problems of order n one call should take (at most).
int group_size(int n);

// Per-thread scratch, grown on demand and reused across the calls of a batch: w and t the
// lanes' zero-filled buffers, k the large one (a factor copy, Gram matrices, points) on the
// buffer pool, uninitialised when grown (every user writes what it reads).
template <class T>
struct Workspace {
  std::vector<T> w, t;
  pool::Vector<T> k;
};

// l = chol(a + shift·I). inner_parallel: the call may use OpenMP threads (see above).
template <class T>
void cholesky(int n, int count, const T* a, const double* shift, T* l, int32_t* info,
              bool inner_parallel, Workspace<T>& ws);

// l = chol(float32(a + shift·I)) for a float64 symmetric a (lower triangle read, narrowed in
// the copy: no float32 copy of a), over the threads; *frobenius_sq = ‖a‖_F² of the symmetric
// a, summed in float64 in the same pass. Returns info (LAPACK convention). For the
// mixed-precision refinement of large float64 ridge problems.
int cholesky_narrowed(int n, const double* a, double shift, float* l, double* frobenius_sq);

// x = (l·lᵀ)⁻¹ b, reading the lower triangle of l.
template <class T>
void cholesky_solve(int n, int p, int count, const T* l, const T* b, T* x, bool inner_parallel,
                    Workspace<T>& ws);

// l = chol(k + shift·I) and x = (k + shift·I)⁻¹ b in one pass; l == nullptr: L is not kept
// (factored in ws).
template <class T>
void ridge_solve(int n, int p, int count, const T* k, const T* b, const double* shift, T* x,
                 T* l, int32_t* info, bool inner_parallel, Workspace<T>& ws);

// ridge_solve of one problem forced through the tiled factorisation and the blocked solve with
// tile order `tile`, whatever n (for the tests); returns info.
template <class T>
int tiled_ridge_solve(int n, int p, const T* k, const T* b, double shift, T* x, T* l, int tile);

// Kernel ridge regression: alpha = (K(x, x) + shift·I)⁻¹ y with K exactly symmetric with a
// unit diagonal, built in ws, never in a caller's array: on the own route straight into the
// interleaved lanes from the points (no Gram matrix per problem), else by gram::forward; and
// when x_new != nullptr, pred = K(x_new, x)·alpha (x_new: M×D per problem), NaN where
// info != 0. The kernel values are the Gram engine's (same distances, same k(s) code).
template <class T>
void kernel_ridge(int n, int d, int p, int m, int count, const T* x, const T* y,
                  const double* shift, int kernel, T lengthscale, const T* x_new, T* alpha,
                  T* pred, int32_t* info, bool inner_parallel, Workspace<T>& ws);

}  // namespace fastamort::ridge
