// CPU kernels, compiled once per instruction set (COSTXENT_CPU_ISA names the namespace).
//
// A softmax row is walked in cache: pass 1 reads the logits from memory (max, finiteness),
// pass 2 stores exp(z - max) in a per-thread scratch row, the last pass writes the gradient.
// Reductions use `omp simd` (with -fopenmp-simd, no OpenMP runtime) so they vectorize
// without -ffast-math; their order is fixed at compile time, so results are bitwise
// reproducible. No standard-library template is instantiated here: an AVX2 copy of one
// could be chosen by the linker for the baseline build.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cc/core/cpu_isa.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/row_math.h"

#ifndef COSTXENT_CPU_ISA
#error "COSTXENT_CPU_ISA must name the instruction-set namespace"
#endif

COSTXENT_DECLARE_CPU_ISA(COSTXENT_CPU_ISA)

namespace costxent {
namespace cpu {
namespace COSTXENT_CPU_ISA {
namespace {

#define CX_INLINE inline __attribute__((always_inline))

// Branch-free float select. GCC does not if-convert `c ? a : b` on floats inside these
// loops (it keeps a branch and gives up vectorizing), but it vectorizes bit operations.
CX_INLINE float select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return __builtin_bit_cast(float, (__builtin_bit_cast(uint32_t, a) & mask) |
                                       (__builtin_bit_cast(uint32_t, b) & ~mask));
}
CX_INLINE double select(bool c, double a, double b) { return c ? a : b; }

// exp(x) for x <= 0 in float: Cephes' polynomial on x - n ln2, 2^n built from bits.
// Results below float's normal range flush to 0; NaN in gives garbage, which callers never
// use (a row with a non-finite logit is written as NaN before any exp is read).
CX_INLINE float exp_nonpositive(float x) {
  const bool underflow = x < -87.0f;
  const float clamped = select(underflow, -87.0f, x);
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const uint32_t biased = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return select(underflow, 0.0f, poly * __builtin_bit_cast(float, biased));
}

CX_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// log(u * 2^exponent) for u in [1, 2]: Cephes' logf polynomial around 1 or sqrt(2), with
// ln 2 split in two so the exponent term adds no rounding error.
CX_INLINE float log_scaled(float u, float exponent) {
  const bool high = u > 1.41421356f;
  const float x = select(high, u * 0.5f - 1.0f, u - 1.0f);
  const float k = exponent + select(high, 1.0f, 0.0f);
  const float z = x * x;
  float y = 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y += -2.12194440e-4f * k;
  y += -0.5f * z;
  return x + y + 0.693359375f * k;
}

// log(x) for a positive normal float (a softmax denominator, >= 1).
CX_INLINE float log_positive(float x) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, x);
  const float exponent = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127);
  return log_scaled(__builtin_bit_cast(float, (bits & 0x7fffffu) | 0x3f800000u), exponent);
}

CX_INLINE double log_positive(double x) { return std::log(x); }

// log1p(e) for e in [0, 1]; log(u) * e / (u - 1) undoes the rounding of u = 1 + e.
CX_INLINE float log1p_unit(float e) {
  const float u = 1.0f + e;
  const float d = u - 1.0f;
  const bool exact = d == 0.0f;
  return select(exact, e, log_scaled(u, 0.0f) * (e / select(exact, 1.0f, d)));
}

CX_INLINE double log1p_unit(double e) { return std::log1p(e); }

// expm1(x) for x <= 0: exp(x) - 1 loses nothing below -0.35 (the result is below -0.29);
// above, the Taylor series to x^9 is exact to float precision.
CX_INLINE float expm1_nonpositive(float x) {
  float series = 1.0f / 362880.0f;
  series = series * x + 1.0f / 40320.0f;
  series = series * x + 1.0f / 5040.0f;
  series = series * x + 1.0f / 720.0f;
  series = series * x + 1.0f / 120.0f;
  series = series * x + 1.0f / 24.0f;
  series = series * x + 1.0f / 6.0f;
  series = series * x + 0.5f;
  series = series * x * x + x;
  return select(x < -0.35f, exp_nonpositive(x) - 1.0f, series);
}

