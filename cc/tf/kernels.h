// Device-independent TensorFlow OpKernels: describe the inputs to the core spec, validate
// them there (cc/core/spec.h), allocate outputs, fill a core problem and hand it to
// Launch<Device> (cpu_kernels.cc / gpu_kernels.cc).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "cc/core/problem.h"
#include "cc/core/reduction.h"
#include "cc/core/spec.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace costxent {
namespace tf_kernels {

using ::tensorflow::DataType;
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

inline DType core_dtype(DataType dtype) {
  switch (dtype) {
    case ::tensorflow::DT_HALF:
      return DType::kFloat16;
    case ::tensorflow::DT_BFLOAT16:
      return DType::kBFloat16;
    case ::tensorflow::DT_FLOAT:
      return DType::kFloat32;
    case ::tensorflow::DT_DOUBLE:
      return DType::kFloat64;
    case ::tensorflow::DT_INT32:
      return DType::kInt32;
    case ::tensorflow::DT_INT64:
      return DType::kInt64;
    default:
      return DType::kOther;
  }
}

// An optional input is absent when the caller passed an empty [0] tensor.
inline ArgInfo arg_info(const Tensor& t, bool optional = false) {
  ArgInfo info;
  info.present = !(optional && t.dims() == 1 && t.dim_size(0) == 0);
  info.dtype = core_dtype(t.dtype());
  for (int d = 0; d < t.dims(); ++d) info.shape.push_back(t.dim_size(d));
  return info;
}

inline ::tensorflow::Status tf_status(const Status& s) {
  if (s.ok()) return ::tensorflow::OkStatus();
  return errors::InvalidArgument(s.message);
}

inline ::tensorflow::Status read_scalar(OpKernelContext* ctx, int index, const char* name,
                                        double* out) {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 0)
    return errors::InvalidArgument(name, " must be a scalar, got shape ",
                                   t.shape().DebugString());
  *out = t.scalar<double>()();
  return ::tensorflow::OkStatus();
}

inline Reduction parse_reduction(const std::string& name) {
  if (name == "sum") return Reduction::kSum;
  if (name == "mean_with_sample_weight") return Reduction::kMeanWithSampleWeight;
  return Reduction::kSumOverBatchSize;
}

// Implemented per device.
template <typename Device>
struct Launch {
  // Runs the rows (shards whole reduction blocks when p.block_sums is set). Returns -1, or
  // the first row with an invalid label (CPU; the GPU writes NaN rows instead).
  template <typename T, typename A>
  static int64_t softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p);
  // Returns -1 or the first element with a label outside [0, 1] (CPU).
  template <typename T, typename A>
  static int64_t sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p);
  // The divisor of a reduction whose divisor needs_data().
  template <typename A>
  static double divisor(OpKernelContext* ctx, const DivisorInput<A>& d);
  // *loss = sum of block sums in order, in the output's memory.
  template <typename A>
  static void sum_blocks(OpKernelContext* ctx, const double* block_sums, int64_t count,
                         A* loss);
  // out = in * (*scale), skipped when *scale == 1 and out == in; scale in device memory.
  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t count);
  // Inputs live in host memory: weights can be value-checked and scalars read here.
  static constexpr bool kHostMemory = false;
  // Values per row of the state a per-example softmax forward saves for its backward.
  static int64_t softmax_row_state_size(int64_t c, bool focal);
};


// The reduced variants' common part (the rule is cc/core/reduction.h's): output 0 is the
// scalar loss; the row pass (`run`, false on error) scales the gradient and fills one double
// per block of kReduceBlockRows rows, added here in order.
template <typename Device, typename A, typename Problem, typename Run>
void run_reduced(OpKernelContext* ctx, const DivisorInput<A>& d, double per_row_count,
                 Problem* p, Run run) {
  double scale = 1;
  OP_REQUIRES_OK(ctx, read_scalar(ctx, 7, "scale", &scale));
  Tensor* loss = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &loss));
  const double divisor = d.needs_data() ? Launch<Device>::divisor(ctx, d) : d.without_data();
  if (!ctx->status().ok()) return;
  p->scale = static_cast<A>(reduced_scale(scale, divisor, per_row_count));
  const int64_t blocks = block_count(d.n);
  Tensor block_sums;
  OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE,
                                         TensorShape({std::max<int64_t>(1, blocks)}), &block_sums));
  p->block_sums = block_sums.flat<double>().data();
  if (!run(*p)) return;
  // NaN * 0 would survive a zero scale; Keras gives exactly 0 there.
  Launch<Device>::sum_blocks(ctx, p->block_sums, p->scale == A(0) ? 0 : blocks,
                             loss->flat<A>().data());
}

