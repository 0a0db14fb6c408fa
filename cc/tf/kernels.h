// Device-independent TensorFlow OpKernels: validate inputs, allocate outputs, fill a core
// problem, and hand it to Launch<Device> (cpu_kernels.cc / gpu_kernels.cc).
#pragma once

#include <cstdint>
#include <string>

#include "cc/core/problem.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace costxent {
namespace tf_kernels {

using ::tensorflow::DataType;
using ::tensorflow::DataTypeString;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;

// TensorFlow element type -> the core's storage type (same size and bits).
template <typename T>
struct CoreType {
  using type = T;
};
template <>
struct CoreType<Eigen::half> {
  using type = ::costxent::f16;
};
template <>
struct CoreType<Eigen::bfloat16> {
  using type = ::costxent::bf16;
};

template <typename T>
typename CoreType<T>::type* core_ptr(T* p) {
  return reinterpret_cast<typename CoreType<T>::type*>(p);
}
template <typename T>
const typename CoreType<T>::type* core_ptr(const T* p) {
  return reinterpret_cast<const typename CoreType<T>::type*>(p);
}

// Implemented per device: run the problem, or set an error on ctx.
template <typename Device>
struct Launch {
  template <typename T, typename A>
  static void softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p);
  template <typename T, typename A>
  static void sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p);
  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t n,
                    int64_t c, bool per_row);
  // Whether weights live in host memory and can be checked for finiteness here.
  static constexpr bool kHostWeights = false;
};

constexpr int64_t kMaxWeightsScannedPerCall = int64_t{1} << 22;

template <typename A>
bool all_finite(const Tensor& t) {
  const auto flat = t.flat<A>();
  for (int64_t k = 0; k < flat.size(); ++k)
    if (!std::isfinite(flat(k))) return false;
  return true;
}

// The float64 options input: [label_smoothing, focal_gamma, ce_weight].
struct LossOptions {
  double label_smoothing = 0;
  double focal_gamma = 0;
  double ce_weight = 0;
};

inline ::tensorflow::Status read_options(const Tensor& t, LossOptions* options) {
  if (t.dims() != 1 || t.dim_size(0) != 3)
    return errors::InvalidArgument(
        "options must have shape [3] (label_smoothing, focal_gamma, ce_weight), got shape ",
        t.shape().DebugString());
  const auto v = t.flat<double>();
  options->label_smoothing = v(0);
  options->focal_gamma = v(1);
  options->ce_weight = v(2);
  if (!(options->label_smoothing >= 0 && options->label_smoothing <= 1))
    return errors::InvalidArgument("label_smoothing must be in [0, 1], got ",
                                   options->label_smoothing);
  if (!(options->focal_gamma >= 0 && std::isfinite(options->focal_gamma)))
    return errors::InvalidArgument("focal_gamma must be finite and >= 0, got ",
                                   options->focal_gamma);
  if (!std::isfinite(options->ce_weight))
    return errors::InvalidArgument("ce_weight must be finite, got ", options->ce_weight);
  return ::tensorflow::OkStatus();
}

