// LAPACK route of the ridge engine: one problem at a time through the BLAS (blas.hpp), and
// for a large problem with our threads allowed, a tiled Cholesky and blocked solves on them.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "blas.hpp"
#include "parallel.hpp"
#include "ridge_internal.hpp"

namespace fastamort::ridge {
namespace detail {
namespace {

// ---- LAPACK route ---------------------------------------------------------------------------

// Index (1-based) of the first of the first `count` diagonal entries of a factor (stride lda)
// whose square, the pivot, is not a positive normal finite number (good_pivot), or 0.
template <class T>
int first_bad_pivot(int count, const T* a, long lda) {
  for (long k = 0; k < count; ++k)
    if (!good_pivot(a[k * lda + k] * a[k * lda + k])) return static_cast<int>(k) + 1;
  return 0;
}

// chol(a) in place (lower triangle, one BLAS thread): LAPACK's info, or the first pivot that
// is not finite, whichever comes first (OpenBLAS's potrf lets NaN pivots through).
template <class T>
int checked_potrf(int n, T* a, long lda) {
  const int info = blas::potrf_lower<T>(n, a, static_cast<int>(lda));
  const int bad = first_bad_pivot(info > 0 ? info - 1 : n, a, lda);
  return bad != 0 ? bad : info;
}

// ---- tiled Cholesky and blocked solves (one large problem, our own threads) -----------------
//
// Right-looking tiled Cholesky on the row-major lower triangle, tiles of nb×nb (tile_for; the
// last row/column of tiles ragged): for each block column k,
//   potrf(A_kk);  A_ik = A_ik·L_kk⁻ᵀ (i > k);  A_ij −= L_ik·L_jkᵀ (i ≥ j > k, syrk when i = j),
// each step one OpenMP task on one tile calling the single-threaded BLAS (the callers hold
// blas::SingleThreaded), ordered by task dependencies on the tiles. The dependencies give the
// look-ahead for free: potrf(A_k+1,k+1) starts as soon as its own update is done, while the
// other threads still update the rest of the trailing matrix, so the serial diagonal steps
// mostly hide behind the parallel ones. (A parallel for over each step's tiles, with
// barriers and no look-ahead, measured the same on 2 cores: n = 4096, 313 / 317 ms float64,
// 200 / 218 float32; the look-ahead matters more with more threads.) The first failing pivot
// (potrf's info or a non-finite pivot, see checked_potrf) stops the remaining tasks' work and
// gives info = k·nb + the tile's info, as one potrf call would. Single-threaded, the tiles
// gain nothing over one potrf call (measured n = 256..2048), so the batch-parallel path keeps
// that.

// Tile order. Large problems: 256 (a 256³ gemm already runs at the single-threaded BLAS's
// full rate, ~52 GFlop/s float64 and ~100 float32; measured n = 1536..4096, tiles
// 128/192/256/320/384/512: 256 best or within 3% for float64, float32 gains 5-8% from 384
// at n >= 3072, where the tiles are as many bytes as float64's). Smaller problems take about
// n/5 so that there are enough tiles to keep both threads busy (best measured: n = 256: 48-64,
// 384: 64-128, 512: 64-128, 768: 192).
template <class T>
int tile_for(int n) {
  if (sizeof(T) == sizeof(float) && n >= 3072) return 384;
  return std::clamp((n / 5 + 31) / 32 * 32, 64, 256);
}

bool use_threads(bool parallel) { return parallel && omp_get_max_threads() > 1; }

#ifdef FASTAMORT_HAVE_OMP4
template <class T>
int tiled_potrf(int n, T* a, long lda, int nb) {
  const int nt = (n + nb - 1) / nb;
  const auto size = [=](int i) { return std::min(nb, n - i * nb); };
  const auto tile = [=](int i, int j) {
    return a + static_cast<long>(i) * nb * lda + static_cast<long>(j) * nb;
  };
  const int ld = static_cast<int>(lda);
  std::vector<char> tokens(static_cast<size_t>(nt) * nt);  // one dependency address per tile
  [[maybe_unused]] char* dep = tokens.data();  // named in the task dependences only
  std::atomic<int> info{0};
#pragma omp parallel
#pragma omp single
  for (int k = 0; k < nt; ++k) {
    const int mk = size(k);
#pragma omp task depend(inout : dep[k * nt + k]) shared(info)
    if (info.load(std::memory_order_relaxed) == 0) {
      const int r = checked_potrf(mk, tile(k, k), lda);
      if (r != 0) info.store(k * nb + r, std::memory_order_relaxed);
    }
    for (int i = k + 1; i < nt; ++i) {
#pragma omp task depend(in : dep[k * nt + k]) depend(inout : dep[i * nt + k]) shared(info)
      if (info.load(std::memory_order_relaxed) == 0)
        blas::trsm_right_lower<T>('T', size(i), mk, T(1), tile(k, k), ld, tile(i, k), ld);
    }
    // Column k + 1 first: its diagonal tile is the next step's critical path.
    for (int j = k + 1; j < nt; ++j) {
#pragma omp task depend(in : dep[j * nt + k]) depend(inout : dep[j * nt + j]) shared(info)
      if (info.load(std::memory_order_relaxed) == 0)
        blas::syrk_lower<T>(size(j), mk, T(-1), tile(j, k), ld, T(1), tile(j, j), ld);
      for (int i = j + 1; i < nt; ++i) {
#pragma omp task depend(in : dep[i * nt + k], dep[j * nt + k]) depend(inout : dep[i * nt + j]) \
    shared(info)
        if (info.load(std::memory_order_relaxed) == 0)
          blas::gemm<T>('N', 'T', size(i), size(j), mk, T(-1), tile(i, k), ld, tile(j, k), ld,
                        T(1), tile(i, j), ld);
      }
    }
  }
  return info.load();
}
#else
// Without OpenMP 4.0 task dependences (MSVC): one potrf call, as on one thread.
template <class T>
int tiled_potrf(int n, T* a, long lda, int) {
  return checked_potrf(n, a, lda);
}
#endif

int solve_block_for(int n, int p) {
  return p > 64 ? 128 : std::clamp((n / 16 + 31) / 32 * 32, 32, 128);
}

// x = (L·Lᵀ)⁻¹ x in place, x row-major n×p: blocked forward and back substitution, each
// block's update (a gemm against the solved part) split over the threads (when allowed) by
// rows (forward) or columns (back) of the block row of L, so that L is read once per pass in
// all; the diagonal blocks' trsm calls are serial and small. Single-threaded it still beats
// potrs (measured n = 4096, p = 1: 9 / 23 ms float64).
template <class T>
void blocked_solve(int n, int p, const T* l, T* x, int nb, bool threads_allowed) {
  if (n == 0 || p == 0) return;
  const int nt = (n + nb - 1) / nb;
#pragma omp parallel if (threads_allowed)
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    for (int bi = 0; bi < nt; ++bi) {  // L·Y = B
      const long r0 = static_cast<long>(bi) * nb;
      const int rows = std::min(nb, n - static_cast<int>(r0));
      if (bi > 0) {
        const long a0 = r0 + rows * t / threads, a1 = r0 + rows * (t + 1) / threads;
        blas::gemm<T>('N', 'N', static_cast<int>(a1 - a0), p, static_cast<int>(r0), T(-1),
                      l + a0 * n, n, x, p, T(1), x + a0 * p, p);
#pragma omp barrier
      }
#pragma omp single
      blas::trsm_left_lower<T>('N', rows, p, T(1), l + r0 * n + r0, n, x + r0 * p, p);
    }
    for (int bi = nt - 1; bi >= 0; --bi) {  // Lᵀ·X = Y
      const long r0 = static_cast<long>(bi) * nb;
      const int rows = std::min(nb, n - static_cast<int>(r0));
#pragma omp single
      blas::trsm_left_lower<T>('T', rows, p, T(1), l + r0 * n + r0, n, x + r0 * p, p);
      if (bi > 0) {
        const long c0 = r0 * t / threads, c1 = r0 * (t + 1) / threads;
        blas::gemm<T>('T', 'N', static_cast<int>(c1 - c0), p, rows, T(-1), l + r0 * n + c0, n,
                      x + r0 * p, p, T(1), x + c0 * p, p);
#pragma omp barrier
      }
    }
  }
}

// x = (L·Lᵀ)⁻¹ x in place for many right-hand sides: columns split over the threads.
template <class T>
void column_split_solve(int n, int p, const T* l, T* x) {
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int c0 = p * t / threads, c1 = p * (t + 1) / threads;
    if (c1 > c0) {
      blas::trsm_left_lower<T>('N', n, c1 - c0, T(1), l, n, x + c0, p);
      blas::trsm_left_lower<T>('T', n, c1 - c0, T(1), l, n, x + c0, p);
    }
  }
}

// x = (L·Lᵀ)⁻¹ x in place over our threads: by columns for many right-hand sides, else the
// blocked solve with blocks of nb rows.
template <class T>
void threaded_solve(int n, int p, const T* l, T* x, int nb) {
  if (p >= kColumnSplitMinP && omp_get_max_threads() > 1) {
    column_split_solve(n, p, l, x);
  } else {
    blocked_solve(n, p, l, x, nb, true);
  }
}

template <class T>
void solve_in_place(int n, int p, const T* l, T* x, bool parallel) {
  if (n >= kParallelSolveMinN && use_threads(parallel)) {
    threaded_solve(n, p, l, x, solve_block_for(n, p));
  } else if (n >= kParallelSolveMinN) {
    blocked_solve(n, p, l, x, solve_block_for(n, p), false);
  } else {
    blas::potrs_lower<T>(n, p, l, n, x, p);
  }
}

// l = a's lower triangle + shift·I with zeros above (rows in parallel when allowed).
// Rows per round-robin chunk of the passes that write a fresh n×n output row by row. The
// threads take turns through the same pages, so their first-touch page faults come one at a
// time, and the triangle's work is balanced. Contiguous halves per thread fault on all threads
// at once, which costs several times more on a virtual machine. Evidence, on a 2-core x86-64
// VM (a Firecracker guest): the narrowing pass of cholesky_narrowed at n = 4000 took 72 ms
// with contiguous halves, 11 ms with chunks of 8 rows. Re-measure: time that pass alone
// (2 threads, float64 n = 4000) with schedule(static) against schedule(static, rows).
[[maybe_unused]] constexpr int kFirstTouchRows = 8;  // named in OpenMP schedules only

template <class T>
void copy_lower(int n, const T* a, T shift, T* l, bool parallel) {
#pragma omp parallel for schedule(static, kFirstTouchRows) if (use_threads(parallel) && n >= kTiledMinN)
  for (long i = 0; i < n; ++i) {
    T* li = l + i * n;
    std::memcpy(li, a + i * n, (i + 1) * sizeof(T));
    li[i] += shift;
    std::fill(li + i + 1, li + n, T(0));
  }
}

}  // namespace

