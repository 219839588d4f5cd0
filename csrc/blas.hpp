// BLAS/LAPACK through SciPy's cython_blas / cython_lapack capsules.
//
// SciPy exports Fortran-ABI function pointers as PyCapsules in
// scipy.linalg.cython_blas.__pyx_capi__ (and cython_lapack). Taking the pointers at
// import time gives us an optimised, threaded BLAS with no link step and no extra
// wheel: the extension shares SciPy's OpenBLAS and its thread pool.
//
// All wrappers below take ROW-MAJOR matrices; they translate to the column-major
// Fortran calls (a row-major matrix is the column-major view of its transpose).
#pragma once

#include <cstdint>
#include <string>

namespace fastamort::blas {

// Loads every pointer; must be called with the GIL held (at module import).
// Throws std::runtime_error naming the missing symbol.
void load();
bool loaded();
// Whether GEMM is Intel MKL's (taken from torch), not SciPy's OpenBLAS.
bool gemm_is_mkl();
std::string describe();  // one line for `fastamort info`

// Whether the BLAS's thread count can be set (OpenBLAS's *_set_num_threads was found).
bool thread_control();

// While any instance is alive, in any thread, the BLAS runs single-threaded, so that our own
// OpenMP threads can each call it on their own tile without the two thread pools fighting over
// the cores (OpenBLAS built with pthreads warns "Detect OpenMP Loop" and may hang when called
// multi-threaded from an OpenMP region). The BLAS's thread count is process-wide, so the
// guards share one reference count under a mutex: the first guard saves the count and sets
// one thread, the last one restores the saved count. A no-op when thread_control() is false.
class SingleThreaded {
 public:
  SingleThreaded();
  ~SingleThreaded();
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;
};

// The BLAS's current thread count (-1 when thread_control() is false).
int num_threads();

// C[M×N] = alpha·op(A)·op(B) + beta·C, row-major, op = 'N' or 'T'.
template <class T>
void gemm(char trans_a, char trans_b, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc);

// Lower triangle (i >= j) of C[N×N] = alpha·A·Aᵀ + beta·C, A row-major N×K.
template <class T>
void syrk_lower(int n, int k, T alpha, const T* a, int lda, T beta, T* c, int ldc);

// Lower Cholesky of a row-major symmetric matrix (reads/writes the lower triangle).
// Returns LAPACK's info (0 ok, >0 leading minor not positive definite).
template <class T>
int potrf_lower(int n, T* a, int lda);

// Solves (L·Lᵀ) X = B in place, L from potrf_lower, B row-major N×NRHS.
template <class T>
int potrs_lower(int n, int nrhs, const T* l, int ldl, T* b, int ldb);

// Solves op(L)·X = alpha·B in place (left side), L lower triangular row-major N×N,
// B row-major N×NRHS, op = 'N' (L) or 'T' (Lᵀ).
template <class T>
void trsm_left_lower(char trans, int n, int nrhs, T alpha, const T* l, int ldl, T* b, int ldb);

// Solves X·op(L) = alpha·B in place (right side), L lower triangular row-major N×N,
// B row-major M×N, op = 'N' (L) or 'T' (Lᵀ). With op = 'T' this is the panel step of a
// right-looking Cholesky: L_ik = A_ik·L_kk⁻ᵀ.
template <class T>
void trsm_right_lower(char trans, int m, int n, T alpha, const T* l, int ldl, T* b, int ldb);

}  // namespace fastamort::blas
