// The softmax row algorithm of DESIGN 2.1 / 2.2, written once for the CPU and CUDA kernels:
// softmax_row() below, a template over a *walker* that owns a row's layout and its
// reductions. The walkers:
//   - cpu_kernels.cc RowWalk: one row, or two side by side, in SIMD chunks of classes (C > 32,
//     focal C > 64);
//   - cpu_kernels.cc TileWalk: a tile of rows transposed, SIMD lanes = rows (the others);
//   - cuda_kernels.cu GroupWalk: a row held by a thread, a slice of a warp, a block or a
//     cluster, each thread owning a few 16-byte vectors of it.
// The algorithm: pass 1 the max (its lowest index for cost-matrix weights) and the min,
// reduced over the row; pass 2 e_j = exp(z_j - max) (kept), the split sum, the targets'
// sums and the example weight, reduced; focal rows a pass 3 over the log-probabilities,
// reduced; then the gradient, written once. The modes are template parameters, so sparse
// plain cross-entropy computes only the max, the exp sums and z_y.
//
// A walker W provides, with F (values) and I (class indices) its lane types, P::Math the
// row_math.h policy (exp, log, expm1, reciprocal, select, max, min) and kSlots its number of
// independent accumulators:
//   visits    each(fn), each_slot(fn) (chunks tagged with a compile-time kSlot < kSlots),
//             each_sum(s, fn) (fn(chunk, s));
//   reads     z_at(ch), t_at(ch) (dense targets), cls(ch) (the chunk's class ids; padding
//             lanes read as a real element of the row, so max and min stay neutral);
//   sums      sums<N, kLive>() (N fields, those in the bit mask kLive read), add(s, i, ch,
//             v), add_where(s, i, ch, mask, v) (padding lanes never added), reduce(s) (the
//             row reduction, once per pass), total(s, i);
//   extremes  extremes(max, min, arg, with_arg): the row's max, min and lowest argmax;
//   cache     keep(slot, ch, v), kept(slot, ch, recompute): a value of pass 2 or 3 for the
//             write pass; a walker without room for it returns recompute();
//   output    write(ch, v), write_onehot(ch, y, off, on), abandon(max, min, backprop) (true:
//             stop; the row was written NaN, or rows walked together go back to the caller);
//   state     kHasState; where true, resumes(), load_state() and save_state(s): the row's
//             RowState saved by a per-example forward, read back by its backward;
//   tables    class_values(a, ch) = a_j, row_table(M, y, ch) = M[y, j],
//             column(M, col, ch, t) = M[j, col] where t_j != 0, lookup(M, row, col),
//             row_value(y) = z_y, prepare_dense_costs(M) and dense_cost(M, ch) = (M^T t)_j.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/row_math.h"