CX_INLINE double expm1_nonpositive(double x) { return std::expm1(x); }

// row_math.h's elementary functions as vectorizable polynomials (float) or libm (double).
struct FastMath {
  template <typename A>
  static CX_INLINE A exp(A x) {
    return exp_nonpositive(x);
  }
  template <typename A>
  static CX_INLINE A log(A x) {
    return log_positive(x);
  }
  template <typename A>
  static CX_INLINE A log1p(A x) {
    return log1p_unit(x);
  }
  template <typename A>
  static CX_INLINE A expm1(A x) {
    return expm1_nonpositive(x);
  }
  template <typename A>
  static CX_INLINE A select(bool c, A a, A b) {
    return ::costxent::cpu::COSTXENT_CPU_ISA::select(c, a, b);
  }
};

// Per-example weight w_i from the unsmoothed target (DESIGN 2.1): sum_k t_k a_k for class
// weights, sum_k t_k M[k, jhat] for a cost matrix, one entry for sparse label y; 1 without
// weights. target(k) gives t_k of a dense row.
template <typename T, typename A, typename Target>
CX_INLINE A example_weight(const SoftmaxProblem<T, A>& p, int64_t y, int64_t jhat,
                           Target target) {
  if (p.weight_mode == WeightMode::kNone) return A(1);
  const bool cost = p.weight_mode == WeightMode::kCost;
  const int64_t stride = cost ? p.c : 1;
  const int64_t column = cost ? jhat : 0;
  if (p.dense == nullptr) return p.weights[y * stride + column];
  A w = 0;
  for (int64_t k = 0; k < p.c; ++k) w += target(k) * p.weights[k * stride + column];
  return w;
}

template <typename T, typename A>
CX_INLINE void fill_row(T* out, int64_t c, A value) {
  const T v = from_acc<T>(value);
  for (int64_t j = 0; j < c; ++j) out[j] = v;
}