// ---------------------------------------------------------------------------------------
// The three variants of each loss op (ops.cc).

enum class Variant { kLoss, kGrad, kReduced };

// The variant's per-example output: the loss of loss_shape (kLoss), or the backprop in the
// logits' buffer when TensorFlow can forward it (input 0; kGrad's output 0, kReduced's 1).
template <Variant V, typename T, typename Problem>
bool allocate_output(OpKernelContext* ctx, const TensorShape& loss_shape, Problem* p) {
  using A = std::remove_pointer_t<decltype(p->loss)>;
  if (V == Variant::kLoss) {
    Tensor* loss = nullptr;
    const ::tensorflow::Status s = ctx->allocate_output(0, loss_shape, &loss);
    if (!s.ok()) ctx->SetStatus(s);
    if (s.ok()) p->loss = loss->flat<A>().data();
    return s.ok();
  }
  Tensor* backprop = nullptr;
  const ::tensorflow::Status s = ctx->forward_input_or_allocate_output(
      {0}, V == Variant::kGrad ? 0 : 1, ctx->input(0).shape(), &backprop);
  if (!s.ok()) ctx->SetStatus(s);
  if (s.ok()) p->backprop = core_ptr(backprop->flat<T>().data());
  return s.ok();
}

// ---------------------------------------------------------------------------------------
// Softmax losses.

template <typename Device, typename T, typename A, Variant V>
class SoftmaxLossOp : public OpKernel {
 public:
  explicit SoftmaxLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string loss_kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("loss_kind", &loss_kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_ignore_class", &spec_.has_ignore_class));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ignore_class", &spec_.ignore_class));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_weights", &check_weights_));
    spec_.loss_kind =
        loss_kind == "expected_cost" ? SoftmaxLoss::kExpectedCost : SoftmaxLoss::kCrossEntropy;
    if (V == Variant::kReduced) {
      std::string reduction;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
      spec_.reduction = parse_reduction(reduction);
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& weights = ctx->input(2);
    SoftmaxSpec spec = spec_;
    spec.logits = arg_info(logits);
    spec.labels = arg_info(labels);
    spec.weights = arg_info(weights, true);
    OP_REQUIRES_OK(ctx, read_scalar(ctx, 3, "label_smoothing", &spec.label_smoothing));
    OP_REQUIRES_OK(ctx, read_scalar(ctx, 4, "focal_gamma", &spec.focal_gamma));
    OP_REQUIRES_OK(ctx, read_scalar(ctx, 5, "ce_weight", &spec.ce_weight));
    const Tensor* row_scale = nullptr;
    if (V != Variant::kLoss) {
      row_scale = &ctx->input(6);
      spec.row_scale = arg_info(*row_scale, V == Variant::kReduced);
    }
    if (V == Variant::kGrad) spec.row_state = arg_info(ctx->input(7));
    OP_REQUIRES_OK(ctx, tf_status(validate_softmax(&spec)));
    if (Launch<Device>::kHostMemory && check_weights_ && spec.weights.present) {
      OP_REQUIRES_OK(ctx, tf_status(validate_softmax_weights(spec, weights.flat<A>().data(),
                                                             weights.NumElements())));
    }

    using CT = typename CoreType<T>::type;
    SoftmaxProblem<CT, A> p;
    p.n = spec.n;
    p.c = spec.c;
    p.logits = core_ptr(logits.flat<T>().data());
    if (!spec.sparse) {
      p.dense = core_ptr(labels.flat<T>().data());
    } else if (labels.dtype() == ::tensorflow::DT_INT32) {
      p.labels32 = labels.flat<int32_t>().data();
    } else {
      p.labels64 = reinterpret_cast<const int64_t*>(labels.flat<::tensorflow::int64>().data());
    }
    p.loss_kind = spec.loss_kind;
    p.weight_mode = spec.weight_mode;
    p.weights = spec.weights.present ? weights.flat<A>().data() : nullptr;
    p.label_smoothing = static_cast<A>(spec.label_smoothing);
    p.focal_gamma = static_cast<A>(spec.focal_gamma);
    p.ce_weight = static_cast<A>(spec.ce_weight);
    p.has_ignore_class = spec.has_ignore_class;
    p.ignore_class = spec.ignore_class;
    if (row_scale != nullptr && spec.row_scale.present) p.row_scale = row_scale->flat<A>().data();
    if (V == Variant::kGrad && spec.row_state.shape.back() > 0)
      p.row_state_in = ctx->input(7).flat<A>().data();

    TensorShape lead = logits.shape();
    lead.RemoveLastDims(1);
    if (!allocate_output<V, T>(ctx, lead, &p)) return;
    if (V == Variant::kLoss) {
      const int64_t size =
          Launch<Device>::softmax_row_state_size(spec.c, spec.focal_gamma != 0);
      Tensor* state = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({spec.n, size}), &state));
      if (size > 0) p.row_state_out = state->flat<A>().data();
    }
    if (V != Variant::kReduced) {
      run(ctx, spec, p);
      return;
    }

    run_reduced<Device>(ctx, divisor_input(p, spec.reduction), 1.0, &p,
                        [&](const SoftmaxProblem<CT, A>& q) {
      return run(ctx, spec, q);
    });
  }

 private:
  // Runs the problem; false (with the error set) on an invalid label or launch failure.
  template <typename CT>
  bool run(OpKernelContext* ctx, const SoftmaxSpec& spec, const SoftmaxProblem<CT, A>& p) {
    if (p.n == 0) return true;
    const int64_t bad = Launch<Device>::softmax(ctx, p);
    if (!ctx->status().ok()) return false;
    if (bad >= 0) {
      ctx->SetStatus(
          errors::InvalidArgument(invalid_label_message(spec, bad, label_at(p, bad))));
      return false;
    }
    return true;
  }

  SoftmaxSpec spec_;
  bool check_weights_ = true;
};

