// Framework-free descriptions of one kernel call: raw pointers, sizes and options.
// Adapters (TensorFlow, pybind11) validate shapes and fill these in; kernels only read them.
#pragma once

#include <cstdint>

#include "cc/core/numeric.h"

namespace costxent {

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
  // Outputs: loss [n]; backprop [n, c] or nullptr for the loss-only variant.
  A* loss = nullptr;
  T* backprop = nullptr;
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
  A* loss = nullptr;      // [n, c]
  T* backprop = nullptr;  // [n, c] or nullptr
};

template <typename T, typename A>
COSTXENT_HD int64_t label_at(const SoftmaxProblem<T, A>& p, int64_t row) {
  return p.labels32 != nullptr ? static_cast<int64_t>(p.labels32[row]) : p.labels64[row];
}

}  // namespace costxent
