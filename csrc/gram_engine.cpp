// Tiled CPU Gram engine; see gram_engine.hpp for the plan.
//
// Parallelism: OpenMP threads take blocks of rows; each thread runs the single-threaded
// BLAS on its own block (callers hold blas::SingleThreaded) and maps the block to k(s)
// while it is still in its core's cache. With inner_parallel == false (small problems,
// run in parallel over a batch) everything is serial and no BLAS is called.
#include "gram_engine.hpp"

#include "parallel.hpp"

#include <algorithm>
#include <cstring>

#include "blas.hpp"
#include "buffer_pool.hpp"
#include "lower_blocks.hpp"
#include "row_ops.hpp"
#include "small_blas.hpp"

namespace fastamort::gram {
namespace {

// D at or below which the Euclidean distances are formed directly (3·D flops per entry and
// no cancellation) instead of by the GEMM trick. Chosen with bench/bench_gram.py.
constexpr int kDirectMaxD = 4;
// D at or below which gram() runs the GEMM trick in the fused register-blocked tile
// (RowOps::gram_tile) instead of a BLAS GEMM into K and a k(s) pass over it; larger D needs
// the GEMM's blocking over D. Evidence, on a 2-core x86-64 AVX2 VM, M = N = 4096,
// interleaved runs, fused / GEMM route: float32 D = 32: 15 / 18 ms; float64 D = 32: 33 / 38,
// D = 64: 22 / 24. Re-measure: fastamort.benchmarks.gram.run(device="cpu", sizes=(4096,),
// dims=(32, 64)) (`fastamort bench gram` runs D = 2, 32, 784), one build with this constant
// below D and one at D.
constexpr int kFusedMaxD = 64;
// The same bound when the GEMM is MKL's (blas::gemm_is_mkl()): its AVX-512 GEMM beats the
// fused AVX2 tile from D = 64. Evidence, on a 2-core AVX-512 Xeon VM, M = 2000 / 4096,
// float32, symmetric, fused / GEMM route: D = 64: 5.3-8.4 / 4.1-5.3 ms and 28-34 / 23 ms;
// D = 32: 3.7-4.3 / 3.3-3.6 and 19.8 / 21; D = 16: 2.7-3.7 / 3.3 and 16.5 / 20.5.
// Re-measure as above, with FASTAMORT_BLAS unset (MKL) on such a machine.
constexpr int kFusedMaxDMkl = 32;
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
// enough to amortise that, and small enough to stay in L2 for the epilogue. Evidence, on a
// 2-core x86-64 AVX2 VM: 256×1024 was the fastest of 256×256 … 512×4096 at D = 32, 64 and 784
// in both dtypes (e.g. float32 D = 32: 16 ms against 22 ms for 256×256). Re-measure:
// fastamort.benchmarks.gram.run(device="cpu", sizes=(4096,), dims=(32, 64, 784)), one build
// per block shape.
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

int fused_max_d() { return blas::gemm_is_mkl() ? kFusedMaxDMkl : kFusedMaxD; }

Route route(int d, int kernel, bool inner_parallel) {
  if (!kernel_is_euclidean(kernel) || d <= kDirectMaxD || !inner_parallel) return Route::kDirect;
  return d <= fused_max_d() ? Route::kFused : Route::kGemm;
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
    x_raw_ = p.x;
    y_raw_ = sym_ ? p.x : p.y;
    // The GEMM trick loses digits in proportion to the centred norms (PERFORMANCE.md §7.2):
    // centre at a point that outliers cannot drag away. The entries it still gets wrong are
    // recomputed from the raw points (fill_s_row), so the centre decides only how many. The
    // direct route works on the raw points: centring would round them.
    const std::vector<double> centre =
        direct_ ? std::vector<double>(p.d, 0.0) : robust_centre(p, blas_);
    xa_ = augment(p.x, p.m, centre, nx_);
    if (sym_) {
      ya_ptr_ = xa_.data();
      ny_ptr_ = nx_.data();
    } else {
      ya_ = augment(p.y, p.n, centre, ny_);
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
  // flags (rows × cols, when not null) marks the entries recomputed from the raw points.
  // Returns whether there were any.
  bool fill_s(T* buf, int ldb, int i0, int rows, int j0, int cols,
              unsigned char* flags = nullptr) const {
    if (!direct_) gemm<T>(blas_, 'N', 'T', rows, cols, p_.d, T(1), xa(i0), lda_, ya(j0), lda_, T(0), buf, ldb);
    bool redone = false;
    for (int r = 0; r < rows; ++r)
      redone |= fill_s_row(buf + static_cast<long>(r) * ldb, i0 + r, j0, cols, !direct_,
                           flags == nullptr ? nullptr : flags + static_cast<long>(r) * cols);
    if (sym_) {
      for (int r = 0; r < rows; ++r) {
        const int c = i0 + r - j0;
        if (c >= 0 && c < cols) buf[static_cast<long>(r) * ldb + c] = T(0);
      }
    }
    return redone;
  }

  // kb[r·ldk + c] = k(x_{i0+r}, y_{j0+c}) through the fused tile (fused() only); with Y = X
  // exactly k(0) = 1 on the diagonal.
  void fill_k_fused(T* kb, long ldk, int i0, int rows, int j0, int cols) const {
    ops_.gram_tile_exact(kb, ldk, xa(i0), lda_, nx_.data() + i0, yt_.data() + j0, p_.n,
                         ny_ptr_ + j0, rows, cols, p_.d, scale_, p_.kernel,
                         x_raw_ + static_cast<long>(i0) * p_.d, p_.d,
                         y_raw_ + static_cast<long>(j0) * p_.d, p_.d,
                         sym_ ? static_cast<long>(i0) - j0 : kNoDiagonal);
    if (sym_)
      for (int r = std::max(0, j0 - i0); r < std::min(rows, j0 + cols - i0); ++r)
        kb[r * ldk + i0 + r - j0] = T(1);
  }

  // One row of s, columns [j0, j0+cols). from_cross: the row holds x·y on entry, and the
  // entries the GEMM trick may have got wrong are recomputed from the raw points; flags (when
  // not null) marks them. Returns whether there were any.
  bool fill_s_row(T* row, int i, int j0, int cols, bool from_cross,
                  unsigned char* flags = nullptr) const {
    if (from_cross) {
      // a point against itself (Y = X) is never recomputed: a zero cross term makes q large,
      // and the caller sets that entry's s to 0
      if (sym_ && i >= j0 && i < j0 + cols) row[i - j0] = T(0);
      if (ops_.cross_to_s_checked(row, ny_ptr_ + j0, nx_[i], cols, scale_)) {
        return ops_.fix_s_row(row, ny_ptr_ + j0, nx_[i], x_raw_ + static_cast<long>(i) * p_.d,
                              y_raw_ + static_cast<long>(j0) * p_.d, p_.d, cols, p_.d, scale_,
                              flags) > 0;
      }
    } else if (euclid_) {
      ops_.sqdist_direct(row, xa(i), yt_.data() + j0, p_.n, cols, p_.d, scale_);
    } else {
      ops_.l1_direct(row, xa(i), yt_.data() + j0, p_.n, cols, p_.d, scale_);
    }
    if (flags != nullptr) std::memset(flags, 0, static_cast<size_t>(cols));
    return false;
  }

  // Raw (uncentred) rows of the points.
  const T* x_raw(long i) const { return x_raw_ + i * p_.d; }
  const T* y_raw(long j) const { return y_raw_ + j * p_.d; }

 private:
  // Per-coordinate median of an evenly strided sample of at most 63 points of X ∪ Y (the
  // same sample as fastamort.ops.gram.robust_centre): cheap, and robust to outliers.
  static std::vector<double> robust_centre(const Problem<T>& p, bool parallel) {
    constexpr long kSample = 63;
    const long n_all = p.y == nullptr ? p.m : static_cast<long>(p.m) + p.n;
    const long count = std::min(n_all, kSample);
    std::vector<double> centre(p.d, 0.0);
    if (count == 0) return centre;
    // The sampled rows, copied whole (contiguous reads), then one selection per coordinate,
    // in parallel: column-wise gathers and a serial loop took 0.7 ms at D = 784.
    std::vector<T> rows(static_cast<size_t>(count) * p.d);
    for (long s = 0; s < count; ++s) {
      const long idx = s * n_all / count;
      const T* src = idx < p.m ? p.x + idx * p.d : p.y + (idx - p.m) * p.d;
      std::copy(src, src + p.d, rows.begin() + s * p.d);
    }
#pragma omp parallel if (parallel && static_cast<long>(p.d) * count >= 8192)
    {
      std::vector<T> column(count);
#pragma omp for schedule(static)
      for (int k = 0; k < p.d; ++k) {
        for (long s = 0; s < count; ++s) column[s] = rows[s * p.d + k];
        std::nth_element(column.begin(), column.begin() + count / 2, column.end());
        centre[k] = static_cast<double>(column[count / 2]);
      }
    }
    return centre;
  }

  pool::Vector<T> augment(const T* pts, int n, const std::vector<double>& centre,
                          pool::Vector<T>& norms) const {
    pool::Vector<T> out(static_cast<size_t>(n) * lda_);  // every entry written below
    norms.resize(n);
#pragma omp parallel for schedule(static) if (blas_)
    for (long i = 0; i < n; ++i) {
      // A vectorised reduction (omp simd): the serial chain of double additions took
      // 1.8 ms for 2000 × 784 points, against 0.3 ms for a copy.
      const T* src = pts + i * p_.d;
      T* dst = out.data() + i * lda_;
      const double* ctr = centre.data();
      double nrm = 0.0;
#pragma omp simd reduction(+ : nrm)
      for (int k = 0; k < p_.d; ++k) {
        const T c = static_cast<T>(src[k] - ctr[k]);
        dst[k] = c;
        nrm += static_cast<double>(c) * c;
      }
      dst[p_.d] = T(1);
      norms[i] = static_cast<T>(nrm);
    }
    return out;
  }

  const Problem<T>& p_;
  bool blas_, sym_, euclid_, direct_, fused_;
  int lda_;
  T scale_;
  const RowOps<T>& ops_;
  const T* x_raw_ = nullptr;
  const T* y_raw_ = nullptr;
  pool::Vector<T> xa_, ya_, yt_, nx_, ny_;  // the pool: no zero fill, pages reused
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
      const auto [bi, bj] = lower_block(pair);
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
#ifdef FASTAMORT_HAVE_OMP4
#pragma omp parallel for schedule(dynamic) collapse(2) if (pr.blas())
#else
#pragma omp parallel for schedule(dynamic) if (pr.blas())
#endif
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
    pool::Vector<T> buf(static_cast<size_t>(rb) * tc);  // each tile written before it is read
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

// The direct route's contraction of a tile's w with the raw points, one coordinate at a time:
// dxa[i][k] += Σ_j w_ij·t(x_ik − y_jk), dyt[k][j] −= Σ_i w_ij·t(x_ik − y_jk), with t the identity
// (Euclidean: Σ_j w_ij (x_i − y_j), no cancellation against a GEMM) or the sign (Laplacian).
// dxa or dyt may be null (that gradient is not wanted).
template <bool EUCLID, class T>
void direct_contract(const Prepared<T>& pr, int n, int d, const T* w, int ldw, int i0, int rows,
                     int j0, int cols, T* dxa, T* dyt /* d × cols */) {
  for (int r = 0; r < rows; ++r) {
    const T* wr = w + static_cast<long>(r) * ldw;
    const T* xi = pr.xa(i0 + r);
    for (int k = 0; k < d; ++k) {
      const T xk = xi[k];
      const T* yk = pr.yt() + static_cast<long>(k) * n + j0;
      T acc = T(0);
      if (dyt != nullptr) {
        T* dyk = dyt + static_cast<long>(k) * cols;
#pragma omp simd reduction(+ : acc)
        for (int c = 0; c < cols; ++c) {
          const T diff = xk - yk[c];
          const T term = EUCLID ? wr[c] * diff : wr[c] * (T(diff > T(0)) - T(diff < T(0)));
          acc += term;
          dyk[c] -= term;
        }
      } else {
#pragma omp simd reduction(+ : acc)
        for (int c = 0; c < cols; ++c) {
          const T diff = xk - yk[c];
          acc += EUCLID ? wr[c] * diff : wr[c] * (T(diff > T(0)) - T(diff < T(0)));
        }
      }
      if (dxa != nullptr) dxa[static_cast<long>(i0 + r) * pr.lda() + k] += acc;
    }
  }
}

// For the entries of a GEMM-route tile that were recomputed from the raw points (flags), adds
// w_ij·(x_i − y_j) formed directly to the accumulators, in the form the GEMM contraction
// leaves them ([Σ_j w_ij ỹ_j | Σ_j w_ij] per x, read as (Σ w)·x̃_i − Σ w ỹ_j), and takes w_ij
// out of the tile so that the GEMMs do not count it again.
template <class T>
void contract_flagged(const Prepared<T>& pr, int d, T* w, int ldw, const unsigned char* flags,
                      int i0, int rows, int j0, int cols, T* dxa, T* dy_local) {
  const int lda = pr.lda();
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      if (!flags[static_cast<long>(r) * cols + c]) continue;
      T& wij = w[static_cast<long>(r) * ldw + c];
      const T wv = wij;
      wij = T(0);
      if (wv == T(0)) continue;
      const T* xi = pr.x_raw(i0 + r);
      const T* yj = pr.y_raw(j0 + c);
      T* ax = dxa == nullptr ? nullptr : dxa + static_cast<long>(i0 + r) * lda;
      T* ay = dy_local == nullptr ? nullptr : dy_local + static_cast<long>(c) * lda;
      for (int k = 0; k < d; ++k) {
        const T t = wv * (xi[k] - yj[k]);
        if (ax != nullptr) ax[k] -= t;
        if (ay != nullptr) ay[k] += t;
      }
    }
  }
}

}  // namespace

template <class T>
double backward_selected(const Problem<T>& p, const T* g, const T* v, int n_cols, T* dx, T* dy,
                         bool inner_parallel) {
  const int m = p.m, n = p.n, d = p.d;
  const bool sym = p.y == nullptr;
  const bool want_x = dx != nullptr;
  const bool want_y = sym ? want_x : dy != nullptr;
  if (dx != nullptr) std::fill(dx, dx + static_cast<long>(m) * d, T(0));
  if (dy != nullptr && !sym) std::fill(dy, dy + static_cast<long>(n) * d, T(0));
  if (m == 0 || n == 0 || d == 0) return 0.0;
  Prepared<T> pr(p, inner_parallel);
  const int lda = pr.lda();
  const bool euclid = pr.euclidean();
  // GEMM route: w is contracted with the centred points by GEMMs, [Σ_j w_ij ỹ_j | Σ_j w_ij]
  // per x and [Σ_i w_ij x̃_i | Σ_i w_ij] per y (the trailing 1 of the augmented points gives
  // the sums of w), except for the entries recomputed from the raw points (contract_flagged).
  // Direct route: dxa holds Σ_j w_ij t(x_i − y_j) and dya the same for y (direct_contract).
  const bool gemm_contract = euclid && !pr.direct();
  std::vector<T> dxa(want_x ? static_cast<size_t>(m) * lda : 0, T(0));
  std::vector<T> dya(want_y ? static_cast<size_t>(n) * lda : 0, T(0));
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
      pool::Vector<T> buf(static_cast<size_t>(rb) * tc);  // each tile written before it is read
      std::vector<T> gbuf(v != nullptr ? static_cast<size_t>(rb) * tc : 0);
      const bool track = gemm_contract && (want_x || want_y);
      std::vector<unsigned char> flags(track ? static_cast<size_t>(rb) * tc : 0);
      std::vector<T>& dy_local = dy_parts[tid];
      if (want_y) dy_local.assign(static_cast<size_t>(cols) * lda, T(0));  // direct: d × cols
      T* dxa_p = want_x ? dxa.data() : nullptr;
      T* dyl_p = want_y ? dy_local.data() : nullptr;
#pragma omp for schedule(static)
      for (int blk = 0; blk < nblocks; ++blk) {
        const int i0 = blk * rb, rows = std::min(rb, m - i0);
        const bool redone = pr.fill_s(buf.data(), tc, i0, rows, j0, cols,
                                      track ? flags.data() : nullptr);
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
        if (!want_x && !want_y) continue;  // the lengthscale gradient only
        if (pr.symmetric()) {  // k(x_i, x_i) = 1 depends on nothing
          for (int r = 0; r < rows; ++r) {
            const int c = i0 + r - j0;
            if (c >= 0 && c < cols) buf[static_cast<long>(r) * tc + c] = T(0);
          }
        }
        if (gemm_contract) {
          if (redone)
            contract_flagged(pr, d, buf.data(), tc, flags.data(), i0, rows, j0, cols, dxa_p, dyl_p);
          if (want_x)
            gemm<T>(pr.blas(), 'N', 'N', rows, lda, cols, T(1), buf.data(), tc, pr.ya(j0), lda,
                    T(1), dxa.data() + static_cast<long>(i0) * lda, lda);
          if (want_y)
            gemm<T>(pr.blas(), 'T', 'N', cols, lda, rows, T(1), buf.data(), tc, pr.xa(i0), lda,
                    T(1), dy_local.data(), lda);
        } else if (euclid) {
          direct_contract<true>(pr, n, d, buf.data(), tc, i0, rows, j0, cols, dxa_p, dyl_p);
        } else {
          direct_contract<false>(pr, n, d, buf.data(), tc, i0, rows, j0, cols, dxa_p, dyl_p);
        }
      }
    }
    if (!want_y) continue;
    for (int tid = 0; tid < n_threads; ++tid) {
      const std::vector<T>& part = dy_parts[tid];
      if (part.empty()) continue;
      if (gemm_contract) {
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
  auto finish = [&](const T* acc_all, bool rows_are_x, int count, T* out) {
    for (long i = 0; i < count; ++i) {
      const T* pt = rows_are_x ? pr.xa(i) : pr.ya(i);
      const T* acc = acc_all + i * lda;
      for (int k = 0; k < d; ++k)
        out[i * d + k] = gemm_contract ? c * (acc[d] * pt[k] - acc[k]) : c * acc[k];
    }
  };
  if (want_x) finish(dxa.data(), true, m, dx);
  if (sym && want_x) {  // X plays both roles: add its gradient as y
    std::vector<T> dy_tmp(static_cast<size_t>(n) * d);
    finish(dya.data(), false, n, dy_tmp.data());
    for (long idx = 0; idx < static_cast<long>(m) * d; ++idx) dx[idx] += dy_tmp[idx];
  } else if (want_y) {
    finish(dya.data(), false, n, dy);
  }
  const double dscale = (euclid ? -2.0 : -1.0) / static_cast<double>(ell);
  return dscale * sum_ws;
}

template <class T>
double backward(const Problem<T>& p, const T* g, const T* v, int n_cols, T* dx, T* dy,
                bool inner_parallel) {
  return backward_selected(p, g, v, n_cols, dx, p.y == nullptr ? nullptr : dy, inner_parallel);
}

template <class T>
double ell_grad_from_k(const T* k, const T* g, long m, long n, int kernel, T lengthscale,
                       bool parallel) {
  const RowOps<T>& ops = row_ops<T>();
  std::vector<double> rows(static_cast<size_t>(std::max(m, 0L)), 0.0);
#pragma omp parallel for schedule(static) if (parallel)
  for (long i = 0; i < m; ++i)
    rows[i] = ops.ell_grad_from_k(k + i * n, g + i * n, static_cast<int>(n), kernel);
  double total = 0.0;
  for (double r : rows) total += r;
  return total / static_cast<double>(lengthscale);
}

template void forward<float>(const Problem<float>&, float*, bool);
template void forward<double>(const Problem<double>&, double*, bool);
template void matmul_forward<float>(const Problem<float>&, const float*, int, float*, bool);
template void matmul_forward<double>(const Problem<double>&, const double*, int, double*, bool);
template double backward<float>(const Problem<float>&, const float*, const float*, int, float*,
                                float*, bool);
template double backward<double>(const Problem<double>&, const double*, const double*, int,
                                 double*, double*, bool);
template double backward_selected<float>(const Problem<float>&, const float*, const float*, int,
                                         float*, float*, bool);
template double backward_selected<double>(const Problem<double>&, const double*, const double*,
                                          int, double*, double*, bool);
template double ell_grad_from_k<float>(const float*, const float*, long, long, int, float, bool);
template double ell_grad_from_k<double>(const double*, const double*, long, long, int, double,
                                        bool);

}  // namespace fastamort::gram
