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

#include <cstdint>
#include <limits>

namespace fastamort {

enum KernelId : int { kGaussian = 0, kMatern12 = 1, kMatern32 = 2, kMatern52 = 3, kLaplacian = 4 };
constexpr int kNumKernels = 5;
// The kernels' names by id, as fastamort's KERNEL_IDS (exported as fastamort._C.KERNEL_IDS).
inline constexpr const char* kKernelNames[kNumKernels] = {"gaussian", "matern12", "matern32",
                                                          "matern52", "laplacian"};

inline bool kernel_is_euclidean(int kernel) { return kernel != kLaplacian; }

// The GEMM trick q = ‖x̃‖² + ‖ỹ‖² − 2·x̃·ỹ on centred points x̃, ỹ errs by a few ulps of
// ‖x̃‖² + ‖ỹ‖². An entry with ‖x̃‖² + ‖ỹ‖² > kDirectRatio·q is therefore recomputed as the
// direct difference Σ_d (x_d − y_d)² of the raw points, so that every entry keeps a relative
// error of at most about kDirectRatio·D ulps whatever the offsets of the points and the other
// points (kernel_math.DIRECT_RATIO is the same number for the other backends).
constexpr double kDirectRatio = 16.0;
// gram_tile_exact's diag when Y is not X.
// (A huge negative offset; std::numeric_limits because long has 32 bits on Windows.)
constexpr long kNoDiagonal = std::numeric_limits<long>::min() / 2;

// Numbers per chunk of normal_fill's stream (the unit a chunk index counts; the stream
// itself, so fastamort.ops.standard_normal.CHUNK must be the same).
constexpr long kNormalChunk = 1L << 14;

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
  // As cross_to_s, and returns whether some entry of the row may have lost digits to the GEMM
  // trick: nxi + ny[j] > kDirectRatio·q for q = nxi + ny[j] − 2·(cross term).
  bool (*cross_to_s_checked)(T* row, const T* ny, T nxi, int n, T scale);
  // Recomputes the entries of a row of s = scale·q made by the GEMM trick (centred squared
  // norms nxi, ny) whose norms exceed kDirectRatio times their q, as the direct differences
  // scale·Σ_d (xi[d] − y[j·ldy + d])² of the raw points. flagged (when not null) gets 1 for
  // those entries and 0 for the others. Returns how many were recomputed.
  int (*fix_s_row)(T* row, const T* ny, T nxi, const T* xi, const T* y, long ldy, int n, int d,
                   T scale, unsigned char* flagged);
  // gram_tile, with the entries fix_s_row would recompute taken from the raw points: x (rows
  // × d, row stride ldx) and y (cols × d, row stride ldyr). diag (Y = X): the tile column of
  // row 0's own point, whose diagonal r − c = −diag needs no recomputation (the caller sets
  // it); kNoDiagonal otherwise.
  void (*gram_tile_exact)(T* k, long ldk, const T* xa, int lda, const T* nx, const T* yt,
                          long ldy, const T* ny, int rows, int cols, int d, T scale, int kernel,
                          const T* x, long ldx, const T* y, long ldyr, long diag);
  // Σ_j g[j]·ℓ·∂k_j/∂ℓ with ∂k/∂ℓ written as a function of k = k[j] itself (no distances).
  double (*ell_grad_from_k)(const T* k, const T* g, int n, int kernel);
  // out[i] = standard normal number i of chunk `chunk` of the stream of seed, i < n <= the
  // chunk length (normal_impl.hpp; not a row kernel, but it needs the same per-ISA
  // vectorisation).
  void (*normal_fill)(T* out, long n, uint64_t seed, uint64_t chunk);
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
