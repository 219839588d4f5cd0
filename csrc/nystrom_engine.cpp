// The fused normal-equation product of Nyström KRR; see nystrom_engine.hpp for the plan.
#include "nystrom_engine.hpp"

#include "parallel.hpp"
#include "portability.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "row_ops.hpp"

// The float64 products, once for the baseline ISA and once for AVX2+FMA (x86-64, GCC or clang).
#define FASTAMORT_NYS_NS products_base
#define FASTAMORT_NYS_VEC_BYTES 16
#include "nystrom_products_impl.hpp"
#undef FASTAMORT_NYS_NS
#undef FASTAMORT_NYS_VEC_BYTES
#ifdef FASTAMORT_HAVE_AVX2_DISPATCH
#if defined(__clang__)  // clang ignores GCC's target pragma
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FASTAMORT_NYS_NS products_isa_avx2
#define FASTAMORT_NYS_VEC_BYTES 32
#include "nystrom_products_impl.hpp"
#undef FASTAMORT_NYS_NS
#undef FASTAMORT_NYS_VEC_BYTES
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#define FASTAMORT_NYS_HAVE_AVX2 1
#endif

namespace fastamort::nystrom {
namespace {

// Kernel rows formed and used together (the products' register blocking; 4 rows of m = 2000
// float64 entries are 64 KiB, in L2 with the centres).
constexpr int kRows = 4;

template <class T>
struct Products {
  void (*sqdist)(const T*, int, const T*, int, T, T* const*);
  void (*l1dist)(const T*, int, const T*, int, T, T* const*);
  void (*times_v)(const T* const*, const double*, int, int, double*);
  void (*accumulate)(const T* const*, const double*, int, int, double*);
};

template <class T>
Products<T> products() {
#ifdef FASTAMORT_NYS_HAVE_AVX2
  if (products_use_avx2())
    return {products_isa_avx2::rows4_distance<2, T>, products_isa_avx2::rows4_distance<1, T>,
            products_isa_avx2::rows4_times_v<T>, products_isa_avx2::rows4_accumulate<T>};
#endif
  return {products_base::rows4_distance<2, T>, products_base::rows4_distance<1, T>,
          products_base::rows4_times_v<T>, products_base::rows4_accumulate<T>};
}

}  // namespace

bool products_use_avx2() {
#ifdef FASTAMORT_NYS_HAVE_AVX2
  // the same run-time choice (CPU features, FASTAMORT_ISA) as the Gram engine's row kernels
  return std::strcmp(row_ops<double>().isa, "avx2+fma") == 0;
#else
  return false;
#endif
}

// One thread's buffers, allocated before the parallel region (no allocation inside it).
template <class T>
struct ThreadWork {
  std::vector<double> acc;  // p×m, its share of out (transposed)
  std::vector<T> k;         // kRows kernel rows of m entries
  std::vector<T> xpad;      // kRows×D: the last, partial block's rows, padded
  std::vector<double> u, t; // kRows×p: K·v and w·(K·v + y) for the block's rows

  ThreadWork(int m, int d, int p)
      : acc(static_cast<size_t>(p) * m, 0.0),
        k(static_cast<size_t>(kRows) * m, T(0)),
        xpad(static_cast<size_t>(kRows) * d),
        u(static_cast<size_t>(kRows) * p, 0.0),
        t(static_cast<size_t>(kRows) * p, 0.0) {}
};

template <class T>
void normal_matmul(const Points<T>& pts, const double* v, const double* y, const double* w,
                   int p, double* out) {
  const long n = pts.n;
  const int m = pts.m, d = pts.d;
  std::fill(out, out + static_cast<long>(m) * p, 0.0);
  if (n == 0 || m == 0 || p == 0) return;
  const RowOps<T>& ops = row_ops<T>();
  const Products<T> prod = products<T>();
  const auto distance = kernel_is_euclidean(pts.kernel) ? prod.sqdist : prod.l1dist;
  const double ell = pts.lengthscale;
  const T scale = static_cast<T>(kernel_is_euclidean(pts.kernel) ? 1.0 / (ell * ell) : 1.0 / ell);

  // the centres transposed (D×m): the kernel rows run along the centres
  std::vector<T> ct(static_cast<size_t>(d) * m);
  for (int j = 0; j < m; ++j)
    for (int k = 0; k < d; ++k) ct[static_cast<size_t>(k) * m + j] = pts.c[static_cast<long>(j) * d + k];
  std::vector<double> vt;  // v transposed (p×m)
  if (v != nullptr) {
    vt.resize(static_cast<size_t>(p) * m);
    for (int j = 0; j < m; ++j)
      for (int q = 0; q < p; ++q) vt[static_cast<size_t>(q) * m + j] = v[static_cast<long>(j) * p + q];
  }

  const long blocks = (n + kRows - 1) / kRows;
  const int threads = static_cast<int>(std::max(1L, std::min<long>(omp_get_max_threads(), blocks)));
  std::vector<ThreadWork<T>> work;
  work.reserve(threads);
  for (int i = 0; i < threads; ++i) work.emplace_back(m, d, p);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    ThreadWork<T>& wk = work[tid];
    T* kw[kRows];
    const T* kr[kRows];
    for (int r = 0; r < kRows; ++r) kr[r] = kw[r] = wk.k.data() + static_cast<long>(r) * m;
    // a contiguous range of whole blocks per thread
    for (long b = blocks * tid / nt; b < blocks * (tid + 1) / nt; ++b) {
      const long i0 = b * kRows;
      const int rows = static_cast<int>(std::min<long>(kRows, n - i0));
      const T* xb = pts.x + i0 * d;
      if (rows < kRows) {  // pad with copies of the last row; their kernel rows become 0
        for (int r = 0; r < kRows; ++r) {
          const T* src = pts.x + (i0 + std::min(r, rows - 1)) * d;
          std::copy(src, src + d, wk.xpad.begin() + static_cast<long>(r) * d);
        }
        xb = wk.xpad.data();
      }
      distance(xb, d, ct.data(), m, scale, kw);
      for (int r = 0; r < rows; ++r) ops.kernel_from_s(kw[r], m, pts.kernel);
      for (int r = rows; r < kRows; ++r) std::fill(kw[r], kw[r] + m, T(0));
      if (v != nullptr) prod.times_v(kr, vt.data(), m, p, wk.u.data());
      for (int r = 0; r < kRows; ++r) {
        const double wr = r >= rows ? 0.0 : (w == nullptr ? 1.0 : w[i0 + r]);
        for (int q = 0; q < p; ++q) {
          const double yv = (y == nullptr || r >= rows) ? 0.0 : y[(i0 + r) * p + q];
          wk.t[static_cast<size_t>(r) * p + q] = wr * (wk.u[static_cast<size_t>(r) * p + q] + yv);
        }
      }
      prod.accumulate(kr, wk.t.data(), m, p, wk.acc.data());
    }
  }
  // out (m×p) = Σ over threads of acc (p×m), transposed
  for (const ThreadWork<T>& wk : work)
    for (int j = 0; j < m; ++j)
      for (int q = 0; q < p; ++q) out[static_cast<long>(j) * p + q] += wk.acc[static_cast<size_t>(q) * m + j];
}

template void normal_matmul<float>(const Points<float>&, const double*, const double*,
                                   const double*, int, double*);
template void normal_matmul<double>(const Points<double>&, const double*, const double*,
                                    const double*, int, double*);

}  // namespace fastamort::nystrom
