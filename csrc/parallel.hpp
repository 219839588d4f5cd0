// OpenMP when the compiler has it, else one thread: include this instead of <omp.h>.
//
// Without OpenMP (FASTAMORT_NO_OPENMP=1, or a compiler without it) every `#pragma omp`
// is ignored and the inline fallbacks below describe a team of one thread, so each parallel
// region runs once, on the calling thread, with thread number 0.
#pragma once

#include "portability.hpp"  // FASTAMORT_HAVE_OMP4

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
inline void omp_set_num_threads(int) {}
#endif

namespace fastamort {
// The OpenMP version the extension was compiled with (yyyymm), or 0 without OpenMP.
constexpr long openmp_version() {
#ifdef _OPENMP
  return _OPENMP;
#else
  return 0;
#endif
}
}  // namespace fastamort
