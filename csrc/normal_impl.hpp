// Standard normal numbers from a vectorised generator; included by row_ops_impl.hpp, so it is
// compiled once per instruction set like the row kernels.
//
// The stream of a seed is cut into chunks of kNormalChunk numbers. Chunk c runs kNormalLanes
// xoshiro128** generators side by side (Blackman & Vigna 2018; one per SIMD lane), lane l's
// state being SplitMix64 outputs 2j and 2j + 1 of the seed, j = c·kNormalLanes + l (the
// seeding its authors recommend). Number i therefore depends only on (seed, i): any split of
// the chunks over threads gives the same numbers. Philox4x32-10, counter-based, measured 3×
// slower than torch's own generator needs here (9 ns a block on AVX2), xoshiro128** 1 ns.
//
// Box-Muller: step pair k of a chunk (steps 2k, 2k + 1 in float32; 4k .. 4k + 3 in float64,
// two words per uniform) gives lane l's uniforms u1 in (0, 1] and u2 in [0, 1), and numbers
// 16k + l = r cos θ and 16k + 8 + l = r sin θ of the chunk, r = √(−2 ln u1), θ = 2π·u2.
// float32 uniforms have 24 bits, as torch's CPU normal_ (|z| <= 5.77); float64 ones 53
// (|z| <= 8.57). ln is vec_math's log_pos; sin and cos are Taylor polynomials on [0, π/2)
// after an exact reduction of u2 to quarter turns. Every loop is branch-free and vectorises.
#pragma once

#include <cstdint>
#include <cstring>

#include "row_ops.hpp"  // kNormalChunk
#include "vec_math.hpp"

