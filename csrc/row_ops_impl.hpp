// Included once per instruction set with FASTAMORT_ISA_NS defined (see row_ops.hpp).
// Everything here has internal linkage or lives in the ISA namespace, so the two
// compilations never share a symbol.
#include "row_ops.hpp"
#include "vec_math.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace fastamort {
namespace FASTAMORT_ISA_NS {
namespace {

inline float vsqrt(float x) { return __builtin_sqrtf(x); }
inline double vsqrt(double x) { return __builtin_sqrt(x); }

template <class T>
void cross_to_s(T* __restrict row, const T* __restrict ny, T nxi, int n, T scale) {
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    T q = nxi + ny[j] - T(2) * row[j];
    row[j] = (q > T(0) ? q : T(0)) * scale;
  }
}

template <class T>
void sqdist_direct(T* __restrict row, const T* __restrict xi, const T* __restrict yt, int ld,
                   int n, int d, T scale) {
  for (int j = 0; j < n; ++j) row[j] = T(0);
  for (int k = 0; k < d; ++k) {
    const T xk = xi[k];
    const T* __restrict yk = yt + static_cast<long>(k) * ld;
#pragma omp simd
    for (int j = 0; j < n; ++j) {
      const T diff = xk - yk[j];
      row[j] += diff * diff;
    }
  }
#pragma omp simd
  for (int j = 0; j < n; ++j) row[j] *= scale;
}

template <class T>
void l1_direct(T* __restrict row, const T* __restrict xi, const T* __restrict yt, int ld, int n,
               int d, T scale) {
  for (int j = 0; j < n; ++j) row[j] = T(0);
  for (int k = 0; k < d; ++k) {
    const T xk = xi[k];
    const T* __restrict yk = yt + static_cast<long>(k) * ld;
#pragma omp simd
    for (int j = 0; j < n; ++j) {
      const T diff = xk - yk[j];
      row[j] += diff < T(0) ? -diff : diff;
    }
  }
#pragma omp simd
  for (int j = 0; j < n; ++j) row[j] *= scale;
}

// s clamped at kernel_math.S_MAX = 1e7, where every kernel is exactly 0: an s that overflowed
// to ∞ (a tiny lengthscale) then gives k = 0 and dk/ds = 0 rather than (1 + ∞)·0 = NaN.
template <class T>
inline T clamp_s(T s) {
  return s < T(1e7) ? s : T(1e7);
}

// k(s) for one kernel, inlined into the vector loops below.
template <int K, class T>
inline T k_of_s(T s_in) {
  const T s = clamp_s(s_in);
  if constexpr (K == kGaussian) {
    return exp_nonpos<T>(T(-0.5) * s);
  } else if constexpr (K == kMatern12) {
    return exp_nonpos<T>(-vsqrt(s));
  } else if constexpr (K == kMatern32) {
    const T a = vsqrt(T(3) * s);
    return (T(1) + a) * exp_nonpos<T>(-a);
  } else if constexpr (K == kMatern52) {
    const T a = vsqrt(T(5) * s);
    return (T(1) + a + T(5.0 / 3.0) * s) * exp_nonpos<T>(-a);
  } else {  // kLaplacian
    return exp_nonpos<T>(-s);
  }
}

template <int K, class T>
void kernel_from_s_k(T* __restrict row, int n) {
#pragma omp simd
  for (int j = 0; j < n; ++j) row[j] = k_of_s<K, T>(row[j]);
}

template <class T>
void kernel_from_s(T* __restrict row, int n, int kernel) {
  switch (kernel) {
    case kGaussian: return kernel_from_s_k<kGaussian>(row, n);
    case kMatern12: return kernel_from_s_k<kMatern12>(row, n);
    case kMatern32: return kernel_from_s_k<kMatern32>(row, n);
    case kMatern52: return kernel_from_s_k<kMatern52>(row, n);
    default: return kernel_from_s_k<kLaplacian>(row, n);
  }
}

// ---- fused tile: s by the GEMM trick in registers, then k(s) ------------------------------
//
// A register-blocked micro-kernel computes the cross terms x_r·y_c of kTileRows rows and
// W = 2 vectors of columns at a time (2·kTileRows vector accumulators), turns them into s in
// registers and stores them in a small L1 buffer, from which one k(s) pass per row writes
// the tile of K. The other points are packed per chunk of kChunkCols columns as
// [column group][d][W], so that the micro-kernel reads contiguous memory. K is written once;
// a BLAS GEMM into K followed by a k(s) pass over it goes through the cache twice.
// Every entry goes through the same operations in the same order whatever its place in the
// tile, and the products and the sum of the norms commute, so gram(X) comes out exactly
// symmetric (gram_engine.cpp relies on this).
constexpr int kVecBytes = FASTAMORT_VEC_BYTES;
constexpr int kTileRows = 6;
constexpr int kChunkCols = 128;

template <class T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int lanes = kVecBytes / static_cast<int>(sizeof(T));
};

