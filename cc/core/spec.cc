// The one validation of a loss call (DESIGN 2.4, 2.5, 3). Messages name the argument as the
// Python API spells it, the expected shape or dtype and the actual one; the Python layer
// (costxent/_args.py) words the same rules the same way.
#include "cc/core/spec.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace costxent {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kOther: break;
  }
  return "unsupported";
}

namespace {

using Shape = std::vector<int64_t>;

Status error(ErrorKind kind, std::string message) { return {kind, std::move(message)}; }
Status value_error(std::string message) { return error(ErrorKind::kValue, std::move(message)); }
Status type_error(std::string message) { return error(ErrorKind::kType, std::move(message)); }

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) {
    if (k > 0) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + "]";
}

// The shortest decimal that reads back as the same value: 0.1, not 0.10000000000000001.
template <typename F>
std::string number(F value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buf[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(value));
    if (static_cast<F>(std::strtod(buf, nullptr)) == value) break;
  }
  return buf;
}

std::string got_dtype(DType dtype) {
  return dtype == DType::kOther ? "got an unsupported dtype"
                                : std::string("got dtype ") + dtype_name(dtype);
}

bool is_float(DType d) {
  return d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32 ||
         d == DType::kFloat64;
}

DType accumulation_dtype(DType logits) {
  return logits == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

int64_t num_elements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape leading(const Shape& shape) { return Shape(shape.begin(), shape.end() - 1); }

Status require_known(const std::string& name, const ArgInfo& arg) {
  for (int64_t d : arg.shape)
    if (d < 0)
      return value_error(name + " must have a fully known shape, got shape " +
                         shape_str(arg.shape));
  return {};
}

Status check_logits(const ArgInfo& logits, int64_t min_classes) {
  if (!logits.present) return value_error("logits are required");
  if (!is_float(logits.dtype))
    return type_error("logits must be float16, bfloat16, float32 or float64, " +
                      got_dtype(logits.dtype));
  if (logits.shape.empty())
    return value_error("logits must have a class axis (rank >= 1), got shape []");
  Status s = require_known("logits", logits);
  if (!s.ok()) return s;
  const int64_t c = logits.shape.back();
  if (c < min_classes)
    return value_error("logits must have at least " + std::to_string(min_classes) +
                       (min_classes == 1 ? " class" : " classes") +
                       " on the last axis, got shape " + shape_str(logits.shape) +
                       " (C = " + std::to_string(c) + ")");
  if (c > kMaxClasses)
    return value_error("logits must have at most " + std::to_string(kMaxClasses) +
                       " classes on the last axis, got shape " + shape_str(logits.shape) +
                       " (C = " + std::to_string(c) + ")");
  return {};
}

Status check_unit_interval(const char* name, double value) {
  if (!(value >= 0 && value <= 1))
    return value_error(std::string(name) + " must be a finite number in [0, 1], got " +
                       number(value));
  return {};
}

Status check_non_negative(const char* name, double value) {
  if (!(std::isfinite(value) && value >= 0))
    return value_error(std::string(name) + " must be a finite number >= 0, got " +
                       number(value));
  return {};
}

// A weight or scale in the accumulation dtype of the logits.
Status check_accumulation_dtype(const std::string& name, const ArgInfo& arg, DType logits) {
  const DType acc = accumulation_dtype(logits);
  if (arg.dtype != acc)
    return type_error(name + " must have dtype " + dtype_name(acc) +
                      " (the accumulation dtype of " + dtype_name(logits) + " logits), " +
                      got_dtype(arg.dtype));
  return {};
}

// An optional per-row or per-element scaling input of an exact shape.
Status check_scale(const std::string& name, const ArgInfo& arg, const Shape& expected,
                   const char* expected_what, DType logits) {
  if (!arg.present) return {};
  Status s = check_accumulation_dtype(name, arg, logits);
  if (!s.ok()) return s;
  if (arg.shape != expected)
    return value_error(name + " must have shape " + shape_str(expected) + " (" + expected_what +
                       "), got shape " + shape_str(arg.shape));
  return {};
}

const char* const kRowScale = "row_scale (the upstream gradient or sample_weight)";

Status check_softmax_labels(const SoftmaxSpec& spec, bool* sparse) {
  const ArgInfo& labels = spec.labels;
  const Shape& shape = spec.logits.shape;
  const Shape lead = leading(shape);
  if (!labels.present) return value_error("labels are required");
  Status s = require_known("labels", labels);
  if (!s.ok()) return s;
  *sparse = labels.dtype == DType::kInt32 || labels.dtype == DType::kInt64;
  const std::string logits_dtype = dtype_name(spec.logits.dtype);
  if (*sparse) {
    Shape lead1 = lead;
    lead1.push_back(1);
    if (labels.shape == lead || labels.shape == lead1) return {};
    std::string message = "labels must have shape " + shape_str(lead) + " or " +
                          shape_str(lead1) + " (sparse " + dtype_name(labels.dtype) +
                          " class ids: the logits' leading shape), got shape " +
                          shape_str(labels.shape);
    if (labels.shape == shape)
      message += "; dense labels of that shape must have the logits' dtype " + logits_dtype;
    return value_error(message);
  }
  if (labels.dtype != spec.logits.dtype)
    return type_error("labels must be int32 or int64 (sparse class ids) or " + logits_dtype +
                      " like the logits (dense one-hot or soft rows), " +
                      got_dtype(labels.dtype));
  if (labels.shape != shape)
    return value_error("labels must have shape " + shape_str(shape) +
                       " (dense one-hot or soft rows: the logits' shape), got shape " +
                       shape_str(labels.shape));
  return {};
}

// The weight mode comes from the weights' rank alone: [C] class weights, [C, C] a cost matrix.
Status check_softmax_weights(const SoftmaxSpec& spec, int64_t c, WeightMode* mode) {
  const ArgInfo& w = spec.weights;
  const bool expected_cost = spec.loss_kind == SoftmaxLoss::kExpectedCost;
  const Shape matrix{c, c};
  const bool given = w.present && !(w.shape.size() <= 1 && num_elements(w.shape) == 0);
  *mode = WeightMode::kNone;
  if (!given) {
    if (expected_cost)
      return value_error("expected_cost requires a cost_matrix of shape " + shape_str(matrix) +
                         " (M[true, predicted]), got none");
    return {};
  }
  Status s = require_known("weights", w);
  if (!s.ok()) return s;
  if (w.shape.size() == 1 && !expected_cost) {
    *mode = WeightMode::kClass;
  } else if (w.shape.size() == 2 || (expected_cost && w.shape.size() == 1)) {
    *mode = WeightMode::kCost;
  } else {
    return value_error("weights must be a class_weight of shape " + shape_str({c}) +
                       " or a cost_matrix of shape " + shape_str(matrix) +
                       " (M[true, predicted]), got shape " + shape_str(w.shape));
  }
  const char* name = *mode == WeightMode::kClass ? "class_weight" : "cost_matrix";
  s = check_accumulation_dtype(name, w, spec.logits.dtype);
  if (!s.ok()) return s;
  if (*mode == WeightMode::kClass && w.shape != Shape{c})
    return value_error("class_weight must have shape " + shape_str({c}) +
                       " (one weight per class), got shape " + shape_str(w.shape));
  if (*mode == WeightMode::kCost && w.shape != matrix)
    return value_error(
        "cost_matrix must have shape " + shape_str(matrix) + " (C x C, M[true, predicted]" +
        (expected_cost ? "; expected_cost takes no class_weight" : "") + "), got shape " +
        shape_str(w.shape));
  return {};
}

template <typename F>
Status check_weight_values(const char* name, const F* values, int64_t count, bool non_negative,
                           int64_t matrix_columns) {
  for (int64_t k = 0; k < count; ++k) {
    const F v = values[k];
    const bool finite = std::isfinite(v);
    if (finite && (!non_negative || v >= 0)) continue;
    std::string where = "at flat index " + std::to_string(k);
    if (matrix_columns > 0)
      where += " (M[" + std::to_string(k / matrix_columns) + ", " +
               std::to_string(k % matrix_columns) + "])";
    if (!finite)
      return value_error(std::string(name) + " must be finite, got " + number(v) + " " + where);
    return value_error(std::string(name) +
                       " must be >= 0 (it multiplies a cross-entropy: a negative weight "
                       "turns the loss into gradient ascent), got " +
                       number(v) + " " + where);
  }
  return {};
}

template <typename F>
Status softmax_weight_values(const SoftmaxSpec& spec, const F* values, int64_t count) {
  if (spec.weight_mode == WeightMode::kNone) return {};
  const bool cost = spec.weight_mode == WeightMode::kCost;
  // Expected cost accepts negative costs: they are rewards (DESIGN 2.2).
  return check_weight_values(cost ? "cost_matrix" : "class_weight", values, count,
                             spec.loss_kind == SoftmaxLoss::kCrossEntropy, cost ? spec.c : 0);
}

// "labels[1, 2]" for a flat element index into an array of `shape`.
std::string element_name(const Shape& shape, int64_t flat) {
  if (shape.empty()) return "labels";
  Shape index(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    const int64_t d = shape[k] > 0 ? shape[k] : 1;
    index[k] = flat % d;
    flat /= d;
  }
  std::string s = "labels[";
  for (size_t k = 0; k < index.size(); ++k) {
    if (k > 0) s += ", ";
    s += std::to_string(index[k]);
  }
  return s + "]";
}

}  // namespace

