// The CPU kernels' vector layer: a pack of kLanes floats (16 with AVX-512, 8 with AVX2, 4
// otherwise: SSE2 or NEON) as a GCC vector-extension type behind small structs, so
// row_math.h's templates run on packs unchanged, plus a one-lane double "pack" over libm for
// float64 problems. GCC's __builtin_shuffle and vector ?: are used (GCC >= 11).
//
// Included only by cpu_kernels.cc, inside its instruction-set namespace's build: every
// function here is always_inline and every type lives in COSTXENT_CPU_ISA, so no code
// compiled for AVX-512 can be picked by the linker for a baseline caller.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cc/core/numeric.h"

#ifndef COSTXENT_CPU_ISA
#error "COSTXENT_CPU_ISA must name the instruction-set namespace"
#endif

#define CX_INLINE inline __attribute__((always_inline))

namespace costxent {
namespace cpu {
namespace COSTXENT_CPU_ISA {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
typedef uint32_t vu __attribute__((vector_size(4 * kLanes)));
typedef double vd __attribute__((vector_size(8 * kLanes)));
typedef int64_t vl __attribute__((vector_size(8 * kLanes)));
typedef uint16_t vh __attribute__((vector_size(2 * kLanes)));

// Lane masks: AVX-512's mask registers, elsewhere all bits set or clear per lane as GCC's
// vector comparisons produce them.
#if defined(__AVX512F__)
struct Mask {
  __mmask16 k;
};
CX_INLINE Mask mask_of(vi v) { return {_mm512_movepi32_mask(reinterpret_cast<__m512i>(v))}; }
CX_INLINE Mask operator&(Mask a, Mask b) { return {static_cast<__mmask16>(a.k & b.k)}; }
CX_INLINE Mask operator|(Mask a, Mask b) { return {static_cast<__mmask16>(a.k | b.k)}; }
CX_INLINE Mask operator!(Mask a) { return {static_cast<__mmask16>(~a.k)}; }
CX_INLINE bool any(Mask m) { return m.k != 0; }
CX_INLINE bool lane_set(Mask m, int i) { return ((m.k >> i) & 1) != 0; }
#else
struct Mask {
  vi v;
};
CX_INLINE Mask mask_of(vi v) { return {v}; }
CX_INLINE Mask operator&(Mask a, Mask b) { return {a.v & b.v}; }
CX_INLINE Mask operator|(Mask a, Mask b) { return {a.v | b.v}; }
CX_INLINE Mask operator!(Mask a) { return {~a.v}; }
CX_INLINE bool any(Mask m) {
#if defined(__AVX2__)
  return !_mm256_testz_si256(reinterpret_cast<__m256i>(m.v), reinterpret_cast<__m256i>(m.v));
#else
  int32_t a = 0;
  for (int i = 0; i < kLanes; ++i) a |= m.v[i];
  return a != 0;
#endif
}
CX_INLINE bool lane_set(Mask m, int i) { return m.v[i] != 0; }
#endif

struct Int {
  vi v;
  Int() = default;
  CX_INLINE Int(int32_t s) : v(vi{} + s) {}  // NOLINT: broadcasts like a scalar
  CX_INLINE explicit Int(vi x) : v(x) {}
};
CX_INLINE Int operator+(Int a, Int b) { return Int(a.v + b.v); }
CX_INLINE Int operator*(Int a, Int b) { return Int(a.v * b.v); }

struct Float {
  vf v;
  Float() = default;
  CX_INLINE Float(float s) : v(vf{} + s) {}  // NOLINT: broadcasts like a scalar
  CX_INLINE explicit Float(vf x) : v(x) {}
};
CX_INLINE Float operator+(Float a, Float b) { return Float(a.v + b.v); }
CX_INLINE Float operator-(Float a, Float b) { return Float(a.v - b.v); }
CX_INLINE Float operator*(Float a, Float b) { return Float(a.v * b.v); }
CX_INLINE Float operator/(Float a, Float b) { return Float(a.v / b.v); }
CX_INLINE Float operator-(Float a) { return Float(-a.v); }
CX_INLINE Float& operator+=(Float& a, Float b) { return a = a + b; }

#if defined(__AVX512F__)
CX_INLINE Mask operator==(Int a, Int b) {
  return {_mm512_cmpeq_epi32_mask(reinterpret_cast<__m512i>(a.v), reinterpret_cast<__m512i>(b.v))};
}
CX_INLINE Mask operator<(Int a, Int b) {
  return {_mm512_cmplt_epi32_mask(reinterpret_cast<__m512i>(a.v), reinterpret_cast<__m512i>(b.v))};
}
CX_INLINE Mask operator>(Float a, Float b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
CX_INLINE Mask operator>=(Float a, Float b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }
CX_INLINE Mask operator<(Float a, Float b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
CX_INLINE Mask operator==(Float a, Float b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)}; }
CX_INLINE Float select(Mask m, Float a, Float b) { return Float(_mm512_mask_blend_ps(m.k, b.v, a.v)); }
CX_INLINE Int select(Mask m, Int a, Int b) {
  return Int(reinterpret_cast<vi>(_mm512_mask_blend_epi32(m.k, reinterpret_cast<__m512i>(b.v),
                                                          reinterpret_cast<__m512i>(a.v))));
}
// acc + v where m is set.
CX_INLINE Float add_where(Mask m, Float acc, Float v) {
  return Float(_mm512_mask_add_ps(acc.v, m.k, acc.v, v.v));
}
// IEEE max / min of the lanes except that a NaN in b (only) propagates.
CX_INLINE Float max(Float a, Float b) { return Float(_mm512_max_ps(a.v, b.v)); }
CX_INLINE Float min(Float a, Float b) { return Float(_mm512_min_ps(a.v, b.v)); }
#else
CX_INLINE Mask operator==(Int a, Int b) { return {a.v == b.v}; }
CX_INLINE Mask operator<(Int a, Int b) { return {a.v < b.v}; }
CX_INLINE Mask operator>(Float a, Float b) { return {a.v > b.v}; }
CX_INLINE Mask operator>=(Float a, Float b) { return {a.v >= b.v}; }
CX_INLINE Mask operator<(Float a, Float b) { return {a.v < b.v}; }
CX_INLINE Mask operator==(Float a, Float b) { return {a.v == b.v}; }
CX_INLINE Float select(Mask m, Float a, Float b) { return Float(m.v ? a.v : b.v); }
CX_INLINE Int select(Mask m, Int a, Int b) { return Int(m.v ? a.v : b.v); }
CX_INLINE Float add_where(Mask m, Float acc, Float v) { return acc + select(m, v, Float(0.0f)); }
CX_INLINE Float max(Float a, Float b) { return select(a > b, a, b); }
CX_INLINE Float min(Float a, Float b) { return select(a < b, a, b); }
#endif
CX_INLINE Float fabs(Float x) { return Float(__builtin_bit_cast(vf, __builtin_bit_cast(vu, x.v) & 0x7fffffffu)); }
CX_INLINE vu bits(Float x) { return __builtin_bit_cast(vu, x.v); }
CX_INLINE Float from_bits(vu u) { return Float(__builtin_bit_cast(vf, u)); }
CX_INLINE Float to_float(Int i) { return Float(__builtin_convertvector(i.v, vf)); }

CX_INLINE Int iota() {
  vi r;
  for (int i = 0; i < kLanes; ++i) r[i] = i;
  return Int(r);
}

// Lanes [0, count) set.
CX_INLINE Mask first_lanes(int64_t count) { return iota() < Int(static_cast<int32_t>(count)); }

// ---------------------------------------------------------------------------------------
// Loads and stores, converting storage types to float and rounding back to nearest even.

CX_INLINE Float load(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return Float(v);
}
CX_INLINE Float load(const bf16* p) {
  vh h;
  memcpy(&h, p, sizeof h);
  return from_bits(__builtin_convertvector(h, vu) << 16);
}
CX_INLINE Float load(const f16* p) {
#if defined(__AVX512F__)
  return Float(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX2__)
  return Float(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  vf v;
  for (int i = 0; i < kLanes; ++i) v[i] = to_acc(p[i]);
  return Float(v);
#endif
}

// bf16 bits of x, as from_acc<bf16>: rounded to nearest even, NaN stays (quiet) NaN.
CX_INLINE vh bf16_bits(Float x) {
  const vu u = bits(x);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu quiet = (u >> 16) | 0x40u;
  const vi nan = __builtin_bit_cast(vi, u & 0x7fffffffu) > 0x7f800000;
  return __builtin_convertvector(nan ? quiet : rounded, vh);
}

#if defined(__AVX512BF16__)
// AVX512-BF16 rounds to nearest even in one instruction but flushes subnormal inputs to
// zero: a vector holding one takes the exact path.
CX_INLINE vh bf16_bits_fast(Float x) {
  if (_mm512_fpclass_ps_mask(x.v, 0x20) != 0) return bf16_bits(x);
  return reinterpret_cast<vh>(_mm512_cvtneps_pbh(x.v));
}
#else
CX_INLINE vh bf16_bits_fast(Float x) { return bf16_bits(x); }
#endif

CX_INLINE void store(float* p, Float x) { memcpy(p, &x.v, sizeof x.v); }
CX_INLINE void store(bf16* p, Float x) {
  const vh h = bf16_bits_fast(x);
  memcpy(p, &h, sizeof h);
}
CX_INLINE void store(f16* p, Float x) {
#if defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX2__)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int i = 0; i < kLanes; ++i) p[i] = from_acc<f16>(x.v[i]);
#endif
}

// The first `count` (< kLanes) elements; the other lanes hold `pad`. AVX-512 masks the
// memory access; elsewhere a copy through a lane-sized buffer.
#if defined(__AVX512F__)
CX_INLINE __mmask16 first_mask(int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}
CX_INLINE Float load_first(const float* p, int64_t count, float pad) {
  return Float(_mm512_mask_loadu_ps(_mm512_set1_ps(pad), first_mask(count), p));
}
CX_INLINE __m256i load_first_bits(const uint16_t* p, int64_t count, uint16_t pad) {
  return _mm256_mask_loadu_epi16(_mm256_set1_epi16(static_cast<int16_t>(pad)),
                                 first_mask(count), p);
}
CX_INLINE Float load_first(const bf16* p, int64_t count, bf16 pad) {
  const __m256i h = load_first_bits(reinterpret_cast<const uint16_t*>(p), count, pad.bits);
  return from_bits(__builtin_bit_cast(vu, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
}
CX_INLINE Float load_first(const f16* p, int64_t count, f16 pad) {
  return Float(
      _mm512_cvtph_ps(load_first_bits(reinterpret_cast<const uint16_t*>(p), count, pad.bits)));
}
CX_INLINE void store_first(float* p, Float x, int64_t count) {
  _mm512_mask_storeu_ps(p, first_mask(count), x.v);
}
CX_INLINE void store_first(bf16* p, Float x, int64_t count) {
  _mm256_mask_storeu_epi16(p, first_mask(count), __builtin_bit_cast(__m256i, bf16_bits_fast(x)));
}
CX_INLINE void store_first(f16* p, Float x, int64_t count) {
  _mm256_mask_storeu_epi16(p, first_mask(count),
                           _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
template <typename T>
CX_INLINE Float load_first(const T* p, int64_t count, T pad) {
  T buf[kLanes];
  for (int i = 0; i < kLanes; ++i) buf[i] = i < count ? p[i] : pad;
  return load(buf);
}
template <typename T>
CX_INLINE void store_first(T* p, Float x, int64_t count) {
  T buf[kLanes];
  store(buf, x);
  for (int64_t i = 0; i < count; ++i) p[i] = buf[i];
}
#endif

// A streaming (non-temporal) store of a whole vector of floats to an address aligned to its
// size: the line goes to memory without being read first. An ordinary store fetches each
// line of a large output for ownership, a third of the traffic of a read-once, write-once
// pass. Builds without them (baseline) store normally.
#if defined(__AVX512F__) || defined(__AVX2__)
constexpr bool kStreams = true;
#else
constexpr bool kStreams = false;
#endif

CX_INLINE void store_stream(float* p, Float x) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, x.v);
#elif defined(__AVX2__)
  _mm256_stream_ps(p, x.v);
#else
  store(p, x);
#endif
}
// Orders this thread's streaming stores before its later stores (the thread pool's handoff).
CX_INLINE void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX2__)
  _mm_sfence();
#endif
}

CX_INLINE Int load_int(const int32_t* p) {
  vi v;
  memcpy(&v, p, sizeof v);
  return Int(v);
}

// base[index[i]] per lane.
CX_INLINE Float gather(const float* base, Int index) {
#if defined(__AVX512F__)
  return Float(_mm512_i32gather_ps(reinterpret_cast<__m512i>(index.v), base, 4));
#elif defined(__AVX2__)
  return Float(_mm256_i32gather_ps(base, reinterpret_cast<__m256i>(index.v), 4));
#else
  vf r;
  for (int i = 0; i < kLanes; ++i) r[i] = base[index.v[i]];
  return Float(r);
#endif
}

// base[index[i]] where m is set, 0 elsewhere (no load there).
CX_INLINE Float gather_where(const float* base, Int index, Mask m) {
#if defined(__AVX512F__)
  return Float(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m.k,
                                        reinterpret_cast<__m512i>(index.v), base, 4));
#elif defined(__AVX2__)
  return Float(_mm256_mask_i32gather_ps(_mm256_setzero_ps(), base,
                                        reinterpret_cast<__m256i>(index.v),
                                        reinterpret_cast<__m256>(m.v), 4));
#else
  vf r;
  for (int i = 0; i < kLanes; ++i) r[i] = m.v[i] != 0 ? base[index.v[i]] : 0.0f;
  return Float(r);
#endif
}

// v[i][l] = v[l][i]: log2(kLanes) stages, each swapping the off-diagonal B x B blocks of
// vector pairs (i, i + B) with two two-source shuffles per pair.
template <int B>
CX_INLINE void swap_blocks(Float* v) {
  vi low;
  vi high;
  for (int l = 0; l < kLanes; ++l) {
    const bool even = (l / B) % 2 == 0;
    low[l] = even ? l : kLanes + l - B;
    high[l] = even ? l + B : kLanes + l;
  }
  for (int i = 0; i < kLanes; ++i) {
    if ((i / B) % 2 != 0) continue;
    const vf a = __builtin_shuffle(v[i].v, v[i + B].v, low);
    const vf b = __builtin_shuffle(v[i].v, v[i + B].v, high);
    v[i] = Float(a);
    v[i + B] = Float(b);
  }
}
CX_INLINE void transpose(Float* v) {
  if constexpr (kLanes >= 16) swap_blocks<8>(v);
  if constexpr (kLanes >= 8) swap_blocks<4>(v);
  swap_blocks<2>(v);
  swap_blocks<1>(v);
}

// x[index[i]] per lane (index in [0, kLanes)).
CX_INLINE Float permute(Float x, Int index) { return Float(__builtin_shuffle(x.v, index.v)); }
CX_INLINE Int permute(Int x, Int index) { return Int(__builtin_shuffle(x.v, index.v)); }

// ---------------------------------------------------------------------------------------
// Horizontal reductions in a fixed tree order (the same for every lane count's halves),
// returned broadcast to every lane.

CX_INLINE Float reduce_max(Float x) {
  for (int step = kLanes / 2; step > 0; step /= 2) x = max(x, permute(x, Int(iota().v ^ step)));
  return x;
}
CX_INLINE Float reduce_add(Float x) {
  for (int step = kLanes / 2; step > 0; step /= 2) x = x + permute(x, Int(iota().v ^ step));
  return x;
}
CX_INLINE Float reduce_min(Float x) {
  for (int step = kLanes / 2; step > 0; step /= 2) x = min(x, permute(x, Int(iota().v ^ step)));
  return x;
}
CX_INLINE Int reduce_min(Int x) {
  for (int step = kLanes / 2; step > 0; step /= 2) {
    const Int y = permute(x, Int(iota().v ^ step));
    x = select(y < x, y, x);
  }
  return x;
}

// kLanes doubles: the wide accumulator of long sums.
struct Wide {
  vd v;
  Wide() = default;
  CX_INLINE Wide(double s) : v(vd{} + s) {}  // NOLINT: broadcasts like a scalar
  CX_INLINE explicit Wide(vd x) : v(x) {}
};
CX_INLINE Wide widen(Float x) { return Wide(__builtin_convertvector(x.v, vd)); }
CX_INLINE Wide operator+(Wide a, Wide b) { return Wide(a.v + b.v); }
CX_INLINE Wide operator*(Wide a, Wide b) { return Wide(a.v * b.v); }
CX_INLINE double reduce_add(Wide x) {
  vl lane;
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  for (int step = kLanes / 2; step > 0; step /= 2) x = x + Wide(__builtin_shuffle(x.v, lane ^ step));
  return x.v[0];
}

// ---------------------------------------------------------------------------------------
// Elementary functions (float packs), vectorizable polynomials. The polynomials are
// evaluated in Estrin's scheme (pairs of terms, then powers of x): a small-C tile's and a
// sigmoid element's work is one chain of exp, log and reciprocal, so the chain's length,
// not its operation count, sets their speed (Horner's chains, 6 steps for exp and 9 for
// log, took 1.03-1.08x the time at C = 2-100 and in the sigmoid loop).

// exp(x) for x <= 0: Cephes' polynomial on x - n ln2, times 2^n. Results below float's
// normal range flush to 0 (-inf included), or with AVX-512's scalef round to subnormals.
// NaN gives NaN (the kernels' non-finite check relies on it).
CX_INLINE Float exp_polynomial(Float r) {
  const Float r2 = r * r;
  const Float p01 = Float(1.6666665459e-1f) * r + 5.0000001201e-1f;
  const Float p23 = Float(8.3334519073e-3f) * r + 4.1665795894e-2f;
  const Float p45 = Float(1.9875691500e-4f) * r + 1.3981999507e-3f;
  const Float poly = (p45 * r2 + p23) * r2 + p01;
  return (poly * r2 + r) + 1.0f;
}
CX_INLINE Float exp_nonpositive(Float x) {
#if defined(__AVX512F__)
  const Float clamped = max(Float(-104.0f), x);  // exp(-104) < 2^-150: scalef rounds it to 0
  const Float n(_mm512_roundscale_ps((clamped * 1.44269504088896341f).v,
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const Float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
  return Float(_mm512_scalef_ps(exp_polynomial(r).v, n.v));
#else
  const Mask underflow = x < Float(-87.0f);
  const Float clamped = select(underflow, Float(-87.0f), x);
  const Float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const Float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
  const vi exponent = __builtin_convertvector(n.v, vi) + 127;
  const Float scale = from_bits(__builtin_bit_cast(vu, exponent << 23));
  return select(underflow, Float(0.0f), exp_polynomial(r) * scale);
#endif
}

// log(u * 2^exponent) for u in [1, 2): Cephes' logf polynomial around 1 or sqrt(2), with ln 2
// split in two so the exponent term adds no rounding error.
CX_INLINE Float log_scaled(Float u, Float exponent) {
  const Mask high = u > Float(1.41421356f);
  const Float x = select(high, u * 0.5f - 1.0f, u - 1.0f);
  const Float k = exponent + select(high, Float(1.0f), Float(0.0f));
  const Float z = x * x;
  const Float z2 = z * z;
  const Float p01 = Float(-2.4999993993e-1f) * x + 3.3333331174e-1f;
  const Float p23 = Float(-1.6668057665e-1f) * x + 2.0000714765e-1f;
  const Float p45 = Float(-1.2420140846e-1f) * x + 1.4249322787e-1f;
  const Float p67 = Float(-1.1514610310e-1f) * x + 1.1676998740e-1f;
  const Float high_terms = (Float(7.0376836292e-2f) * z2 + (p67 * z + p45)) * z2;
  Float y = high_terms + (p23 * z + p01);
  y = y * x * z;
  y = y + k * -2.12194440e-4f;
  y = y - z * 0.5f;
  return x + y + k * 0.693359375f;
}

// log(x) for finite x > 0, subnormals included: AVX-512 splits x into exponent and
// mantissa in two instructions (getexp, getmant), elsewhere by bits (subnormals rescaled).
CX_INLINE Float log_positive(Float x) {
#if defined(__AVX512F__)
  return log_scaled(Float(_mm512_getmant_ps(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero)),
                    Float(_mm512_getexp_ps(x.v)));
#else
  const Mask tiny = x < Float(1.17549435e-38f);
  const Float scaled = select(tiny, x * 8388608.0f, x);  // 2^23
  const vu b = bits(scaled);
  const Float exponent = to_float(Int(__builtin_bit_cast(vi, b >> 23) - 127)) -
                         select(tiny, Float(23.0f), Float(0.0f));
  return log_scaled(from_bits((b & 0x7fffffu) | 0x3f800000u), exponent);
#endif
}

// 1 / x for x >= 1 (finite) to float precision: AVX-512's 14-bit estimate and one Newton
// step; a division elsewhere.
CX_INLINE Float reciprocal(Float x) {
#if defined(__AVX512F__)
  const Float r(_mm512_rcp14_ps(x.v));
  return r * (Float(2.0f) - x * r);
#else
  return Float(1.0f) / x;
#endif
}

// expm1(x) for x <= 0 (-inf included): exp(x) - 1 loses nothing below -0.35 (the result is
// below -0.29); above, the Taylor series to x^9 is exact to float precision.
CX_INLINE Float expm1_nonpositive(Float x) {
  Float series = 1.0f / 362880.0f;
  series = series * x + 1.0f / 40320.0f;
  series = series * x + 1.0f / 5040.0f;
  series = series * x + 1.0f / 720.0f;
  series = series * x + 1.0f / 120.0f;
  series = series * x + 1.0f / 24.0f;
  series = series * x + 1.0f / 6.0f;
  series = series * x + 0.5f;
  const Mask far = x < Float(-0.35f);
  const Float near_x = select(far, Float(0.0f), x);
  series = series * near_x * near_x + near_x;
  return select(far, exp_nonpositive(x) - 1.0f, series);
}

// row_math.h's elementary functions for float packs.
struct PackMath {
  static CX_INLINE Float exp(Float x) { return exp_nonpositive(x); }
  static CX_INLINE Float log(Float x) { return log_positive(x); }
  static CX_INLINE Float expm1(Float x) { return expm1_nonpositive(x); }
  static CX_INLINE Float reciprocal(Float x) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::reciprocal(x);
  }
  static CX_INLINE Float select(Mask c, Float a, Float b) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::select(c, a, b);
  }
  static CX_INLINE Int select(Mask c, Int a, Int b) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::select(c, a, b);
  }
  static CX_INLINE Float max(Float a, Float b) { return ::costxent::cpu::COSTXENT_CPU_ISA::max(a, b); }
  static CX_INLINE Float min(Float a, Float b) { return ::costxent::cpu::COSTXENT_CPU_ISA::min(a, b); }
};

// ---------------------------------------------------------------------------------------
// The one-lane double pack: float64 problems run the same kernels over libm.

struct Dbl {
  double v;
  Dbl() = default;
  CX_INLINE Dbl(double s) : v(s) {}  // NOLINT: like a scalar
};
struct IntD {
  int32_t v;
  IntD() = default;
  CX_INLINE IntD(int32_t s) : v(s) {}  // NOLINT: like a scalar
};
CX_INLINE Dbl operator+(Dbl a, Dbl b) { return a.v + b.v; }
CX_INLINE Dbl operator-(Dbl a, Dbl b) { return a.v - b.v; }
CX_INLINE Dbl operator*(Dbl a, Dbl b) { return a.v * b.v; }
CX_INLINE Dbl operator/(Dbl a, Dbl b) { return a.v / b.v; }
CX_INLINE Dbl operator-(Dbl a) { return -a.v; }
CX_INLINE Dbl& operator+=(Dbl& a, Dbl b) { return a = a + b; }
CX_INLINE bool operator>(Dbl a, Dbl b) { return a.v > b.v; }
CX_INLINE bool operator>=(Dbl a, Dbl b) { return a.v >= b.v; }
CX_INLINE bool operator<(Dbl a, Dbl b) { return a.v < b.v; }
CX_INLINE bool operator==(Dbl a, Dbl b) { return a.v == b.v; }
CX_INLINE IntD operator+(IntD a, IntD b) { return a.v + b.v; }
CX_INLINE IntD operator*(IntD a, IntD b) { return a.v * b.v; }
CX_INLINE bool operator==(IntD a, IntD b) { return a.v == b.v; }
CX_INLINE bool operator<(IntD a, IntD b) { return a.v < b.v; }
CX_INLINE Dbl select(bool m, Dbl a, Dbl b) { return m ? a : b; }
CX_INLINE IntD select(bool m, IntD a, IntD b) { return m ? a : b; }
CX_INLINE double select(bool m, double a, double b) { return m ? a : b; }
CX_INLINE Dbl fabs(Dbl x) { return std::fabs(x.v); }
CX_INLINE bool any(bool m) { return m; }
CX_INLINE bool lane_set(bool m, int) { return m; }
CX_INLINE Dbl max(Dbl a, Dbl b) { return a.v > b.v ? a : b; }
CX_INLINE Dbl min(Dbl a, Dbl b) { return a.v < b.v ? a : b; }
CX_INLINE Dbl add_where(bool m, Dbl acc, Dbl v) { return m ? acc + v : acc; }

struct DblMath {
  static CX_INLINE Dbl exp(Dbl x) { return std::exp(x.v); }
  static CX_INLINE Dbl log(Dbl x) { return std::log(x.v); }
  static CX_INLINE Dbl expm1(Dbl x) { return std::expm1(x.v); }
  static CX_INLINE Dbl reciprocal(Dbl x) { return 1.0 / x.v; }
  static CX_INLINE Dbl select(bool c, Dbl a, Dbl b) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::select(c, a, b);
  }
  static CX_INLINE IntD select(bool c, IntD a, IntD b) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::select(c, a, b);
  }
  static CX_INLINE Dbl max(Dbl a, Dbl b) { return ::costxent::cpu::COSTXENT_CPU_ISA::max(a, b); }
  static CX_INLINE Dbl min(Dbl a, Dbl b) { return ::costxent::cpu::COSTXENT_CPU_ISA::min(a, b); }
};

