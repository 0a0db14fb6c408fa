// Storage types and scalar helpers shared by the CPU and CUDA kernels.
//
// The core never includes a framework header, so half precision is carried as raw
// bits and converted here; adapters reinterpret Eigen::half / __half / torch.half
// buffers as these structs (same size and layout).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define COSTXENT_HD __host__ __device__ __forceinline__
#else
// always_inline: the CPU kernels are compiled once per instruction set, and an out-of-line
// AVX2 copy of a helper must never be the one the linker keeps for the baseline build.
#define COSTXENT_HD inline __attribute__((always_inline))
#endif

namespace costxent {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

// float32 arithmetic for every storage type except float64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

COSTXENT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

COSTXENT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

COSTXENT_HD float to_acc(f16 h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h.bits));
#else
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  const uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return bits_float(float_bits(mag) | sign);
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

COSTXENT_HD float to_acc(bf16 h) {
  return bits_float(static_cast<uint32_t>(h.bits) << 16);
}
COSTXENT_HD float to_acc(float x) { return x; }
COSTXENT_HD double to_acc(double x) { return x; }

// Round-to-nearest-even float -> storage conversions; NaN stays NaN.
template <typename T>
COSTXENT_HD T from_acc(float x);

template <>
COSTXENT_HD float from_acc<float>(float x) {
  return x;
}

template <>
COSTXENT_HD f16 from_acc<f16>(float x) {
#if defined(__CUDA_ARCH__)
  return f16{__half_as_ushort(__float2half_rn(x))};
#else
  uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u)
    return f16{static_cast<uint16_t>(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (u >= 0x477ff000u) return f16{static_cast<uint16_t>(sign | 0x7c00u)};
  if (u < 0x38800000u) {
    // Below 2^-14 the result is subnormal: adding 0.5 aligns the half's 2^-24
    // unit with the float's last mantissa bit and rounds to nearest even.
    const float shifted = bits_float(u) + 0.5f;
    return f16{static_cast<uint16_t>(sign | (float_bits(shifted) - 0x3f000000u))};
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // rebias exponent by -112 and round half to even
  return f16{static_cast<uint16_t>(sign | (u >> 13))};
#endif
}

template <>
COSTXENT_HD bf16 from_acc<bf16>(float x) {
  // Branch-free (an integer select) so conversion loops vectorize.
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return bf16{static_cast<uint16_t>(is_nan ? quiet : rounded)};
}

template <typename T>
COSTXENT_HD T from_acc(double x);

template <>
COSTXENT_HD double from_acc<double>(double x) {
  return x;
}

COSTXENT_HD float quiet_nan(float) { return bits_float(0x7fc00000u); }
COSTXENT_HD double quiet_nan(double) { return NAN; }

}  // namespace costxent
