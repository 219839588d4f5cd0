// The float64 products of the Nyström engine for 4 kernel rows at a time, compiled once per
// instruction set: included by nystrom_engine.cpp with FASTAMORT_NYS_NS defined, once plainly
// and once under an AVX2+FMA target pragma (the names then contain "avx2", see
// tests/test_isa.py). Only plain loops here, no library calls: every callee would otherwise be
// compiled for the ISA of this section.
//
// kr[r] points at kernel row r (m entries of T); the caller zero-fills rows past the data.

namespace fastamort::nystrom::FASTAMORT_NYS_NS {

// Vectors of FASTAMORT_NYS_VEC_BYTES bytes (portability.hpp: plain SIMD code on any ISA, or
// scalars without vector extensions).
template <class T>
using Vec = SimdVec<T, FASTAMORT_NYS_VEC_BYTES>;

template <int E, class V>
inline V dist_term(V diff) {
  if constexpr (E == 2) {
    return diff * diff;
  } else {
    return diff < V{} ? -diff : diff;
  }
}

// kr[r][j] = scale·Σ_k |x_r[k] − ct[k·m + j]|^E for the 4 rows x_r = x + r·d (E = 2: squared
// Euclidean, E = 1: L1), j < m. Register-blocked: 4 rows × 2 vectors of centres accumulate
// over k in registers (one pass over the centres, ct: transposed, D×m, for four rows).
template <int E, class T>
void rows4_distance(const T* x, int d, const T* ct, int m, T scale, T* const* kr) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  int j = 0;
  for (; j + 2 * L <= m; j += 2 * L) {
    V s[4][2] = {};
    for (int k = 0; k < d; ++k) {
      V c0, c1;
      FASTAMORT_MEMCPY(&c0, ct + static_cast<long>(k) * m + j, sizeof(V));
      FASTAMORT_MEMCPY(&c1, ct + static_cast<long>(k) * m + j + L, sizeof(V));
      for (int r = 0; r < 4; ++r) {
        const T xr = x[r * d + k];
        s[r][0] += dist_term<E>(xr - c0);
        s[r][1] += dist_term<E>(xr - c1);
      }
    }
    for (int r = 0; r < 4; ++r) {
      const V a = s[r][0] * scale, b = s[r][1] * scale;
      FASTAMORT_MEMCPY(kr[r] + j, &a, sizeof(V));
      FASTAMORT_MEMCPY(kr[r] + j + L, &b, sizeof(V));
    }
  }
  for (; j < m; ++j) {
    for (int r = 0; r < 4; ++r) {
      T acc = T(0);
      for (int k = 0; k < d; ++k) {
        const T diff = x[r * d + k] - ct[static_cast<long>(k) * m + j];
        acc += E == 2 ? diff * diff : (diff < T(0) ? -diff : diff);
      }
      kr[r][j] = acc * scale;
    }
  }
}

// u[r·p + q] = Σ_j kr[r][j]·vt[q·m + j] for r < 4, q < p (vt: v transposed, p×m).
template <class T>
void rows4_times_v(const T* const* kr, const double* vt, int m, int p, double* u) {
  const T* __restrict k0 = kr[0];
  const T* __restrict k1 = kr[1];
  const T* __restrict k2 = kr[2];
  const T* __restrict k3 = kr[3];
  for (int q = 0; q < p; ++q) {
    const double* __restrict vq = vt + static_cast<long>(q) * m;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int j = 0; j < m; ++j) {
      const double vj = vq[j];
      s0 += static_cast<double>(k0[j]) * vj;
      s1 += static_cast<double>(k1[j]) * vj;
      s2 += static_cast<double>(k2[j]) * vj;
      s3 += static_cast<double>(k3[j]) * vj;
    }
    u[q] = s0;
    u[p + q] = s1;
    u[2 * p + q] = s2;
    u[3 * p + q] = s3;
  }
}

// acc[q·m + j] += Σ_r t[r·p + q]·kr[r][j] for q < p (acc: p×m).
template <class T>
void rows4_accumulate(const T* const* kr, const double* t, int m, int p, double* acc) {
  const T* __restrict k0 = kr[0];
  const T* __restrict k1 = kr[1];
  const T* __restrict k2 = kr[2];
  const T* __restrict k3 = kr[3];
  for (int q = 0; q < p; ++q) {
    double* __restrict aq = acc + static_cast<long>(q) * m;
    const double t0 = t[q], t1 = t[p + q], t2 = t[2 * p + q], t3 = t[3 * p + q];
#pragma omp simd
    for (int j = 0; j < m; ++j) {
      aq[j] += (t0 * static_cast<double>(k0[j]) + t1 * static_cast<double>(k1[j])) +
               (t2 * static_cast<double>(k2[j]) + t3 * static_cast<double>(k3[j]));
    }
  }
}

template void rows4_distance<2, float>(const float*, int, const float*, int, float, float* const*);
template void rows4_distance<2, double>(const double*, int, const double*, int, double, double* const*);
template void rows4_distance<1, float>(const float*, int, const float*, int, float, float* const*);
template void rows4_distance<1, double>(const double*, int, const double*, int, double, double* const*);
template void rows4_times_v<float>(const float* const*, const double*, int, int, double*);
template void rows4_times_v<double>(const double* const*, const double*, int, int, double*);
template void rows4_accumulate<float>(const float* const*, const double*, int, int, double*);
template void rows4_accumulate<double>(const double* const*, const double*, int, int, double*);

}  // namespace fastamort::nystrom::FASTAMORT_NYS_NS
