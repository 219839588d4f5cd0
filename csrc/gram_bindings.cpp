// pybind11 bindings of the Gram engine. Arrays are batched and C-contiguous:
// x (B, M, D), y (B, N, D) or None (Y = X), v (B, N, P), grad (B, M, N) or (B, M, P).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <limits>
#include <string>

#include "array_utils.hpp"
#include "blas.hpp"
#include "gram_engine.hpp"
#include "row_ops.hpp"

namespace py = pybind11;

namespace fastamort {
namespace {

// Per-problem work below which the batch runs in parallel with serial problems.
constexpr long kSmallProblemWork = 1L << 20;

struct Dims {
  long b, m, n, d;
};

Dims gram_dims(const py::array& x, const py::object& y, int kind) {
  auto xs = checked_shape(x, "x", 3, kind);
  Dims dims{xs[0], xs[1], xs[1], xs[2]};
  if (!y.is_none()) {
    auto ys = checked_shape(y.cast<py::array>(), "y", 3, kind);
    if (ys[0] != xs[0] || ys[2] != xs[2]) throw py::value_error("y: batch or feature size differs from x");
    dims.n = ys[1];
  }
  return dims;
}

// Raw pointers of a batched problem, taken while the GIL is held (the kernels run without it).
template <class T>
struct Points {
  const T* x;
  const T* y;  // nullptr: y = x
  Dims dims;
  int kernel;
  T lengthscale;

  Points(const py::array& xa, const py::object& ya, const Dims& d, int k, double ell)
      : x(const_data<T>(xa)),
        y(ya.is_none() ? nullptr : const_data<T>(ya.cast<py::array>())),
        dims(d),
        kernel(k),
        lengthscale(static_cast<T>(ell)) {}

  gram::Problem<T> operator[](long b) const {
    return gram::Problem<T>{x + b * dims.m * dims.d,
                            y == nullptr ? nullptr : y + b * dims.n * dims.d,
                            static_cast<int>(dims.m),
                            static_cast<int>(dims.n),
                            static_cast<int>(dims.d),
                            kernel,
                            lengthscale};
  }
};

bool is_small(const Dims& d) { return d.m * d.n * std::max(d.d, 1L) <= kSmallProblemWork; }

template <class T>
py::array gram_forward_t(const py::array& x, const py::object& y, int kernel, double ell) {
  const Dims dims = gram_dims(x, y, sizeof(T) == 8);
  const Points<T> pts(x, y, dims, kernel, ell);
  py::array_t<T> out = pooled_array<T>({dims.b, dims.m, dims.n});
  T* k = out.mutable_data();
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    for_each_in_batch(dims.b, is_small(dims), [&](long b, bool inner) {
      gram::forward<T>(pts[b], k + b * dims.m * dims.n, inner);
    });
  }
  return out;
}

template <class T>
py::array gram_matmul_forward_t(const py::array& x, const py::object& y, const py::array& v,
                                int kernel, double ell) {
  const Dims dims = gram_dims(x, y, sizeof(T) == 8);
  const Points<T> pts(x, y, dims, kernel, ell);
  auto vs = checked_shape(v, "v", 3, sizeof(T) == 8);
  if (vs[0] != dims.b || vs[1] != dims.n) throw py::value_error("v: expected shape (B, N, P)");
  const long p = vs[2];
  py::array_t<T> out = pooled_array<T>({dims.b, dims.m, p});
  T* o = out.mutable_data();
  const T* vp = const_data<T>(v);
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    for_each_in_batch(dims.b, is_small(dims), [&](long b, bool inner) {
      gram::matmul_forward<T>(pts[b], vp + b * dims.n * p,
                              static_cast<int>(p), o + b * dims.m * p, inner);
    });
  }
  return out;
}

