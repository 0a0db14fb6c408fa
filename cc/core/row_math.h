// The math of DESIGN section 2, written once as device-agnostic per-element and per-row
// functions. The CPU kernels (cpu_kernels.cc) and the CUDA kernels (cuda_kernels.cu) differ
// only in how they walk and reduce a row; every formula lives here. The templates run on
// scalars and on the CPU kernels' SIMD packs alike: comparisons are `auto` (a bool or a lane
// mask) and every choice goes through Math::select.
//
// Row notation: m = max_k z_k, zs_j = z_j - m (<= 0), e_j = exp(zs_j), p_j = e_j / sum.
// Linear terms use the half-shifted logits h_j = z_j / 2 - m / 2 (= zs_j / 2), which never
// overflow: zs_j itself is -inf for the valid row [3e38, -3e38], and a smoothing term
// eps / C * zs_j would then be 0 * -inf.
#pragma once

#include <cmath>
#include <cstdint>

#include "cc/core/numeric.h"
#include "cc/core/problem.h"

namespace costxent {

// std:: overloads keep float math in float (the global C functions take double);
// CUDA declares the same overloads for device code.
using std::exp;
using std::expm1;
using std::fabs;
using std::log;
using std::log1p;

// Elementary functions for the formulas below: the C++ library here (and CUDA's device
// functions); the CPU kernels pass a policy of vectorizable polynomials instead. exp is only
// called on arguments <= 0 (-inf included), expm1 on arguments <= 0 (-inf included), log on
// (0, inf) and reciprocal on [1, inf) (an approximation good to the type's precision will do);
// select, max and min are the row algorithm's lane-wise choices.
struct StdMath {
  template <typename A>
  static COSTXENT_HD A exp(A x) {
    return std::exp(x);
  }
  template <typename A>
  static COSTXENT_HD A log(A x) {
    return std::log(x);
  }
  template <typename A>
  static COSTXENT_HD A expm1(A x) {
    return std::expm1(x);
  }
  template <typename A>
  static COSTXENT_HD A reciprocal(A x) {
    return A(1) / x;
  }
  template <typename A>
  static COSTXENT_HD A select(bool c, A a, A b) {
    return c ? a : b;
  }
  // a > b ? a : b: a NaN in b is dropped, one in a kept (as the CPU's vector max); a row's
  // NaN surfaces in its exp sums instead.
  template <typename A>
  static COSTXENT_HD A max(A a, A b) {
    return a > b ? a : b;
  }
  template <typename A>
  static COSTXENT_HD A min(A a, A b) {
    return a < b ? a : b;
  }
};

// A product rounded before it meets another in a sum: left alone, the compiler fuses
// whichever product of `a * b + c * d` it meets first into an FMA, so two inlined copies of a
// formula (two rows walked together, a row alone) could round differently. The CPU's packs
// overload it with a register barrier; elsewhere it is the value itself.
template <typename A>
COSTXENT_HD A rounded(A x) {
  return x;
}

// Label smoothing: ts = (1 - eps) * t + eps / C.
template <typename A>
COSTXENT_HD A smooth_target(A t, A eps, A inv_c) {
  return (A(1) - eps) * t + rounded(eps * inv_c);
}

// The smoothed target's sum_j ts_j and sum_j ts_j x_j from the unsmoothed target's sums:
//   (1 - eps) sum_j t_j + eps  and  (1 - eps) sum_j t_j x_j + eps mean_j x_j.
// The mean is summed as sum_j (x_j / C): a sum of C half-shifted logits can leave the
// float range where their mean does not.
template <typename A>
COSTXENT_HD A smoothed_sum(A t_sum, A eps) {
  return (A(1) - eps) * t_sum + eps;
}
template <typename A>
COSTXENT_HD A smoothed_dot(A t_dot_x, A eps, A x_mean) {
  return (A(1) - eps) * t_dot_x + rounded(eps * x_mean);
}

// h = z / 2 - m / 2 given half_max = m / 2.
template <typename A>
COSTXENT_HD A half_shift(A z, A half_max) {
  return A(0.5) * z - half_max;
}

// log1p(x) for x >= 0 from u = 1 + x as rounded and 1 / u: log u corrected, to first order,
// for the rounding of u (u == 1 gives x exactly).
template <typename Math, typename A>
COSTXENT_HD A log1p_from(A x, A u, A inv_u) {
  return Math::log(u) - ((u - A(1)) - x) * inv_u;
}

// lse = log sum_j e_j and 1 / sum from the sum split as count + rest: `count` classes reach
// the max (e = 1 exactly, count >= 1) and `rest` sums the others. lse = log1p((count - 1) +
// rest) keeps a confident row's loss (lse ~ rest, far below float's epsilon) relatively
// accurate, where log(count + rest) would round it to 0.
template <typename A>
struct LogSumExp {
  A lse;
  A inv_sum;
};

template <typename Math, typename A>
COSTXENT_HD LogSumExp<A> log_sum_exp_with(A rest, A count) {
  const A sum = count + rest;
  const A inv_sum = Math::reciprocal(sum);
  return {log1p_from<Math>((count - A(1)) + rest, sum, inv_sum), inv_sum};
}

// Cross-entropy of a row against smoothed targets: sum_j ts_j (-log p_j)
//   = S * lse - sum_j ts_j zs_j = S * lse - 2 sum_j ts_j h_j, with S = sum_j ts_j
// (both terms >= 0: no cancellation).
template <typename A>
COSTXENT_HD A cross_entropy_half(A target_sum, A lse, A target_dot_half) {
  return target_sum * lse - rounded(A(2) * target_dot_half);
}

// d/dz_j of a weighted cross-entropy row w (p_j S - ts_j) (DESIGN 2.1), as k e_j - w ts_j
// with the row's k = w S / sum. w carries any output scaling. k e_j is rounded on its own:
// whether the compiler fuses it into an FMA depends on how the other uses of k e_j were
// simplified (a one-hot row reads one lane of its target's), which differs between rows
// walked alone, in pairs and from a saved state.
template <typename A>
COSTXENT_HD A plain_grad(A k, A e, A w_ts) {
  return rounded(k * e) - w_ts;
}

// Focal modulation for gamma > 0 (DESIGN 2.1), of p = exp(-2 half_nll):
//   phi(p) = -(1 - p)^gamma log p,  returned halved: half_phi = (1 - p)^gamma half_nll
//   g(p)   = p phi'(p) = gamma p (1 - p)^(gamma - 1) log p - (1 - p)^gamma
// half_nll = -log(p) / 2 = lse / 2 - h, finite for every finite row (-log p itself may
// exceed the float range). 1 - p is -expm1(log p), never a subtraction, and g is evaluated
// as -2 gamma (1-p)^gamma p (half_nll / (1-p)) - (1-p)^gamma so gamma in (0, 1) stays finite
// (half_nll / (1 - p) -> 1/2 as p -> 1) and p = 0 gives no 0 * inf.
template <typename A>
struct FocalTerms {
  A half_phi;
  A g;
};

template <typename Math, typename A>
COSTXENT_HD FocalTerms<A> focal_terms_with(A half_nll, A gamma) {
  const A logp = A(-2) * half_nll;  // -inf where p underflows; only exp and expm1 see it
  const A q = -Math::expm1(logp);
  // p == 1 (q == 0): both terms vanish for gamma > 0; NaN stays NaN.
  const auto hit = q > A(0);
  const A safe_q = Math::select(hit, q, A(1));
  const A zero = half_nll * A(0);
  const A p = Math::exp(logp);
  const A qg = Math::exp(gamma * Math::log(safe_q));
  return {Math::select(hit, qg * half_nll, zero),
          Math::select(hit, A(-2) * gamma * p * qg * (half_nll / safe_q) - qg, zero)};
}

template <typename A>
COSTXENT_HD FocalTerms<A> focal_terms(A half_nll, A gamma) {
  return focal_terms_with<StdMath>(half_nll, gamma);
}

// d/dz_j of a (weighted) focal cross-entropy row (DESIGN 2.1):
//   w (ts_j g_j - p_j sum_k ts_k g_k); with gamma = 0 (g = -1) this is w (p_j S - ts_j).
template <typename A>
COSTXENT_HD A focal_grad(A w, A p, A ts, A g, A sum_ts_g) {
  return w * (ts * g - rounded(p * sum_ts_g));
}

// d/dz_j of expected cost + lam * CE (DESIGN 2.2):
//   p_j (c_j - E) + lam (p_j S - ts_j)
template <typename A>
COSTXENT_HD A expected_cost_grad(A p, A cost, A expected, A lam, A ts, A target_sum) {
  return rounded(p * (cost - expected)) + lam * (p * target_sum - ts);
}

// Sigmoid cross-entropy of one element (DESIGN 2.3), with y already smoothed:
//   ce   = a y softplus(-z) + b (1 - y) softplus(z)
//   1-pt = y (1 - s) + (1 - y) s
//   loss = (1 - pt)^gamma ce
//   dloss/dz = (1-pt)^gamma dce/dz + gamma (1-pt)^gamma ce * s (1-s) (1-2y) / (1-pt)
// where dce/dz = b (1 - y) s - a y (1 - s). Both softplus terms are computed directly as
// max(+-z, 0) + log1p(exp(-|z|)): softplus(z) - z would cancel for confident positives.
// The last ratio is bounded by 1, so it is taken as 0 where 1 - pt == 0. kFocal = false is
// gamma = 0.
template <typename A>
struct SigmoidTerms {
  A loss;
  A grad;
};

template <bool kFocal, typename Math, typename A>
COSTXENT_HD SigmoidTerms<A> sigmoid_terms_with(A z, A y, A a, A b, A gamma) {
  const A e = Math::exp(-fabs(z));
  const A u = A(1) + e;
  const A inv = Math::reciprocal(u);
  const A l = log1p_from<Math>(e, u, inv);  // log1p(e)
  const auto positive = z >= A(0);
  const A s = Math::select(positive, inv, e * inv);            // sigmoid(z)
  const A one_minus_s = Math::select(positive, e * inv, inv);  // sigmoid(-z)
  const A softplus_pos = Math::select(positive, z, A(0)) + l;   // softplus(z) = -log(1 - s)
  const A softplus_neg = Math::select(positive, A(0), -z) + l;  // softplus(-z) = -log(s)
  const A ce = a * y * softplus_neg + b * (A(1) - y) * softplus_pos;
  const A dce = b * (A(1) - y) * s - a * y * one_minus_s;
  // z - z is 0, or NaN for an infinite or NaN logit, which must give NaN (DESIGN 2.4).
  const A nan_unless_finite = z - z;
  if (!kFocal) return {ce + nan_unless_finite, dce + nan_unless_finite};
  const A miss = y * one_minus_s + (A(1) - y) * s;  // 1 - pt
  const auto hit = miss > A(0);
  const A safe_miss = Math::select(hit, miss, A(1));
  const A mod = Math::select(hit, Math::exp(gamma * Math::log(safe_miss)), A(0));
  const A ratio = Math::select(hit, s * one_minus_s * (A(1) - A(2) * y) / safe_miss, A(0));
  return {mod * ce + nan_unless_finite, mod * dce + gamma * mod * ce * ratio + nan_unless_finite};
}

template <typename A>
COSTXENT_HD SigmoidTerms<A> sigmoid_terms(A z, A y, A a, A b, A gamma) {
  return gamma == A(0) ? sigmoid_terms_with<false, StdMath>(z, y, a, b, gamma)
                       : sigmoid_terms_with<true, StdMath>(z, y, a, b, gamma);
}

// Per-class weight lookup for the sigmoid loss: a single value broadcasts.
template <typename A>
COSTXENT_HD A class_value(const A* values, int64_t size, int64_t cls) {
  if (values == nullptr) return A(1);
  return values[size == 1 ? 0 : cls];
}

template <typename A>
COSTXENT_HD A smooth_binary_label(A y, A eps) {
  return y * (A(1) - eps) + A(0.5) * eps;
}

}  // namespace costxent