// One softmax row. `e` and `aux` are scratch rows of c values.
template <typename T, typename A>
CX_INLINE void softmax_row(const SoftmaxProblem<T, A>& p, int64_t row, int64_t y, A* e,
                           A* aux) {
  const int64_t c = p.c;
  const T* z = p.logits + row * c;
  const T* t = p.dense != nullptr ? p.dense + row * c : nullptr;
  T* out = p.backprop != nullptr ? p.backprop + row * c : nullptr;
  const A eps = p.label_smoothing;
  const A inv_c = A(1) / static_cast<A>(c);

  // Pass 1: max, and a sum of (z - z) that is NaN iff some logit is NaN or infinite.
  A m = -INFINITY;
  A nonfinite = 0;
#pragma omp simd reduction(max : m) reduction(+ : nonfinite)
  for (int64_t j = 0; j < c; ++j) {
    const A v = to_acc(z[j]);
    m = v > m ? v : m;
    nonfinite += v - v;
  }
  if (!(nonfinite == A(0))) {
    const A nan = quiet_nan(A(0));
    p.loss[row] = nan;
    if (out != nullptr) fill_row(out, c, nan);
    return;
  }

  // Pass 2: e_j = exp(z_j - m), their sum, and sum_j zs_j (for smoothing).
  A sum = 0;
  A zs_sum = 0;
#pragma omp simd reduction(+ : sum, zs_sum)
  for (int64_t j = 0; j < c; ++j) {
    const A zs = to_acc(z[j]) - m;
    const A v = exp_nonpositive(zs);
    e[j] = v;
    sum += v;
    zs_sum += zs;
  }
  const A lse = std::log(sum);
  const A inv_sum = A(1) / sum;

  // The unsmoothed target's reductions: sum_j t_j, sum_j t_j zs_j.
  A t_sum = 1;
  A t_dot_zs = 0;
  if (t != nullptr) {
    t_sum = 0;
#pragma omp simd reduction(+ : t_sum, t_dot_zs)
    for (int64_t j = 0; j < c; ++j) {
      const A tj = to_acc(t[j]);
      t_sum += tj;
      t_dot_zs += tj * (to_acc(z[j]) - m);
    }
  } else {
    t_dot_zs = to_acc(z[y]) - m;
  }
  // Smoothed: S = (1 - eps) sum t + eps, sum ts zs = (1 - eps) sum t zs + eps/C sum zs.
  const A target_sum = (A(1) - eps) * t_sum + eps;
  const A target_dot_zs = (A(1) - eps) * t_dot_zs + eps * inv_c * zs_sum;
  const A ce = shifted_cross_entropy(target_sum, lse, target_dot_zs);
  auto target = [&](int64_t j) -> A {
    const A tj = t != nullptr ? to_acc(t[j]) : (j == y ? A(1) : A(0));
    return smooth_target(tj, eps, inv_c);
  };

  if (p.loss_kind == SoftmaxLoss::kExpectedCost) {
    // c_j = sum_k t_k M[k, j] from the unsmoothed target: M's row y, or a mix of rows.
    const A* cost = p.weights + (t == nullptr ? y * c : 0);
    if (t != nullptr) {
      for (int64_t j = 0; j < c; ++j) aux[j] = 0;
      for (int64_t k = 0; k < c; ++k) {
        const A tk = to_acc(t[k]);
        if (tk == A(0)) continue;
        const A* mk = p.weights + k * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) aux[j] += tk * mk[j];
      }
      cost = aux;
    }
    A expected = 0;
#pragma omp simd reduction(+ : expected)
    for (int64_t j = 0; j < c; ++j) expected += cost[j] * e[j];
    expected *= inv_sum;
    const A lam = p.ce_weight;
    p.loss[row] = expected + lam * ce;
    if (out == nullptr) return;
    for (int64_t j = 0; j < c; ++j)
      out[j] = from_acc<T>(
          expected_cost_grad(e[j] * inv_sum, cost[j], expected, lam, target(j), target_sum));
    return;
  }

  int64_t jhat = 0;
  if (p.weight_mode == WeightMode::kCost) {
    while (to_acc(z[jhat]) != m) ++jhat;  // lowest index on ties
  }
  const A w = example_weight(p, y, jhat, [&](int64_t k) { return to_acc(t[k]); });

  const A gamma = p.focal_gamma;
  if (gamma == A(0)) {
    p.loss[row] = w * ce;
    if (out == nullptr) return;
    if (t == nullptr) {
      const A off = eps * inv_c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) out[j] = from_acc<T>(w * (e[j] * inv_sum - off));
      out[y] = from_acc<T>(plain_grad(w, e[y] * inv_sum, target(y), A(1)));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j)
        out[j] = from_acc<T>(plain_grad(w, e[j] * inv_sum, target(j), target_sum));
    }
    return;
  }

  // Focal: sum_k ts_k phi_k and sum_k ts_k g_k over the classes with ts_k != 0.
  A loss = 0;
  A sum_ts_g = 0;
  if (t == nullptr && eps == A(0)) {
    const FocalTerms<A> f = focal_terms_with<FastMath>(to_acc(z[y]) - m - lse, gamma);
    loss = f.phi;
    sum_ts_g = f.g;
  } else {
    for (int64_t j = 0; j < c; ++j) {
      const A ts = target(j);
      const FocalTerms<A> f = focal_terms_with<FastMath>(to_acc(z[j]) - m - lse, gamma);
      aux[j] = f.g;
      loss += ts * f.phi;
      sum_ts_g += ts * f.g;
    }
  }
  p.loss[row] = w * loss;
  if (out == nullptr) return;
  if (t == nullptr && eps == A(0)) {
    for (int64_t j = 0; j < c; ++j) out[j] = from_acc<T>(-w * e[j] * inv_sum * sum_ts_g);
    out[y] = from_acc<T>(focal_grad(w, e[y] * inv_sum, A(1), sum_ts_g, sum_ts_g));
  } else {
    for (int64_t j = 0; j < c; ++j)
      out[j] = from_acc<T>(focal_grad(w, e[j] * inv_sum, target(j), aux[j], sum_ts_g));
  }
}

// Small C: a row is too short to vectorize along, and per-row overhead (reduction setup, a
// scalar log, a division) would dominate. A block of kBlockRows rows is transposed into
// [class][row] scratch so that every step below is a unit-stride loop over rows, the
// per-row log included. Same formulas (row_math.h) as softmax_row.
constexpr int64_t kSmallClasses = 32;
constexpr int64_t kBlockRows = 32;