template <class T>
inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class T>
inline void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// buf[r·ldb + c] = max(nx[r] + ny[c] − 2·Σ_k xa[r·lda + k]·panel[k·W + c], 0)·scale for one
// group of W = 2 vectors of columns and R rows.
template <int R, class T>
inline void s_micro(T* __restrict buf, int ldb, const T* __restrict xa, int lda,
                    const T* __restrict nx, const T* __restrict panel, const T* __restrict ny,
                    int d, T scale) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = V{};
    acc1[r] = V{};
  }
  for (int k = 0; k < d; ++k) {
    const V b0 = vload(panel + k * 2 * L);
    const V b1 = vload(panel + k * 2 * L + L);
    for (int r = 0; r < R; ++r) {
      const T a = xa[static_cast<long>(r) * lda + k];
      acc0[r] += a * b0;
      acc1[r] += a * b1;
    }
  }
  const V ny0 = vload(ny), ny1 = vload(ny + L);
  const V zero = V{};
  for (int r = 0; r < R; ++r) {
    V q0 = (nx[r] + ny0) - T(2) * acc0[r];
    V q1 = (nx[r] + ny1) - T(2) * acc1[r];
    q0 = q0 > zero ? q0 : zero;
    q1 = q1 > zero ? q1 : zero;
    vstore(buf + static_cast<long>(r) * ldb, q0 * scale);
    vstore(buf + static_cast<long>(r) * ldb + L, q1 * scale);
  }
}

template <int K, class T>
void kernel_from_s_to(T* __restrict out, const T* __restrict s, int n) {
#pragma omp simd
  for (int j = 0; j < n; ++j) out[j] = k_of_s<K, T>(s[j]);
}

template <int K, class T>
void gram_tile_k(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
                 const T* ny, int rows, int cols, int d, T scale) {
  constexpr int W = 2 * Vec<T>::lanes;
  const int chunk = std::min(kChunkCols, (cols + W - 1) / W * W);
  std::vector<T> panel(static_cast<size_t>(d) * chunk), nyp(chunk),
      buf(static_cast<size_t>(kTileRows) * chunk);
  for (int j0 = 0; j0 < cols; j0 += chunk) {
    const int cc = std::min(chunk, cols - j0);
    const int groups = (cc + W - 1) / W;
    for (int g = 0; g < groups; ++g) {
      T* pg = panel.data() + static_cast<long>(g) * d * W;
      for (int kk = 0; kk < d; ++kk) {
        const T* src = yt + static_cast<long>(kk) * ldy + j0 + g * W;
        const int valid = std::min(W, cc - g * W);
        for (int c = 0; c < W; ++c) pg[kk * W + c] = c < valid ? src[c] : T(0);
      }
    }
    for (int c = 0; c < groups * W; ++c) nyp[c] = c < cc ? ny[j0 + c] : T(0);
    for (int i0 = 0; i0 < rows; i0 += kTileRows) {
      const int rr = std::min(kTileRows, rows - i0);
      const T* xr = xa + static_cast<long>(i0) * lda;
      for (int g = 0; g < groups; ++g) {
        T* bg = buf.data() + g * W;
        const T* pg = panel.data() + static_cast<long>(g) * d * W;
        const T* ng = nyp.data() + g * W;
        switch (rr) {
          case 6: s_micro<6>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
          case 5: s_micro<5>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
          case 4: s_micro<4>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
          case 3: s_micro<3>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
          case 2: s_micro<2>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
          default: s_micro<1>(bg, chunk, xr, lda, nx + i0, pg, ng, d, scale); break;
        }
      }
      for (int r = 0; r < rr; ++r)
        kernel_from_s_to<K, T>(k + static_cast<long>(i0 + r) * ldk + j0,
                               buf.data() + static_cast<long>(r) * chunk, cc);
    }
  }
}