// What a kernel needs to know about its arithmetic: the pack, index and mask types, the
// accumulator of long sums and the math policy.
template <typename A>
struct Packs;

template <>
struct Packs<float> {
  using F = Float;
  using I = Int;
  using M = Mask;
  using W = Wide;
  using Math = PackMath;
  static constexpr int kLanes = ::costxent::cpu::COSTXENT_CPU_ISA::kLanes;
  template <typename T>
  static CX_INLINE F load(const T* p) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::load(p);
  }
  template <typename T>
  static CX_INLINE F load_first(const T* p, int64_t count, T pad) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::load_first(p, count, pad);
  }
  template <typename T>
  static CX_INLINE void store(T* p, F x) {
    ::costxent::cpu::COSTXENT_CPU_ISA::store(p, x);
  }
  template <typename T>
  static CX_INLINE void store_first(T* p, F x, int64_t count) {
    ::costxent::cpu::COSTXENT_CPU_ISA::store_first(p, x, count);
  }
  static constexpr bool kStreams = ::costxent::cpu::COSTXENT_CPU_ISA::kStreams;
  static CX_INLINE void store_stream(float* p, F x) {
    ::costxent::cpu::COSTXENT_CPU_ISA::store_stream(p, x);
  }
  static CX_INLINE I iota() { return ::costxent::cpu::COSTXENT_CPU_ISA::iota(); }
  static CX_INLINE M first_lanes(int64_t n) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::first_lanes(n);
  }
  static CX_INLINE F gather(const float* base, I index) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::gather(base, index);
  }
  static CX_INLINE F gather_where(const float* base, I index, M m) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::gather_where(base, index, m);
  }
  static CX_INLINE F reduce_max(F x) { return ::costxent::cpu::COSTXENT_CPU_ISA::reduce_max(x); }
  static CX_INLINE F reduce_min(F x) { return ::costxent::cpu::COSTXENT_CPU_ISA::reduce_min(x); }
  static CX_INLINE F reduce_add(F x) { return ::costxent::cpu::COSTXENT_CPU_ISA::reduce_add(x); }
  static CX_INLINE I reduce_min(I x) { return ::costxent::cpu::COSTXENT_CPU_ISA::reduce_min(x); }
  static CX_INLINE W widen(F x) { return ::costxent::cpu::COSTXENT_CPU_ISA::widen(x); }
  static CX_INLINE double sum_wide(W x) { return ::costxent::cpu::COSTXENT_CPU_ISA::reduce_add(x); }
  static CX_INLINE I to_index(F x) { return I(__builtin_convertvector(x.v, vi)); }
  static CX_INLINE float lane0(F x) { return x.v[0]; }
  static CX_INLINE float lane(F x, int64_t i) { return x.v[i]; }
  static CX_INLINE int32_t lane0(I x) { return x.v[0]; }
};

