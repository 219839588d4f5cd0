// Row kernels for x86-64 CPUs with AVX2 and FMA, chosen at run time by row_ops().
#include "portability.hpp"
#include "row_ops.hpp"

// Every standard header row_ops_impl.hpp uses comes before the target pragma: templates
// defined after it would be compiled for AVX2, and the linker may pick such an instance for
// the whole library (tests/test_isa.py checks the built library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef FASTAMORT_HAVE_AVX2_DISPATCH
#if defined(__clang__)  // clang ignores GCC's target pragma
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define FASTAMORT_VEC_BYTES 32
#define FASTAMORT_ISA_NS isa_avx2
#define FASTAMORT_ISA_NAME "avx2+fma"
#include "row_ops_impl.hpp"

namespace fastamort::isa_avx2 {
bool compiled() { return true; }
}  // namespace fastamort::isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
namespace fastamort::isa_avx2 {
bool compiled() { return false; }
template <class T>
RowOps<T> make_row_ops() {
  return isa_base::make_row_ops<T>();
}
template RowOps<float> make_row_ops<float>();
template RowOps<double> make_row_ops<double>();
}  // namespace fastamort::isa_avx2
#endif
