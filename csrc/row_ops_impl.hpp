// Included once per instruction set with FASTAMORT_ISA_NS defined (see row_ops.hpp).
// Everything here has internal linkage or lives in the ISA namespace, so the two
// compilations never share a symbol.
#include "portability.hpp"
#include "row_ops.hpp"
#include "vec_math.hpp"
#include "normal_impl.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace fastamort {
namespace FASTAMORT_ISA_NS {
namespace {

template <class T>
void cross_to_s(T* __restrict row, const T* __restrict ny, T nxi, int n, T scale) {
#pragma omp simd
  for (int j = 0; j < n; ++j) {
    T q = nxi + ny[j] - T(2) * row[j];
    row[j] = (q > T(0) ? q : T(0)) * scale;
  }
}

template <class T>
bool cross_to_s_checked(T* __restrict row, const T* __restrict ny, T nxi, int n, T scale) {
  const T ratio = T(kDirectRatio);
  T low = T(1);  // min over j of ratio·q − (nxi + ny[j]): negative when an entry is flagged
#pragma omp simd reduction(min : low)
  for (int j = 0; j < n; ++j) {
    const T e = nxi + ny[j];
    const T q = e - T(2) * row[j];
    const T t = ratio * q - e;
    low = t < low ? t : low;
    row[j] = (q > T(0) ? q : T(0)) * scale;
  }
  return low < T(0);
}

// Σ_d (a[d] − b[d])²: the same operations in the same order for (a, b) and (b, a).
template <class T>
inline T sqdist_pair(const T* __restrict a, const T* __restrict b, int d) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int k = 0; k < d; ++k) {
    const T diff = a[k] - b[k];
    acc += diff * diff;
  }
  return acc;
}

