// Tiled CPU Gram engine; see gram_engine.hpp for the plan.
//
// Parallelism: OpenMP threads take blocks of rows; each thread runs the single-threaded
// BLAS on its own block (callers hold blas::SingleThreaded) and maps the block to k(s)
// while it is still in its core's cache. With inner_parallel == false (small problems,
// run in parallel over a batch) everything is serial and no BLAS is called.
#include "gram_engine.hpp"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "blas.hpp"
#include "row_ops.hpp"
#include "small_blas.hpp"

namespace fastamort::gram {
namespace {

// D at or below which the Euclidean distances are formed directly (3·D flops per entry and
// no cancellation) instead of by the GEMM trick. Chosen with bench/bench_gram.py.
constexpr int kDirectMaxD = 4;
// D at or below which gram() runs the GEMM trick in the fused register-blocked tile
// (RowOps::gram_tile) instead of a BLAS GEMM into K and a k(s) pass over it; larger D needs
// the GEMM's blocking over D. Measured on the 2-core dev VM, M = N = 4096, interleaved
// runs: float32 D = 32 15 against 18 ms, float64 D = 32 33 against 38, D = 64 22 against 24.
constexpr int kFusedMaxD = 64;
// Fused tiles: rows per tile, and the bytes of the other points' columns of one tile (D ×
// cols). 64-256 rows and 64-256 KiB measured within noise of each other; 64 rows slower.
constexpr int kFusedRows = 256;
constexpr long kFusedPanelBytes = 128L << 10;
// Bytes of one thread's row block: it stays in the core's L2 between the GEMM that writes
// the cross terms and the pass that maps them to k(s).
constexpr long kBlockBytes = 256L << 10;
// Columns per tile on the direct route for the ops that never store K.
constexpr int kTileCols = 1024;
// Blocks on the GEMM route: BLAS packs both operands on every call, so blocks must be large
// enough to amortise that, and small enough to stay in L2 for the epilogue. 256×1024 was the
// fastest of 256×256 … 512×4096 at D = 32, 64 and 784 in both dtypes on the 2-core dev VM
// (e.g. float32 D = 32: 16 ms against 22 ms for 256×256).
constexpr int kGemmRows = 256;
constexpr int kGemmCols = 1024;

template <class T>
void gemm(bool blas, char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc) {
  if (blas) {
    blas::gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    small_gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

template <class T>
int rows_per_block(int m, int cols) {
  const long r = kBlockBytes / (static_cast<long>(std::max(cols, 1)) * sizeof(T));
  return static_cast<int>(std::max(1L, std::min<long>(std::max(m, 1), r)));
}

struct Blocking {
  int rows, cols;
};

// Tiles of the M×N plane; max_cols caps the columns on the direct route.
template <class T>
Blocking blocking(bool direct, int m, int n, int max_cols, bool fused = false, int d = 0) {
  if (fused) {
    const int threads = omp_get_max_threads();
    const int rows = std::min(kFusedRows, std::max(6, (m + 2 * threads - 1) / (2 * threads)));
    const long cols = kFusedPanelBytes / (static_cast<long>(std::max(d, 1)) * sizeof(T));
    return {std::max(1, std::min(m, rows)),
            static_cast<int>(std::max(1L, std::min<long>(n, cols)))};
  }
  if (!direct) {
    // Enough row blocks for every thread to get two, down to 32 rows.
    const int threads = omp_get_max_threads();
    const int rows = std::min(kGemmRows, std::max(32, (m + 2 * threads - 1) / (2 * threads)));
    return {std::max(1, std::min(m, rows)), std::max(1, std::min(n, kGemmCols))};
  }
  const int cols = std::max(1, std::min(n, max_cols));
  return {rows_per_block<T>(m, cols), cols};
}

}  // namespace

Route route(int d, int kernel, bool inner_parallel) {
  if (!kernel_is_euclidean(kernel) || d <= kDirectMaxD || !inner_parallel) return Route::kDirect;
  return d <= kFusedMaxD ? Route::kFused : Route::kGemm;
}

namespace {

// Centred, augmented copies of the points and what the tiles need from them.
template <class T>
class Prepared {
 public:
  Prepared(const Problem<T>& p, bool inner_parallel)
      : p_(p),
        blas_(inner_parallel),
        sym_(p.y == nullptr),
        euclid_(kernel_is_euclidean(p.kernel)),
        direct_(route(p.d, p.kernel, inner_parallel) == Route::kDirect),
        fused_(route(p.d, p.kernel, inner_parallel) == Route::kFused),
        lda_(p.d + 1),
        ops_(row_ops<T>()) {
    const T ell = p.lengthscale;
    scale_ = euclid_ ? T(1) / (ell * ell) : T(1) / ell;
    // Centre on the mean of all points: distances are translation invariant and the
    // GEMM trick loses digits in proportion to ‖x‖² (PERFORMANCE.md §7.2).
    std::vector<double> mean(p.d, 0.0);
    const long n_all = sym_ ? p.m : static_cast<long>(p.m) + p.n;
    for (long i = 0; i < p.m; ++i)
      for (int k = 0; k < p.d; ++k) mean[k] += p.x[i * p.d + k];
    if (!sym_)
      for (long j = 0; j < p.n; ++j)
        for (int k = 0; k < p.d; ++k) mean[k] += p.y[j * p.d + k];
    if (n_all > 0)
      for (auto& v : mean) v /= static_cast<double>(n_all);
    xa_ = augment(p.x, p.m, mean, nx_);
    if (sym_) {
      ya_ptr_ = xa_.data();
      ny_ptr_ = nx_.data();
    } else {
      ya_ = augment(p.y, p.n, mean, ny_);
      ya_ptr_ = ya_.data();
      ny_ptr_ = ny_.data();
    }
    if (direct_ || fused_) {  // the other points transposed (D×N): the tiles run along j
      yt_.resize(static_cast<size_t>(p.d) * p.n);
#pragma omp parallel for schedule(static) if (blas_)
      for (long j0 = 0; j0 < p.n; j0 += 64)
        for (int k = 0; k < p.d; ++k)
          for (long j = j0; j < std::min<long>(p.n, j0 + 64); ++j)
            yt_[static_cast<size_t>(k) * p.n + j] = ya_ptr_[j * lda_ + k];
    }
  }

  bool direct() const { return direct_; }
  bool fused() const { return fused_; }
  bool euclidean() const { return euclid_; }
  bool symmetric() const { return sym_; }
  bool blas() const { return blas_; }
  int lda() const { return lda_; }
  const T* xa(long i = 0) const { return xa_.data() + i * lda_; }
  const T* ya(long j = 0) const { return ya_ptr_ + j * lda_; }
  const T* yt() const { return yt_.data(); }
  const RowOps<T>& ops() const { return ops_; }

  // buf[r·ldb + c] = s(x_{i0+r}, y_{j0+c}) for r < rows, c < cols (serial; one thread's block).
  void fill_s(T* buf, int ldb, int i0, int rows, int j0, int cols) const {
    if (!direct_) gemm<T>(blas_, 'N', 'T', rows, cols, p_.d, T(1), xa(i0), lda_, ya(j0), lda_, T(0), buf, ldb);
    for (int r = 0; r < rows; ++r) fill_s_row(buf + static_cast<long>(r) * ldb, i0 + r, j0, cols, !direct_);
    if (sym_) {
      for (int r = 0; r < rows; ++r) {
        const int c = i0 + r - j0;
        if (c >= 0 && c < cols) buf[static_cast<long>(r) * ldb + c] = T(0);
      }
    }
  }

  // kb[r·ldk + c] = k(x_{i0+r}, y_{j0+c}) through the fused tile (fused() only); with Y = X
  // exactly k(0) = 1 on the diagonal.
  void fill_k_fused(T* kb, long ldk, int i0, int rows, int j0, int cols) const {
    ops_.gram_tile(kb, ldk, xa(i0), lda_, nx_.data() + i0, yt_.data() + j0, p_.n, ny_ptr_ + j0,
                   rows, cols, p_.d, scale_, p_.kernel);
    if (sym_)
      for (int r = std::max(0, j0 - i0); r < std::min(rows, j0 + cols - i0); ++r)
        kb[r * ldk + i0 + r - j0] = T(1);
  }

  // One row of s, columns [j0, j0+cols). from_cross: the row holds x·y on entry.
  void fill_s_row(T* row, int i, int j0, int cols, bool from_cross) const {
    if (from_cross) {
      ops_.cross_to_s(row, ny_ptr_ + j0, nx_[i], cols, scale_);
    } else if (euclid_) {
      ops_.sqdist_direct(row, xa(i), yt_.data() + j0, p_.n, cols, p_.d, scale_);
    } else {
      ops_.l1_direct(row, xa(i), yt_.data() + j0, p_.n, cols, p_.d, scale_);
    }
  }

 private:
  std::vector<T> augment(const T* pts, int n, const std::vector<double>& mean,
                         std::vector<T>& norms) const {
    std::vector<T> out(static_cast<size_t>(n) * lda_);
    norms.resize(n);
#pragma omp parallel for schedule(static) if (blas_)
    for (long i = 0; i < n; ++i) {
      double nrm = 0.0;
      for (int k = 0; k < p_.d; ++k) {
        const T c = static_cast<T>(pts[i * p_.d + k] - mean[k]);
        out[i * lda_ + k] = c;
        nrm += static_cast<double>(c) * c;
      }
      out[i * lda_ + p_.d] = T(1);
      norms[i] = static_cast<T>(nrm);
    }
    return out;
  }

  const Problem<T>& p_;
  bool blas_, sym_, euclid_, direct_, fused_;
  int lda_;
  T scale_;
  const RowOps<T>& ops_;
  std::vector<T> xa_, ya_, yt_, nx_, ny_;
  const T* ya_ptr_ = nullptr;
  const T* ny_ptr_ = nullptr;
};

// Copies the lower triangle onto the upper one, in cache-sized blocks.
template <class T>
void mirror_lower(T* k, int n, bool parallel) {
  constexpr int B = 64;
  const int nb = (n + B - 1) / B;
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (int bi = 0; bi < nb; ++bi) {
    for (int bj = 0; bj <= bi; ++bj) {
      const int i_end = std::min(n, (bi + 1) * B), j_end = std::min(n, (bj + 1) * B);
      for (int i = bi * B; i < i_end; ++i)
        for (int j = bj * B; j < std::min(j_end, i); ++j)
          k[static_cast<long>(j) * n + i] = k[static_cast<long>(i) * n + j];
    }
  }
}

// Copies block (i0.., j0..) of K (rows × cols, at or below the diagonal) onto its mirror
// image above it, in sub-tiles that stay in L1; on a diagonal block only its lower part.
template <class T>
void mirror_block(T* k, long n, int i0, int rows, int j0, int cols) {
  constexpr int B = 32;
  for (int rb = 0; rb < rows; rb += B) {
    for (int cb = 0; cb < cols; cb += B) {
      const int r_end = std::min(rows, rb + B), c_end = std::min(cols, cb + B);
      for (int c = cb; c < c_end; ++c) {
        T* dst = k + (j0 + c) * n + i0;
        for (int r = rb; r < r_end; ++r)
          if (i0 + r > j0 + c) dst[r] = k[(i0 + r) * n + j0 + c];
      }
    }
  }
}

template <class T>
void forward_symmetric(const Prepared<T>& pr, const Problem<T>& p, T* k) {
  const int m = p.m, d = p.d, lda = pr.lda();
  const Blocking bl = blocking<T>(pr.direct(), m, m, m);
  const int rb = pr.direct() ? std::min(bl.rows, 64) : bl.rows;
  if (pr.direct()) {
    // Rows of the lower triangle, each computed directly; longer rows further down.
    const int nblocks = (m + rb - 1) / rb;
#pragma omp parallel for schedule(dynamic) if (pr.blas())
    for (int blk = 0; blk < nblocks; ++blk) {
      for (int i = blk * rb; i < std::min(m, (blk + 1) * rb); ++i) {
        T* row = k + static_cast<long>(i) * m;
        pr.fill_s_row(row, i, 0, i + 1, false);
        row[i] = T(0);  // exact zero distance on the diagonal: k = 1 exactly
        pr.ops().kernel_from_s(row, i + 1, p.kernel);
      }
    }
  } else {
    // Lower-triangle blocks: GEMM below the diagonal, SYRK on it; each block is mirrored
    // while it is still in cache.
    const int nb = (m + rb - 1) / rb;
    const int n_pairs = nb * (nb + 1) / 2;
#pragma omp parallel for schedule(dynamic) if (pr.blas())
    for (int pair = 0; pair < n_pairs; ++pair) {
      int bi = 0;
      while ((bi + 1) * (bi + 2) / 2 <= pair) ++bi;
      const int bj = pair - bi * (bi + 1) / 2;
      const int i0 = bi * rb, rows = std::min(rb, m - i0);
      const int j0 = bj * rb, cols = std::min(rb, m - j0);
      T* kb = k + static_cast<long>(i0) * m + j0;
      if (bi != bj) {
        pr.fill_s(kb, m, i0, rows, j0, cols);
        for (int r = 0; r < rows; ++r) pr.ops().kernel_from_s(kb + static_cast<long>(r) * m, cols, p.kernel);
      } else {
        blas::syrk_lower<T>(rows, d, T(1), pr.xa(i0), lda, T(0), kb, m);
        for (int r = 0; r < rows; ++r) {
          T* row = kb + static_cast<long>(r) * m;
          pr.fill_s_row(row, i0 + r, j0, r + 1, true);
          row[r] = T(0);  // exact zero distance on the diagonal: k = 1 exactly
          pr.ops().kernel_from_s(row, r + 1, p.kernel);
        }
      }
      mirror_block(k, m, i0, rows, j0, cols);
    }
    return;
  }
  mirror_lower(k, m, pr.blas());
}

}  // namespace

template <class T>
void forward(const Problem<T>& p, T* k, bool inner_parallel) {
  if (p.m == 0 || p.n == 0) return;
  Prepared<T> pr(p, inner_parallel);
  // Y = X on the fused route computes the whole matrix like any other: entries (i, j) and
  // (j, i) go through the same operations on the same operands in the same order (products
  // and the sum of the two norms commute exactly), so K is exactly symmetric without a
  // mirror pass, which measured slower (float32 M = 4096, D = 32: 21 against 15 ms).
  if (pr.symmetric() && !pr.fused()) {
    forward_symmetric(pr, p, k);
    return;
  }
  const int n = p.n;
  const Blocking bl = blocking<T>(pr.direct(), p.m, n, n, pr.fused(), p.d);
  const int nbi = (p.m + bl.rows - 1) / bl.rows, nbj = (n + bl.cols - 1) / bl.cols;
#pragma omp parallel for schedule(dynamic) collapse(2) if (pr.blas())
  for (int bi = 0; bi < nbi; ++bi) {
    for (int bj = 0; bj < nbj; ++bj) {
      const int i0 = bi * bl.rows, rows = std::min(bl.rows, p.m - i0);
      const int j0 = bj * bl.cols, cols = std::min(bl.cols, n - j0);
      T* kb = k + static_cast<long>(i0) * n + j0;
      if (pr.fused()) {
        pr.fill_k_fused(kb, n, i0, rows, j0, cols);
        continue;
      }
      pr.fill_s(kb, n, i0, rows, j0, cols);
      for (int r = 0; r < rows; ++r) pr.ops().kernel_from_s(kb + static_cast<long>(r) * n, cols, p.kernel);
    }
  }
}

template <class T>
void matmul_forward(const Problem<T>& p, const T* v, int n_cols, T* out, bool inner_parallel) {
  std::fill(out, out + static_cast<long>(p.m) * n_cols, T(0));
  if (p.m == 0 || p.n == 0 || n_cols == 0) return;
  Prepared<T> pr(p, inner_parallel);
  const Blocking bl = blocking<T>(pr.direct(), p.m, p.n, kTileCols);
  const int rb = bl.rows, tc = bl.cols;
  const int nblocks = (p.m + rb - 1) / rb;
#pragma omp parallel if (pr.blas())
  {
    std::vector<T> buf(static_cast<size_t>(rb) * tc);
#pragma omp for schedule(dynamic)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int i0 = blk * rb, rows = std::min(rb, p.m - i0);
      for (int j0 = 0; j0 < p.n; j0 += tc) {
        const int cols = std::min(tc, p.n - j0);
        if (pr.fused()) {  // 4-8% faster than BLAS GEMM + k(s) pass at D = 16..64
          pr.fill_k_fused(buf.data(), tc, i0, rows, j0, cols);
        } else {
          pr.fill_s(buf.data(), tc, i0, rows, j0, cols);
          for (int r = 0; r < rows; ++r)
            pr.ops().kernel_from_s(buf.data() + static_cast<long>(r) * tc, cols, p.kernel);
        }
        gemm<T>(pr.blas(), 'N', 'N', rows, n_cols, cols, T(1), buf.data(), tc,
                v + static_cast<long>(j0) * n_cols, n_cols, T(1), out + static_cast<long>(i0) * n_cols,
                n_cols);
      }
    }
  }
}

namespace {

// Laplacian: dk/dx needs sign(x − y) per coordinate, so the tile's w is contracted
// directly: dx_i += Σ_j w_ij·sign(x_i − y_j), dyt[k][j] −= Σ_i w_ij·sign(x_ik − y_jk).
template <class T>
void laplacian_contract(const Prepared<T>& pr, int n, int d, const T* w, int ldw, int i0,
                        int rows, int j0, int cols, T* dxa, T* dyt /* d × cols */) {
  for (int r = 0; r < rows; ++r) {
    const T* wr = w + static_cast<long>(r) * ldw;
    const T* xi = pr.xa(i0 + r);
    T* dxi = dxa + static_cast<long>(i0 + r) * pr.lda();
    for (int k = 0; k < d; ++k) {
      const T xk = xi[k];
      const T* yk = pr.yt() + static_cast<long>(k) * n + j0;
      T* dyk = dyt + static_cast<long>(k) * cols;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (int c = 0; c < cols; ++c) {
        const T diff = xk - yk[c];
        const T ws = wr[c] * (T(diff > T(0)) - T(diff < T(0)));
        acc += ws;
        dyk[c] -= ws;
      }
      dxi[k] += acc;
    }
  }
}

}  // namespace

template <class T>
double backward(const Problem<T>& p, const T* g, const T* v, int n_cols, T* dx, T* dy,
                bool inner_parallel) {
  const int m = p.m, n = p.n, d = p.d;
  std::fill(dx, dx + static_cast<long>(m) * d, T(0));
  if (dy != nullptr) std::fill(dy, dy + static_cast<long>(n) * d, T(0));
  if (m == 0 || n == 0 || d == 0) return 0.0;
  Prepared<T> pr(p, inner_parallel);
  const int lda = pr.lda();
  const bool euclid = pr.euclidean();
  // Euclidean accumulators: [Σ_j w_ij y_j | Σ_j w_ij] per x and [Σ_i w_ij x_i | Σ_i w_ij] per y
  // (the trailing 1 of the augmented points gives the row and column sums of w).
  // Laplacian: dxa holds Σ_j w_ij sign(x_i − y_j), dya (transposed, D×N) the same for y.
  std::vector<T> dxa(static_cast<size_t>(m) * lda, T(0));
  std::vector<T> dya(static_cast<size_t>(n) * lda, T(0));
  const Blocking bl = blocking<T>(pr.direct(), m, n, kTileCols);
  const int rb = bl.rows, tc = bl.cols;
  const int nblocks = (m + rb - 1) / rb;
  // Column panels one after another; inside a panel threads take row blocks (static
  // schedule), own their dx rows, and keep their share of the panel's dy and of Σ w·s apart.
  // The shares are added in thread order afterwards, so results are bit-for-bit reproducible.
  const int n_threads = pr.blas() ? omp_get_max_threads() : 1;
  std::vector<double> ws_parts(n_threads, 0.0);
  std::vector<std::vector<T>> dy_parts(n_threads);
  for (int j0 = 0; j0 < n; j0 += tc) {
    const int cols = std::min(tc, n - j0);
    for (auto& part : dy_parts) part.clear();  // a thread the runtime did not start adds nothing
#pragma omp parallel num_threads(n_threads) if (pr.blas())
    {
      const int tid = omp_get_thread_num();
      std::vector<T> buf(static_cast<size_t>(rb) * tc);
      std::vector<T> gbuf(v != nullptr ? static_cast<size_t>(rb) * tc : 0);
      std::vector<T>& dy_local = dy_parts[tid];
      dy_local.assign(static_cast<size_t>(cols) * lda, T(0));  // Laplacian: d × cols
#pragma omp for schedule(static)
      for (int blk = 0; blk < nblocks; ++blk) {
        const int i0 = blk * rb, rows = std::min(rb, m - i0);
        pr.fill_s(buf.data(), tc, i0, rows, j0, cols);
        const T* gt = g + static_cast<long>(i0) * n + j0;
        int ldg = n;
        if (v != nullptr) {  // G tile = g[i0:] · v[j0:]ᵀ
          gemm<T>(pr.blas(), 'N', 'T', rows, cols, n_cols, T(1), g + static_cast<long>(i0) * n_cols,
                  n_cols, v + static_cast<long>(j0) * n_cols, n_cols, T(0), gbuf.data(), tc);
          gt = gbuf.data();
          ldg = tc;
        }
        for (int r = 0; r < rows; ++r)
          ws_parts[tid] += pr.ops().kernel_grad_from_s(buf.data() + static_cast<long>(r) * tc,
                                                       gt + static_cast<long>(r) * ldg, cols,
                                                       p.kernel);
        if (pr.symmetric()) {  // k(x_i, x_i) = 1 depends on nothing
          for (int r = 0; r < rows; ++r) {
            const int c = i0 + r - j0;
            if (c >= 0 && c < cols) buf[static_cast<long>(r) * tc + c] = T(0);
          }
        }
        if (euclid) {
          gemm<T>(pr.blas(), 'N', 'N', rows, lda, cols, T(1), buf.data(), tc, pr.ya(j0), lda, T(1),
                  dxa.data() + static_cast<long>(i0) * lda, lda);
          gemm<T>(pr.blas(), 'T', 'N', cols, lda, rows, T(1), buf.data(), tc, pr.xa(i0), lda, T(1),
                  dy_local.data(), lda);
        } else {
          laplacian_contract(pr, n, d, buf.data(), tc, i0, rows, j0, cols, dxa.data(),
                             dy_local.data());
        }
      }
    }
    for (int tid = 0; tid < n_threads; ++tid) {
      const std::vector<T>& part = dy_parts[tid];
      if (part.empty()) continue;
      if (euclid) {
        T* dst = dya.data() + static_cast<long>(j0) * lda;
        for (long idx = 0; idx < static_cast<long>(cols) * lda; ++idx) dst[idx] += part[idx];
      } else {
        for (int k = 0; k < d; ++k)
          for (int c = 0; c < cols; ++c)
            dya[static_cast<long>(j0 + c) * lda + k] += part[static_cast<long>(k) * cols + c];
      }
    }
  }
  double sum_ws = 0.0;
  for (double part : ws_parts) sum_ws += part;

  const T ell = p.lengthscale;
  // Euclidean: ds/dx_i = 2(x_i − y_j)/ℓ², ds/dℓ = −2s/ℓ.  Laplacian: ds/dx = sign/ℓ, ds/dℓ = −s/ℓ.
  const T c = euclid ? T(2) / (ell * ell) : T(1) / ell;
  std::vector<T> dy_tmp;
  T* dy_out = dy;
  if (dy_out == nullptr) {  // symmetric: X plays both roles; add the two at the end
    dy_tmp.assign(static_cast<size_t>(n) * d, T(0));
    dy_out = dy_tmp.data();
  }
  auto finish = [&](const T* acc_all, const Prepared<T>& prep, bool rows_are_x, int count, T* out) {
    for (long i = 0; i < count; ++i) {
      const T* pt = rows_are_x ? prep.xa(i) : prep.ya(i);
      const T* acc = acc_all + i * lda;
      for (int k = 0; k < d; ++k)
        out[i * d + k] = euclid ? c * (acc[d] * pt[k] - acc[k]) : c * acc[k];
    }
  };
  finish(dxa.data(), pr, true, m, dx);
  finish(dya.data(), pr, false, n, dy_out);
  if (dy == nullptr)
    for (long idx = 0; idx < static_cast<long>(m) * d; ++idx) dx[idx] += dy_out[idx];
  const double dscale = (euclid ? -2.0 : -1.0) / static_cast<double>(ell);
  return dscale * sum_ws;
}

template void forward<float>(const Problem<float>&, float*, bool);
template void forward<double>(const Problem<double>&, double*, bool);
template void matmul_forward<float>(const Problem<float>&, const float*, int, float*, bool);
template void matmul_forward<double>(const Problem<double>&, const double*, int, double*, bool);
template double backward<float>(const Problem<float>&, const float*, const float*, int, float*,
                                float*, bool);
template double backward<double>(const Problem<double>&, const double*, const double*, int,
                                 double*, double*, bool);

}  // namespace fastamort::gram