template <>
struct Packs<double> {
  using F = Dbl;
  using I = IntD;
  using M = bool;
  using W = double;
  using Math = DblMath;
  static constexpr int kLanes = 1;
  static CX_INLINE F load(const double* p) { return *p; }
  static CX_INLINE F load_first(const double* p, int64_t, double) { return *p; }
  static CX_INLINE void store(double* p, F x) { *p = x.v; }
  static CX_INLINE void store_first(double* p, F x, int64_t) { *p = x.v; }
  static constexpr bool kStreams = false;
  static CX_INLINE I iota() { return 0; }
  static CX_INLINE M first_lanes(int64_t n) { return n > 0; }
  static CX_INLINE F gather(const double* base, I index) { return base[index.v]; }
  static CX_INLINE F gather_where(const double* base, I index, M m) {
    return m ? base[index.v] : 0.0;
  }
  static CX_INLINE F reduce_max(F x) { return x; }
  static CX_INLINE F reduce_min(F x) { return x; }
  static CX_INLINE F reduce_add(F x) { return x; }
  static CX_INLINE I reduce_min(I x) { return x; }
  static CX_INLINE W widen(F x) { return x.v; }
  static CX_INLINE double sum_wide(W x) { return x; }
  static CX_INLINE I to_index(F x) { return static_cast<int32_t>(x.v); }
  static CX_INLINE double lane0(F x) { return x.v; }
  static CX_INLINE double lane(F x, int64_t) { return x.v; }
  static CX_INLINE int32_t lane0(I x) { return x.v; }
};

