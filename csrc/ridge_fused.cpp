// Fused kernel ridge of the ridge engine (own route, K formed in the lanes from the points).
#include "ridge_lanes.hpp"
#include "row_ops.hpp"

namespace fastamort::ridge::detail {
namespace {

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
FASTAMORT_TARGET_AVX2 void fused_group_avx2(const FusedCall<T>& c, int count,
                                                          const T* x, const T* y,
                                                          const double* shift, const T* x_new,
                                                          T* alpha, T* pred, int32_t* info,
                                                          Workspace<T>& ws) {
  fused_group(c, count, x, y, shift, x_new, alpha, pred, info, ws);
}
#endif

}  // namespace

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

template void fused_kernel_ridge<float>(int, int, int, int, int, const float*, const float*,
                                        const double*, int, float, const float*, float*, float*,
                                        int32_t*, Workspace<float>&);
template void fused_kernel_ridge<double>(int, int, int, int, int, const double*, const double*,
                                         const double*, int, double, const double*, double*,
                                         double*, int32_t*, Workspace<double>&);

}  // namespace fastamort::ridge::detail
