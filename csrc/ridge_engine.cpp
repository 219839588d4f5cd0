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
#include "ridge_engine.hpp"

#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "blas.hpp"
#include "gram_engine.hpp"
#include "row_ops.hpp"

#if defined(_MSC_VER) && !defined(__clang__)
#define FASTAMORT_INLINE __forceinline
#else
#define FASTAMORT_INLINE inline __attribute__((always_inline))
#endif

namespace fastamort::ridge {
namespace {

// Order up to which the own kernels are used. Measured on the 2-core dev VM (one thread,
// batches of ≥ 100 problems, ridge_solve with p = 1 and 17, µs per problem, own / LAPACK):
//   float64  n = 64: 11 / 19, 18 / 26;  n = 128: 69 / 79, 97 / 100;  n = 192: 203 / 193
//   float32  n = 64:  7 / 14, 10 / 19;  n = 128: 32 / 54, 51 / 72;   n = 192:  92 / 130
// cholesky_solve alone breaks even near n = 128 too. float64 decides: 128.
constexpr int kOwnMaxN = 128;
// Problems per group on the own route: 8 lanes fill one AVX2 register of floats and two of
// doubles (two independent FMA chains).
constexpr int kLanes = 8;

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

template <class T>
T* grown(std::vector<T>& v, long size) {
  if (static_cast<long>(v.size()) < size) v.resize(size);
  return v.data();
}

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

template <class T>
void factor_solve_lanes_base(int n, int p, long ld, T* w, T* dg, T* s, int* info) {
  factor_solve_lanes(n, p, ld, w, dg, s, info);
}

template <class T>
void solve_lanes_base(int n, int p, long ld, const T* lc, T* y) {
  solve_lanes(n, p, ld, lc, y);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTAMORT_RIDGE_AVX2 1
template <class T>
__attribute__((target("avx2,fma"))) void factor_solve_lanes_avx2(int n, int p, long ld, T* w,
                                                                 T* dg, T* s, int* info) {
  factor_solve_lanes(n, p, ld, w, dg, s, info);
}

template <class T>
__attribute__((target("avx2,fma"))) void solve_lanes_avx2(int n, int p, long ld, const T* lc,
                                                          T* y) {
  solve_lanes(n, p, ld, lc, y);
}

// The same choice as the Gram engine's row kernels (CPU features, FASTAMORT_ISA=baseline).
bool use_avx2() {
  static const bool yes = std::strcmp(row_ops<double>().isa, "avx2+fma") == 0;
  return yes;
}
#endif

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

// Factors (and solves) the lanes loaded into ws.w; writes info, L and x of lanes < count.
template <class T>
void finish_lanes(int n, int p, long ld, int count, T* l, T* x, int32_t* info,
                  Workspace<T>& ws) {
  T* w = ws.w.data();
  T* dg = ws.t.data();
  T* s = dg + at(n, 0);
  int lane_info[V] = {};
#ifdef FASTAMORT_RIDGE_AVX2
  if (use_avx2()) {
    factor_solve_lanes_avx2(n, p, ld, w, dg, s, lane_info);
  } else
#endif
    factor_solve_lanes_base(n, p, ld, w, dg, s, lane_info);
  store_lanes(n, p, ld, count, lane_info, w, s, l, x, info);
}

// The own route for ridge_solve (b, x given) and cholesky (p == 0, b == x == nullptr).
template <class T>
void own_ridge(int n, int p, int count, const T* a, const T* b, const double* shift, T* x, T* l,
               int32_t* info, Workspace<T>& ws) {
  const long ld = reserve_lanes(n, p, ws);
  const long nn = static_cast<long>(n) * n;
  load_lanes(n, p, ld, lanes_of(count, a, nn, b, static_cast<long>(n) * p, shift), false,
             ws.w.data());
  finish_lanes(n, p, ld, count, l, x, info, ws);
}

template <class T>
void own_solve(int n, int p, int count, const T* l, const T* b, T* x, Workspace<T>& ws) {
  const long ld = stride_for(n);
  const long np = static_cast<long>(n) * p;
  T* lc = grown(ws.w, at(n * ld, 0));
  T* y = grown(ws.t, at(np, 0));
  const Lanes<T> g = lanes_of(count, l, static_cast<long>(n) * n, b, np, nullptr);
  for (long i = 0; i < n; ++i)
    for (long j = 0; j <= i; ++j)
      for (int v = 0; v < V; ++v) lc[at(i * ld + j, v)] = g.a[v][i * n + j];
  for (long e = 0; e < np; ++e)
    for (int v = 0; v < V; ++v) y[at(e, v)] = g.b[v][e];
#ifdef FASTAMORT_RIDGE_AVX2
  if (use_avx2()) {
    solve_lanes_avx2(n, p, ld, lc, y);
  } else
#endif
    solve_lanes_base(n, p, ld, lc, y);
  for (long e = 0; e < np; ++e)
    for (int v = 0; v < count; ++v) x[v * np + e] = y[at(e, v)];
}

// ---- fused kernel ridge (own route) ---------------------------------------------------------
//
// kernel_ridge for a group of up to kLanes problems without a Gram matrix per problem: the
// points are interleaved like W, the scaled distances s of every pair i < j are formed
// directly in the lanes (Σ_c (x_ic − x_jc)² / ℓ² or Σ_c |x_ic − x_jc| / ℓ, summed in the same
// order as the Gram engine's direct rows), mapped to k(s) by the Gram engine's row kernel in
// one call, and written into W's upper triangle; the diagonal is k(0) + shift = 1 + shift
// exactly. W is then factored and solved as in own_ridge, and the predictions k(x_new, x)·α
// are made in the lanes too, in blocks of rows of x_new. Per problem this saves the Gram
// engine's setup (its centred and transposed copies of the points on the heap, the mirrored
// n×n matrix, the interleaving copy), which dominates at n = 8..16, and forms K with SIMD
// across the problems instead of along short rows (faster up to n = 128; see fused_route).

// Bytes of a block of interleaved points or of k(x_new, x) values: about L1.
constexpr long kLaneBlockBytes = 32L << 10;

// Dimensions per block when `rows` points are interleaved at once (at least 1).
template <class T>
int dims_per_block(int d, long rows) {
  const long dc = kLaneBlockBytes / (std::max(rows, 1L) * V * static_cast<long>(sizeof(T)));
  return static_cast<int>(std::clamp<long>(dc, 1, std::max(d, 1)));
}

// dst[at(r·dc + c, v)] = coordinate k0 + c of point r0 + r of lane v (pts[v]: rows of d).
template <class T>
FASTAMORT_INLINE void interleave_points(const T* const* pts, int d, long r0, long rows, int k0,
                                        int dc, T* __restrict dst) {
  for (int v = 0; v < V; ++v) {
    const T* __restrict src = pts[v] + r0 * d + k0;
    for (long r = 0; r < rows; ++r)
      for (int c = 0; c < dc; ++c) dst[at(r * dc + c, v)] = src[r * d + c];
  }
}

// acc[v] += Σ_c f(a[at(c, v)] − b[at(c, v)]), f(t) = t² or |t| (kL1).
template <bool kL1, class T>
FASTAMORT_INLINE void add_distance(int dc, const T* __restrict a, const T* __restrict b,
                                   T* __restrict acc) {
  T sum[V];
  for (int v = 0; v < V; ++v) sum[v] = acc[v];
  for (int c = 0; c < dc; ++c) {
#pragma omp simd
    for (int v = 0; v < V; ++v) {
      const T diff = a[at(c, v)] - b[at(c, v)];
      sum[v] += kL1 ? (diff < T(0) ? -diff : diff) : diff * diff;
    }
  }
  for (int v = 0; v < V; ++v) acc[v] = sum[v];
}

// s[at(q, v)] += distance of the q-th pair i < j (row by row) for one block of dimensions.
template <bool kL1, class T>
FASTAMORT_INLINE void add_pair_distances(int n, int dc, const T* __restrict xs,
                                         T* __restrict s) {
  long q = 0;
  for (long i = 0; i < n; ++i)
    for (long j = i + 1; j < n; ++j, ++q)
      add_distance<kL1>(dc, xs + at(i * dc, 0), xs + at(j * dc, 0), s + at(q, 0));
}

// s[at(r·n + j, v)] += distance of x_new point r and x point j for one block of dimensions.
template <bool kL1, class T>
FASTAMORT_INLINE void add_cross_distances(int rows, int n, int dc, const T* __restrict xn,
                                          const T* __restrict xs, T* __restrict s) {
  for (long r = 0; r < rows; ++r)
    for (long j = 0; j < n; ++j)
      add_distance<kL1>(dc, xn + at(r * dc, 0), xs + at(j * dc, 0), s + at(r * n + j, 0));
}

// out[at(c, v)] = Σ_j kr[at(j, v)]·alpha[at(j·p + c, v)] for the columns [c0, c0 + R).
template <int R, class T>
FASTAMORT_INLINE void predict_row(int n, int p, int c0, const T* __restrict kr,
                                  const T* __restrict alpha, T* __restrict out) {
  T acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = T(0);
  for (long j = 0; j < n; ++j) {
    const T* __restrict aj = alpha + at(j * p + c0, 0);
    for (int r = 0; r < R; ++r) {
#pragma omp simd
      for (int v = 0; v < V; ++v) acc[r][v] += kr[at(j, v)] * aj[at(r, v)];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) out[at(c0 + r, v)] = acc[r][v];
}

// One call of kernel_ridge on the fused route (all sizes per problem, row-major as in
// ridge_engine.hpp); k_from_s: the Gram engine's row kernel.
template <class T>
struct FusedCall {
  int n, d, p, m, kernel;
  bool euclid;
  T scale;  // 1/ℓ² (Euclidean) or 1/ℓ
  void (*k_from_s)(T*, int, int);
};

template <bool kL1, class T>
FASTAMORT_INLINE void fused_group_k(const FusedCall<T>& c, int count, const T* x, const T* y,
                                    const double* shift, const T* x_new, T* alpha, T* pred,
                                    int32_t* info, Workspace<T>& ws) {
  const int n = c.n, d = c.d, p = c.p, m = c.m;
  const long npairs = static_cast<long>(n) * (n - 1) / 2;
  const T* xl[V];
  const T* yl[V];
  const T* xnl[V];
  T sh[V];
  for (int v = 0; v < V; ++v) {
    const long src = v < count ? v : 0;  // lanes past count repeat lane 0 (see Lanes)
    xl[v] = x + src * n * d;
    yl[v] = y + src * n * p;
    xnl[v] = x_new == nullptr ? nullptr : x_new + src * m * d;
    sh[v] = static_cast<T>(shift[src]);
  }
  // scratch: the points (pts), then s and k (ks)
  const int dc = dims_per_block<T>(d, n);
  T* pts = grown(ws.k, at(static_cast<long>(n) * dc, 0) + at(npairs, 0));
  T* ks = pts + at(static_cast<long>(n) * dc, 0);
  std::fill(ks, ks + at(npairs, 0), T(0));
  for (int k0 = 0; k0 < d; k0 += dc) {
    const int dk = std::min(dc, d - k0);
    interleave_points(xl, d, 0, n, k0, dk, pts);
    add_pair_distances<kL1>(n, dk, pts, ks);
  }
  const long ne = at(npairs, 0);
#pragma omp simd
  for (long e = 0; e < ne; ++e) ks[e] *= c.scale;
  if (ne > 0) c.k_from_s(ks, static_cast<int>(ne), c.kernel);
  // W = [K + shift·I | Y]: the upper triangle row by row, as the pairs are ordered
  const long ld = reserve_lanes(n, p, ws);
  T* w = ws.w.data();
  const T* kq = ks;
  for (long i = 0; i < n; ++i) {
    T* __restrict wi = w + at(i * ld, 0);
    for (int v = 0; v < V; ++v) wi[at(i, v)] = T(1) + sh[v];
    std::copy(kq, kq + at(n - 1 - i, 0), wi + at(i + 1, 0));
    kq += at(n - 1 - i, 0);
  }
  for (int v = 0; v < V; ++v)
    for (long i = 0; i < n; ++i)
      for (long cc = 0; cc < p; ++cc) w[at(i * ld + n + cc, v)] = yl[v][i * p + cc];
  T* dg = ws.t.data();
  T* s = dg + at(n, 0);
  int lane_info[V] = {};
  factor_solve_lanes(n, p, ld, w, dg, s, lane_info);
  store_lanes(n, p, ld, count, lane_info, w, s, static_cast<T*>(nullptr), alpha, info);
  if (pred == nullptr || m == 0 || p == 0) return;
  // k(x_new, x)·alpha, rows of x_new in blocks whose k values fill about L1
  const long mp = static_cast<long>(m) * p;
  const int rb = static_cast<int>(std::clamp<long>(
      kLaneBlockBytes / (std::max(n, 1) * V * static_cast<long>(sizeof(T))), 1, m));
  const int dcx = dims_per_block<T>(d, std::max(n, rb));
  T* xs = grown(ws.k, at(static_cast<long>(n + rb) * dcx, 0) + at(static_cast<long>(rb) * n, 0) +
                          at(p, 0));
  T* xn = xs + at(static_cast<long>(n) * dcx, 0);
  T* kr = xn + at(static_cast<long>(rb) * dcx, 0);
  T* out = kr + at(static_cast<long>(rb) * n, 0);
  const bool one_block = dcx >= d;
  if (one_block) interleave_points(xl, d, 0, n, 0, d, xs);
  for (int r0 = 0; r0 < m; r0 += rb) {
    const int rows = std::min(rb, m - r0);
    const long nk = at(static_cast<long>(rows) * n, 0);
    std::fill(kr, kr + nk, T(0));
    for (int k0 = 0; k0 < d; k0 += dcx) {
      const int dk = std::min(dcx, d - k0);
      if (!one_block) interleave_points(xl, d, 0, n, k0, dk, xs);
      interleave_points(xnl, d, r0, rows, k0, dk, xn);
      add_cross_distances<kL1>(rows, n, dk, xn, xs, kr);
    }
#pragma omp simd
    for (long e = 0; e < nk; ++e) kr[e] *= c.scale;
    if (nk > 0) c.k_from_s(kr, static_cast<int>(nk), c.kernel);
    for (long r = 0; r < rows; ++r) {
      const T* krr = kr + at(r * n, 0);
#define FASTAMORT_CALL(R) predict_row<R>(n, p, c0, krr, s, out)
      FASTAMORT_RHS_BLOCKS(FASTAMORT_CALL);
#undef FASTAMORT_CALL
      for (int v = 0; v < count; ++v) {
        T* pv = pred + v * mp + (r0 + r) * p;
        if (lane_info[v] != 0) {
          fill_nan(pv, p);
        } else {
          for (long cc = 0; cc < p; ++cc) pv[cc] = out[at(cc, v)];
        }
      }
    }
  }
}

template <class T>
FASTAMORT_INLINE void fused_group(const FusedCall<T>& c, int count, const T* x, const T* y,
                                  const double* shift, const T* x_new, T* alpha, T* pred,
                                  int32_t* info, Workspace<T>& ws) {
  if (c.euclid) {
    fused_group_k<false>(c, count, x, y, shift, x_new, alpha, pred, info, ws);
  } else {
    fused_group_k<true>(c, count, x, y, shift, x_new, alpha, pred, info, ws);
  }
}

template <class T>
void fused_group_base(const FusedCall<T>& c, int count, const T* x, const T* y,
                      const double* shift, const T* x_new, T* alpha, T* pred, int32_t* info,
                      Workspace<T>& ws) {
  fused_group(c, count, x, y, shift, x_new, alpha, pred, info, ws);
}

#ifdef FASTAMORT_RIDGE_AVX2
template <class T>
__attribute__((target("avx2,fma"))) void fused_group_avx2(const FusedCall<T>& c, int count,
                                                          const T* x, const T* y,
                                                          const double* shift, const T* x_new,
                                                          T* alpha, T* pred, int32_t* info,
                                                          Workspace<T>& ws) {
  fused_group(c, count, x, y, shift, x_new, alpha, pred, info, ws);
}
#endif

// kernel_ridge for count consecutive problems (at most kLanes) on the fused route.
template <class T>
void fused_kernel_ridge(int n, int d, int p, int m, int count, const T* x, const T* y,
                        const double* shift, int kernel, T lengthscale, const T* x_new, T* alpha,
                        T* pred, int32_t* info, Workspace<T>& ws) {
  const bool euclid = kernel_is_euclidean(kernel);
  const FusedCall<T> c{n,      d,
                       p,      m,
                       kernel, euclid,
                       euclid ? T(1) / (lengthscale * lengthscale) : T(1) / lengthscale,
                       row_ops<T>().kernel_from_s};
#ifdef FASTAMORT_RIDGE_AVX2
  if (use_avx2()) {
    fused_group_avx2(c, count, x, y, shift, x_new, alpha, pred, info, ws);
    return;
  }
#endif
  fused_group_base(c, count, x, y, shift, x_new, alpha, pred, info, ws);
}

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

// Order from which one problem is factored with our threads rather than one potrf call.
// Measured on the 2-core dev VM (µs, one potrf call / tiled on 2 threads): n = 128: 115 / 83
// (float64, tiles of 32), n = 192: 215 / 157, n = 256: 585 / 365 (tiles of 64).
constexpr int kTiledMinN = 192;

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

// chol(l) in place: tiled with our threads for large n when allowed, else one potrf call.
template <class T>
int factor_in_place(int n, T* l, bool parallel) {
  if (use_threads(parallel) && n >= kTiledMinN) return tiled_potrf(n, l, n, tile_for<T>(n));
  return checked_potrf(n, l, n);
}

// Order from which one solve is split over our threads, and the block order of the split.
// The blocked solve beats one potrs call from n = 128 up (potrs on a row-major right-hand
// side is a right-side trsm of one row for p = 1, a slow path of OpenBLAS). Measured (2
// threads, ms, potrs / blocked): n = 256, p = 1: 0.08 / 0.02 (float64); n = 4096, p = 17:
// 42 / 15.5; p = 256: 207 / 107. Blocks of about n/16 (at least 32, at most 128; 128 for
// many right-hand sides, where the gemm calls want the width) were best or within noise.
constexpr int kParallelSolveMinN = 128;

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

// Right-hand sides from which each thread solves its own block of columns with whole-matrix
// trsm calls (no serial diagonal steps, no barriers) instead of the row-split blocked solve.
constexpr int kColumnSplitMinP = 32;

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
// threads then take turns through the same pages, which also balances the triangle's work.
// Contiguous halves per thread made both threads take first-touch page faults at the same
// time, which on the 2-core dev VM (a Firecracker guest) cost 6-7× more than faulting them
// one at a time: narrowing n = 4000 in cholesky_narrowed took 72 ms, now 11 ms.
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

}  // namespace

namespace {

bool own_kernel(int n) { return n <= kOwnMaxN; }

// Right-hand sides up to which the own route is taken. They ride along as extra columns of
// the factorisation, while LAPACK solves them with BLAS-3 trsm; measured (one thread, own /
// LAPACK time): p = 64: 0.4 (n = 8) to 1.15 (n = 64, 128); p = 256: 0.85 (n = 8) to 2.7
// (n = 128). The cap also bounds the scratch, which grows with n·(n + p).
constexpr int kOwnMaxP = 64;

// The own route for a group of count problems with p right-hand sides. A group too small
// to fill half the lanes costs more there than LAPACK per problem (padding lanes compute).
bool own_route(int n, int p, int count) {
  return own_kernel(n) && p <= kOwnMaxP && 2 * count >= kLanes;
}

// The fused route of kernel_ridge (fused_kernel_ridge): on the own route, and also for groups
// too small for it when n <= 16. Measured on the 2-core dev VM (ms, fused / Gram engine per
// problem then own kernels or LAPACK; d = 4, p = 1 unless said):
//   B = 4096:  n = 8: 0.29 / 3.3 (float32), 0.40 / 4.0 (float64); n = 32: 2.0 / 8.4, 3.9 / 8.8;
//              n = 128: 46 / 71, 101 / 124;  B = 512, d = 64, n = 128: 17 / 24, 29 / 34;
//   B = 1 and 3 (LAPACK route), float64, m = 10: n = 8: 0.003 / 0.010; n = 16: 0.008 / 0.012;
//              n = 32: 0.022 / 0.017 (B = 1), 0.024 / 0.031 (B = 3);  n = 64: 0.09 / 0.04.
// One group run alone (inner_parallel, B <= 8) of large problems in many dimensions keeps the
// Gram engine, whose threaded GEMM route wins there (B = 8, n = 128, d = 256: 2.1 / 1.6 float64;
// d = 784: 4.0 / 2.5 float32); at n <= 64 or d <= 64 the fused route still wins.
bool fused_route(int n, int d, int p, int count, bool inner_parallel) {
  if (!own_kernel(n) || p > kOwnMaxP) return false;
  if (inner_parallel && n > 64 && d > 64) return false;
  return 2 * count >= kLanes || n <= 16;
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
    const long ld = reserve_lanes(n, p, ws);
    T* k = grown(ws.k, count * nn);
    for (int v = 0; v < count; ++v) gram_into(v, k + v * nn);
    load_lanes(n, p, ld, lanes_of(count, k, nn, y, static_cast<long>(n) * p, shift), true,
               ws.w.data());
    finish_lanes<T>(n, p, ld, count, nullptr, alpha, info, ws);
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
  template int tiled_ridge_solve<T>(int, int, const T*, const T*, double, T*, T*, int);        \
  template void kernel_ridge<T>(int, int, int, int, int, const T*, const T*, const double*,    \
                                int, T, const T*, T*, T*, int32_t*, bool, Workspace<T>&);
FASTAMORT_RIDGE_INSTANTIATE(float)
FASTAMORT_RIDGE_INSTANTIATE(double)

}  // namespace fastamort::ridge
