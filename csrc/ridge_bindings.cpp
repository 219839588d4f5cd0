// pybind11 bindings of the ridge engine. Arrays are batched, C-contiguous and row-major:
// a, k, L (B, N, N); b, x (B, N, P); points x (B, N, D), y (B, N, P), x_new (B, M, D);
// shift (B,) float64; info (B,) int32. Outputs take the dtype of the first argument.
#include "parallel.hpp"
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "array_utils.hpp"
#include "blas.hpp"
#include "ridge_engine.hpp"
#include "ridge_grad.hpp"
#include "ridge_internal.hpp"
#include "row_ops.hpp"

namespace py = pybind11;

namespace fastamort {
namespace {

// Order up to which a batch always runs in parallel over its problems (own kernels, or one
// single-threaded potrf each); larger problems do so only when the batch has a problem for
// every thread, else they run one after another, each factored by the tiled Cholesky on our
// threads (ridge_engine.cpp). Every entry point holds blas::SingleThreaded throughout.
// Evidence, on a 2-core x86-64 AVX2 VM: at n = 256 (B = 32) and 512 (B = 8) batch-parallel
// was 2.0-2.7× faster than one problem at a time with a threaded potrf; the tiled
// factorisation gains 1.6× over one thread at n = 256, less than the 2× of the batch split.
// Re-measure: fastamort.benchmarks.ridge.bench_batched(B, n, dtype, torch.device("cpu"),
// ["cpp"]) at (B, n) = (32, 256) and (8, 512), one build with this constant below n and one
// at n.
constexpr long kBatchParallelMaxN = 512;

int checked_int(long v, const char* name) {
  if (v > INT_MAX) throw py::value_error(std::string(name) + ": dimension too large for LAPACK");
  return static_cast<int>(v);
}

const double* checked_shift(const py::array& shift, long batch) {
  if (!shift.dtype().is(py::dtype::of<double>()))
    throw py::type_error("shift: expected a float64 array, got dtype " +
                         std::string(py::str(shift.dtype())));
  if (shift.ndim() != 1 || shift.shape(0) != batch)
    throw py::value_error("shift: expected shape (B,) with B = " + std::to_string(batch));
  if (!(shift.flags() & py::array::c_style))
    throw py::value_error("shift: expected a C-contiguous array");
  return const_data<double>(shift);
}

std::vector<long> square_batch(const py::array& a, const char* name, int kind) {
  auto s = checked_shape(a, name, 3, kind);
  if (s[1] != s[2])
    throw py::value_error(std::string(name) + ": expected square matrices (B, N, N), got (" +
                          std::to_string(s[0]) + ", " + std::to_string(s[1]) + ", " +
                          std::to_string(s[2]) + ")");
  checked_int(s[1], name);
  return s;
}

std::vector<long> rhs_batch(const py::array& b, const char* name, long batch, long n, int kind) {
  auto s = checked_shape(b, name, 3, kind);
  if (s[0] != batch || s[1] != n)
    throw py::value_error(std::string(name) + ": expected shape (B, N, P) with B = " +
                          std::to_string(batch) + ", N = " + std::to_string(n));
  checked_int(s[2], name);
  return s;
}

// Runs body(first, count, inner_parallel, workspace) over the batch in groups of
// ridge::group_size(n) consecutive problems, in parallel over the groups or one group after
// another (inner_parallel: the engine may use our threads inside); see kBatchParallelMaxN.
// The caller holds blas::SingleThreaded.
template <class T, class F>
void run_batch(long batch, long n, F&& body) {
  const long group = ridge::group_size(static_cast<int>(n));
  const long units = (batch + group - 1) / group;
  const bool parallel = units > 1 && (n <= kBatchParallelMaxN || units >= omp_get_max_threads());
  std::vector<ridge::Workspace<T>> ws(std::max(1, omp_get_max_threads()));
  for_each_in_batch(units, parallel, [&](long u, bool inner) {
    const long first = u * group;
    body(first, static_cast<int>(std::min(group, batch - first)), inner, ws[omp_get_thread_num()]);
  });
}

template <class T>
py::tuple cholesky_forward_t(const py::array& a, const py::array& shift) {
  const auto s = square_batch(a, "a", sizeof(T) == 8);
  const long batch = s[0], n = s[1];
  const double* sh = checked_shift(shift, batch);
  py::array_t<T> l = pooled_array<T>({batch, n, n});
  py::array_t<int32_t> info(static_cast<py::ssize_t>(batch));
  const T* ap = const_data<T>(a);
  T* lp = l.mutable_data();
  int32_t* ip = info.mutable_data();
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    run_batch<T>(batch, n, [&](long b, int count, bool inner, ridge::Workspace<T>& ws) {
      ridge::cholesky<T>(static_cast<int>(n), count, ap + b * n * n, sh + b, lp + b * n * n,
                         ip + b, inner, ws);
    });
  }
  return py::make_tuple(l, info);
}

template <class T>
py::array cholesky_solve_t(const py::array& l, const py::array& b) {
  const auto s = square_batch(l, "L", sizeof(T) == 8);
  const long batch = s[0], n = s[1];
  const long p = rhs_batch(b, "b", batch, n, sizeof(T) == 8)[2];
  py::array_t<T> x = pooled_array<T>({batch, n, p});
  const T* lp = const_data<T>(l);
  const T* bp = const_data<T>(b);
  T* xp = x.mutable_data();
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    run_batch<T>(batch, n, [&](long i, int count, bool inner, ridge::Workspace<T>& ws) {
      ridge::cholesky_solve<T>(static_cast<int>(n), static_cast<int>(p), count, lp + i * n * n,
                               bp + i * n * p, xp + i * n * p, inner, ws);
    });
  }
  return x;
}

