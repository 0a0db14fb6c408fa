// The math of DESIGN section 2, written once as device-agnostic per-element and per-row
// functions. The CPU kernels (cpu_kernels.cc) and the CUDA kernels (cuda_kernels.cu) differ
// only in how they walk and reduce a row; every formula lives here.
//
// Row notation: zs_j = z_j - max_k z_k (<= 0), lse = log sum_j exp(zs_j),
// log p_j = zs_j - lse, p_j = exp(zs_j) / sum.
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

// Label smoothing: ts = (1 - eps) * t + eps / C.
template <typename A>
COSTXENT_HD A smooth_target(A t, A eps, A inv_c) {
  return (A(1) - eps) * t + eps * inv_c;
}

// Focal modulation for gamma > 0 (DESIGN 2.1):
//   phi(p) = -(1 - p)^gamma log p
//   g(p)   = p phi'(p) = gamma p (1 - p)^(gamma - 1) log p - (1 - p)^gamma
// 1 - p is -expm1(log p), never a subtraction, and g is evaluated as
// gamma p (1-p)^gamma (log p / (1-p)) - (1-p)^gamma so gamma in (0, 1) stays finite
// (log p / (1 - p) -> -1 as p -> 1).
template <typename A>
struct FocalTerms {
  A phi;
  A g;
};

// Elementary functions for the formulas below: the C++ library here (and CUDA's device
// functions); the CPU kernels pass a policy of vectorizable polynomials instead. exp is only
// called on arguments <= 0, expm1 on arguments <= 0 and
// log1p on [0, 1].
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
  static COSTXENT_HD A log1p(A x) {
    return std::log1p(x);
  }
  template <typename A>
  static COSTXENT_HD A expm1(A x) {
    return std::expm1(x);
  }
  template <typename A>
  static COSTXENT_HD A select(bool c, A a, A b) {
    return c ? a : b;
  }
};

template <typename Math, typename A>
COSTXENT_HD FocalTerms<A> focal_terms_with(A logp, A gamma) {
  const A q = -Math::expm1(logp);
  // p == 1 (q == 0): both terms vanish for gamma > 0; NaN stays NaN.
  const bool hit = q > A(0);
  const A safe_q = Math::select(hit, q, A(1));
  const A zero = logp * A(0);
  const A p = Math::exp(logp);
  const A qg = Math::exp(gamma * Math::log(safe_q));
  return {Math::select(hit, -qg * logp, zero),
          Math::select(hit, gamma * p * qg * (logp / safe_q) - qg, zero)};
}

template <typename A>
COSTXENT_HD FocalTerms<A> focal_terms(A logp, A gamma) {
  return focal_terms_with<StdMath>(logp, gamma);
}

// Cross-entropy of a row against smoothed targets: sum_j ts_j (-log p_j)
//   = S * lse - sum_j ts_j zs_j, with S = sum_j ts_j.
template <typename A>
COSTXENT_HD A shifted_cross_entropy(A target_sum, A lse, A target_dot_zs) {
  return target_sum * lse - target_dot_zs;
}

// d/dz_j of a (weighted) focal cross-entropy row (DESIGN 2.1):
//   w (ts_j g_j - p_j sum_k ts_k g_k); with gamma = 0 (g = -1) this is w (p_j S - ts_j).
template <typename A>
COSTXENT_HD A focal_grad(A w, A p, A ts, A g, A sum_ts_g) {
  return w * (ts * g - p * sum_ts_g);
}

template <typename A>
COSTXENT_HD A plain_grad(A w, A p, A ts, A target_sum) {
  return w * (p * target_sum - ts);
}

// d/dz_j of expected cost + lam * CE (DESIGN 2.2):
//   p_j (c_j - E) + lam (p_j S - ts_j)
template <typename A>
COSTXENT_HD A expected_cost_grad(A p, A cost, A expected, A lam, A ts, A target_sum) {
  return p * (cost - expected) + lam * (p * target_sum - ts);
}

// Sigmoid cross-entropy of one element (DESIGN 2.3), with y already smoothed:
//   ce   = a y softplus(-z) + b (1 - y) softplus(z)
//   1-pt = y (1 - s) + (1 - y) s
//   loss = (1 - pt)^gamma ce
//   dloss/dz = (1-pt)^gamma dce/dz + gamma (1-pt)^gamma ce * s (1-s) (1-2y) / (1-pt)
// where dce/dz = b (1 - y) s - a y (1 - s). The last ratio is bounded by 1, so it is
// taken as 0 where 1 - pt == 0. kFocal = false is gamma = 0.
template <typename A>
struct SigmoidTerms {
  A loss;
  A grad;
};

template <bool kFocal, typename Math, typename A>
COSTXENT_HD SigmoidTerms<A> sigmoid_terms_with(A z, A y, A a, A b, A gamma) {
  const A e = Math::exp(-fabs(z));
  const A inv = A(1) / (A(1) + e);
  const bool positive = z >= A(0);
  const A s = Math::select(positive, inv, e * inv);          // sigmoid(z)
  const A one_minus_s = Math::select(positive, e * inv, inv);  // sigmoid(-z)
  const A softplus_pos = Math::select(positive, z, A(0)) + Math::log1p(e);  // softplus(z)
  const A softplus_neg = softplus_pos - z;                                  // softplus(-z)
  const A ce = a * y * softplus_neg + b * (A(1) - y) * softplus_pos;
  const A dce = b * (A(1) - y) * s - a * y * one_minus_s;
  // z - z is 0, or NaN for an infinite or NaN logit, which must give NaN (DESIGN 2.4).
  const A nan_unless_finite = z - z;
  if (!kFocal) return {ce + nan_unless_finite, dce + nan_unless_finite};
  const A miss = y * one_minus_s + (A(1) - y) * s;  // 1 - pt
  const bool hit = miss > A(0);
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