template <class T>
int fix_s_row(T* __restrict row, const T* __restrict ny, T nxi, const T* __restrict xi,
              const T* __restrict y, long ldy, int n, int d, T scale, unsigned char* flagged) {
  const T ratio = T(kDirectRatio);
  int count = 0;
  for (int j = 0; j < n; ++j) {
    const bool redo = (nxi + ny[j]) * scale > ratio * row[j];
    if (flagged != nullptr) flagged[j] = redo ? 1 : 0;
    if (redo) {
      row[j] = sqdist_pair(xi, y + j * ldy, d) * scale;
      ++count;
    }
  }
  return count;
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

// GCC/clang vector types; without them (portability.hpp) one-lane vectors, i.e. scalars:
// the same micro-kernel, two columns per group.
template <class T>
using Vec = SimdVec<T, kVecBytes>;

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
// group of W = 2 vectors of columns and R rows. With CHECK, tests[0..L) gets, lane-wise,
// kDirectRatio·(smallest q of the R rows) − (nx_max + ny) over both vectors: no value below 0
// means no entry can have nx[r] + ny[c] > kDirectRatio·q (see cross_to_s_checked); one that is
// is confirmed entry by entry by fix_s_row. One vector minimum per row and vector; the caller
// tests the stored values once per row block (a vector kept live across the dot-product loop
// would cost a register the accumulators need).
template <int R, bool CHECK, class T>
FASTAMORT_VEC_INLINE void s_micro(T* __restrict buf, int ldb, const T* __restrict xa, int lda,
                                  const T* __restrict nx, const T* __restrict panel,
                                  const T* __restrict ny, int d, T scale, T nx_max,
                                  T* __restrict tests) {
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
  V qmin0 = zero + std::numeric_limits<T>::max(), qmin1 = qmin0;
  for (int r = 0; r < R; ++r) {
    V q0 = (nx[r] + ny0) - T(2) * acc0[r];
    V q1 = (nx[r] + ny1) - T(2) * acc1[r];
    q0 = q0 > zero ? q0 : zero;
    q1 = q1 > zero ? q1 : zero;
    if constexpr (CHECK) {
      qmin0 = q0 < qmin0 ? q0 : qmin0;
      qmin1 = q1 < qmin1 ? q1 : qmin1;
    }
    vstore(buf + static_cast<long>(r) * ldb, q0 * scale);
    vstore(buf + static_cast<long>(r) * ldb + L, q1 * scale);
  }
  if constexpr (CHECK) {
    const V t0 = T(kDirectRatio) * qmin0 - (nx_max + ny0);
    const V t1 = T(kDirectRatio) * qmin1 - (nx_max + ny1);
    vstore(tests, t0 < t1 ? t0 : t1);
  }
}

// Whether some entry of a group (rows × cols of s in buf, stride ldb) other than a point
// against itself (c = r + diag) looks cancelled: (nx[r] + ny[c])·scale > kDirectRatio·s.
template <class T>
bool check_group_off_diagonal(const T* buf, int ldb, const T* nx, const T* ny, int rows, int cols,
                              T scale, long diag) {
  bool any = false;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      any |= c != r + diag && (nx[r] + ny[c]) * scale > T(kDirectRatio) * buf[r * ldb + c];
  return any;
}

template <int K, class T>
void kernel_from_s_to(T* __restrict out, const T* __restrict s, int n) {
#pragma omp simd
  for (int j = 0; j < n; ++j) out[j] = k_of_s<K, T>(s[j]);
}

// s_micro for rr = 1..kTileRows rows (inlined into the tile loop: out of line the fused tile
// ran about 20% slower).
template <bool CHECK, class T>
FASTAMORT_VEC_INLINE void micro(int rr, T* buf, int ldb, const T* xa, int lda, const T* nx,
                                const T* panel, const T* ny, int d, T scale, T nx_max,
                                T* tests) {
  switch (rr) {
    case 6: return s_micro<6, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
    case 5: return s_micro<5, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
    case 4: return s_micro<4, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
    case 3: return s_micro<3, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
    case 2: return s_micro<2, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
    default: return s_micro<1, CHECK>(buf, ldb, xa, lda, nx, panel, ny, d, scale, nx_max, tests);
  }
}

// EXACT: the entries fix_s_row flags are recomputed from the raw points x (rows × d, row
// stride ldx) and y (cols × d, row stride ldyr) before k(s).
template <int K, bool EXACT, class T>
void gram_tile_k(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
                 const T* ny, int rows, int cols, int d, T scale, const T* x, long ldx,
                 const T* y, long ldyr, long diag) {
  constexpr int L = Vec<T>::lanes;
  constexpr int W = 2 * L;
  const int chunk = std::min(kChunkCols, (cols + W - 1) / W * W);
  std::vector<T> panel(static_cast<size_t>(d) * chunk), nyp(chunk),
      buf(static_cast<size_t>(kTileRows) * chunk), tests(EXACT ? chunk / 2 : 0);
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
    // padded columns have q = nx[r] and never look cancelled
    for (int c = 0; c < groups * W; ++c) nyp[c] = c < cc ? ny[j0 + c] : T(0);
    for (int i0 = 0; i0 < rows; i0 += kTileRows) {
      const int rr = std::min(kTileRows, rows - i0);
      const T* xr = xa + static_cast<long>(i0) * lda;
      bool redo = false;
      T nx_max = nx[i0];
      for (int r = 1; r < rr; ++r) nx_max = nx[i0 + r] > nx_max ? nx[i0 + r] : nx_max;
      for (int g = 0; g < groups; ++g) {
        T* bg = buf.data() + g * W;
        const T* pg = panel.data() + static_cast<long>(g) * d * W;
        const T* ng = nyp.data() + g * W;
        T* tg = tests.data() + g * L;
        // group column of row i0's own point (Y = X): that group is checked without it
        const long dg = diag == kNoDiagonal ? kNoDiagonal : diag + i0 - j0 - g * W;
        if (EXACT && dg > -rr && dg < W) {
          micro<false>(rr, bg, chunk, xr, lda, nx + i0, pg, ng, d, scale, nx_max, tg);
          redo |= check_group_off_diagonal(bg, chunk, nx + i0, ng, rr, W, scale, dg);
          for (int l = 0; l < L; ++l) tg[l] = T(1);
        } else {
          micro<EXACT>(rr, bg, chunk, xr, lda, nx + i0, pg, ng, d, scale, nx_max, tg);
        }
      }
      if (EXACT && !redo) {
        T low = T(1);
#pragma omp simd reduction(min : low)
        for (int l = 0; l < groups * L; ++l) low = tests[l] < low ? tests[l] : low;
        redo = low < T(0);
      }
      if (EXACT && redo)
        for (int r = 0; r < rr; ++r)
          fix_s_row(buf.data() + static_cast<long>(r) * chunk, nyp.data(), nx[i0 + r],
                    x + static_cast<long>(i0 + r) * ldx, y + static_cast<long>(j0) * ldyr, ldyr,
                    cc, d, scale, static_cast<unsigned char*>(nullptr));
      for (int r = 0; r < rr; ++r)
        kernel_from_s_to<K, T>(k + static_cast<long>(i0 + r) * ldk + j0,
                               buf.data() + static_cast<long>(r) * chunk, cc);
    }
  }
}

template <class T>
void gram_tile(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
               const T* ny, int rows, int cols, int d, T scale, int kernel) {
  auto run = [&](auto tile) {
    tile(k, ldk, xa, lda, nx, yt, ldy, ny, rows, cols, d, scale, static_cast<const T*>(nullptr),
         0L, static_cast<const T*>(nullptr), 0L, kNoDiagonal);
  };
  switch (kernel) {  // Euclidean kernels only: the Laplacian never takes the GEMM trick
    case kGaussian: return run(gram_tile_k<kGaussian, false, T>);
    case kMatern12: return run(gram_tile_k<kMatern12, false, T>);
    case kMatern32: return run(gram_tile_k<kMatern32, false, T>);
    default: return run(gram_tile_k<kMatern52, false, T>);
  }
}