template <class T>
py::array symmetric_rank2k_t(const py::array& a, const py::array& b, double alpha) {
  const auto s = checked_shape(a, "a", 3, sizeof(T) == 8);
  const long batch = s[0], n = s[1], p = s[2];
  const auto sb = checked_shape(b, "b", 3, sizeof(T) == 8);
  if (sb[0] != batch || sb[1] != n || sb[2] != p)
    throw py::value_error("b: expected the shape of a (B, N, P)");
  checked_int(n, "a");
  checked_int(p, "a");
  py::array_t<T> c = pooled_array<T>({batch, n, n});
  const T* ap = const_data<T>(a);
  const T* bp = const_data<T>(b);
  T* cp = c.mutable_data();
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    for (long i = 0; i < batch; ++i)
      ridge::symmetric_rank2k<T>(static_cast<int>(n), static_cast<int>(p), ap + i * n * p,
                                 bp + i * n * p, static_cast<T>(alpha), cp + i * n * n, true);
  }
  return c;
}

// Whether a[0, count) holds no NaN and no infinity (t − t is 0 exactly for finite t).
template <class T>
bool all_finite(const T* a, long count) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (long i = 0; i < count; ++i) acc += a[i] - a[i];
  return acc == T(0);
}

// all_finite over our threads when the caller runs one large problem at a time (inner).
template <class T>
bool all_finite(const T* a, long count, bool inner) {
  constexpr long kChunk = 1L << 16;
  if (!inner || count <= kChunk) return all_finite(a, count);
  const long chunks = (count + kChunk - 1) / kChunk;
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok)
  for (long c = 0; c < chunks; ++c)
    ok = all_finite(a + c * kChunk, std::min(kChunk, count - c * kChunk)) && ok;
  return ok;
}

template <class T>
py::tuple ridge_solve_forward_t(const py::array& k, const py::array& b, const py::array& shift,
                                bool keep_l, bool check_finite) {
  const auto s = square_batch(k, "k", sizeof(T) == 8);
  const long batch = s[0], n = s[1];
  const long p = rhs_batch(b, "b", batch, n, sizeof(T) == 8)[2];
  const double* sh = checked_shift(shift, batch);
  py::array_t<T> x = pooled_array<T>({batch, n, p});
  py::object l_obj = py::none();
  T* lp = nullptr;
  if (keep_l) {
    py::array_t<T> l = pooled_array<T>({batch, n, n});
    lp = l.mutable_data();
    l_obj = l;
  }
  py::array_t<int32_t> info(static_cast<py::ssize_t>(batch));
  const T* kp = const_data<T>(k);
  const T* bp = const_data<T>(b);
  T* xp = x.mutable_data();
  int32_t* ip = info.mutable_data();
  std::atomic<bool> bad_k{false}, bad_b{false};
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    run_batch<T>(batch, n, [&](long i, int count, bool inner, ridge::Workspace<T>& ws) {
      if (check_finite) {  // while the group's inputs are being read anyway
        if (!all_finite(kp + i * n * n, count * n * n, inner))
          bad_k.store(true, std::memory_order_relaxed);
        if (!all_finite(bp + i * n * p, count * n * p, inner))
          bad_b.store(true, std::memory_order_relaxed);
      }
      ridge::ridge_solve<T>(static_cast<int>(n), static_cast<int>(p), count, kp + i * n * n,
                            bp + i * n * p, sh + i, xp + i * n * p,
                            lp == nullptr ? nullptr : lp + i * n * n, ip + i, inner, ws);
    });
  }
  if (bad_k.load()) throw py::value_error("k: contains NaN or infinite values");
  if (bad_b.load()) throw py::value_error("b: contains NaN or infinite values");
  return py::make_tuple(x, l_obj, info);
}

