// The CPU engine of Nyström kernel ridge regression: the fused normal-equation product
//
//     out (m×p) = K(x, c)ᵀ · diag(w) · (K(x, c) · v + y)
//
// with x the n training points (n×D), c the m centres (m×D), v (m×p) and y (n×p) optional
// (a missing one counts as zero), w (n) optional (ones). The n×m matrix K(x, c) is never
// stored: each thread takes a contiguous range of rows, and for a few rows at a time forms
// their kernel rows (direct differences, then k(s), in T: float32 or float64), uses each row
// for both products while it is in L1 (u = K·v, then acc += K_rowsᵀ·(w·(u + y))), and adds
// its m×p accumulator into out at the end.
//
// Precision: distances and kernel values in T; every product and sum in float64 (v, y, w
// and out are float64). Summing n ≈ 10⁶ products in float32 loses the small eigen-directions
// of K_nmᵀK_nm that α leaves to the solver, while float32 kernel values do not (measured in
// the docstring of fastamort/ops/normal_matmul.py).
#pragma once

namespace fastamort::nystrom {

// x (n×D) and c (m×D), row-major, C-contiguous; kernel ids as in row_ops.hpp.
template <class T>
struct Points {
  const T* x;
  const T* c;
  long n;
  int m, d;
  int kernel;
  double lengthscale;
};

// out (m×p, row-major, float64) = K(x, c)ᵀ·diag(w)·(K(x, c)·v + y). v (m×p), y (n×p), w (n)
// may each be nullptr (not both v and y). Runs on omp_get_max_threads() threads; call without
// the GIL.
template <class T>
void normal_matmul(const Points<T>& pts, const double* v, const double* y, const double* w,
                   int p, double* out);

// Whether the float64 products run in the AVX2+FMA copy (the same choice as row_ops()).
bool products_use_avx2();

}  // namespace fastamort::nystrom
