// fastamort._C: the CPU extension (pybind11, NumPy buffers, OpenMP; no libtorch).
#include <pybind11/pybind11.h>

#include <string>

#include "blas.hpp"
#include "buffer_pool.hpp"
#include "parallel.hpp"
#include "portability.hpp"

namespace py = pybind11;

namespace fastamort {
void bind_gram(py::module_& m);
void bind_ridge(py::module_& m);
void bind_nystrom(py::module_& m);
void bind_normal(py::module_& m);
}

namespace {
// The compiler that built the extension, with its version.
std::string compiler_name() {
#if defined(__clang__)
  return std::string(
#if defined(__apple_build_version__)
             "Apple clang "
#else
             "clang "
#endif
             ) +
         std::to_string(__clang_major__) + "." + std::to_string(__clang_minor__) + "." +
         std::to_string(__clang_patchlevel__);
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastamort CPU kernels: Gram matrices, fused Gram-matmul, ridge solves.";
  fastamort::blas::load();
  fastamort::bind_gram(m);
  fastamort::bind_ridge(m);
  fastamort::bind_nystrom(m);
  fastamort::bind_normal(m);
  m.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads used by the kernels.");
  m.def(
      "set_num_threads", [](int n) { omp_set_num_threads(n < 1 ? 1 : n); }, py::arg("n"),
      "Sets the OpenMP threads of the kernels (fastamort keeps it equal to torch's).");
  m.def("blas_source", []() { return fastamort::blas::describe(); });
  m.def(
      "buffer_cache_info",
      []() {
        const auto s = fastamort::pool::stats();
        py::dict d;
        d["cached_bytes"] = s.cached_bytes;
        d["live_bytes"] = s.live_bytes;
        d["limit_bytes"] = s.limit_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      },
      "The engines' buffer pool: bytes cached for reuse and in use, the cache's cap "
      "(FASTAMORT_BUFFER_CACHE_MB), and requests served from the cache (hits) or freshly "
      "mapped (misses).");
  m.def("empty_buffer_cache", &fastamort::pool::empty_cache,
        "Returns every cached engine buffer to the system (buffers in use are kept).");
  m.def("blas_num_threads", &fastamort::blas::num_threads,
        "The BLAS's current thread count (-1 without thread control).");
  py::dict build;
  build["compiler"] = compiler_name();
  build["openmp"] = fastamort::openmp_version();  // yyyymm of the OpenMP standard, 0 without
  // The kernel variants compiled in (the one that runs: simd_isa()), and the portability
  // switches (portability.hpp).
  py::list isa;
  isa.append("baseline");
#ifdef FASTAMORT_HAVE_AVX2_DISPATCH
  isa.append("avx2+fma");
#endif
  build["isa"] = isa;
#ifdef FASTAMORT_HAVE_VECTOR_EXT
  build["vector_extensions"] = true;
#else
  build["vector_extensions"] = false;
#endif
#ifdef FASTAMORT_PORTABLE
  build["portable"] = true;
#else
  build["portable"] = false;
#endif
  m.attr("BUILD_INFO") = build;
#ifdef FASTAMORT_VERSION
  m.attr("__version__") = FASTAMORT_VERSION;
#endif
}
