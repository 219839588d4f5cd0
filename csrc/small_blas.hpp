// A plain row-major GEMM for small problems run inside an OpenMP loop over a batch, where
// calling the threaded BLAS from several threads at once would oversubscribe the cores.
#pragma once

namespace fastamort {

// C[M×N] = alpha·op(A)·op(B) + beta·C, row-major; op is 'N' or 'T'.
template <class T>
void small_gemm(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
                int ldb, T beta, T* c, int ldc) {
  const bool a_t = (ta == 'T'), b_t = (tb == 'T');
  for (int i = 0; i < m; ++i) {
    T* ci = c + static_cast<long>(i) * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < n; ++j) ci[j] = T(0);
    } else if (beta != T(1)) {
      for (int j = 0; j < n; ++j) ci[j] *= beta;
    }
    if (b_t) {  // C_ij += Σ_l A_il·B_jl: dot products
      for (int j = 0; j < n; ++j) {
        const T* bj = b + static_cast<long>(j) * ldb;
        T acc = T(0);
        for (int l = 0; l < k; ++l) {
          const T ail = a_t ? a[static_cast<long>(l) * lda + i] : a[static_cast<long>(i) * lda + l];
          acc += ail * bj[l];
        }
        ci[j] += alpha * acc;
      }
    } else {  // C_i· += Σ_l A_il·B_l·: row updates
      for (int l = 0; l < k; ++l) {
        const T ail = alpha * (a_t ? a[static_cast<long>(l) * lda + i] : a[static_cast<long>(i) * lda + l]);
        const T* bl = b + static_cast<long>(l) * ldb;
#pragma omp simd
        for (int j = 0; j < n; ++j) ci[j] += ail * bl[j];
      }
    }
  }
}

}  // namespace fastamort