Status validate_softmax(SoftmaxSpec* spec) {
  const bool expected_cost = spec->loss_kind == SoftmaxLoss::kExpectedCost;
  Status s = check_logits(spec->logits, 2);
  if (!s.ok()) return s;
  const Shape& shape = spec->logits.shape;
  const int64_t c = shape.back();

  if (!(s = check_unit_interval("label_smoothing", spec->label_smoothing)).ok()) return s;
  if (!(s = check_non_negative("focal_gamma", spec->focal_gamma)).ok()) return s;
  if (!(s = check_non_negative("ce_weight", spec->ce_weight)).ok()) return s;
  if (expected_cost && spec->focal_gamma != 0)
    return value_error("focal_gamma applies to the cross-entropy only (expected_cost has no "
                       "focal term), got focal_gamma = " + number(spec->focal_gamma));
  if (!expected_cost && spec->ce_weight != 0)
    return value_error("ce_weight applies to expected_cost only (the weight of its added "
                       "cross-entropy), got ce_weight = " + number(spec->ce_weight) +
                       " for the cross-entropy");

  bool sparse = false;
  if (!(s = check_softmax_labels(*spec, &sparse)).ok()) return s;
  if (spec->has_ignore_class && !sparse)
    return value_error("ignore_class needs sparse labels (int32 or int64 class ids of shape " +
                       shape_str(leading(shape)) + "), got dense labels of shape " +
                       shape_str(spec->labels.shape));

  WeightMode mode = WeightMode::kNone;
  if (!(s = check_softmax_weights(*spec, c, &mode)).ok()) return s;
  if (!(s = require_known("row_scale", spec->row_scale)).ok()) return s;
  s = check_scale(kRowScale, spec->row_scale, leading(shape), "the logits' leading shape",
                  spec->logits.dtype);
  if (!s.ok()) return s;

  const int64_t n = num_elements(leading(shape));
  if (spec->row_state.present) {
    if (spec->reduction != Reduction::kNone)
      return value_error("row_state is the state of a per-example forward; a reduced call "
                         "has none");
    if (!(s = require_known("row_state", spec->row_state)).ok()) return s;
    if (!(s = check_accumulation_dtype("row_state", spec->row_state, spec->logits.dtype)).ok())
      return s;
    const Shape& got = spec->row_state.shape;
    if (got != Shape{n, 0} && got != Shape{n, kRowStateSize})
      return value_error("row_state must have shape " + shape_str({n, 0}) + " or " +
                         shape_str({n, kRowStateSize}) +
                         " (rows, values per row: the forward's row_state output), got shape " +
                         shape_str(got));
  }

  spec->n = n;
  spec->c = c;
  spec->sparse = sparse;
  spec->weight_mode = mode;
  return {};
}

