// Own route of the ridge engine: drivers of the lane kernels (ridge_lanes.hpp), each compiled
// for the baseline ISA and for AVX2+FMA (the kernels are always_inline and take the target of
// the function they are inlined into) and picked at run time as the Gram engine's row kernels
// are.
#include <cstring>

#include "ridge_lanes.hpp"
#include "row_ops.hpp"

namespace fastamort::ridge::detail {
namespace {

template <class T>
void factor_solve_lanes_base(int n, int p, long ld, T* w, T* dg, T* s, int* info) {
  factor_solve_lanes(n, p, ld, w, dg, s, info);
}

template <class T>
void solve_lanes_base(int n, int p, long ld, const T* lc, T* y) {
  solve_lanes(n, p, ld, lc, y);
}

#ifdef FASTAMORT_RIDGE_AVX2
template <class T>
FASTAMORT_TARGET_AVX2 void factor_solve_lanes_avx2(int n, int p, long ld, T* w,
                                                                 T* dg, T* s, int* info) {
  factor_solve_lanes(n, p, ld, w, dg, s, info);
}

template <class T>
FASTAMORT_TARGET_AVX2 void solve_lanes_avx2(int n, int p, long ld, const T* lc,
                                                          T* y) {
  solve_lanes(n, p, ld, lc, y);
}
#endif

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

}  // namespace

#ifdef FASTAMORT_RIDGE_AVX2
bool use_avx2() {
  static const bool yes = std::strcmp(row_ops<double>().isa, "avx2+fma") == 0;
  return yes;
}
#else
bool use_avx2() { return false; }
#endif

template <class T>
void own_ridge(int n, int p, int count, const T* a, const T* b, const double* shift, T* x, T* l,
               int32_t* info, Workspace<T>& ws, bool symmetric) {
  const long ld = reserve_lanes(n, p, ws);
  const long nn = static_cast<long>(n) * n;
  load_lanes(n, p, ld, lanes_of(count, a, nn, b, static_cast<long>(n) * p, shift), symmetric,
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

#define FASTAMORT_RIDGE_LANES_INSTANTIATE(T)                                                   \
  template void own_ridge<T>(int, int, int, const T*, const T*, const double*, T*, T*,        \
                             int32_t*, Workspace<T>&, bool);                                  \
  template void own_solve<T>(int, int, int, const T*, const T*, T*, Workspace<T>&);
FASTAMORT_RIDGE_LANES_INSTANTIATE(float)
FASTAMORT_RIDGE_LANES_INSTANTIATE(double)

}  // namespace fastamort::ridge::detail