// chol(l) in place: tiled with our threads for large n when allowed, else one potrf call.
template <class T>
int factor_in_place(int n, T* l, bool parallel) {
  if (use_threads(parallel) && n >= kTiledMinN) return tiled_potrf(n, l, n, tile_for<T>(n));
  return checked_potrf(n, l, n);
}

// l = chol(a + shift·I).
template <class T>
int lapack_factor(int n, const T* a, T shift, T* l, bool parallel) {
  copy_lower(n, a, shift, l, parallel);
  return factor_in_place(n, l, parallel);
}

template <class T>
void lapack_solve(int n, int p, const T* l, const T* b, T* x, bool parallel) {
  std::memcpy(x, b, static_cast<size_t>(n) * p * sizeof(T));
  solve_in_place(n, p, l, x, parallel);
}

#define FASTAMORT_RIDGE_LAPACK_INSTANTIATE(T)                                  \
  template int factor_in_place<T>(int, T*, bool);                              \
  template int lapack_factor<T>(int, const T*, T, T*, bool);                   \
  template void lapack_solve<T>(int, int, const T*, const T*, T*, bool);
FASTAMORT_RIDGE_LAPACK_INSTANTIATE(float)
FASTAMORT_RIDGE_LAPACK_INSTANTIATE(double)

}  // namespace detail