// grad: (B, M, N) when v is None (gram), else (B, M, P) (gram_matmul, G = grad·vᵀ).
// need_dx / need_dy false: that gradient is neither computed nor returned (None).
template <class T>
py::tuple gram_backward_t(const py::array& x, const py::object& y, const py::array& grad,
                          const py::object& v, int kernel, double ell, bool need_dx,
                          bool need_dy) {
  const Dims dims = gram_dims(x, y, sizeof(T) == 8);
  const Points<T> pts(x, y, dims, kernel, ell);
  auto gs = checked_shape(grad, "grad", 3, sizeof(T) == 8);
  long p = 0;
  const T* vp = nullptr;
  if (v.is_none()) {
    if (gs[0] != dims.b || gs[1] != dims.m || gs[2] != dims.n)
      throw py::value_error("grad: expected shape (B, M, N)");
  } else {
    auto vs = checked_shape(v.cast<py::array>(), "v", 3, sizeof(T) == 8);
    p = vs[2];
    if (vs[0] != dims.b || vs[1] != dims.n || gs[0] != dims.b || gs[1] != dims.m || gs[2] != p)
      throw py::value_error("grad, v: expected shapes (B, M, P) and (B, N, P)");
    vp = const_data<T>(v.cast<py::array>());
  }
  const bool sym = y.is_none();
  py::object dx_obj = py::none();
  T* dxp = nullptr;
  if (need_dx) {
    py::array_t<T> dx = pooled_array<T>({dims.b, dims.m, dims.d});
    dxp = dx.mutable_data();
    dx_obj = dx;
  }
  py::object dy_obj = py::none();
  T* dyp = nullptr;
  if (!sym && need_dy) {
    py::array_t<T> dy = pooled_array<T>({dims.b, dims.n, dims.d});
    dyp = dy.mutable_data();
    dy_obj = dy;
  }
  py::array_t<double> dell(static_cast<py::ssize_t>(dims.b));
  double* dellp = dell.mutable_data();
  const T* gp = const_data<T>(grad);
  const long g_stride = v.is_none() ? dims.m * dims.n : dims.m * p;
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    for_each_in_batch(dims.b, is_small(dims), [&](long b, bool inner) {
      dellp[b] = gram::backward_selected<T>(
          pts[b], gp + b * g_stride, vp == nullptr ? nullptr : vp + b * dims.n * p,
          static_cast<int>(p), dxp == nullptr ? nullptr : dxp + b * dims.m * dims.d,
          dyp == nullptr ? nullptr : dyp + b * dims.n * dims.d, inner);
    });
  }
  return py::make_tuple(dx_obj, dy_obj, dell);
}

// dℓ per batch member of sum(grad * K) from K itself (B, M, N), no distances.
template <class T>
py::array gram_ell_grad_t(const py::array& k, const py::array& grad, int kernel, double ell) {
  auto ks = checked_shape(k, "k", 3, sizeof(T) == 8);
  auto gs = checked_shape(grad, "grad", 3, sizeof(T) == 8);
  if (gs[0] != ks[0] || gs[1] != ks[1] || gs[2] != ks[2])
    throw py::value_error("grad: expected the shape of k (B, M, N)");
  const long b = ks[0], m = ks[1], n = ks[2];
  py::array_t<double> dell(static_cast<py::ssize_t>(b));
  double* dellp = dell.mutable_data();
  const T* kp = const_data<T>(k);
  const T* gp = const_data<T>(grad);
  const T ell_t = static_cast<T>(ell);
  {
    py::gil_scoped_release release;
    for_each_in_batch(b, is_small(Dims{b, m, n, 1}), [&](long i, bool inner) {
      dellp[i] = gram::ell_grad_from_k<T>(kp + i * m * n, gp + i * m * n, m, n, kernel, ell_t,
                                           inner);
    });
  }
  return dell;
}

}  // namespace