// ---------------------------------------------------------------------------------------
// Sigmoid loss.

template <typename Device, typename T, typename A, Variant V>
class SigmoidLossOp : public OpKernel {
 public:
  explicit SigmoidLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_weights", &check_weights_));
    if (V == Variant::kReduced) {
      std::string reduction;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
      reduction_ = parse_reduction(reduction);
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& pos_weight = ctx->input(2);
    const Tensor& neg_weight = ctx->input(3);
    SigmoidSpec spec;
    spec.logits = arg_info(logits);
    spec.labels = arg_info(labels);
    spec.pos_weight = arg_info(pos_weight, true);
    spec.neg_weight = arg_info(neg_weight, true);
    spec.reduction = reduction_;
    OP_REQUIRES_OK(ctx, read_scalar(ctx, 4, "label_smoothing", &spec.label_smoothing));
    OP_REQUIRES_OK(ctx, read_scalar(ctx, 5, "focal_gamma", &spec.focal_gamma));
    const Tensor* extra = V == Variant::kLoss ? nullptr : &ctx->input(6);
    if (V == Variant::kGrad) spec.element_scale = arg_info(*extra);
    if (V == Variant::kReduced) spec.row_scale = arg_info(*extra, true);
    OP_REQUIRES_OK(ctx, tf_status(validate_sigmoid(&spec)));
    if (Launch<Device>::kHostMemory && check_weights_) {
      if (spec.pos_weight.present)
        OP_REQUIRES_OK(ctx, tf_status(validate_sigmoid_weight(
                                "pos_weight", pos_weight.flat<A>().data(),
                                pos_weight.NumElements())));
      if (spec.neg_weight.present)
        OP_REQUIRES_OK(ctx, tf_status(validate_sigmoid_weight(
                                "neg_weight", neg_weight.flat<A>().data(),
                                neg_weight.NumElements())));
    }

    using CT = typename CoreType<T>::type;
    SigmoidProblem<CT, A> p;
    p.n = spec.n;
    p.c = spec.c;
    p.logits = core_ptr(logits.flat<T>().data());
    p.labels = core_ptr(labels.flat<T>().data());
    if (spec.pos_weight.present) {
      p.pos_weight = pos_weight.flat<A>().data();
      p.pos_weight_size = pos_weight.NumElements();
    }
    if (spec.neg_weight.present) {
      p.neg_weight = neg_weight.flat<A>().data();
      p.neg_weight_size = neg_weight.NumElements();
    }
    p.label_smoothing = static_cast<A>(spec.label_smoothing);
    p.focal_gamma = static_cast<A>(spec.focal_gamma);

    if (!allocate_output<V, T>(ctx, logits.shape(), &p)) return;
    if (V == Variant::kGrad) p.element_scale = extra->flat<A>().data();
    if (V != Variant::kReduced) {
      run(ctx, spec, p);
      return;
    }

    if (spec.row_scale.present) p.row_scale = extra->flat<A>().data();
    // The per-row loss is the mean over the last axis.
    run_reduced<Device>(ctx, divisor_input(p, reduction_), static_cast<double>(p.c), &p,
                        [&](const SigmoidProblem<CT, A>& q) {
      return run(ctx, spec, q);
    });
  }