namespace fastamort {
namespace FASTAMORT_ISA_NS {
namespace {

constexpr int kNormalLanes = 8;
// Generator steps per vector batch (kNormalLanes words each).
constexpr int kNormalSteps = 128;

FASTAMORT_VEC_INLINE uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The lanes' xoshiro128** states of chunk `chunk` of the stream of seed.
inline void seed_lanes(uint32_t (*st)[kNormalLanes], uint64_t seed, uint64_t chunk) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  for (int l = 0; l < kNormalLanes; ++l) {
    const uint64_t j = chunk * kNormalLanes + static_cast<uint64_t>(l);
    const uint64_t a = splitmix64(seed + (2 * j + 1) * kGamma);
    const uint64_t b = splitmix64(seed + (2 * j + 2) * kGamma);
    st[0][l] = static_cast<uint32_t>(a);
    st[1][l] = static_cast<uint32_t>(a >> 32);
    st[2][l] = static_cast<uint32_t>(b);
    st[3][l] = static_cast<uint32_t>(b >> 32);
    if ((a | b) == 0) st[0][l] = 1;  // the one state xoshiro cannot leave (never met)
  }
}

FASTAMORT_VEC_INLINE uint32_t rotl32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

// words[t][l] = output t of lane l, t < kNormalSteps; the states advance.
FASTAMORT_VEC_INLINE void xoshiro_batch(uint32_t (*st)[kNormalLanes],
                                        uint32_t (*words)[kNormalLanes]) {
  uint32_t s0[kNormalLanes], s1[kNormalLanes], s2[kNormalLanes], s3[kNormalLanes];
  for (int l = 0; l < kNormalLanes; ++l) {
    s0[l] = st[0][l];
    s1[l] = st[1][l];
    s2[l] = st[2][l];
    s3[l] = st[3][l];
  }
  for (int t = 0; t < kNormalSteps; ++t) {
#pragma omp simd
    for (int l = 0; l < kNormalLanes; ++l) {
      words[t][l] = rotl32(s1[l] * 5u, 7) * 9u;
      const uint32_t shifted = s1[l] << 9;
      s2[l] ^= s0[l];
      s3[l] ^= s1[l];
      s1[l] ^= s2[l];
      s0[l] ^= s3[l];
      s2[l] ^= shifted;
      s3[l] = rotl32(s3[l], 11);
    }
  }
  for (int l = 0; l < kNormalLanes; ++l) {
    st[0][l] = s0[l];
    st[1][l] = s1[l];
    st[2][l] = s2[l];
    st[3][l] = s3[l];
  }
}

// (sin, cos) of a in [0, π/2]: Taylor polynomials, below one ulp of truncation error
// (float: to a¹¹ and a¹²; double: to a²¹ and a²⁰).
template <class T>
FASTAMORT_VEC_INLINE void sincos_quadrant(T a, T& s, T& c);

template <>
FASTAMORT_VEC_INLINE void sincos_quadrant<float>(float a, float& s, float& c) {
  const float z = a * a;
  float ps = -1.0f / 39916800.0f;
  ps = ps * z + 1.0f / 362880.0f;
  ps = ps * z - 1.0f / 5040.0f;
  ps = ps * z + 1.0f / 120.0f;
  ps = ps * z - 1.0f / 6.0f;
  s = a + a * z * ps;
  float pc = 1.0f / 479001600.0f;
  pc = pc * z - 1.0f / 3628800.0f;
  pc = pc * z + 1.0f / 40320.0f;
  pc = pc * z - 1.0f / 720.0f;
  pc = pc * z + 1.0f / 24.0f;
  pc = pc * z - 0.5f;
  c = 1.0f + z * pc;
}

template <>
FASTAMORT_VEC_INLINE void sincos_quadrant<double>(double a, double& s, double& c) {
  const double z = a * a;
  double ps = 1.0 / 51090942171709440000.0;  // 1/21!
  ps = ps * z - 1.0 / 121645100408832000.0;
  ps = ps * z + 1.0 / 355687428096000.0;
  ps = ps * z - 1.0 / 1307674368000.0;
  ps = ps * z + 1.0 / 6227020800.0;
  ps = ps * z - 1.0 / 39916800.0;
  ps = ps * z + 1.0 / 362880.0;
  ps = ps * z - 1.0 / 5040.0;
  ps = ps * z + 1.0 / 120.0;
  ps = ps * z - 1.0 / 6.0;
  s = a + a * z * ps;
  double pc = 1.0 / 2432902008176640000.0;  // 1/20!
  pc = pc * z - 1.0 / 6402373705728000.0;
  pc = pc * z + 1.0 / 20922789888000.0;
  pc = pc * z - 1.0 / 87178291200.0;
  pc = pc * z + 1.0 / 479001600.0;
  pc = pc * z - 1.0 / 3628800.0;
  pc = pc * z + 1.0 / 40320.0;
  pc = pc * z - 1.0 / 720.0;
  pc = pc * z + 1.0 / 24.0;
  pc = pc * z - 0.5;
  c = 1.0 + z * pc;
}

// (r cos 2πu, r sin 2πu) for u in [0, 1): t = 4u is exact, its integer part is the quarter
// turn q and a = (t − q)·π/2 in [0, π/2).
template <class T>
FASTAMORT_VEC_INLINE void polar_pair(T r, T u, T& x, T& y) {
  const T t = u * T(4);
  const T q = static_cast<T>(static_cast<int>(t));  // 0, 1, 2 or 3
  const T a = (t - q) * T(1.5707963267948966);
  T s, c;
  sincos_quadrant<T>(a, s, c);
  // θ = q·π/2 + a, with selects on T compares only (integer logic next to double
  // arithmetic stops GCC vectorising): odd q swaps sin and cos; cos θ < 0 for q = 1, 2 and
  // sin θ < 0 for q = 2, 3.
  const bool odd = q == T(1) || q == T(3);
  const T cq = odd ? s : c, sq = odd ? c : s;
  x = r * ((q == T(1) || q == T(2)) ? -cq : cq);
  y = r * (q >= T(2) ? -sq : sq);
}

// float32: out[16k + l], out[16k + 8 + l] from steps 2k, 2k + 1 (kNormalSteps·kNormalLanes
// numbers).
FASTAMORT_VEC_INLINE void box_muller_batch(const uint32_t (*w)[kNormalLanes], float* out) {
  for (int k = 0; k < kNormalSteps / 2; ++k) {
#pragma omp simd
    for (int l = 0; l < kNormalLanes; ++l) {
      const float u1 = static_cast<float>(static_cast<int32_t>((w[2 * k][l] >> 8) + 1u)) * 0x1p-24f;
      const float u2 = static_cast<float>(static_cast<int32_t>(w[2 * k + 1][l] >> 8)) * 0x1p-24f;
      const float r = vsqrt(-2.0f * log_pos<float>(u1));
      polar_pair<float>(r, u2, out[16 * k + l], out[16 * k + 8 + l]);
    }
  }
}

// A uniform in [0, 1) from 53 bits of two words (26 + 27 bits, each part converted exactly
// from int32: GCC vectorises that, not a 64-bit conversion or a bit copy into a double).
FASTAMORT_VEC_INLINE double uniform53(uint32_t hi, uint32_t lo) {
  const double h = static_cast<double>(static_cast<int32_t>(hi >> 6));
  const double l = static_cast<double>(static_cast<int32_t>(lo >> 5));
  return (h * 0x1p27 + l) * 0x1p-53;
}

// float64: out[16k + l], out[16k + 8 + l] from steps 4k .. 4k + 3 (kNormalSteps·kNormalLanes/2
// numbers).
FASTAMORT_VEC_INLINE void box_muller_batch(const uint32_t (*w)[kNormalLanes], double* out) {
  for (int k = 0; k < kNormalSteps / 4; ++k) {
#pragma omp simd
    for (int l = 0; l < kNormalLanes; ++l) {
      const double u1 = 1.0 - uniform53(w[4 * k][l], w[4 * k + 1][l]);  // in (0, 1], exactly
      const double u2 = uniform53(w[4 * k + 2][l], w[4 * k + 3][l]);
      const double r = vsqrt(-2.0 * log_pos<double>(u1));
      polar_pair<double>(r, u2, out[16 * k + l], out[16 * k + 8 + l]);
    }
  }
}

// out[i] = number i of chunk `chunk` of the stream of seed, i < n <= kNormalChunk.
template <class T>
void normal_fill(T* out, long n, uint64_t seed, uint64_t chunk) {
  constexpr long kBatchOut = sizeof(T) == 4 ? kNormalSteps * kNormalLanes
                                            : kNormalSteps * kNormalLanes / 2;
  alignas(64) uint32_t st[4][kNormalLanes];
  alignas(64) uint32_t words[kNormalSteps][kNormalLanes];
  alignas(64) T buf[kBatchOut];
  seed_lanes(st, seed, chunk);
  for (long i0 = 0; i0 < n; i0 += kBatchOut) {
    xoshiro_batch(st, words);
    const long count = std::min(kBatchOut, n - i0);
    T* dst = count == kBatchOut ? out + i0 : buf;
    box_muller_batch(words, dst);
    if (dst == buf) std::memcpy(out + i0, buf, static_cast<size_t>(count) * sizeof(T));
  }
}

}  // namespace
}  // namespace FASTAMORT_ISA_NS
}  // namespace fastamort