template <typename A>
struct SmallBlock {
  A z[kSmallClasses][kBlockRows];    // logits, then z - max
  A e[kSmallClasses][kBlockRows];    // exp(z - max), then the gradient
  A t[kSmallClasses][kBlockRows];    // dense targets (unsmoothed)
  A aux[kSmallClasses][kBlockRows];  // expected costs c_j or focal g_j
  A m[kBlockRows], sum[kBlockRows], zs_sum[kBlockRows], nonfinite[kBlockRows];
  A inv_sum[kBlockRows], lse[kBlockRows], t_sum[kBlockRows], t_dot_zs[kBlockRows];
  A w[kBlockRows], loss[kBlockRows], acc[kBlockRows];
  int64_t y[kBlockRows];
  bool ignored[kBlockRows];
};

template <typename T, typename A>
CX_INLINE A small_target(const SoftmaxProblem<T, A>& p, const SmallBlock<A>& b, int64_t j,
                         int64_t r, A inv_c) {
  const A t = p.dense != nullptr ? b.t[j][r] : select(j == b.y[r], A(1), A(0));
  return smooth_target(t, p.label_smoothing, inv_c);
}

template <typename T, typename A>
void small_c_block(const SoftmaxProblem<T, A>& p, int64_t row0, int64_t rows, SmallBlock<A>& b) {
  const int64_t c = p.c;
  const A eps = p.label_smoothing;
  const A inv_c = A(1) / static_cast<A>(c);
  const bool dense = p.dense != nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const T* z = p.logits + (row0 + r) * c;
    for (int64_t j = 0; j < c; ++j) b.z[j][r] = to_acc(z[j]);
    if (dense) {
      const T* t = p.dense + (row0 + r) * c;
      for (int64_t j = 0; j < c; ++j) b.t[j][r] = to_acc(t[j]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    b.m[r] = -INFINITY;
    b.nonfinite[r] = 0;
    b.sum[r] = 0;
    b.zs_sum[r] = 0;
    b.t_sum[r] = dense ? A(0) : A(1);
    b.t_dot_zs[r] = 0;
  }
  for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const A v = b.z[j][r];
      b.m[r] = select(v > b.m[r], v, b.m[r]);
      b.nonfinite[r] += v - v;
    }
  }
  for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const A zs = b.z[j][r] - b.m[r];
      const A v = exp_nonpositive(select(b.nonfinite[r] == A(0), zs, A(0)));
      b.z[j][r] = zs;
      b.e[j][r] = v;
      b.sum[r] += v;
      b.zs_sum[r] += zs;
    }
  }
  if (dense) {
    for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r) {
        b.t_sum[r] += b.t[j][r];
        b.t_dot_zs[r] += b.t[j][r] * b.z[j][r];
      }
    }
  }
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    b.lse[r] = log_positive(b.sum[r]);
    b.inv_sum[r] = A(1) / b.sum[r];
  }
  if (!dense) {
    for (int64_t r = 0; r < rows; ++r) b.t_dot_zs[r] = b.z[b.y[r]][r];
  }
  // ce = S lse - sum ts zs, with S and sum ts zs from the unsmoothed sums (as softmax_row).
  for (int64_t r = 0; r < rows; ++r) {
    const A target_sum = (A(1) - eps) * b.t_sum[r] + eps;
    b.acc[r] = target_sum;
    b.loss[r] = shifted_cross_entropy(
        target_sum, b.lse[r], (A(1) - eps) * b.t_dot_zs[r] + eps * inv_c * b.zs_sum[r]);
  }

  if (p.loss_kind == SoftmaxLoss::kExpectedCost) {
    // aux[j][r] = c_j = sum_k t_k M[k, j]; E = sum_j c_j p_j.
    for (int64_t r = 0; r < rows; ++r) {
      A expected = 0;
      for (int64_t j = 0; j < c; ++j) {
        A cost = 0;
        if (dense) {
          for (int64_t k = 0; k < c; ++k) cost += b.t[k][r] * p.weights[k * c + j];
        } else {
          cost = p.weights[b.y[r] * c + j];
        }
        b.aux[j][r] = cost;
        expected += cost * b.e[j][r];
      }
      expected *= b.inv_sum[r];
      b.w[r] = expected;
      b.loss[r] = expected + p.ce_weight * b.loss[r];
    }
    for (int64_t j = 0; j < c; ++j) {
      for (int64_t r = 0; r < rows; ++r)
        b.e[j][r] = expected_cost_grad(b.e[j][r] * b.inv_sum[r], b.aux[j][r], b.w[r],
                                       p.ce_weight, small_target(p, b, j, r, inv_c), b.acc[r]);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      int64_t jhat = 0;
      if (p.weight_mode == WeightMode::kCost) {
        while (b.z[jhat][r] != A(0) && jhat + 1 < c) ++jhat;  // z - max == 0: lowest index
      }
      b.w[r] = example_weight(p, b.y[r], jhat, [&](int64_t k) { return b.t[k][r]; });
    }
    const A gamma = p.focal_gamma;
    if (gamma == A(0)) {
      for (int64_t r = 0; r < rows; ++r) b.loss[r] *= b.w[r];
      for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r)
          b.e[j][r] = plain_grad(b.w[r], b.e[j][r] * b.inv_sum[r],
                                 small_target(p, b, j, r, inv_c), b.acc[r]);
      }
    } else {
      // loss[r] becomes sum_j ts_j phi_j and acc[r] sum_j ts_j g_j.
      for (int64_t r = 0; r < rows; ++r) {
        b.loss[r] = 0;
        b.acc[r] = 0;
      }
      for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r) {
          const A ts = small_target(p, b, j, r, inv_c);
          const FocalTerms<A> f = focal_terms_with<FastMath>(b.z[j][r] - b.lse[r], gamma);
          b.aux[j][r] = f.g;
          b.loss[r] += ts * f.phi;
          b.acc[r] += ts * f.g;
        }
      }
      for (int64_t r = 0; r < rows; ++r) b.loss[r] *= b.w[r];
      for (int64_t j = 0; j < c; ++j) {
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r)
          b.e[j][r] = focal_grad(b.w[r], b.e[j][r] * b.inv_sum[r],
                                 small_target(p, b, j, r, inv_c), b.aux[j][r], b.acc[r]);
      }
    }
  }

  const A nan = quiet_nan(A(0));
  for (int64_t r = 0; r < rows; ++r) {
    const bool finite = b.nonfinite[r] == A(0);
    const A scale = b.ignored[r] ? A(0) : (finite ? A(1) : nan);
    p.loss[row0 + r] = b.ignored[r] ? A(0) : (finite ? b.loss[r] : nan);
    if (p.backprop == nullptr) continue;
    T* out = p.backprop + (row0 + r) * c;
    for (int64_t j = 0; j < c; ++j) out[j] = from_acc<T>(finite ? b.e[j][r] * scale : scale);
  }
}