template <class T>
py::tuple kernel_ridge_batched_t(const py::array& x, const py::array& y, const py::array& shift,
                                 int kernel, double ell, const py::object& x_new,
                                 bool check_finite) {
  const int kind = sizeof(T) == 8;
  const auto xs = checked_shape(x, "x", 3, kind);
  const long batch = xs[0], n = xs[1], d = xs[2];
  checked_int(n, "x");
  checked_int(d, "x");
  const long p = rhs_batch(y, "y", batch, n, kind)[2];
  const double* sh = checked_shift(shift, batch);
  long m = 0;
  const T* xnp = nullptr;
  if (!x_new.is_none()) {
    const py::array xn = x_new.cast<py::array>();
    const auto ns = checked_shape(xn, "x_new", 3, kind);
    if (ns[0] != batch || ns[2] != d)
      throw py::value_error("x_new: expected shape (B, M, D) with B = " + std::to_string(batch) +
                            ", D = " + std::to_string(d));
    m = ns[1];
    checked_int(m, "x_new");
    xnp = const_data<T>(xn);
  }
  py::array_t<T> alpha = pooled_array<T>({batch, n, p});
  py::object pred_obj = py::none();
  T* predp = nullptr;
  if (xnp != nullptr) {
    py::array_t<T> pred = pooled_array<T>({batch, m, p});
    predp = pred.mutable_data();
    pred_obj = pred;
  }
  py::array_t<int32_t> info(static_cast<py::ssize_t>(batch));
  const T* xp = const_data<T>(x);
  const T* yp = const_data<T>(y);
  T* ap = alpha.mutable_data();
  int32_t* ip = info.mutable_data();
  std::atomic<bool> bad_x{false}, bad_xn{false}, bad_y{false};
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    run_batch<T>(batch, n, [&](long b, int count, bool inner, ridge::Workspace<T>& ws) {
      if (check_finite) {  // while the group's inputs are being read anyway
        if (!all_finite(xp + b * n * d, count * n * d, inner))
          bad_x.store(true, std::memory_order_relaxed);
        if (xnp != nullptr && !all_finite(xnp + b * m * d, count * m * d, inner))
          bad_xn.store(true, std::memory_order_relaxed);
        if (!all_finite(yp + b * n * p, count * n * p, inner))
          bad_y.store(true, std::memory_order_relaxed);
      }
      ridge::kernel_ridge<T>(static_cast<int>(n), static_cast<int>(d), static_cast<int>(p),
                             static_cast<int>(m), count, xp + b * n * d, yp + b * n * p, sh + b,
                             kernel, static_cast<T>(ell),
                             xnp == nullptr ? nullptr : xnp + b * m * d, ap + b * n * p,
                             predp == nullptr ? nullptr : predp + b * m * p, ip + b, inner, ws);
    });
  }
  if (bad_x.load()) throw py::value_error("x: contains NaN or infinite values");
  if (bad_xn.load()) throw py::value_error("x_new: contains NaN or infinite values");
  if (bad_y.load()) throw py::value_error("y: contains NaN or infinite values");
  return py::make_tuple(alpha, pred_obj, info);
}

// Testing hooks: one problem through the tiled factorisation and blocked solve with a given
// tile order; and the row-major right-side trsm wrapper.
template <class T>
py::tuple tiled_ridge_solve_t(const py::array& k, const py::array& b, double shift, int tile) {
  const int kind = sizeof(T) == 8;
  const auto ks = checked_shape(k, "k", 2, kind);
  const auto bs = checked_shape(b, "b", 2, kind);
  if (ks[0] != ks[1] || bs[0] != ks[0]) throw py::value_error("expected k (N, N) and b (N, P)");
  if (tile < 1) throw py::value_error("tile: must be positive");
  const int n = checked_int(ks[0], "k"), p = checked_int(bs[1], "b");
  py::array_t<T> x = pooled_array<T>({static_cast<long>(n), static_cast<long>(p)});
  py::array_t<T> l = pooled_array<T>({static_cast<long>(n), static_cast<long>(n)});
  const T* kp = const_data<T>(k);
  const T* bp = const_data<T>(b);
  T* xp = x.mutable_data();
  T* lp = l.mutable_data();
  int info = 0;
  {
    py::gil_scoped_release release;
    blas::SingleThreaded single_threaded_blas;
    info = ridge::tiled_ridge_solve<T>(n, p, kp, bp, shift, xp, lp, tile);
  }
  return py::make_tuple(x, l, info);
}