template <typename Device, typename T, typename A>
class SoftmaxLossOp : public OpKernel {
 public:
  explicit SoftmaxLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string loss_kind, weight_mode;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("loss_kind", &loss_kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_mode", &weight_mode));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_ignore_class", &has_ignore_class_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ignore_class", &ignore_class_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("compute_backprop", &compute_backprop_));
    expected_cost_ = loss_kind == "expected_cost";
    weight_mode_ = expected_cost_            ? WeightMode::kCost
                   : weight_mode == "class" ? WeightMode::kClass
                   : weight_mode == "cost"  ? WeightMode::kCost
                                            : WeightMode::kNone;
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& weights = ctx->input(2);
    LossOptions options;
    OP_REQUIRES_OK(ctx, read_options(ctx->input(3), &options));
    OP_REQUIRES(ctx, logits.dims() == 2,
                errors::InvalidArgument("logits must be 2-D [N, C], got shape ",
                                        logits.shape().DebugString()));
    const int64_t n = logits.dim_size(0);
    const int64_t c = logits.dim_size(1);
    OP_REQUIRES(ctx, c >= 2,
                errors::InvalidArgument("logits must have at least 2 classes (C >= 2), got C = ",
                                        c));
    const bool sparse = labels.dtype() == tensorflow::DT_INT32 ||
                        labels.dtype() == tensorflow::DT_INT64;
    if (sparse) {
      OP_REQUIRES(ctx, labels.dims() == 1 && labels.dim_size(0) == n,
                  errors::InvalidArgument("sparse labels must have shape [", n,
                                          "] (one class id per row of logits), got shape ",
                                          labels.shape().DebugString()));
    } else {
      OP_REQUIRES(ctx, labels.dtype() == logits.dtype(),
                  errors::InvalidArgument("dense labels must have the logits' dtype ",
                                          DataTypeString(logits.dtype()), ", got ",
                                          DataTypeString(labels.dtype())));
      OP_REQUIRES(ctx, labels.shape() == logits.shape(),
                  errors::InvalidArgument("dense labels must have the logits' shape ",
                                          logits.shape().DebugString(), ", got ",
                                          labels.shape().DebugString()));
    }
    if (weight_mode_ == WeightMode::kClass) {
      OP_REQUIRES(ctx, weights.dims() == 1 && weights.dim_size(0) == c,
                  errors::InvalidArgument("class_weight must have shape [", c, "], got shape ",
                                          weights.shape().DebugString()));
    } else if (weight_mode_ == WeightMode::kCost) {
      OP_REQUIRES(ctx, weights.dims() == 2 && weights.dim_size(0) == c && weights.dim_size(1) == c,
                  errors::InvalidArgument("cost_matrix must have shape [", c, ", ", c,
                                          "] (C x C, M[true, predicted]), got shape ",
                                          weights.shape().DebugString()));
    }
    // The Python layer checks constant weights once, when a loss is traced; this check
    // catches tensors fed at run time. A cost matrix much larger than the logits (C = 10^4:
    // 400 MB against a batch's few rows) is not rescanned on every call.
    if (Launch<Device>::kHostWeights && weight_mode_ != WeightMode::kNone &&
        weights.NumElements() <= kMaxWeightsScannedPerCall) {
      OP_REQUIRES(ctx, all_finite<A>(weights),
                  errors::InvalidArgument(weight_mode_ == WeightMode::kClass ? "class_weight"
                                                                             : "cost_matrix",
                                          " must be finite, got a NaN or infinite value"));
    }

    Tensor* loss = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &loss));
    Tensor* backprop = nullptr;
    if (compute_backprop_) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 1, logits.shape(), &backprop));
    } else {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({0}), &backprop));
    }
    if (n == 0) return;

    using CT = typename CoreType<T>::type;
    SoftmaxProblem<CT, A> p;
    p.n = n;
    p.c = c;
    p.logits = core_ptr(logits.flat<T>().data());
    if (labels.dtype() == tensorflow::DT_INT32) {
      p.labels32 = labels.flat<int32_t>().data();
    } else if (labels.dtype() == tensorflow::DT_INT64) {
      p.labels64 = reinterpret_cast<const int64_t*>(labels.flat<tensorflow::int64>().data());
    } else {
      p.dense = core_ptr(labels.flat<T>().data());
    }
    p.loss_kind = expected_cost_ ? SoftmaxLoss::kExpectedCost : SoftmaxLoss::kCrossEntropy;
    p.weight_mode = weight_mode_;
    p.weights = weight_mode_ == WeightMode::kNone ? nullptr : weights.flat<A>().data();
    p.label_smoothing = static_cast<A>(options.label_smoothing);
    p.focal_gamma = static_cast<A>(options.focal_gamma);
    p.ce_weight = static_cast<A>(options.ce_weight);
    p.has_ignore_class = has_ignore_class_;
    p.ignore_class = ignore_class_;
    p.loss = loss->flat<A>().data();
    p.backprop = compute_backprop_ ? core_ptr(backprop->flat<T>().data()) : nullptr;
    Launch<Device>::softmax(ctx, p);
  }

 private:
  bool expected_cost_ = false;
  WeightMode weight_mode_ = WeightMode::kNone;
  bool has_ignore_class_ = false;
  int64_t ignore_class_ = 0;
  bool compute_backprop_ = true;
};

template <typename Device, typename A>
void check_binary_weight(OpKernelContext* ctx, const Tensor& w, int64_t c, const char* name) {
  const int64_t size = w.NumElements();
  OP_REQUIRES(ctx, w.dims() <= 1 && (size == 0 || size == 1 || size == c),
              errors::InvalidArgument(name, " must be a scalar or have shape [", c,
                                      "] (one per class), got shape ", w.shape().DebugString()));
  if (Launch<Device>::kHostWeights) {
    OP_REQUIRES(ctx, all_finite<A>(w),
                errors::InvalidArgument(name, " must be finite, got a NaN or infinite value"));
  }
}

