// Included once per instruction set with FASTAMORT_ISA_NS defined (see row_ops.hpp).
// Everything here has internal linkage or lives in the ISA namespace, so the two
// compilations never share a symbol.
#include "row_ops.hpp"
#include "vec_math.hpp"

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

// k(s) for one kernel, inlined into the vector loops below.
template <int K, class T>
inline T k_of_s(T s) {
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

template <class T>
double kernel_grad_from_s(T* __restrict row, const T* __restrict g, int n, int kernel) {
  // dk/ds per kernel (s as in row_ops.hpp); w = g·dk/ds, and we return Σ w·s.
  T acc = T(0);
  switch (kernel) {
    case kGaussian:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = row[j];
        const T w = g[j] * T(-0.5) * exp_nonpos<T>(T(-0.5) * s);
        acc += w * s;
        row[j] = w;
      }
      break;
    case kMatern12:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = row[j];
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
        const T s = row[j];
        const T a = vsqrt(T(3) * s);
        const T w = g[j] * T(-1.5) * exp_nonpos<T>(-a);
        acc += w * s;
        row[j] = w;
      }
      break;
    case kMatern52:
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = row[j];
        const T a = vsqrt(T(5) * s);
        const T w = g[j] * T(-5.0 / 6.0) * (T(1) + a) * exp_nonpos<T>(-a);
        acc += w * s;
        row[j] = w;
      }
      break;
    default:  // kLaplacian: k = e^{-s}
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < n; ++j) {
        const T s = row[j];
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
  return RowOps<T>{&cross_to_s<T>,    &sqdist_direct<T>,      &l1_direct<T>,
                   &kernel_from_s<T>, &kernel_grad_from_s<T>, FASTAMORT_ISA_NAME};
}

template RowOps<float> make_row_ops<float>();
template RowOps<double> make_row_ops<double>();

}  // namespace FASTAMORT_ISA_NS
}  // namespace fastamort
