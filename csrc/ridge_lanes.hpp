// The own kernels of the ridge engine: kLanes problems interleaved, one per SIMD lane
// (see ridge_engine.cpp for the scheme). Every function is inline: this header is compiled
// into the baseline and the AVX2+FMA copies of ridge_lanes.cpp and ridge_fused.cpp, and
// internal linkage keeps each translation unit's copies to itself.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ridge_internal.hpp"

namespace fastamort::ridge::detail {
namespace {

// ---- own kernels, kLanes problems interleaved -------------------------------------------

constexpr int V = kLanes;

inline long at(long element, int lane) { return element * V + lane; }

// Row stride (in elements) of a compact matrix with `cols` columns. Odd, because with a
// power-of-two stride a column's elements all map to the same cache sets (measured: the
// factorisation ran 2× slower at N = 64 and 128).
inline long stride_for(long cols) { return cols | 1; }

// The problems of a group, one per lane. Lanes past `count` repeat lane 0 (its results
// are dropped): the copies in and out then run over all lanes without branches.
template <class T>
struct Lanes {
  const T* a[V];  // n×n matrices
  const T* b[V];  // n×p right-hand sides (unused when p == 0)
  T shift[V];     // 0 when no shifts are given
};

template <class T>
Lanes<T> lanes_of(int count, const T* a, long a_stride, const T* b, long b_stride,
                  const double* shift) {
  Lanes<T> g;
  for (int v = 0; v < V; ++v) {
    const int src = v < count ? v : 0;
    g.a[v] = a + src * a_stride;
    g.b[v] = b + src * b_stride;
    g.shift[v] = shift == nullptr ? T(0) : static_cast<T>(shift[src]);
  }
  return g;
}

// W (n rows, stride ld) = [A + shift·I | B], lanes innermost so that each element's lanes
// are written together. symmetric: the matrices are fully stored and symmetric (Gram
// matrices), so their upper triangle is read row by row; otherwise their lower triangle.
template <class T>
void load_lanes(int n, int p, long ld, const Lanes<T>& g, bool symmetric, T* __restrict w) {
  for (long i = 0; i < n; ++i) {
    if (symmetric) {
      for (long j = i; j < n; ++j)
        for (int v = 0; v < V; ++v) w[at(i * ld + j, v)] = g.a[v][i * n + j];
    } else {
      for (long j = 0; j <= i; ++j)
        for (int v = 0; v < V; ++v) w[at(j * ld + i, v)] = g.a[v][i * n + j];
    }
  }
  for (long i = 0; i < n; ++i) {
    T* __restrict wi = w + at(i * ld, 0);
    for (int v = 0; v < V; ++v) wi[at(i, v)] += g.shift[v];
    for (long c = 0; c < p; ++c)
      for (int v = 0; v < V; ++v) wi[at(n + c, v)] = g.b[v][i * p + c];
  }
}

// L (row-major, zeros above the diagonal) = Uᵀ for lanes < count; l: the first lane's L.
template <class T>
void store_lower_lanes(int n, long ld, int count, const T* __restrict w, T* l) {
  const long nn = static_cast<long>(n) * n;
  for (long i = 0; i < n; ++i) {
    for (long j = 0; j <= i; ++j) {
      const T* __restrict e = w + at(j * ld + i, 0);
      for (int v = 0; v < count; ++v) l[v * nn + i * n + j] = e[v];
    }
    for (int v = 0; v < count; ++v) {
      T* li = l + v * nn + i * n;
      std::fill(li + i + 1, li + n, T(0));
    }
  }
}

// Pivot k: checked per lane (info[v] keeps the first failure, 1-based), then row k of U is
// scaled by 1/U_kk (kept in dg). A failed lane runs on with NaNs; lanes never mix.
template <class T>
FASTAMORT_INLINE void pivot_lanes(long k, long cols, T* __restrict wk, T* __restrict dg,
                                  int* __restrict info) {
  T inv[V];
  for (int v = 0; v < V; ++v)
    info[v] = info[v] == 0 && !good_pivot(wk[at(k, v)]) ? static_cast<int>(k) + 1 : info[v];
#pragma omp simd
  for (int v = 0; v < V; ++v) {
    const T r = std::sqrt(wk[at(k, v)]);
    wk[at(k, v)] = r;
    inv[v] = T(1) / r;
    dg[at(k, v)] = inv[v];
  }
  for (long j = k + 1; j < cols; ++j) {
#pragma omp simd
    for (int v = 0; v < V; ++v) wk[at(j, v)] *= inv[v];
  }
}

// W = [A | B] -> [U | L⁻¹B] with A = UᵀU; dg[k] = 1/U_kk. Pivots are taken two at a time
// (rank-2 updates), so each trailing element is loaded and stored once per pair.
template <class T>
FASTAMORT_INLINE void factor_lanes(int n, int p, long ld, T* __restrict w, T* __restrict dg,
                                   int* __restrict info) {
  const long cols = n + p;
  long k = 0;
  for (; k + 1 < n; k += 2) {
    T* __restrict w0 = w + at(k * ld, 0);
    T* __restrict w1 = w0 + at(ld, 0);
    pivot_lanes(k, cols, w0, dg, info);
    T u[V];
    for (int v = 0; v < V; ++v) u[v] = w0[at(k + 1, v)];
    for (long j = k + 1; j < cols; ++j) {
#pragma omp simd
      for (int v = 0; v < V; ++v) w1[at(j, v)] -= u[v] * w0[at(j, v)];
    }
    pivot_lanes(k + 1, cols, w1, dg, info);
    for (long i = k + 2; i < n; ++i) {
      T* __restrict wi = w + at(i * ld, 0);
      T u0[V], u1[V];
      for (int v = 0; v < V; ++v) {
        u0[v] = w0[at(i, v)];
        u1[v] = w1[at(i, v)];
      }
      for (long j = i; j < cols; ++j) {
#pragma omp simd
        for (int v = 0; v < V; ++v) wi[at(j, v)] -= u0[v] * w0[at(j, v)] + u1[v] * w1[at(j, v)];
      }
    }
  }
  if (k < n) pivot_lanes(k, cols, w + at(k * ld, 0), dg, info);
}

// X = U⁻¹Y for the right-hand sides [c0, c0 + R): Y in columns n + c of W, X into s
// (element i·p + c). R accumulators per lane reuse every loaded element of U R times.
template <int R, class T>
FASTAMORT_INLINE void back_substitute(int n, int p, long ld, int c0, const T* __restrict w,
                                      const T* __restrict dg, T* __restrict s) {
  for (long i = n - 1; i >= 0; --i) {
    const T* __restrict wi = w + at(i * ld, 0);
    T acc[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = wi[at(n + c0 + r, v)];
    for (long j = i + 1; j < n; ++j) {
      const T* __restrict sj = s + at(j * p + c0, 0);
      for (int r = 0; r < R; ++r) {
#pragma omp simd
        for (int v = 0; v < V; ++v) acc[r][v] -= wi[at(j, v)] * sj[at(r, v)];
      }
    }
    T* __restrict si = s + at(i * p + c0, 0);
    for (int r = 0; r < R; ++r) {
#pragma omp simd
      for (int v = 0; v < V; ++v) si[at(r, v)] = acc[r][v] * dg[at(i, v)];
    }
  }
}

// Forward then back substitution, L·Lᵀ·X = Y, for the right-hand sides [c0, c0 + R) of y
// (element i·p + c), with the compact lower triangle lc (element i·ld + j).
template <int R, class T>
FASTAMORT_INLINE void substitute(int n, int p, long ld, int c0, const T* __restrict lc,
                                 T* __restrict y) {
  for (long i = 0; i < n; ++i) {  // L·Z = Y: dot products along the rows of L
    const T* __restrict li = lc + at(i * ld, 0);
    T* __restrict yi = y + at(i * p + c0, 0);
    T acc[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = yi[at(r, v)];
    for (long j = 0; j < i; ++j) {
      const T* __restrict yj = y + at(j * p + c0, 0);
      for (int r = 0; r < R; ++r) {
#pragma omp simd
        for (int v = 0; v < V; ++v) acc[r][v] -= li[at(j, v)] * yj[at(r, v)];
      }
    }
    for (int r = 0; r < R; ++r) {
#pragma omp simd
      for (int v = 0; v < V; ++v) yi[at(r, v)] = acc[r][v] / li[at(i, v)];
    }
  }
  for (long i = n - 1; i >= 0; --i) {  // Lᵀ·X = Z: row updates with the rows of L
    const T* __restrict li = lc + at(i * ld, 0);
    T* __restrict yi = y + at(i * p + c0, 0);
    T xi[R][V];
    for (int r = 0; r < R; ++r) {
#pragma omp simd
      for (int v = 0; v < V; ++v) {
        xi[r][v] = yi[at(r, v)] / li[at(i, v)];
        yi[at(r, v)] = xi[r][v];
      }
    }
    for (long j = 0; j < i; ++j) {
      T* __restrict yj = y + at(j * p + c0, 0);
      for (int r = 0; r < R; ++r) {
#pragma omp simd
        for (int v = 0; v < V; ++v) yj[at(r, v)] -= li[at(j, v)] * xi[r][v];
      }
    }
  }
}

// Right-hand sides in blocks of 4 (the accumulators of a block fit the 16 AVX registers).
#define FASTAMORT_RHS_BLOCKS(CALL)        \
  do {                                    \
    int c0 = 0;                           \
    for (; c0 + 4 <= p; c0 += 4) CALL(4); \
    switch (p - c0) {                     \
      case 3: CALL(3); break;             \
      case 2: CALL(2); break;             \
      case 1: CALL(1); break;             \
      default: break;                     \
    }                                     \
  } while (0)

// Factors W and, for p > 0, solves into s; see factor_lanes and back_substitute.
template <class T>
FASTAMORT_INLINE void factor_solve_lanes(int n, int p, long ld, T* w, T* dg, T* s, int* info) {
  factor_lanes(n, p, ld, w, dg, info);
#define FASTAMORT_CALL(R) back_substitute<R>(n, p, ld, c0, w, dg, s)
  FASTAMORT_RHS_BLOCKS(FASTAMORT_CALL);
#undef FASTAMORT_CALL
}

template <class T>
FASTAMORT_INLINE void solve_lanes(int n, int p, long ld, const T* lc, T* y) {
#define FASTAMORT_CALL(R) substitute<R>(n, p, ld, c0, lc, y)
  FASTAMORT_RHS_BLOCKS(FASTAMORT_CALL);
#undef FASTAMORT_CALL
}

// Sizes ws for a group of problems of order n with p right-hand sides; returns W's stride.
template <class T>
long reserve_lanes(int n, int p, Workspace<T>& ws) {
  const long ld = stride_for(n + p);
  grown(ws.w, at(n * ld, 0));
  grown(ws.t, at(static_cast<long>(n) * (p + 1), 0));
  return ld;
}

// Writes info, L (when l != nullptr) and x (when x != nullptr; NaN where info != 0) of the
// lanes < count from the factored W and the solution s.
template <class T>
void store_lanes(int n, int p, long ld, int count, const int* lane_info, const T* w, const T* s,
                 T* l, T* x, int32_t* info) {
  std::copy(lane_info, lane_info + count, info);
  if (l != nullptr) store_lower_lanes(n, ld, count, w, l);
  if (x == nullptr) return;
  const long np = static_cast<long>(n) * p;
  for (long e = 0; e < np; ++e)
    for (int v = 0; v < count; ++v) x[v * np + e] = s[at(e, v)];
  for (int v = 0; v < count; ++v)
    if (lane_info[v] != 0) fill_nan(x + v * np, np);
}

}  // namespace
}  // namespace fastamort::ridge::detail