// ---------------------------------------------------------------------------------------
// Two rows side by side: a value of each, every operation applied to both. A row of about
// a hundred classes is one chain (max, exp sums, log) longer than the out-of-order window
// overlaps with the next row's; walking rows in pairs runs two such chains at once.

template <typename V>
struct Two {
  V r[2];
  Two() = default;
  CX_INLINE Two(V a, V b) : r{a, b} {}
  template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>
  CX_INLINE Two(S s) : r{V(s), V(s)} {}  // NOLINT: broadcasts like a scalar

  friend CX_INLINE Two operator+(Two a, Two b) { return {a.r[0] + b.r[0], a.r[1] + b.r[1]}; }
  friend CX_INLINE Two operator-(Two a, Two b) { return {a.r[0] - b.r[0], a.r[1] - b.r[1]}; }
  friend CX_INLINE Two operator*(Two a, Two b) { return {a.r[0] * b.r[0], a.r[1] * b.r[1]}; }
  friend CX_INLINE Two operator/(Two a, Two b) { return {a.r[0] / b.r[0], a.r[1] / b.r[1]}; }
  friend CX_INLINE Two operator-(Two a) { return {-a.r[0], -a.r[1]}; }
  friend CX_INLINE Two& operator+=(Two& a, Two b) { return a = a + b; }
  friend CX_INLINE Two operator&(Two a, Two b) { return {a.r[0] & b.r[0], a.r[1] & b.r[1]}; }
  friend CX_INLINE Two operator|(Two a, Two b) { return {a.r[0] | b.r[0], a.r[1] | b.r[1]}; }
  friend CX_INLINE Two operator!(Two a) { return {!a.r[0], !a.r[1]}; }
#define CX_TWO_COMPARISON(OP)                                                     \
  friend CX_INLINE auto operator OP(Two a, Two b) {                               \
    return Two<decltype(a.r[0] OP b.r[0])>{a.r[0] OP b.r[0], a.r[1] OP b.r[1]}; \
  }
  CX_TWO_COMPARISON(>)
  CX_TWO_COMPARISON(>=)
  CX_TWO_COMPARISON(<)
  CX_TWO_COMPARISON(==)
#undef CX_TWO_COMPARISON
};

