// The ridge backward's symmetric gradient with respect to K (ridge_grad.cpp).
#pragma once

namespace fastamort::ridge {

// c (n × n, row-major) = alpha·(a bᵀ + b aᵀ) for a, b (n × p, row-major): the lower blocks by
// GEMM, mirrored, so c is exactly symmetric. parallel: over our OpenMP threads (the caller
// holds blas::SingleThreaded).
template <class T>
void symmetric_rank2k(int n, int p, const T* a, const T* b, T alpha, T* c, bool parallel);

}  // namespace fastamort::ridge