template <class T>
void gram_tile(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
               const T* ny, int rows, int cols, int d, T scale, int kernel) {
  auto run = [&](auto tile) { tile(k, ldk, xa, lda, nx, yt, ldy, ny, rows, cols, d, scale); };
  switch (kernel) {  // Euclidean kernels only: the Laplacian never takes the GEMM trick
    case kGaussian: return run(gram_tile_k<kGaussian, T>);
    case kMatern12: return run(gram_tile_k<kMatern12, T>);
    case kMatern32: return run(gram_tile_k<kMatern32, T>);
    default: return run(gram_tile_k<kMatern52, T>);
  }
}

template <class T>
double kernel_grad_from_s(T* __restrict row, const T* __restrict g, int n, int kernel) {
  // dk/ds per kernel (s as in row_ops.hpp); w = g·dk/ds, and we return Σ w·s.
  T acc = T(0);
  switch (kernel) {
    case kGaussian:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = clamp_s(row[j]);
        const T w = g[j] * T(-0.5) * exp_nonpos<T>(T(-0.5) * s);
        acc += w * s;
        row[j] = w;
      }
      break;
    case kMatern12:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = clamp_s(row[j]);
        const T r = vsqrt(s);
        // k = e^{-r}: dk/ds = −e^{-r}/(2r); not differentiable at r = 0, where we use 0.
        const T w = s > T(0) ? g[j] * T(-0.5) * exp_nonpos<T>(-r) / (r > T(0) ? r : T(1)) : T(0);
        acc += w * s;
        row[j] = w;
      }
      break;
    case kMatern32:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = clamp_s(row[j]);
        const T a = vsqrt(T(3) * s);
        const T w = g[j] * T(-1.5) * exp_nonpos<T>(-a);
        acc += w * s;
        row[j] = w;
      }
      break;
    case kMatern52:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = clamp_s(row[j]);
        const T a = vsqrt(T(5) * s);
        const T w = g[j] * T(-5.0 / 6.0) * (T(1) + a) * exp_nonpos<T>(-a);
        acc += w * s;
        row[j] = w;
      }
      break;
    default:  // kLaplacian: k = e^{-s}
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = clamp_s(row[j]);
        const T w = -g[j] * exp_nonpos<T>(-s);
        acc += w * s;
        row[j] = w;
      }
      break;
  }
  return static_cast<double>(acc);
}

}  // namespace

template <class T>
RowOps<T> make_row_ops() {
  return RowOps<T>{&cross_to_s<T>,         &sqdist_direct<T>, &l1_direct<T>,
                   &kernel_from_s<T>,      &gram_tile<T>,     &kernel_grad_from_s<T>,
                   FASTAMORT_ISA_NAME};
}

template RowOps<float> make_row_ops<float>();
template RowOps<double> make_row_ops<double>();

}  // namespace FASTAMORT_ISA_NS
}  // namespace fastamort
