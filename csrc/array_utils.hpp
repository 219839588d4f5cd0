// Small helpers shared by the pybind11 bindings: dtype dispatch, kernel and shape checks, and
// an OpenMP loop over a batch that carries exceptions out of the parallel region.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "buffer_pool.hpp"
#include "row_ops.hpp"

namespace fastamort {

namespace py = pybind11;

// Which floating dtype an array has: 0 float32, 1 float64; throws TypeError otherwise.
inline int float_kind(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return 0;
  if (a.dtype().is(py::dtype::of<double>())) return 1;
  throw py::type_error(std::string(name) + ": expected a float32 or float64 array, got dtype " +
                       std::string(py::str(a.dtype())));
}

// f(float{}) for a float32 array, f(double{}) for a float64 one (TypeError naming `name`
// otherwise): f is a generic lambda taking the element type from its argument, e.g.
//   dispatch_float(x, "x", [&](auto t) { return forward<decltype(t)>(x, ...); })
template <class F>
auto dispatch_float(const py::array& a, const char* name, F&& f) -> decltype(f(float{})) {
  if (float_kind(a, name) == 0) return f(float{});
  return f(double{});
}

// A new C-contiguous, uninitialised array of `shape`; a large one (buffer_pool.hpp) takes its
// storage from the engines' buffer pool and gives it back when NumPy frees the array, so a
// repeated call maps no new pages.
template <class T>
py::array_t<T> pooled_array(std::initializer_list<long> shape) {
  const std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  std::size_t count = 1;
  for (const py::ssize_t d : dims) count *= static_cast<std::size_t>(d);
  const std::size_t bytes = count * sizeof(T);
  if (bytes < pool::kPooledMinBytes) return py::array_t<T>(dims);
  void* data = pool::allocate(bytes);
  py::capsule owner(data, [](void* p) { pool::release(p); });
  return py::array_t<T>(dims, static_cast<T*>(data), owner);
}

// ValueError unless kernel is a kernel id (row_ops.hpp's KernelId).
inline void check_kernel_id(int kernel) {
  if (kernel < 0 || kernel >= kNumKernels) throw py::value_error("kernel: unknown kernel id");
}

// Whether a lengthscale of +∞ is allowed: the Gram kernels take it (a finite lengthscale beyond
// the range of float32 arrives as ∞, and its kernel is exactly k(0) = 1, every gradient 0, as
// on the other backends); the solvers and products need a finite one.
enum class Lengthscale { kPositive, kPositiveFinite };

// ValueError unless kernel is a kernel id and lengthscale > 0 (and finite, kPositiveFinite).
inline void check_kernel(int kernel, double lengthscale, Lengthscale rule) {
  check_kernel_id(kernel);
  if (rule == Lengthscale::kPositive) {
    if (!(lengthscale > 0.0)) throw py::value_error("lengthscale: must be positive");
  } else if (!(lengthscale > 0.0) || lengthscale == std::numeric_limits<double>::infinity()) {
    throw py::value_error("lengthscale: must be positive and finite");
  }
}

// Checks C-contiguity, dimensions and dtype; returns the shape.
inline std::vector<long> checked_shape(const py::array& a, const char* name, int ndim, int kind) {
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) +
                          " dimensions, got " + std::to_string(a.ndim()));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  }
  if (float_kind(a, name) != kind) {
    throw py::type_error(std::string(name) + ": dtype differs from the first argument's");
  }
  std::vector<long> shape(ndim);
  for (int i = 0; i < ndim; ++i) shape[i] = static_cast<long>(a.shape(i));
  return shape;
}

template <class T>
T* mutable_data(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

template <class T>
const T* const_data(const py::array& a) {
  return static_cast<const T*>(a.data());
}

// Runs body(b, inner_parallel) for b in [0, batch). Small problems run in parallel over
// the batch with serial insides; large ones one after another with parallel insides.
template <class F>
void for_each_in_batch(long batch, bool small, F&& body) {
  if (batch > 1 && small) {
    std::exception_ptr error = nullptr;
    std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic)
    for (long b = 0; b < batch; ++b) {
      try {
        body(b, false);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  } else {
    for (long b = 0; b < batch; ++b) body(b, true);
  }
}

}  // namespace fastamort