using detail::copy_lower;
using detail::factor_in_place;
using detail::fill_nan;
using detail::threaded_solve;
using detail::tiled_potrf;
using detail::use_threads;
using detail::kFirstTouchRows;

int cholesky_narrowed(int n, const double* a, double shift, float* l, double* frobenius_sq) {
  // One pass over a's lower triangle: narrow it into l (rows in parallel) and sum the squares
  // of the whole symmetric matrix (off-diagonal entries twice) in float64.
  double total = 0.0;
#pragma omp parallel for schedule(static, kFirstTouchRows) reduction(+ : total) \
    if (use_threads(true) && n >= kTiledMinN)
  for (long i = 0; i < n; ++i) {
    const double* ai = a + i * n;
    float* li = l + i * n;
    double row = 0.0;
    for (long j = 0; j < i; ++j) {
      row += ai[j] * ai[j];
      li[j] = static_cast<float>(ai[j]);
    }
    total += 2.0 * row + ai[i] * ai[i];
    li[i] = static_cast<float>(ai[i] + shift);
    std::fill(li + i + 1, li + n, 0.0f);
  }
  *frobenius_sq = total;
  return n == 0 ? 0 : factor_in_place(n, l, true);
}

template <class T>
int tiled_ridge_solve(int n, int p, const T* k, const T* b, double shift, T* x, T* l, int tile) {
  copy_lower(n, k, static_cast<T>(shift), l, false);
  const int info = n == 0 ? 0 : tiled_potrf(n, l, n, tile);
  if (info != 0) {
    fill_nan(x, static_cast<long>(n) * p);
  } else {
    std::memcpy(x, b, static_cast<size_t>(n) * p * sizeof(T));
    threaded_solve(n, p, l, x, tile);
  }
  return info;
}

template int tiled_ridge_solve<float>(int, int, const float*, const float*, double, float*,
                                      float*, int);
template int tiled_ridge_solve<double>(int, int, const double*, const double*, double, double*,
                                       double*, int);

}  // namespace fastamort::ridge
