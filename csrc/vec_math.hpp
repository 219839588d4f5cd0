// Branch-free exp for non-positive arguments and log for positive ones, written so that the
// compiler vectorises them.
//
// Kernel functions only ever need exp(x) for x <= 0 (and the lengthscale gradient from K, log
// of 0 < x <= 1). glibc's vector exp (libmvec) is
// only used by GCC under -ffast-math, which would also break NaN checks, so we keep our
// own: Cody-Waite range reduction x = k·ln2 + r with |r| <= ln2/2, a Taylor polynomial
// (degree 13 for double, 7 for float: both below one ulp of truncation error) and
// 2^k built from its exponent bits. Results below the smallest normal number flush to 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "portability.hpp"

// Forced inline: an out-of-line copy compiled for AVX2 would sit outside the ISA namespaces
// (tests/test_isa.py checks that only the dispatched kernels use AVX).
#define FASTAMORT_VEC_INLINE FASTAMORT_INLINE

namespace fastamort {
// Internal linkage on purpose: this header is compiled once per instruction set.
namespace {

#ifdef FASTAMORT_HAVE_VECTOR_EXT
inline float vsqrt(float x) { return __builtin_sqrtf(x); }
inline double vsqrt(double x) { return __builtin_sqrt(x); }
#else
inline float vsqrt(float x) { return std::sqrt(x); }
inline double vsqrt(double x) { return std::sqrt(x); }
#endif

template <class T>
struct ExpTraits;

template <>
struct ExpTraits<double> {
  using Int = int64_t;
  static constexpr double kMagic = 6755399441055744.0;  // 1.5·2^52: rounds to an integer
  static constexpr double kLowest = -708.3;             // exp(kLowest) is still normal
  static constexpr int kBias = 1023;
  static constexpr int kMantissa = 52;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
};

template <>
struct ExpTraits<float> {
  using Int = int32_t;
  static constexpr float kMagic = 12582912.0f;  // 1.5·2^23
  static constexpr float kLowest = -87.3f;
  static constexpr int kBias = 127;
  static constexpr int kMantissa = 23;
  static constexpr float kLn2Hi = 6.93145752e-01f;
  static constexpr float kLn2Lo = 1.42860677e-06f;
};

template <class T>
FASTAMORT_VEC_INLINE T exp_poly(T r);

template <>
FASTAMORT_VEC_INLINE double exp_poly<double>(double r) {
  // Taylor series of e^r to r^13/13!, Horner form.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p * r + 1.0;
}

template <>
FASTAMORT_VEC_INLINE float exp_poly<float>(float r) {
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}

// exp(x) for x <= 0 (x > 0 is not supported). Vectorisable: no branches, no calls.
template <class T>
FASTAMORT_VEC_INLINE T exp_nonpos(T x) {
  using Tr = ExpTraits<T>;
  using Int = typename Tr::Int;
  const bool underflow = x < Tr::kLowest;
  const T xc = underflow ? Tr::kLowest : x;
  const T t = xc * T(1.4426950408889634) + Tr::kMagic;
  const T kd = t - Tr::kMagic;
  Int t_bits, magic_bits;
  const T magic = Tr::kMagic;
  std::memcpy(&t_bits, &t, sizeof(T));
  std::memcpy(&magic_bits, &magic, sizeof(T));
  const Int k = t_bits - magic_bits;  // round(xc·log2 e) as an integer
  const T r = (xc - kd * Tr::kLn2Hi) - kd * Tr::kLn2Lo;
  const Int e_bits = (k + Int(Tr::kBias)) << Tr::kMantissa;
  T scale;
  std::memcpy(&scale, &e_bits, sizeof(T));
  const T y = exp_poly<T>(r) * scale;
  return underflow ? T(0) : y;
}

// log(x) for normal x > 0 (0, subnormals, ∞ and NaN are not supported). Vectorisable: no
// branches, no calls. x = 2^e·m with m in [√½, √2), f = m − 1, and
// log m = 2·atanh(f/(2 + f)) by its odd series in z = (f/(2 + f))², |f/(2 + f)| <= 0.172
// (11 terms for double, 5 for float: both below one ulp of truncation error).
template <class T>
FASTAMORT_VEC_INLINE T log_poly(T z);

template <>
FASTAMORT_VEC_INLINE double log_poly<double>(double z) {  // Σ_k z^k/(2k + 1), k = 1..11
  double p = 1.0 / 23.0;
  p = p * z + 1.0 / 21.0;
  p = p * z + 1.0 / 19.0;
  p = p * z + 1.0 / 17.0;
  p = p * z + 1.0 / 15.0;
  p = p * z + 1.0 / 13.0;
  p = p * z + 1.0 / 11.0;
  p = p * z + 1.0 / 9.0;
  p = p * z + 1.0 / 7.0;
  p = p * z + 1.0 / 5.0;
  p = p * z + 1.0 / 3.0;
  return p * z;
}

template <>
FASTAMORT_VEC_INLINE float log_poly<float>(float z) {  // k = 1..5
  float p = 1.0f / 11.0f;
  p = p * z + 1.0f / 9.0f;
  p = p * z + 1.0f / 7.0f;
  p = p * z + 1.0f / 5.0f;
  p = p * z + 1.0f / 3.0f;
  return p * z;
}

template <class T>
FASTAMORT_VEC_INLINE T log_pos(T x) {
  using Tr = ExpTraits<T>;
  using Int = typename Tr::Int;
  constexpr Int kMantMask = (Int(1) << Tr::kMantissa) - 1;
  // fraction bits of √2: a mantissa 1.f above √2 is taken as (1.f / 2)·2
  constexpr Int kSqrt2Bits = sizeof(T) == 8 ? Int(0x6A09E667F3BCDLL) : Int(0x3504F3);
  Int bits;
  std::memcpy(&bits, &x, sizeof(T));
  const Int mant = bits & kMantMask;
  const Int big = mant > kSqrt2Bits ? Int(1) : Int(0);
  const Int e = (bits >> Tr::kMantissa) - Int(Tr::kBias) + big;
  const Int m_bits = mant | ((Int(Tr::kBias) - big) << Tr::kMantissa);
  T m;
  std::memcpy(&m, &m_bits, sizeof(T));
  const T f = m - T(1);
  const T s = f / (T(2) + f);
  // via int32 (e is an exponent): GCC has no vector int64 → double conversion before AVX-512
  const T ed = static_cast<T>(static_cast<int32_t>(e));
  const T logm = T(2) * s + T(2) * s * log_poly<T>(s * s);  // 2·atanh(s)
  return ed * Tr::kLn2Hi + (logm + ed * Tr::kLn2Lo);
}

}  // namespace
}  // namespace fastamort