template <typename T, typename A>
int64_t small_c_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end) {
  SmallBlock<A> block;
  for (int64_t row0 = begin; row0 < end; row0 += kBlockRows) {
    const int64_t rows = (end - row0) < kBlockRows ? (end - row0) : kBlockRows;
    for (int64_t r = 0; r < rows; ++r) {
      block.ignored[r] = false;
      block.y[r] = 0;
      if (p.dense != nullptr) continue;
      const int64_t y = label_at(p, row0 + r);
      if (p.has_ignore_class && y == p.ignore_class) {
        block.ignored[r] = true;
      } else if (y < 0 || y >= p.c) {
        return row0 + r;
      } else {
        block.y[r] = y;
      }
    }
    small_c_block(p, row0, rows, block);
  }
  return -1;
}

}  // namespace

template <typename T, typename A>
int64_t softmax_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end, A* scratch) {
  if (p.c <= kSmallClasses) return small_c_rows(p, begin, end);
  const int64_t c = p.c;
  const bool sparse = p.dense == nullptr;
  for (int64_t row = begin; row < end; ++row) {
    int64_t y = -1;
    if (sparse) {
      y = label_at(p, row);
      if (p.has_ignore_class && y == p.ignore_class) {
        p.loss[row] = 0;
        if (p.backprop != nullptr) fill_row(p.backprop + row * c, c, A(0));
        continue;
      }
      if (y < 0 || y >= c) return row;
    }
    softmax_row(p, row, y, scratch, scratch + c);
  }
  return -1;
}

