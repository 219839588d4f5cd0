// Element-wise row kernels of the Gram engine, compiled once per instruction set.
//
// A "row" is one row of a Gram tile. The pipeline per row is
//   scaled distance s  ->  k(s)            (forward)
//   scaled distance s  ->  w = g·dk/ds     (backward)
// where s = ‖x−y‖²/ℓ² for the Euclidean kernels and s = ‖x−y‖₁/ℓ for the Laplacian.
// These loops are the only code whose speed depends on SIMD width; row_ops_impl.hpp is
// included by row_ops_base.cpp (baseline ISA) and row_ops_avx2.cpp (AVX2+FMA, x86-64)
// and row_ops() picks one at run time.
#pragma once

namespace fastamort {

enum KernelId : int { kGaussian = 0, kMatern12 = 1, kMatern32 = 2, kMatern52 = 3, kLaplacian = 4 };
constexpr int kNumKernels = 5;

inline bool kernel_is_euclidean(int kernel) { return kernel != kLaplacian; }

template <class T>
struct RowOps {
  // row[j] = max(nxi + ny[j] − 2·row[j], 0)·scale  (row holds the cross term xᵢ·yⱼ on entry)
  void (*cross_to_s)(T* row, const T* ny, T nxi, int n, T scale);
  // row[j] = scale·Σ_d (xi[d] − yt[d·ld + j])²   (yt: the other points, transposed)
  void (*sqdist_direct)(T* row, const T* xi, const T* yt, int ld, int n, int d, T scale);
  // row[j] = scale·Σ_d |xi[d] − yt[d·ld + j]|
  void (*l1_direct)(T* row, const T* xi, const T* yt, int ld, int n, int d, T scale);
  // row[j] = k(row[j])   (row holds s on entry)
  void (*kernel_from_s)(T* row, int n, int kernel);
  // k[r·ldk + c] = k(max(nx[r] + ny[c] − 2·Σ_d xa[r·lda + d]·yt[d·ldy + c], 0)·scale) for
  // r < rows, c < cols: a tile of K for a Euclidean kernel by the GEMM trick, fused.
  void (*gram_tile)(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt, long ldy,
                    const T* ny, int rows, int cols, int d, T scale, int kernel);
  // row[j] = g[j]·k'(row[j]); returns Σ_j row[j]·s_j (the lengthscale gradient needs it)
  double (*kernel_grad_from_s)(T* row, const T* g, int n, int kernel);
  const char* isa;
};

template <class T>
const RowOps<T>& row_ops();

namespace isa_base {
template <class T>
RowOps<T> make_row_ops();
}
namespace isa_avx2 {
template <class T>
RowOps<T> make_row_ops();
bool compiled();
}

}  // namespace fastamort
