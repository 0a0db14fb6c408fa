// Framework-free descriptions of one kernel call: raw pointers, sizes and options.
// Adapters (TensorFlow, pybind11) validate shapes and fill these in; kernels only read them.
#pragma once

#include <cstdint>

#include "cc/core/numeric.h"

namespace costxent {

// Rows per entry of a problem's block_sums: the unit of a deterministic reduction.
constexpr int64_t kReduceBlockRows = 1024;

// Values per row of a softmax row state (row_algorithm.h RowState).
constexpr int64_t kRowStateSize = 4;

// The most classes a row may have, on every device: the CUDA kernels index inside a row
// with 32-bit integers and walk up to a vector past its end.
constexpr int64_t kMaxClasses = 2147483647LL - 64;

enum class WeightMode : int32_t { kNone = 0, kClass = 1, kCost = 2 };
enum class SoftmaxLoss : int32_t { kCrossEntropy = 0, kExpectedCost = 1 };

// Softmax losses over rows of a row-major [n, c] logits matrix (DESIGN 2.1, 2.2).
template <typename T, typename A>
struct SoftmaxProblem {
  int64_t n = 0;
  int64_t c = 0;
  const T* logits = nullptr;
  // Exactly one label source is set: sparse ids (int32 or int64) or dense rows [n, c].
  const int32_t* labels32 = nullptr;
  const int64_t* labels64 = nullptr;
  const T* dense = nullptr;
  SoftmaxLoss loss_kind = SoftmaxLoss::kCrossEntropy;
  // kCrossEntropy: kClass -> a[c], kCost -> M[c * c] (M[true * c + predicted]).
  // kExpectedCost: always M[c * c].
  WeightMode weight_mode = WeightMode::kNone;
  const A* weights = nullptr;
  A label_smoothing = 0;
  A focal_gamma = 0;  // kCrossEntropy only
  A ce_weight = 0;    // kExpectedCost only
  bool has_ignore_class = false;
  int64_t ignore_class = 0;
  // Scaling of the outputs that the reductions and the chain rule need, applied inside the
  // row pass so a gradient is written once and rounded once to T:
  //   backprop row i = row_scale[i] * scale * d loss_i / d z_i   (row_scale nullptr: 1).
  const A* row_scale = nullptr;
  A scale = 1;
  // Outputs, each optional (nullptr: not written):
  //   loss [n]: the unscaled per-row loss_i (0 for ignored rows);
  //   backprop [n, c]: the scaled gradient above;
  //   block_sums [ceil(n / kReduceBlockRows)]: block b gets, in a fixed order, the sum over
  //     its rows i of row_scale[i] * scale * loss_i. Callers then pass whole blocks
  //     (begin a multiple of kReduceBlockRows), so the sum never depends on threading.
  A* loss = nullptr;
  T* backprop = nullptr;
  double* block_sums = nullptr;
  // A per-example call's row state [n, kRowStateSize], for the kernels that have one (CPU:
  // cpu::softmax_row_state_size): a forward (backprop nullptr) writes it to row_state_out;
  // a backward given it as row_state_in skips the passes the forward made and computes no
  // loss (loss and block_sums nullptr). Ignored rows get zeros. A kernel without a row state
  // for this problem ignores both.
  A* row_state_out = nullptr;
  const A* row_state_in = nullptr;
};

// Element-wise sigmoid loss over a row-major [n, c] matrix (DESIGN 2.3).
template <typename T, typename A>
struct SigmoidProblem {
  int64_t n = 0;
  int64_t c = 0;
  const T* logits = nullptr;
  const T* labels = nullptr;
  // Per-class weights: pointer to 1 (broadcast) or c values; nullptr means 1.
  const A* pos_weight = nullptr;
  int64_t pos_weight_size = 0;
  const A* neg_weight = nullptr;
  int64_t neg_weight_size = 0;
  A label_smoothing = 0;
  A focal_gamma = 0;
  // As in SoftmaxProblem, the gradient of element (i, j) is written as
  //   element_scale[i * c + j] * row_scale[i] * scale * d loss_ij / d z_ij
  // (each pointer nullptr: 1): element_scale is an upstream [n, c] gradient, row_scale the
  // reductions' per-row sample weights.
  const A* element_scale = nullptr;
  const A* row_scale = nullptr;
  A scale = 1;
  // Outputs, each optional (nullptr: not written): loss [n, c] unscaled; backprop [n, c];
  // block_sums as in SoftmaxProblem: sum over the block's rows i and all j of
  // row_scale[i] * scale * loss_ij (element_scale is not applied to it).
  A* loss = nullptr;
  T* backprop = nullptr;
  double* block_sums = nullptr;
};

// Elements of a problem's per-element loss output: one per row of a softmax, one per logit
// of a sigmoid.
template <typename T, typename A>
COSTXENT_HD int64_t loss_elements(const SoftmaxProblem<T, A>& p) {
  return p.n;
}
template <typename T, typename A>
COSTXENT_HD int64_t loss_elements(const SigmoidProblem<T, A>& p) {
  return p.n * p.c;
}

template <typename T, typename A>
COSTXENT_HD int64_t label_at(const SoftmaxProblem<T, A>& p, int64_t row) {
  return p.labels32 != nullptr ? static_cast<int64_t>(p.labels32[row]) : p.labels64[row];
}

}  // namespace costxent
