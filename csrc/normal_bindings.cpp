// fastamort._C.standard_normal: the sleep phase's Gaussian noise, from the generator of
// normal_impl.hpp, one chunk per task. Number i depends only on (seed, i), so the numbers are
// the same for every thread count.
#include "parallel.hpp"
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "array_utils.hpp"
#include "row_ops.hpp"

namespace py = pybind11;

namespace fastamort {
namespace {

// Below this many numbers one thread does it all (a parallel region costs more).
constexpr long kParallelMin = 1L << 16;

template <class T>
py::array standard_normal_t(long n, uint64_t seed) {
  py::array_t<T> out = pooled_array<T>({n});
  T* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    const RowOps<T>& ops = row_ops<T>();
    const long chunks = (n + kNormalChunk - 1) / kNormalChunk;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (long c = 0; c < chunks; ++c) {
      const long i0 = c * kNormalChunk;
      ops.normal_fill(o + i0, std::min(kNormalChunk, n - i0), seed, static_cast<uint64_t>(c));
    }
  }
  return out;
}

}  // namespace

void bind_normal(py::module_& m) {
  m.def(
      "standard_normal",
      [](long n, uint64_t seed, bool float64) -> py::array {
        if (n < 0) throw py::value_error("n: expected a non-negative count, got " + std::to_string(n));
        return float64 ? standard_normal_t<double>(n, seed) : standard_normal_t<float>(n, seed);
      },
      py::arg("n"), py::arg("seed"), py::arg("float64") = false,
      "n standard normal numbers (float32, or float64) of the stream of seed (xoshiro128** "
      "lanes, Box-Muller); number i depends only on (seed, i).");
}

}  // namespace fastamort
