// Compiler portability: the GCC/clang extensions the kernels use, and what replaces them
// elsewhere (MSVC). Include this first; nothing else in csrc/ names a compiler.
//
//   FASTAMORT_INLINE             forced inlining (always_inline, __forceinline on MSVC).
//   FASTAMORT_HAVE_VECTOR_EXT    GCC/clang vector types (__attribute__((vector_size))): the
//                                row and Nyström micro-kernels use them; without them the same
//                                code runs on one-lane "vectors" (plain scalars).
//   FASTAMORT_HAVE_AVX2_DISPATCH AVX2+FMA copies of the hot kernels (target attributes and
//                                pragmas, __builtin_cpu_supports) chosen at run time; without
//                                it only the baseline kernels are built.
//   FASTAMORT_TARGET_AVX2        the attribute that compiles one function for AVX2+FMA
//                                (empty without the dispatch).
//   FASTAMORT_MEMCPY             memcpy as a compiler builtin where there is one (no library
//                                call inside a target-attributed section).
//   FASTAMORT_HAVE_OMP4          OpenMP >= 4.0 constructs: task dependences (the tiled
//                                Cholesky) and collapse. MSVC's OpenMP is 2.0 (_OPENMP
//                                200203; setup.py passes /openmp:experimental, which adds the
//                                `omp simd` directives): there one potrf call factors a large
//                                matrix, and tile loops are split by their outer index only.
//
// -DFASTAMORT_PORTABLE (setup.py: FASTAMORT_PORTABLE=1) makes GCC and clang take the paths of
// a compiler without these extensions, so that tests/test_build.py builds and checks MSVC's
// code path on Linux.
#pragma once

#include <cstring>

#if defined(_MSC_VER) && !defined(__clang__)
#define FASTAMORT_INLINE __forceinline
#elif defined(__GNUC__) || defined(__clang__)
#define FASTAMORT_INLINE inline __attribute__((always_inline))
#else
#define FASTAMORT_INLINE inline
#endif

#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTAMORT_PORTABLE)
#define FASTAMORT_HAVE_VECTOR_EXT 1
#define FASTAMORT_MEMCPY __builtin_memcpy
#else
#define FASTAMORT_MEMCPY std::memcpy
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(FASTAMORT_PORTABLE)
#define FASTAMORT_HAVE_AVX2_DISPATCH 1
#define FASTAMORT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTAMORT_TARGET_AVX2
#endif

#if defined(_OPENMP) && _OPENMP >= 201307 && !defined(FASTAMORT_PORTABLE)
#define FASTAMORT_HAVE_OMP4 1
#endif

namespace fastamort {

// Vectors of `Bytes` bytes of T for the micro-kernels: GCC/clang vector types, or without them
// one-lane "vectors" (plain T), so that the same code runs.
template <class T, int Bytes>
struct SimdVec {
#ifdef FASTAMORT_HAVE_VECTOR_EXT
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / static_cast<int>(sizeof(T));
#else
  typedef T type;
  static constexpr int lanes = 1;
#endif
};

}  // namespace fastamort