template <class T>
void gram_tile_exact(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
                     const T* ny, int rows, int cols, int d, T scale, int kernel, const T* x,
                     long ldx, const T* y, long ldyr, long diag) {
  auto run = [&](auto tile) {
    tile(k, ldk, xa, lda, nx, yt, ldy, ny, rows, cols, d, scale, x, ldx, y, ldyr, diag);
  };
  switch (kernel) {
    case kGaussian: return run(gram_tile_k<kGaussian, true, T>);
    case kMatern12: return run(gram_tile_k<kMatern12, true, T>);
    case kMatern32: return run(gram_tile_k<kMatern32, true, T>);
    default: return run(gram_tile_k<kMatern52, true, T>);
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

// ℓ·∂k/∂ℓ = −2s·k'(s) (Euclidean) or −s·k'(s) (Laplacian) as a function φ(k) of the kernel
// value, for the lengthscale gradient from a stored K. With t = −log k:
//   gaussian 2t·k;  matern12, laplacian t·k;
//   matern32 k·a²/(1 + a), a − log(1 + a) = t;  matern52 k·(a²/3)(1 + a)/(1 + a + a²/3),
//   a − log(1 + a + a²/3) = t; a by Newton from a₀ = t + √(ct) (c = 2, 6), which lies above the
//   root of these convex, increasing functions, so the steps fall monotonically onto it: 4
//   steps (float) or 5 (double) reach a few ulps of φ. k below the smallest normal number
//   gives φ = 0 (its true value is below that too).
template <int K, class T>
inline T phi_of_k(T kv) {
  const bool live = kv >= std::numeric_limits<T>::min();
  const T kc = live ? kv : T(1);
  const T l = log_pos<T>(kc);
  const T t = l < T(0) ? -l : T(0);
  T phi;
  if constexpr (K == kGaussian) {
    phi = T(2) * t * kc;
  } else if constexpr (K == kMatern12 || K == kLaplacian) {
    phi = t * kc;
  } else {
    constexpr int steps = sizeof(T) == 8 ? 5 : 4;
    constexpr T c = K == kMatern32 ? T(2) : T(6);
    T a = t + vsqrt(c * t);
    for (int it = 0; it < steps; ++it) {
      const T p = K == kMatern32 ? T(1) + a : T(1) + a + a * a * T(1.0 / 3.0);
      const T g = a - log_pos<T>(p) - t;                                         // a − log p − t
      const T dg = K == kMatern32 ? a / p : a * (T(1) + a) / (T(3) * p);       // its derivative
      a = a > T(0) ? a - g / (a > T(0) ? dg : T(1)) : a;
    }
    phi = K == kMatern32 ? kc * a * a / (T(1) + a)
                         : kc * (a * a * T(1.0 / 3.0)) * (T(1) + a) / (T(1) + a + a * a * T(1.0 / 3.0));
  }
  return live ? phi : T(0);
}

template <int K, class T>
T ell_grad_sum(const T* __restrict kv, const T* __restrict g, int n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int j = 0; j < n; ++j) acc += g[j] * phi_of_k<K, T>(kv[j]);
  return acc;
}

template <class T>
double ell_grad_from_k(const T* kv, const T* g, int n, int kernel) {
  switch (kernel) {
    case kGaussian: return ell_grad_sum<kGaussian, T>(kv, g, n);
    case kMatern12: return ell_grad_sum<kMatern12, T>(kv, g, n);
    case kMatern32: return ell_grad_sum<kMatern32, T>(kv, g, n);
    case kMatern52: return ell_grad_sum<kMatern52, T>(kv, g, n);
    default: return ell_grad_sum<kLaplacian, T>(kv, g, n);
  }
}

}  // namespace

template <class T>
RowOps<T> make_row_ops() {
  return RowOps<T>{&cross_to_s<T>,         &sqdist_direct<T>, &l1_direct<T>,
                   &kernel_from_s<T>,      &gram_tile<T>,     &kernel_grad_from_s<T>,
                   &cross_to_s_checked<T>, &fix_s_row<T>,     &gram_tile_exact<T>,
                   &ell_grad_from_k<T>,    &normal_fill<T>,   FASTAMORT_ISA_NAME};
}

template RowOps<float> make_row_ops<float>();
template RowOps<double> make_row_ops<double>();

}  // namespace FASTAMORT_ISA_NS
}  // namespace fastamort