// Row r's value: x itself for one row.
template <typename V>
CX_INLINE V& part(V& x, int) {
  return x;
}
template <typename V>
CX_INLINE V& part(Two<V>& x, int r) {
  return x.r[r];
}
template <typename V>
CX_INLINE const V& part(const V& x, int) {
  return x;
}
template <typename V>
CX_INLINE const V& part(const Two<V>& x, int r) {
  return x.r[r];
}

// row_math.h's rounded(): the product stays as rounded, in a register the compiler cannot
// see into, so it is never fused into an FMA.
CX_INLINE Float rounded(Float x) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(x.v));
#elif defined(__aarch64__)
  __asm__("" : "+w"(x.v));
#endif
  return x;
}
template <typename V>
CX_INLINE Two<V> rounded(Two<V> x) {
  return {rounded(x.r[0]), rounded(x.r[1])};
}

// row_math.h's policy for two rows: Math on each.
template <typename Math>
struct TwoMath {
#define CX_TWO_UNARY(NAME)                             \
  template <typename V>                                \
  static CX_INLINE Two<V> NAME(Two<V> x) {             \
    return {Math::NAME(x.r[0]), Math::NAME(x.r[1])};   \
  }
#define CX_TWO_BINARY(NAME)                                        \
  template <typename V>                                            \
  static CX_INLINE Two<V> NAME(Two<V> a, Two<V> b) {               \
    return {Math::NAME(a.r[0], b.r[0]), Math::NAME(a.r[1], b.r[1])}; \
  }
  CX_TWO_UNARY(exp)
  CX_TWO_UNARY(log)
  CX_TWO_UNARY(expm1)
  CX_TWO_UNARY(reciprocal)
  CX_TWO_BINARY(max)
  CX_TWO_BINARY(min)
#undef CX_TWO_UNARY
#undef CX_TWO_BINARY
  template <typename M, typename V>
  static CX_INLINE Two<V> select(Two<M> c, Two<V> a, Two<V> b) {
    return {Math::select(c.r[0], a.r[0], b.r[0]), Math::select(c.r[1], a.r[1], b.r[1])};
  }
};

// The value, index and math types of kRows rows walked together (Packs<A> for one).
template <typename A, int kRows>
struct RowPacks : Packs<A> {};
template <typename A>
struct RowPacks<A, 2> {
  using F = Two<typename Packs<A>::F>;
  using I = Two<typename Packs<A>::I>;
  using Math = TwoMath<typename Packs<A>::Math>;
};

}  // namespace COSTXENT_CPU_ISA
}  // namespace cpu
}  // namespace costxent