void bind_gram(py::module_& m) {
  m.def(
      "gram_forward",
      [](const py::array& x, const py::object& y, int kernel, double lengthscale) -> py::array {
        check_kernel(kernel, lengthscale, Lengthscale::kPositive);
        return dispatch_float(x, "x", [&](auto t) {
          return gram_forward_t<decltype(t)>(x, y, kernel, lengthscale);
        });
      },
      py::arg("x"), py::arg("y"), py::arg("kernel"), py::arg("lengthscale"),
      "K = k(x, y): x (B, M, D), y (B, N, D) or None for y = x (exactly symmetric) -> (B, M, N).");
  m.def(
      "gram_matmul_forward",
      [](const py::array& x, const py::object& y, const py::array& v, int kernel,
         double lengthscale) -> py::array {
        check_kernel(kernel, lengthscale, Lengthscale::kPositive);
        return dispatch_float(x, "x", [&](auto t) {
          return gram_matmul_forward_t<decltype(t)>(x, y, v, kernel, lengthscale);
        });
      },
      py::arg("x"), py::arg("y"), py::arg("v"), py::arg("kernel"), py::arg("lengthscale"),
      "k(x, y) @ v computed in tiles (K never stored): v (B, N, P) -> (B, M, P).");
  m.def(
      "gram_backward",
      [](const py::array& x, const py::object& y, const py::array& grad, const py::object& v,
         int kernel, double lengthscale, bool need_dx, bool need_dy) -> py::tuple {
        check_kernel(kernel, lengthscale, Lengthscale::kPositive);
        return dispatch_float(x, "x", [&](auto t) {
          return gram_backward_t<decltype(t)>(x, y, grad, v, kernel, lengthscale, need_dx,
                                              need_dy);
        });
      },
      py::arg("x"), py::arg("y"), py::arg("grad"), py::arg("v"), py::arg("kernel"),
      py::arg("lengthscale"), py::arg("need_dx") = true, py::arg("need_dy") = true,
      "Gradients of sum(G * k(x, y)) -> (dx, dy or None, dlengthscale per batch member).\n"
      "G = grad (B, M, N) when v is None, else grad @ v^T with grad (B, M, P), v (B, N, P).\n"
      "With y None, dx is the total gradient of x in both roles. need_dx / need_dy False:\n"
      "that gradient is skipped (None); with neither, no contraction with the points runs.");
  m.def(
      "gram_ell_grad",
      [](const py::array& k, const py::array& grad, int kernel, double lengthscale) -> py::array {
        check_kernel(kernel, lengthscale, Lengthscale::kPositive);
        return dispatch_float(k, "k", [&](auto t) {
          return gram_ell_grad_t<decltype(t)>(k, grad, kernel, lengthscale);
        });
      },
      py::arg("k"), py::arg("grad"), py::arg("kernel"), py::arg("lengthscale"),
      "d/dlengthscale of sum(grad * K) per batch member, from K = k(x, y) (B, M, N) itself:\n"
      "no distances are formed.");
  m.def("direct_ratio", []() { return kDirectRatio; },
        "Entries whose centred squared norms exceed this times their squared distance are\n"
        "recomputed by direct differences.");
  m.def(
      "gram_route",
      [](long m_rows, long n_cols, long d, int kernel) -> std::string {
        check_kernel_id(kernel);
        const bool inner = !is_small(Dims{1, m_rows, n_cols, d});
        switch (gram::route(static_cast<int>(d), kernel, inner)) {
          case gram::Route::kDirect: return "direct";
          case gram::Route::kFused: return "fused";
          default: return "gemm";
        }
      },
      py::arg("m"), py::arg("n"), py::arg("d"), py::arg("kernel"),
      "How gram_forward makes one M×N×D problem's tiles: 'direct', 'fused' or 'gemm'.");
  m.def("gram_fused_max_d", &gram::fused_max_d,
        "The largest D that gram_forward's large problems run on the fused route (32 when the "
        "GEMM is MKL's, else 64).");
  m.def("blas_thread_control", &blas::thread_control,
        "Whether the BLAS thread count can be pinned to 1 around the Gram kernels.");
  py::dict kernel_ids;
  for (int id = 0; id < kNumKernels; ++id) kernel_ids[kKernelNames[id]] = id;
  m.attr("KERNEL_IDS") = kernel_ids;  // the ids the kernel arguments take
  m.def("simd_isa", []() { return std::string(row_ops<double>().isa); },
        "Instruction set the element-wise kernels were dispatched to.");
}

}  // namespace fastamort