 private:
  template <typename CT>
  bool run(OpKernelContext* ctx, const SigmoidSpec& spec, const SigmoidProblem<CT, A>& p) {
    if (p.n * p.c == 0) return true;
    const int64_t bad = Launch<Device>::sigmoid(ctx, p);
    if (!ctx->status().ok()) return false;
    if (bad >= 0) {
      ctx->SetStatus(errors::InvalidArgument(
          invalid_sigmoid_label_message(spec, bad, static_cast<double>(to_acc(p.labels[bad])))));
      return false;
    }
    return true;
  }

  Reduction reduction_ = Reduction::kNone;
  bool check_weights_ = true;
};

// ---------------------------------------------------------------------------------------
// The reduced losses' backward: backprop * upstream scalar, in place.

template <typename Device, typename T, typename A>
class ScaleGradientOp : public OpKernel {
 public:
  explicit ScaleGradientOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& backprop = ctx->input(0);
    const Tensor& scale = ctx->input(1);
    OP_REQUIRES(ctx, scale.dims() == 0,
                errors::InvalidArgument("scale must be a scalar (the upstream gradient of a "
                                        "reduced loss), got shape ",
                                        scale.shape().DebugString()));
    // Keras differentiates the summed loss, so the upstream scalar is usually exactly 1: then
    // the output is the input buffer itself. Device memory cannot be read here without a
    // sync, so there the kernel makes the same decision.
    if (Launch<Device>::kHostMemory && scale.scalar<A>()() == A(1)) {
      ctx->set_output(0, backprop);
      return;
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, backprop.shape(), &out));
    if (backprop.NumElements() == 0) return;
    Launch<Device>::scale(ctx, core_ptr(backprop.flat<T>().data()), scale.flat<A>().data(),
                          core_ptr(out->flat<T>().data()), backprop.NumElements());
  }
};

#define COSTXENT_REGISTER_VARIANTS(OP, KERNEL, DEVICE_NAME, DEVICE, T, A, ...)            \
  REGISTER_KERNEL_BUILDER(Name(OP).Device(DEVICE_NAME).TypeConstraint<T>("T")             \
                              .TypeConstraint<A>("A") __VA_ARGS__,                        \
                          KERNEL<DEVICE, T, A, ::costxent::tf_kernels::Variant::kLoss>);  \
  REGISTER_KERNEL_BUILDER(Name(OP "Grad").Device(DEVICE_NAME).TypeConstraint<T>("T")      \
                              .TypeConstraint<A>("A") __VA_ARGS__,                        \
                          KERNEL<DEVICE, T, A, ::costxent::tf_kernels::Variant::kGrad>);  \
  REGISTER_KERNEL_BUILDER(Name(OP "Reduced").Device(DEVICE_NAME).TypeConstraint<T>("T")   \
                              .TypeConstraint<A>("A") __VA_ARGS__.HostMemory("scale"),    \
                          KERNEL<DEVICE, T, A, ::costxent::tf_kernels::Variant::kReduced>);

#define COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, T, A)                                \
  COSTXENT_REGISTER_VARIANTS("CostxentSoftmaxLoss", ::costxent::tf_kernels::SoftmaxLossOp,  \
                             DEVICE_NAME, DEVICE, T, A, .HostMemory("label_smoothing")      \
                                 .HostMemory("focal_gamma").HostMemory("ce_weight"))        \
  COSTXENT_REGISTER_VARIANTS("CostxentSigmoidLoss", ::costxent::tf_kernels::SigmoidLossOp,  \
                             DEVICE_NAME, DEVICE, T, A, .HostMemory("label_smoothing")      \
                                 .HostMemory("focal_gamma"))                                \
  REGISTER_KERNEL_BUILDER(Name("CostxentScaleGradient")                                     \
                              .Device(DEVICE_NAME)                                          \
                              .TypeConstraint<T>("T")                                       \
                              .TypeConstraint<A>("A"),                                      \
                          ::costxent::tf_kernels::ScaleGradientOp<DEVICE, T, A>);

#define COSTXENT_REGISTER_ALL_TYPES(DEVICE_NAME, DEVICE)               \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, Eigen::half, float)     \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, Eigen::bfloat16, float) \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, float, float)           \
  COSTXENT_REGISTER_KERNELS(DEVICE_NAME, DEVICE, double, double)

}  // namespace tf_kernels
}  // namespace costxent
