// Run-time choice of the row kernels (see row_ops.hpp).
#include "row_ops.hpp"

#include "portability.hpp"

#include <cstdlib>
#include <cstring>

namespace fastamort {
namespace {

bool use_avx2() {
#ifdef FASTAMORT_HAVE_AVX2_DISPATCH
  // FASTAMORT_ISA=baseline forces the portable path (used by the tests to cover it).
  const char* forced = std::getenv("FASTAMORT_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
  __builtin_cpu_init();
  return isa_avx2::compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

template <class T>
const RowOps<T>& row_ops() {
  static const RowOps<T> ops = use_avx2() ? isa_avx2::make_row_ops<T>() : isa_base::make_row_ops<T>();
  return ops;
}

template const RowOps<float>& row_ops<float>();
template const RowOps<double>& row_ops<double>();

}  // namespace fastamort