// One row segment of the sigmoid loss; the options are template parameters so the loop
// has no branch left and vectorizes.
template <bool kBackprop, bool kFocal, typename T, typename A>
void sigmoid_segment(const SigmoidProblem<T, A>& p, int64_t k, int64_t first_class, int64_t count,
                     const A* pos, const A* neg) {
  const A eps = p.label_smoothing;
  const A gamma = p.focal_gamma;
  const T* z = p.logits + k;
  const T* labels = p.labels + k;
  A* loss = p.loss + k;
  T* out = p.backprop + k;
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const A zj = to_acc(z[j]);
    const A y = smooth_binary_label(to_acc(labels[j]), eps);
    const A a = pos[first_class + j];
    const A b = neg[first_class + j];
    const SigmoidTerms<A> s = sigmoid_terms_with<kFocal, FastMath>(zj, y, a, b, gamma);
    loss[j] = s.loss;
    if (kBackprop) out[j] = from_acc<T>(s.grad);
  }
}

template <typename T, typename A>
int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end, A* scratch) {
  // Validate first so the main loops have no early exit and vectorize.
  for (int64_t k = begin; k < end; ++k) {
    const A y = to_acc(p.labels[k]);
    if (y < A(0) || y > A(1)) return k;
  }
  // Per-class weights (broadcast from a scalar, or 1) repeated over a whole number of rows
  // at least kSigmoidMinSegment long, so a segment of the loop below spans many short rows.
  const int64_t period = sigmoid_weight_period(p.c);
  A* pos = scratch;
  A* neg = scratch + period;
  for (int64_t j = 0; j < period; ++j) {
    pos[j] = class_value(p.pos_weight, p.pos_weight_size, j % p.c);
    neg[j] = class_value(p.neg_weight, p.neg_weight_size, j % p.c);
  }
  const bool backprop = p.backprop != nullptr;
  const bool focal = p.focal_gamma != A(0);
  // Walk segments that start at any class and end at a row boundary (or at end), so the
  // weights' index is the inner loop's counter.
  for (int64_t k = begin; k < end;) {
    const int64_t first_class = k % p.c;
    const int64_t count = (period - first_class) < (end - k) ? (period - first_class) : (end - k);
    if (backprop && focal) {
      sigmoid_segment<true, true>(p, k, first_class, count, pos, neg);
    } else if (backprop) {
      sigmoid_segment<true, false>(p, k, first_class, count, pos, neg);
    } else if (focal) {
      sigmoid_segment<false, true>(p, k, first_class, count, pos, neg);
    } else {
      sigmoid_segment<false, false>(p, k, first_class, count, pos, neg);
    }
    k += count;
  }
  return -1;
}

template <typename T, typename A>
void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const A s = scale[row];
    const T* src = in + row * c;
    T* dst = out + row * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) dst[j] = from_acc<T>(to_acc(src[j]) * s);
  }
}

template <typename T, typename A>
void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t k = begin; k < end; ++k) out[k] = from_acc<T>(to_acc(in[k]) * scale[k]);
}

#define COSTXENT_INSTANTIATE(T, A)                                                         \
  template int64_t softmax_rows<T, A>(const SoftmaxProblem<T, A>&, int64_t, int64_t, A*); \
  template int64_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>&, int64_t, int64_t, A*); \
  template void scale_rows<T, A>(const T*, const A*, T*, int64_t, int64_t, int64_t);      \
  template void scale_elements<T, A>(const T*, const A*, T*, int64_t, int64_t);
COSTXENT_FOR_EACH_TYPE_PAIR(COSTXENT_INSTANTIATE)
#undef COSTXENT_INSTANTIATE

}  // namespace COSTXENT_CPU_ISA
}  // namespace cpu
}  // namespace costxent