namespace costxent {

// A row's options as the algorithm reads them, decided once per call.
template <typename A>
struct RowOptions {
  A eps;
  A inv_c;
  A gamma;
  A lam;
  WeightMode weight_mode;
  const A* weights;
};

template <typename T, typename A>
RowOptions<A> COSTXENT_HD row_options(const SoftmaxProblem<T, A>& p) {
  return {p.label_smoothing, A(1) / static_cast<A>(p.c), p.focal_gamma, p.ce_weight,
          p.weight_mode, p.weights};
}

// A kernel's modes. Focal rows take the weight mode at run time (their per-class terms cost
// more than a branch), the others at compile time.
template <SoftmaxLoss kKind_, bool kSparse_, WeightMode kWeight_, bool kFocal_>
struct RowMode {
  static constexpr SoftmaxLoss kKind = kKind_;
  static constexpr bool kSparse = kSparse_;
  static constexpr WeightMode kWeight = kWeight_;
  static constexpr bool kFocal = kFocal_;
};

// The mode of a problem, as a call body(Mode{}): every kernel maps a problem to its
// instantiations through this one switch.
template <typename T, typename A, typename Body>
COSTXENT_HD auto with_row_mode(const SoftmaxProblem<T, A>& p, Body&& body) {
  constexpr SoftmaxLoss kCE = SoftmaxLoss::kCrossEntropy;
  const bool sparse = p.dense == nullptr;
  if (p.loss_kind == SoftmaxLoss::kExpectedCost) {
    constexpr SoftmaxLoss kEC = SoftmaxLoss::kExpectedCost;
    return sparse ? body(RowMode<kEC, true, WeightMode::kCost, false>{})
                  : body(RowMode<kEC, false, WeightMode::kCost, false>{});
  }
  if (p.focal_gamma != A(0)) {
    return sparse ? body(RowMode<kCE, true, WeightMode::kNone, true>{})
                  : body(RowMode<kCE, false, WeightMode::kNone, true>{});
  }
  switch (p.weight_mode) {
    case WeightMode::kClass:
      return sparse ? body(RowMode<kCE, true, WeightMode::kClass, false>{})
                    : body(RowMode<kCE, false, WeightMode::kClass, false>{});
    case WeightMode::kCost:
      return sparse ? body(RowMode<kCE, true, WeightMode::kCost, false>{})
                    : body(RowMode<kCE, false, WeightMode::kCost, false>{});
    default:
      return sparse ? body(RowMode<kCE, true, WeightMode::kNone, false>{})
                    : body(RowMode<kCE, false, WeightMode::kNone, false>{});
  }
}

// A sparse label against DESIGN 2.4: a class, the ignored class (loss 0, zero gradient), or
// invalid (the CPU reports the row, the GPU writes NaN).
enum class LabelKind { kClass, kIgnored, kInvalid };

template <typename T, typename A>
COSTXENT_HD LabelKind classify_label(const SoftmaxProblem<T, A>& p, int64_t label) {
  if (p.has_ignore_class && label == p.ignore_class) return LabelKind::kIgnored;
  return label < 0 || label >= p.c ? LabelKind::kInvalid : LabelKind::kClass;
}

template <typename F, typename I>
struct Extremes {
  F max;
  F min;
  I arg;  // lowest index of the max (when asked for)
};

// What a per-example forward saves of a row (kRowStateSize values, in this order) so that its
// backward reads the logits once, in one pass, instead of repeating the max and exp-sum
// passes (DESIGN 3): max is NaN for a row that is not finite; value is the example weight
// (cross-entropy) or the expected cost.
template <typename F>
struct RowState {
  F max;
  F inv_sum;
  F value;
  F target_sum;
};
static_assert(kRowStateSize == 4, "RowState's fields");

// The gradient of a non-focal row, written once: out_scale * d loss / d z from its RowState;
// expo(ch) gives e_j = exp(z_j - max).
template <typename Mode, typename Walk, typename A, typename Expo>
COSTXENT_HD void write_softmax_grad(Walk& walk, const RowOptions<A>& o,
                                    typename Walk::F out_scale, typename Walk::I y,
                                    const RowState<typename Walk::F>& s,
                                    typename Walk::F nonfinite, Expo&& expo) {
  using F = typename Walk::F;
  constexpr bool kSparse = Mode::kSparse;
  const F eps = o.eps;
  const F inv_c = o.inv_c;
  // Smoothed targets: a sparse row's are one of two values.
  const F on = smooth_target(F(1), eps, inv_c);
  const F off = smooth_target(F(0), eps, inv_c);
  if constexpr (Mode::kKind == SoftmaxLoss::kExpectedCost) {
    const F lam = o.lam;
    const F factor = out_scale + nonfinite;
    walk.each([&](const auto& ch) {
      F cost;
      F target;
      if constexpr (kSparse) {
        cost = walk.row_table(o.weights, y, ch);
        target = Walk::P::Math::select(walk.cls(ch) == y, on, off);
      } else {
        cost = walk.dense_cost(o.weights, ch);
        target = smooth_target(walk.t_at(ch), eps, inv_c);
      }
      walk.write(ch, factor * expected_cost_grad(expo(ch) * s.inv_sum, cost, s.value, lam,
                                                 target, s.target_sum));
    });
  } else {
    const F factor = out_scale * s.value + nonfinite;
    const F k = factor * s.target_sum * s.inv_sum;
    if constexpr (kSparse) {
      const F factor_on = factor * on;
      const F factor_off = factor * off;
      walk.each([&](const auto& ch) {
        const F e = expo(ch);
        walk.write_onehot(ch, y, plain_grad(k, e, factor_off), plain_grad(k, e, factor_on));
      });
    } else {
      const F factor_t = factor * (F(1) - eps);
      const F factor_off = factor * off;
      walk.each([&](const auto& ch) {
        walk.write(ch, plain_grad(k, expo(ch), factor_t * walk.t_at(ch) + factor_off));
      });
    }
  }
}

// The softmax losses of one walker's rows (DESIGN 2.1, 2.2): returns the per-row loss and,
// when backprop, writes out_scale * d loss / d z through the walker. y: sparse labels
// (valid classes). A row with a non-finite logit gives NaN throughout (DESIGN 2.4).
template <typename Mode, typename Walk, typename A>
COSTXENT_HD typename Walk::F softmax_row(Walk& walk, const RowOptions<A>& o,
                                         typename Walk::F out_scale, typename Walk::I y,
                                         bool backprop) {
  using P = typename Walk::P;
  using F = typename P::F;
  using I = typename P::I;
  using Math = typename P::Math;
  constexpr int kSlots = Walk::kSlots;
  constexpr bool kSparse = Mode::kSparse;
  constexpr bool kExpected = Mode::kKind == SoftmaxLoss::kExpectedCost;
  const WeightMode weight_mode = Mode::kFocal ? o.weight_mode : Mode::kWeight;
  const bool cost_weight = !kExpected && weight_mode == WeightMode::kCost;
  const bool class_weight = !kExpected && weight_mode == WeightMode::kClass;
  const F eps = o.eps;
  const F inv_c = o.inv_c;
  const bool smooth = o.eps != A(0);

  if constexpr (Walk::kHasState && !Mode::kFocal) {
    if (backprop && walk.resumes()) {
      const RowState<F> s = walk.load_state();
      if constexpr (kExpected && !kSparse) walk.prepare_dense_costs(o.weights);
      // 0, or NaN for a row that was not finite.
      const F nonfinite = s.max - s.max;
      write_softmax_grad<Mode>(walk, o, out_scale, y, s, nonfinite,
                               [&](const auto& ch) { return Math::exp(walk.z_at(ch) - s.max); });
      return F(A(0));
    }
  }

  // Pass 1: max, its lowest index (cost matrix), and min (-inf: a non-finite row).
  F max_slots[kSlots];
  F min_slots[kSlots];
  I arg_slots[kSlots];
  for (int i = 0; i < kSlots; ++i) {
    max_slots[i] = -INFINITY;
    min_slots[i] = INFINITY;
    arg_slots[i] = 0;
  }
  walk.each_slot([&](const auto& ch) {
    constexpr int kSlot = std::remove_reference_t<decltype(ch)>::kSlot;
    const F z = walk.z_at(ch);
    if (cost_weight) {
      const auto up = z > max_slots[kSlot];
      arg_slots[kSlot] = Math::select(up, walk.cls(ch), arg_slots[kSlot]);
      max_slots[kSlot] = Math::select(up, z, max_slots[kSlot]);
    } else {
      max_slots[kSlot] = Math::max(max_slots[kSlot], z);
    }
    min_slots[kSlot] = Math::min(min_slots[kSlot], z);
  });
  // Slots hold disjoint chunks: the max, and on ties the lower index.
  F max_lanes = max_slots[0];
  F min_lanes = min_slots[0];
  I arg_lanes = arg_slots[0];
  for (int i = 1; i < kSlots; ++i) {
    if (cost_weight) {
      const auto take = (max_slots[i] > max_lanes) |
                        ((max_slots[i] == max_lanes) & (arg_slots[i] < arg_lanes));
      arg_lanes = Math::select(take, arg_slots[i], arg_lanes);
    }
    max_lanes = Math::max(max_lanes, max_slots[i]);
    min_lanes = Math::min(min_lanes, min_slots[i]);
  }
  const Extremes<F, I> ext = walk.extremes(max_lanes, min_lanes, arg_lanes, cost_weight);
  const F m = ext.max;
  const F low = ext.min;
  if (walk.abandon(m, low, backprop)) return F(A(NAN));
  const I jhat = cost_weight ? ext.arg : I(0);
  const F half_max = F(A(0.5)) * m;
  if constexpr (kExpected && !kSparse) walk.prepare_dense_costs(o.weights);

  // Pass 2: e_j (kept), the sum split as count (e_j = 1) + rest, the unsmoothed target's
  // sums, the dense example weight and the expected cost. A NaN logit, or +inf (whose
  // z - max is NaN), makes rest NaN: exp propagates NaN.
  enum { kRest, kCount, kHalfMean, kTSum, kTDot, kWeightSum, kCostSum, kSums };
  // The sums this mode can read (a walker may reduce only these).
  constexpr bool kWeighted = Mode::kFocal || Mode::kWeight != WeightMode::kNone;
  constexpr unsigned kLive = 1u << kRest | 1u << kCount | 1u << kHalfMean |
                             (kSparse ? 0u : 1u << kTSum | 1u << kTDot) |
                             (!kSparse && !kExpected && kWeighted ? 1u << kWeightSum : 0u) |
                             (kExpected ? 1u << kCostSum : 0u);
  auto sums = walk.template sums<kSums, kLive>();
  auto cost_of = [&](const auto& ch) -> F {
    if constexpr (kSparse) {
      return walk.row_table(o.weights, y, ch);
    } else {
      return walk.dense_cost(o.weights, ch);
    }
  };
  walk.each_sum(sums, [&](const auto& ch, auto& s) {
    const F z = walk.z_at(ch);
    const F zs = z - m;
    const F e = Math::exp(zs);
    walk.keep(0, ch, e);
    const auto top = zs == F(0);
    walk.add_where(s, kRest, ch, !top, e);
    walk.add_where(s, kCount, ch, top, F(1));
    if (!kSparse || smooth) {
      const F h = half_shift(z, half_max);
      if (smooth) walk.add(s, kHalfMean, ch, h * inv_c);
      if constexpr (!kSparse) {
        const F t = walk.t_at(ch);
        walk.add(s, kTSum, ch, t);
        walk.add(s, kTDot, ch, t * h);
        if (class_weight) walk.add(s, kWeightSum, ch, t * walk.class_values(o.weights, ch));
        if (cost_weight) walk.add(s, kWeightSum, ch, t * walk.column(o.weights, jhat, ch, t));
      }
    }
    if constexpr (kExpected) walk.add(s, kCostSum, ch, cost_of(ch) * e);
  });
  walk.reduce(sums);
  // e_j of pass 2, from the walker's cache or computed again.
  auto expo = [&](const auto& ch) -> F {
    return walk.kept(0, ch, [&] { return Math::exp(walk.z_at(ch) - m); });
  };

  const F rest = walk.total(sums, kRest);
  const F count = walk.total(sums, kCount);
  // 0, or NaN for a row with a NaN or infinite logit (DESIGN 2.4).
  const F nonfinite = rest * F(0) + (low - low);
  const LogSumExp<F> lse_sum = log_sum_exp_with<Math>(rest, count);
  const F lse = lse_sum.lse;
  const F inv_sum = lse_sum.inv_sum;
  const F t_sum = kSparse ? F(1) : walk.total(sums, kTSum);
  const F t_dot_half =
      kSparse ? half_shift(walk.row_value(y), half_max) : walk.total(sums, kTDot);
  const F target_sum = smoothed_sum(t_sum, eps);
  const F target_dot_half =
      smooth ? smoothed_dot(t_dot_half, eps, walk.total(sums, kHalfMean)) : t_dot_half;
  const F ce = cross_entropy_half(target_sum, lse, target_dot_half);

  if constexpr (kExpected) {
    const F expected = walk.total(sums, kCostSum) * inv_sum;
    const RowState<F> state{m + nonfinite, inv_sum, expected, target_sum};
    if constexpr (Walk::kHasState) walk.save_state(state);
    if (backprop) write_softmax_grad<Mode>(walk, o, out_scale, y, state, nonfinite, expo);
    return expected + o.lam * ce + nonfinite;
  }

  // Per-example weight from the unsmoothed target (DESIGN 2.1).
  F w = 1;
  if (class_weight) w = kSparse ? walk.lookup(o.weights, I(0), y) : walk.total(sums, kWeightSum);
  if (cost_weight) w = kSparse ? walk.lookup(o.weights, y, jhat) : walk.total(sums, kWeightSum);

  if constexpr (Mode::kFocal) {
    const F factor = out_scale * w + nonfinite;
    const F on = smooth_target(F(1), eps, inv_c);
    const F off = smooth_target(F(0), eps, inv_c);
    auto target = [&](const auto& ch) -> F {
      if constexpr (kSparse) {
        return Math::select(walk.cls(ch) == y, on, off);
      } else {
        return smooth_target(walk.t_at(ch), eps, inv_c);
      }
    };
    // Pass 3: sum_j ts_j phi_j / 2 and sum_j ts_j g_j; a sparse unsmoothed row has one term.
    const F gamma = o.gamma;
    const bool label_only = kSparse && !smooth;
    auto focal_at = [&](const auto& ch) {
      return focal_terms_with<Math>(F(A(0.5)) * lse - half_shift(walk.z_at(ch), half_max),
                                    gamma);
    };
    F half_phi;
    F sum_ts_g;
    if (label_only) {
      const FocalTerms<F> f = focal_terms_with<Math>(F(A(0.5)) * lse - t_dot_half, gamma);
      half_phi = f.half_phi;
      sum_ts_g = f.g;
    } else {
      enum { kPhi, kG, kFocalSums };
      auto focal = walk.template sums<kFocalSums, 1u << kPhi | 1u << kG>();
      walk.each_sum(focal, [&](const auto& ch, auto& s) {
        const F ts = target(ch);
        const FocalTerms<F> f = focal_at(ch);
        walk.keep(1, ch, f.g);
        walk.add(s, kPhi, ch, ts * f.half_phi);
        walk.add(s, kG, ch, ts * f.g);
      });
      walk.reduce(focal);
      half_phi = walk.total(focal, kPhi);
      sum_ts_g = walk.total(focal, kG);
    }
    if (backprop) {
      walk.each([&](const auto& ch) {
        const F g = label_only ? sum_ts_g : walk.kept(1, ch, [&] { return focal_at(ch).g; });
        walk.write(ch, focal_grad(factor, expo(ch) * inv_sum, target(ch), g, sum_ts_g));
      });
    }
    return F(2) * w * half_phi + nonfinite;
  }

  const RowState<F> state{m + nonfinite, inv_sum, w, target_sum};
  if constexpr (Walk::kHasState) walk.save_state(state);
  if (backprop) write_softmax_grad<Mode>(walk, o, out_scale, y, state, nonfinite, expo);
  return w * ce + nonfinite;
}

}  // namespace costxent
