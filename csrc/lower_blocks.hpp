// Walking the lower triangle of a symmetric n × n row-major matrix block by block, and copying
// each finished block onto its mirror image (the Gram engine's symmetric forward and the ridge
// backward's symmetric product).
#pragma once

#include <algorithm>

namespace fastamort {

// Block (bi, bj), bj <= bi, that the lower-triangle block pair number `pair` stands for
// (pairs numbered row by row: (0,0), (1,0), (1,1), (2,0), ...).
struct LowerBlock {
  int bi, bj;
};
inline LowerBlock lower_block(int pair) {
  int bi = 0;
  while ((bi + 1) * (bi + 2) / 2 <= pair) ++bi;
  return {bi, pair - bi * (bi + 1) / 2};
}

// Copies block (i0.., j0..) of k (rows × cols, at or below the diagonal) onto its mirror
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

}  // namespace fastamort