template <class T>
py::array trsm_right_lower_t(const std::string& trans, const py::array& l, const py::array& b,
                             double alpha) {
  const int kind = sizeof(T) == 8;
  const auto ls = checked_shape(l, "L", 2, kind);
  const auto bs = checked_shape(b, "b", 2, kind);
  if (ls[0] != ls[1] || bs[1] != ls[0]) throw py::value_error("expected L (N, N) and b (M, N)");
  if (trans != "N" && trans != "T") throw py::value_error("trans: 'N' or 'T'");
  py::array_t<T> x = pooled_array<T>({bs[0], bs[1]});
  std::copy(const_data<T>(b), const_data<T>(b) + bs[0] * bs[1], x.mutable_data());
  blas::SingleThreaded single_threaded_blas;
  blas::trsm_right_lower<T>(trans[0], checked_int(bs[0], "b"), checked_int(bs[1], "b"),
                            static_cast<T>(alpha), const_data<T>(l), checked_int(ls[0], "L"),
                            x.mutable_data(), checked_int(bs[1], "b"));
  return x;
}

}  // namespace

void bind_ridge(py::module_& m) {
  // The route thresholds of the ridge engine, for the tests that probe both sides of each.
  py::dict thresholds;
  thresholds["own_max_n"] = ridge::kOwnMaxN;
  thresholds["own_max_p"] = ridge::kOwnMaxP;
  thresholds["lanes"] = ridge::kLanes;
  thresholds["fused_small_group_max_n"] = ridge::kFusedSmallGroupMaxN;
  thresholds["fused_alone_max_n"] = ridge::kFusedAloneMaxN;
  thresholds["fused_alone_max_d"] = ridge::kFusedAloneMaxD;
  thresholds["tiled_min_n"] = ridge::kTiledMinN;
  thresholds["parallel_solve_min_n"] = ridge::kParallelSolveMinN;
  thresholds["column_split_min_p"] = ridge::kColumnSplitMinP;
  thresholds["batch_parallel_max_n"] = kBatchParallelMaxN;
  m.attr("ROUTE_THRESHOLDS") = thresholds;
  m.def(
      "cholesky_narrowed",
      [](const py::array& a, double shift) -> py::tuple {
        const auto s = checked_shape(a, "a", 2, 1);
        if (s[0] != s[1])
          throw py::value_error("a: expected a square matrix (N, N), got (" +
                                std::to_string(s[0]) + ", " + std::to_string(s[1]) + ")");
        const int n = checked_int(s[0], "a");
        py::array_t<float> l = pooled_array<float>({s[0], s[0]});
        const double* ap = const_data<double>(a);
        float* lp = l.mutable_data();
        double frobenius_sq = 0.0;
        int info = 0;
        {
          py::gil_scoped_release release;
          blas::SingleThreaded single_threaded_blas;
          info = ridge::cholesky_narrowed(n, ap, shift, lp, &frobenius_sq);
        }
        return py::make_tuple(l, info, frobenius_sq);
      },
      py::arg("a"), py::arg("shift"),
      "(L, info, frobenius_sq): L = chol(float32(a + shift*I)) for a (N, N) float64 symmetric\n"
      "(lower triangle read and narrowed in the copy, no float32 copy of a), over the OpenMP\n"
      "threads; info is 0 or the order of the first non-positive leading minor; frobenius_sq\n"
      "is ||a||_F^2 of the symmetric a, summed in float64 in the same pass.");
  m.def(
      "_tiled_ridge_solve",
      [](const py::array& k, const py::array& b, double shift, int tile) -> py::tuple {
        return dispatch_float(
            k, "k", [&](auto t) { return tiled_ridge_solve_t<decltype(t)>(k, b, shift, tile); });
      },
      py::arg("k"), py::arg("b"), py::arg("shift"), py::arg("tile"),
      "Testing hook: (x, L, info) of ridge_solve_forward for one problem k (N, N), b (N, P),\n"
      "forced through the tiled Cholesky and the blocked solve with the given tile order.");
  m.def(
      "_trsm_right_lower",
      [](const std::string& trans, const py::array& l, const py::array& b,
         double alpha) -> py::array {
        return dispatch_float(
            l, "L", [&](auto t) { return trsm_right_lower_t<decltype(t)>(trans, l, b, alpha); });
      },
      py::arg("trans"), py::arg("L"), py::arg("b"), py::arg("alpha") = 1.0,
      "Testing hook: X with X op(L) = alpha b, L (N, N) lower triangular (lower triangle\n"
      "read), b (M, N), op = 'N' or 'T' (blas::trsm_right_lower).");
  m.def(
      "cholesky_forward",
      [](const py::array& a, const py::array& shift) -> py::tuple {
        return dispatch_float(
            a, "a", [&](auto t) { return cholesky_forward_t<decltype(t)>(a, shift); });
      },
      py::arg("a"), py::arg("shift"),
      "(L, info) = chol(a + shift*I) per batch member, reading only the lower triangle of a\n"
      "(B, N, N); shift (B,) float64. L is lower triangular with zeros above the diagonal;\n"
      "info (B,) int32 is 0, or k > 0 when the leading minor of order k is not positive\n"
      "definite (LAPACK convention; L is then unspecified).");
  m.def(
      "symmetric_rank2k",
      [](const py::array& a, const py::array& b, double alpha) -> py::array {
        return dispatch_float(
            a, "a", [&](auto t) { return symmetric_rank2k_t<decltype(t)>(a, b, alpha); });
      },
      py::arg("a"), py::arg("b"), py::arg("alpha"),
      "c = alpha (a b^T + b a^T) for a, b (B, N, P) -> (B, N, N), exactly symmetric: the\n"
      "blocks at or below the diagonal by GEMM (half the flops of the full product), mirrored.");
  m.def(
      "cholesky_solve",
      [](const py::array& l, const py::array& b) -> py::array {
        return dispatch_float(l, "L", [&](auto t) { return cholesky_solve_t<decltype(t)>(l, b); });
      },
      py::arg("L"), py::arg("b"),
      "x = (L L^T)^-1 b: L (B, N, N) lower triangular (only its lower triangle is read),\n"
      "b (B, N, P) -> (B, N, P).");
  m.def(
      "ridge_solve_forward",
      [](const py::array& k, const py::array& b, const py::array& shift, bool keep_l,
         bool check_finite) -> py::tuple {
        return dispatch_float(k, "k", [&](auto t) {
          return ridge_solve_forward_t<decltype(t)>(k, b, shift, keep_l, check_finite);
        });
      },
      py::arg("k"), py::arg("b"), py::arg("shift"), py::arg("keep_l") = true,
      py::arg("check_finite") = false,
      "(x, L, info): L = chol(k + shift*I) (lower triangle of k read) and\n"
      "x = (k + shift*I)^-1 b in one pass; x is NaN where info != 0. keep_l=False: L is\n"
      "not returned (None), which saves writing the (B, N, N) array. check_finite=True:\n"
      "ValueError 'k: contains NaN or infinite values' (else the same for b) when any entry\n"
      "of k (both triangles) or b is not finite, checked group by group as they are read.");
  m.def(
      "kernel_ridge_batched",
      [](const py::array& x, const py::array& y, const py::array& shift, int kernel,
         double lengthscale, const py::object& x_new, bool check_finite) -> py::tuple {
        check_kernel(kernel, lengthscale, Lengthscale::kPositiveFinite);
        return dispatch_float(x, "x", [&](auto t) {
          return kernel_ridge_batched_t<decltype(t)>(x, y, shift, kernel, lengthscale, x_new,
                                                     check_finite);
        });
      },
      py::arg("x"), py::arg("y"), py::arg("shift"), py::arg("kernel"), py::arg("lengthscale"),
      py::arg("x_new") = py::none(), py::arg("check_finite") = false,
      "(alpha, pred or None, info): alpha = (k(x, x) + shift*I)^-1 y per batch member and\n"
      "pred = k(x_new, x) @ alpha; x (B, N, D), y (B, N, P), x_new (B, M, D) or None.\n"
      "The Gram matrices are built in per-thread scratch, never as a (B, N, N) array.\n"
      "alpha and pred are NaN where info != 0. check_finite=True: ValueError\n"
      "'x: contains NaN or infinite values' (else the same for x_new, then y) when an entry\n"
      "is not finite, checked group by group as they are read.");
}

}  // namespace fastamort
