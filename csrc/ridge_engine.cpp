// Cholesky / ridge-solve engine; see ridge_engine.hpp for the conventions.
//
// Own kernels (N <= kOwnMaxN, P <= kOwnMaxP; see own_route) work on kLanes problems at once
// in a lane-interleaved ("compact") scratch: element e of lane v lives at buf[e·kLanes + v],
// so every scalar step of the algorithm is one SIMD operation across kLanes problems.
// Row-by-row kernels on one small problem spend their time in short, ragged vector loops
// (measured: no faster than LAPACK per problem at N = 8..64); the interleaved ones do not.
// Everything else goes to LAPACK (potrf, then potrs as two trsm) through blas.hpp.
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

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "blas.hpp"
#include "gram_engine.hpp"
#include "row_ops.hpp"

#define FASTAMORT_INLINE inline __attribute__((always_inline))

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
  // False for NaN, too: OpenBLAS's potrf lets a NaN pivot through with info = 0.
  return d > T(0) && d <= std::numeric_limits<T>::max();
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
  std::copy(lane_info, lane_info + count, info);
  if (l != nullptr) store_lower_lanes(n, ld, count, w, l);
  if (x == nullptr) return;
  const long np = static_cast<long>(n) * p;
  for (long e = 0; e < np; ++e)
    for (int v = 0; v < count; ++v) x[v * np + e] = s[at(e, v)];
  for (int v = 0; v < count; ++v)
    if (lane_info[v] != 0) fill_nan(x + v * np, np);
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

// ---- LAPACK route ---------------------------------------------------------------------------

// Index (1-based) of the first diagonal entry of L that is not positive and finite, or 0.
template <class T>
int first_bad_pivot(int n, const T* l) {
  for (long k = 0; k < n; ++k)
    if (!good_pivot(l[k * n + k])) return static_cast<int>(k) + 1;
  return 0;
}

// chol(l) in place, lower triangle; potrf's info, or the first non-finite pivot.
template <class T>
int lapack_potrf(int n, T* l) {
  const int info = blas::potrf_lower<T>(n, l, n);
  return info != 0 ? info : first_bad_pivot(n, l);
}

// l = chol(a + shift·I): a's lower triangle copied with zeros above, then potrf in place.
template <class T>
int lapack_factor(int n, const T* a, T shift, T* l) {
  for (long i = 0; i < n; ++i) {
    T* li = l + i * n;
    std::memcpy(li, a + i * n, (i + 1) * sizeof(T));
    li[i] += shift;
    std::fill(li + i + 1, li + n, T(0));
  }
  return lapack_potrf(n, l);
}

template <class T>
void lapack_solve(int n, int p, const T* l, const T* b, T* x) {
  std::memcpy(x, b, static_cast<size_t>(n) * p * sizeof(T));
  blas::potrs_lower<T>(n, p, l, n, x, p);
}

// Scopes blas::SingleThreaded to the Gram engine's calls: its own threads call the BLAS on
// their tiles, while the LAPACK route wants the BLAS threaded again.
template <class F>
void with_gram_threads(bool inner_parallel, F&& f) {
  std::optional<blas::SingleThreaded> pin;
  if (inner_parallel) pin.emplace();
  f();
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

}  // namespace

int group_size(int n) { return own_kernel(n) ? kLanes : 1; }

template <class T>
void cholesky(int n, int count, const T* a, const double* shift, T* l, int32_t* info,
              Workspace<T>& ws) {
  if (own_route(n, 0, count)) {
    own_ridge<T>(n, 0, count, a, nullptr, shift, nullptr, l, info, ws);
    return;
  }
  for (long i = 0; i < count; ++i)
    info[i] = lapack_factor(n, a + i * n * n, static_cast<T>(shift[i]), l + i * n * n);
}

template <class T>
void cholesky_solve(int n, int p, int count, const T* l, const T* b, T* x, Workspace<T>& ws) {
  if (own_route(n, p, count)) {
    own_solve(n, p, count, l, b, x, ws);
    return;
  }
  for (long i = 0; i < count; ++i) lapack_solve(n, p, l + i * n * n, b + i * n * p, x + i * n * p);
}

template <class T>
void ridge_solve(int n, int p, int count, const T* k, const T* b, const double* shift, T* x,
                 T* l, int32_t* info, Workspace<T>& ws) {
  if (own_route(n, p, count)) {
    own_ridge(n, p, count, k, b, shift, x, l, info, ws);
    return;
  }
  for (long i = 0; i < count; ++i) {
    T* li = l + i * n * n;
    T* xi = x + i * n * p;
    info[i] = lapack_factor(n, k + i * n * n, static_cast<T>(shift[i]), li);
    if (info[i] != 0) {
      fill_nan(xi, static_cast<long>(n) * p);
    } else {
      lapack_solve(n, p, li, b + i * n * p, xi);
    }
  }
}

template <class T>
void kernel_ridge(int n, int d, int p, int m, int count, const T* x, const T* y,
                  const double* shift, int kernel, T lengthscale, const T* x_new, T* alpha,
                  T* pred, int32_t* info, bool inner_parallel, Workspace<T>& ws) {
  auto gram_into = [&](long i, T* k) {
    const gram::Problem<T> gp{x + i * n * d, nullptr, n, n, d, kernel, lengthscale};
    with_gram_threads(inner_parallel, [&] { gram::forward<T>(gp, k, inner_parallel); });
  };
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
      info[i] = lapack_potrf(n, k);
      if (info[i] != 0) {
        fill_nan(alpha + i * n * p, static_cast<long>(n) * p);
      } else {
        lapack_solve(n, p, k, y + i * n * p, alpha + i * n * p);
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
    with_gram_threads(inner_parallel, [&] {
      gram::matmul_forward<T>(cross, alpha + i * n * p, p, pi, inner_parallel);
    });
  }
}

#define FASTAMORT_RIDGE_INSTANTIATE(T)                                                         \
  template void cholesky<T>(int, int, const T*, const double*, T*, int32_t*, Workspace<T>&);   \
  template void cholesky_solve<T>(int, int, int, const T*, const T*, T*, Workspace<T>&);       \
  template void ridge_solve<T>(int, int, int, const T*, const T*, const double*, T*, T*,       \
                               int32_t*, Workspace<T>&);                                       \
  template void kernel_ridge<T>(int, int, int, int, int, const T*, const T*, const double*,    \
                                int, T, const T*, T*, T*, int32_t*, bool, Workspace<T>&);
FASTAMORT_RIDGE_INSTANTIATE(float)
FASTAMORT_RIDGE_INSTANTIATE(double)

}  // namespace fastamort::ridge