Status validate_sigmoid(SigmoidSpec* spec) {
  Status s = check_logits(spec->logits, 1);
  if (!s.ok()) return s;
  const Shape& shape = spec->logits.shape;
  const int64_t c = shape.back();
  const DType dtype = spec->logits.dtype;

  if (!(s = check_unit_interval("label_smoothing", spec->label_smoothing)).ok()) return s;
  if (!(s = check_non_negative("focal_gamma", spec->focal_gamma)).ok()) return s;

  const ArgInfo& labels = spec->labels;
  if (!labels.present) return value_error("labels are required");
  if (labels.dtype != dtype)
    return type_error(std::string("labels must have the logits' dtype ") + dtype_name(dtype) +
                      ", " + got_dtype(labels.dtype));
  if (labels.shape != shape)
    return value_error("labels must have the logits' shape " + shape_str(shape) +
                       ", got shape " + shape_str(labels.shape));

  for (const auto& named : {std::make_pair("pos_weight", &spec->pos_weight),
                            std::make_pair("neg_weight", &spec->neg_weight)}) {
    const ArgInfo& w = *named.second;
    if (!w.present) continue;
    const std::string name = named.first;
    if (!(s = check_accumulation_dtype(name, w, dtype)).ok()) return s;
    if (w.shape != Shape{1} && w.shape != Shape{c})
      return value_error(name + " must be a scalar (shape [1]) or have shape " +
                         shape_str({c}) + " (one weight per class), got shape " +
                         shape_str(w.shape));
  }
  if (!(s = require_known("element_scale", spec->element_scale)).ok()) return s;
  // A reduction's loss would ignore it while its gradient applied it.
  if (spec->element_scale.present && spec->reduction != Reduction::kNone)
    return value_error("element_scale (the upstream gradient of a per-element call) cannot be "
                       "combined with a reduction; pass sample weights as row_scale");
  s = check_scale("element_scale (the upstream gradient)", spec->element_scale, shape,
                  "the logits' shape", dtype);
  if (!s.ok()) return s;
  if (!(s = require_known("row_scale", spec->row_scale)).ok()) return s;
  s = check_scale("row_scale (sample_weight)", spec->row_scale, leading(shape),
                  "the logits' leading shape", dtype);
  if (!s.ok()) return s;

  spec->n = num_elements(leading(shape));
  spec->c = c;
  return {};
}

Status validate_softmax_weights(const SoftmaxSpec& spec, const float* values, int64_t count) {
  return softmax_weight_values(spec, values, count);
}

Status validate_softmax_weights(const SoftmaxSpec& spec, const double* values, int64_t count) {
  return softmax_weight_values(spec, values, count);
}

Status validate_sigmoid_weight(const char* name, const float* values, int64_t count) {
  return check_weight_values(name, values, count, true, 0);
}

Status validate_sigmoid_weight(const char* name, const double* values, int64_t count) {
  return check_weight_values(name, values, count, true, 0);
}

std::string invalid_label_message(const SoftmaxSpec& spec, int64_t row, int64_t value) {
  std::string message = element_name(spec.labels.shape, row) + " = " + std::to_string(value) +
                        " is outside the valid class range [0, " + std::to_string(spec.c) + ")";
  if (spec.has_ignore_class)
    message += " and is not ignore_class " + std::to_string(spec.ignore_class);
  return message;
}

std::string invalid_sigmoid_label_message(const SigmoidSpec& spec, int64_t index, double value) {
  return element_name(spec.logits.shape, index) + " = " + number(value) + " is outside [0, 1]";
}

}  // namespace costxent
