// The framework-free description of one loss call and the one validation every adapter
// (TensorFlow op, XLA handler, pybind11 module) runs on it. Adapters describe their tensors
// (dtype and full shape), call validate_*, turn a failed Status into their own error type,
// and build the core problem from the derived fields; no adapter re-derives a mode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cc/core/problem.h"

namespace costxent {

enum class DType : int32_t { kFloat16, kBFloat16, kFloat32, kFloat64, kInt32, kInt64, kOther };

const char* dtype_name(DType dtype);

// One tensor argument as an adapter sees it. present = false: not given (an empty [0]
// weights tensor also counts as not given).
struct ArgInfo {
  bool present = false;
  DType dtype = DType::kOther;
  std::vector<int64_t> shape;
};

// The Keras reductions a reduced call folds into the kernel (DESIGN 3). kNone: per-example.
enum class Reduction : int32_t { kNone, kSum, kSumOverBatchSize, kMeanWithSampleWeight };

// kType: a dtype is wrong (adapters raise their type error); kValue: anything else.
enum class ErrorKind : int32_t { kNone, kType, kValue };

struct Status {
  ErrorKind kind = ErrorKind::kNone;
  std::string message;
  bool ok() const { return kind == ErrorKind::kNone; }
};

struct SoftmaxSpec {
  // Filled by the adapter.
  SoftmaxLoss loss_kind = SoftmaxLoss::kCrossEntropy;
  ArgInfo logits;     // [..., C], C >= 2
  ArgInfo labels;     // sparse ids [...] or [..., 1] (int32/int64), or dense [..., C] (logits' dtype)
  ArgInfo weights;    // absent, [C] (class_weight) or [C, C] (cost_matrix, M[true, predicted]);
                      // expected cost requires [C, C]
  ArgInfo row_scale;  // absent or [...] (the logits' leading shape): upstream gradient of a
                      // per-example call, or sample_weight of a reduced one; float32/float64
  ArgInfo row_state;  // absent, or [n, 0] / [n, kRowStateSize] in the accumulation dtype: the
                      // state a per-example forward saved, read by its backward
  double label_smoothing = 0;  // [0, 1]
  double focal_gamma = 0;      // finite, >= 0; cross-entropy only
  double ce_weight = 0;        // finite, >= 0; expected cost only
  bool has_ignore_class = false;
  int64_t ignore_class = 0;    // sparse labels only
  Reduction reduction = Reduction::kNone;

  // Derived by validate_softmax (meaningful only when it returned ok).
  int64_t n = 0;  // rows: the product of the logits' leading shape
  int64_t c = 0;
  bool sparse = false;  // from the labels' dtype and shape
  WeightMode weight_mode = WeightMode::kNone;  // from the weights' rank
};

struct SigmoidSpec {
  ArgInfo logits;         // [..., C], C >= 1
  ArgInfo labels;         // the logits' shape and dtype
  ArgInfo pos_weight;     // absent, [1] or [C]
  ArgInfo neg_weight;     // absent, [1] or [C]
  ArgInfo element_scale;  // absent or the logits' shape: upstream gradient of a per-element call
  ArgInfo row_scale;      // absent or [...]: sample_weight of a reduced call
  double label_smoothing = 0;
  double focal_gamma = 0;
  Reduction reduction = Reduction::kNone;

  int64_t n = 0;
  int64_t c = 0;
};

// Shape, dtype and option checks. Shapes must be fully known (no -1).
Status validate_softmax(SoftmaxSpec* spec);
Status validate_sigmoid(SigmoidSpec* spec);

// Value checks of host-resident weights (count values, row-major as the spec's shape):
// finite, and >= 0 wherever they multiply a cross-entropy (everything but expected cost).
Status validate_softmax_weights(const SoftmaxSpec& spec, const float* values, int64_t count);
Status validate_softmax_weights(const SoftmaxSpec& spec, const double* values, int64_t count);
Status validate_sigmoid_weight(const char* name, const float* values, int64_t count);
Status validate_sigmoid_weight(const char* name, const double* values, int64_t count);

// The message for the first invalid label a CPU kernel reports (DESIGN 2.4).
std::string invalid_label_message(const SoftmaxSpec& spec, int64_t row, int64_t value);
std::string invalid_sigmoid_label_message(const SigmoidSpec& spec, int64_t index, double value);

}  // namespace costxent
