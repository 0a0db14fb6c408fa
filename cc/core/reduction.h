// The Keras reductions a reduced call folds into the row pass (DESIGN 3), decided here once
// for every adapter: loss = scale * sum_i s_i loss_i / D, gradient rows scaled by
// scale * s_i / D, with s the sample weights (1 when absent) and
//   D = 1                                   for 'sum',
//   D = the rows whose label is not ignored  for 'sum_over_batch_size' (all n without
//                                            ignore_class),
//   D = sum of s over those rows             for 'mean_with_sample_weight' (their number
//                                            without sample weights),
// times per_row_count when a row's loss is a mean (the sigmoid loss' last axis). D = 0
// (every row ignored or weighted 0) gives 0, as Keras' divide_no_nan.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cc/core/problem.h"
#include "cc/core/spec.h"

namespace costxent {

inline int64_t block_count(int64_t n) { return (n + kReduceBlockRows - 1) / kReduceBlockRows; }

template <typename A>
struct DivisorInput {
  Reduction reduction = Reduction::kSum;
  int64_t n = 0;
  const A* sample_weight = nullptr;  // only read for 'mean_with_sample_weight'
  const int32_t* labels32 = nullptr;
  const int64_t* labels64 = nullptr;
  bool has_ignore_class = false;
  int64_t ignore_class = 0;

  const A* weights_read() const {
    return reduction == Reduction::kMeanWithSampleWeight ? sample_weight : nullptr;
  }
  // Whether D depends on the data (else it is 1 or n).
  bool needs_data() const {
    return reduction != Reduction::kSum && (weights_read() != nullptr || has_ignore_class);
  }
  double without_data() const { return reduction == Reduction::kSum ? 1.0 : static_cast<double>(n); }
};

// What the divisor of a reduction over a problem's rows reads (its row_scale is the sample
// weight); the sigmoid loss has no ignored rows.
template <typename T, typename A>
DivisorInput<A> divisor_input(const SoftmaxProblem<T, A>& p, Reduction reduction) {
  DivisorInput<A> d;
  d.reduction = reduction;
  d.n = p.n;
  d.sample_weight = p.row_scale;
  d.labels32 = p.labels32;
  d.labels64 = p.labels64;
  d.has_ignore_class = p.has_ignore_class;
  d.ignore_class = p.ignore_class;
  return d;
}

template <typename T, typename A>
DivisorInput<A> divisor_input(const SigmoidProblem<T, A>& p, Reduction reduction) {
  DivisorInput<A> d;
  d.reduction = reduction;
  d.n = p.n;
  d.sample_weight = p.row_scale;
  return d;
}

// The divisor's sum over rows [begin, end) of host-resident labels and weights, in row order.
// Callers sum whole kReduceBlockRows blocks and add the blocks in order, so D has the same
// bits whatever the threading.
template <typename A>
double divisor_part(const DivisorInput<A>& d, int64_t begin, int64_t end) {
  const A* weights = d.weights_read();
  double sum = 0;
  for (int64_t row = begin; row < end; ++row) {
    if (d.has_ignore_class) {
      const int64_t y = d.labels32 != nullptr ? d.labels32[row] : d.labels64[row];
      if (y == d.ignore_class) continue;
    }
    sum += weights != nullptr ? static_cast<double>(weights[row]) : 1.0;
  }
  return sum;
}

// The block sums (or any values) added in order, as every host adapter ends a reduction.
inline double sum_in_order(const double* values, int64_t count) {
  double total = 0;
  for (int64_t k = 0; k < count; ++k) total += values[k];
  return total;
}

// D of host-resident rows: shard(fn) must run fn(begin, end) over row ranges made of whole
// kReduceBlockRows blocks (in parallel or not); each block's part is kept apart and the parts
// added in order, so D has the same bits whatever the threading.
template <typename A, typename Shard>
double blocked_divisor(const DivisorInput<A>& d, const Shard& shard) {
  std::vector<double> parts(static_cast<size_t>(block_count(d.n)), 0.0);
  shard([&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kReduceBlockRows)
      parts[static_cast<size_t>(b / kReduceBlockRows)] =
          divisor_part(d, b, std::min(b + kReduceBlockRows, end));
    return int64_t{-1};
  });
  return sum_in_order(parts.data(), static_cast<int64_t>(parts.size()));
}

// The multiplier of every row's loss and gradient: scale / (D * per_row_count), 0 for D = 0.
inline double reduced_scale(double scale, double divisor, double per_row_count) {
  const double d = divisor * per_row_count;
  return d == 0 ? 0.0 : scale / d;
}

}  // namespace costxent
