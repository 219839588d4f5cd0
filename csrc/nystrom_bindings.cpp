// pybind11 bindings of the Nyström engine. x (n, D) and centres (m, D) share a dtype (float32
// or float64: the precision of the kernel values); v (m, p), y (n, p) and w (n,) are float64,
// and so is the result (m, p). All C-contiguous.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <limits>
#include <string>
#include <vector>

#include "array_utils.hpp"
#include "nystrom_engine.hpp"
#include "row_ops.hpp"

namespace py = pybind11;

namespace fastamort {
namespace {

// A float64 operand: None, or a C-contiguous array of `ndim` dimensions; returns its data.
const double* float64_operand(const py::object& a, const char* name, int ndim,
                              std::vector<long>& shape) {
  if (a.is_none()) return nullptr;
  const py::array arr = a.cast<py::array>();
  shape = checked_shape(arr, name, ndim, 1);
  return const_data<double>(arr);
}

template <class T>
py::array normal_matmul_t(const py::array& x, const py::array& c, const py::object& v,
                          const py::object& y, const py::object& w, int kernel, double ell) {
  const int kind = sizeof(T) == 8 ? 1 : 0;
  const auto xs = checked_shape(x, "x", 2, kind);
  const auto cs = checked_shape(c, "centres", 2, kind);
  if (cs[1] != xs[1]) throw py::value_error("centres: feature size differs from x's");
  std::vector<long> vs, ys, ws;
  const double* vp = float64_operand(v, "v", 2, vs);
  const double* yp = float64_operand(y, "y", 2, ys);
  const double* wp = float64_operand(w, "w", 1, ws);
  if (vp == nullptr && yp == nullptr) throw py::value_error("v, y: at least one is needed");
  const long p = vp != nullptr ? vs[1] : ys[1];
  if (vp != nullptr && vs[0] != cs[0]) throw py::value_error("v: expected shape (m, p)");
  if (yp != nullptr && (ys[0] != xs[0] || ys[1] != p))
    throw py::value_error("y: expected shape (n, p)");
  if (wp != nullptr && ws[0] != xs[0]) throw py::value_error("w: expected shape (n,)");
  if (cs[0] > std::numeric_limits<int>::max() || xs[1] > std::numeric_limits<int>::max() ||
      p > std::numeric_limits<int>::max())
    throw py::value_error("centres, x, v: too many centres, features or columns");
  const nystrom::Points<T> pts{const_data<T>(x), const_data<T>(c), xs[0], static_cast<int>(cs[0]),
                               static_cast<int>(xs[1]), kernel, ell};
  py::array_t<double> out({cs[0], p});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    nystrom::normal_matmul<T>(pts, vp, yp, wp, static_cast<int>(p), o);
  }
  return out;
}

}  // namespace

void bind_nystrom(py::module_& m) {
  m.def(
      "nystrom_normal_matmul",
      [](const py::array& x, const py::array& centres, const py::object& v, const py::object& y,
         const py::object& w, int kernel, double lengthscale) -> py::array {
        check_kernel(kernel, lengthscale, Lengthscale::kPositiveFinite);
        return dispatch_float(x, "x", [&](auto t) {
          return normal_matmul_t<decltype(t)>(x, centres, v, y, w, kernel, lengthscale);
        });
      },
      py::arg("x"), py::arg("centres"), py::arg("v"), py::arg("y"), py::arg("w"),
      py::arg("kernel"), py::arg("lengthscale"),
      "K(x, c)^T diag(w) (K(x, c) v + y) -> (m, p) float64, K never stored.\n"
      "x (n, D), centres (m, D): float32 or float64 (the kernel values' precision);\n"
      "v (m, p), y (n, p), w (n,): float64 or None (not both v and y).");
  m.def("nystrom_products_isa", []() {
    return std::string(nystrom::products_use_avx2() ? "avx2+fma" : "baseline");
  }, "Instruction set of the float64 products of nystrom_normal_matmul.");
}

}  // namespace fastamort