template <typename Device, typename T, typename A>
class SigmoidLossOp : public OpKernel {
 public:
  explicit SigmoidLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("compute_backprop", &compute_backprop_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& pos_weight = ctx->input(2);
    const Tensor& neg_weight = ctx->input(3);
    LossOptions options;
    OP_REQUIRES_OK(ctx, read_options(ctx->input(4), &options));
    OP_REQUIRES(ctx, logits.dims() == 2,
                errors::InvalidArgument("logits must be 2-D [N, C], got shape ",
                                        logits.shape().DebugString()));
    OP_REQUIRES(ctx, labels.shape() == logits.shape(),
                errors::InvalidArgument("labels must have the logits' shape ",
                                        logits.shape().DebugString(), ", got ",
                                        labels.shape().DebugString()));
    const int64_t n = logits.dim_size(0);
    const int64_t c = logits.dim_size(1);
    check_binary_weight<Device, A>(ctx, pos_weight, c, "pos_weight");
    if (!ctx->status().ok()) return;
    check_binary_weight<Device, A>(ctx, neg_weight, c, "neg_weight");
    if (!ctx->status().ok()) return;

    Tensor* loss = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, logits.shape(), &loss));
    Tensor* backprop = nullptr;
    if (compute_backprop_) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 1, logits.shape(), &backprop));
    } else {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({0}), &backprop));
    }
    if (n * c == 0) return;

    using CT = typename CoreType<T>::type;
    SigmoidProblem<CT, A> p;
    p.n = n;
    p.c = c;
    p.logits = core_ptr(logits.flat<T>().data());
    p.labels = core_ptr(labels.flat<T>().data());
    p.pos_weight = pos_weight.NumElements() > 0 ? pos_weight.flat<A>().data() : nullptr;
    p.pos_weight_size = pos_weight.NumElements();
    p.neg_weight = neg_weight.NumElements() > 0 ? neg_weight.flat<A>().data() : nullptr;
    p.neg_weight_size = neg_weight.NumElements();
    p.label_smoothing = static_cast<A>(options.label_smoothing);
    p.focal_gamma = static_cast<A>(options.focal_gamma);
    p.loss = loss->flat<A>().data();
    p.backprop = compute_backprop_ ? core_ptr(backprop->flat<T>().data()) : nullptr;
    Launch<Device>::sigmoid(ctx, p);
  }

 private:
  bool compute_backprop_ = true;
};

template <typename Device, typename T, typename A>
class ScaleGradientOp : public OpKernel {
 public:
  explicit ScaleGradientOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& backprop = ctx->input(0);
    const Tensor& scale = ctx->input(1);
    OP_REQUIRES(ctx, backprop.dims() == 2,
                errors::InvalidArgument("backprop must be 2-D [N, C], got shape ",
                                        backprop.shape().DebugString()));
    const int64_t n = backprop.dim_size(0);
    const int64_t c = backprop.dim_size(1);
    const bool per_row = scale.dims() == 1 && scale.dim_size(0) == n;
    OP_REQUIRES(ctx, per_row || scale.shape() == backprop.shape(),
                errors::InvalidArgument("scale must have shape [", n, "] or ",
                                        backprop.shape().DebugString(), ", got ",
                                        scale.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, backprop.shape(), &out));
    if (n * c == 0) return;
    Launch<Device>::scale(ctx, core_ptr(backprop.flat<T>().data()), scale.flat<A>().data(),
                          core_ptr(out->flat<T>().data()), n, c, per_row);
  }
};

#define COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, T, A)                           \
  REGISTER_KERNEL_BUILDER(Name("CostxentSoftmaxLoss")                                 \
                              .Device(DEVICE_NAME)                                    \
                              .TypeConstraint<T>("T")                                 \
                              .TypeConstraint<A>("A")                                 \
                              .HostMemory("options"),                                 \
                          ::costxent::tf_kernels::SoftmaxLossOp<DEVICE, T, A>);       \
  REGISTER_KERNEL_BUILDER(Name("CostxentSigmoidLoss")                                 \
                              .Device(DEVICE_NAME)                                    \
                              .TypeConstraint<T>("T")                                 \
                              .TypeConstraint<A>("A")                                 \
                              .HostMemory("options"),                                 \
                          ::costxent::tf_kernels::SigmoidLossOp<DEVICE, T, A>);       \
  REGISTER_KERNEL_BUILDER(Name("CostxentScaleGradient")                               \
                              .Device(DEVICE_NAME)                                    \
                              .TypeConstraint<T>("T")                                 \
                              .TypeConstraint<A>("A"),                                \
                          ::costxent::tf_kernels::ScaleGradientOp<DEVICE, T, A>);

#define COSTXENT_REGISTER_ALL_TYPES(DEVICE_NAME, DEVICE)               \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, Eigen::half, float)     \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, Eigen::bfloat16, float) \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, float, float)           \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, double, double)

}  // namespace tf_kernels
}  // namespace costxent
