// The typed-FFI handlers' common part, for every platform: describe the FFI buffers to the
// core spec, validate them there (cc/core/spec.h, the same messages as the TensorFlow ops),
// fill a core problem and hand it to a platform's Device (host.cc, cuda.cc).
//
// One handler per loss serves its three variants (xla_ops.cc emits them under three target
// names); every call has the same operands and results, an unused one being an empty [0]
// buffer:
//   softmax: logits, labels, weights, row_scale -> loss, backprop
//   sigmoid: logits, labels, pos_weight, neg_weight, scale_input -> loss, backprop
// variant kLoss: row_scale/scale_input [0], backprop [0];
//         kGrad: row_scale / scale_input = grad_loss, loss [0];
//         kReduced: row_scale / scale_input = sample_weight or [0], loss [].
// The options are attributes: the TensorFlow ops take them as host scalars, and the Python
// layer always passes constants, so XLA knows them when it compiles (xla_ops.cc).
//
// A Device provides:
//   static constexpr bool kHostMemory;           buffers are host memory (weights and labels
//                                                can be read here)
//   Error softmax(const SoftmaxProblem&, int64_t* bad) / sigmoid(...): run the rows, *bad =
//                                                the first invalid row / element or -1
//   Error divisor(const DivisorInput&, double*): a divisor that needs_data()
//   Error block_sums(int64_t count, double**):   scratch for the reduction's block sums
//   Error sum_blocks(const double*, int64_t, A* loss): the loss in the output's memory
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>

#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/reduction.h"
#include "cc/core/spec.h"
#include "cc/xla/targets.h"
#include "xla/ffi/api/ffi.h"

namespace costxent {
namespace xla_ffi {

namespace ffi = ::xla::ffi;

inline DType core_dtype(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F16:
      return DType::kFloat16;
    case ffi::DataType::BF16:
      return DType::kBFloat16;
    case ffi::DataType::F32:
      return DType::kFloat32;
    case ffi::DataType::F64:
      return DType::kFloat64;
    case ffi::DataType::S32:
      return DType::kInt32;
    case ffi::DataType::S64:
      return DType::kInt64;
    default:
      return DType::kOther;
  }
}

// As the TensorFlow ops: an optional operand is absent when it is an empty [0] buffer.
inline ArgInfo arg_info(const ffi::AnyBuffer& b, bool optional = false) {
  ArgInfo info;
  const auto dims = b.dimensions();
  info.present = !(optional && dims.size() == 1 && dims[0] == 0);
  info.dtype = core_dtype(b.element_type());
  info.shape.assign(dims.begin(), dims.end());
  return info;
}

inline ffi::Error ffi_error(const Status& s) {
  if (s.ok()) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(s.message);
}

template <typename T>
T* data_of(const ffi::AnyBuffer& b) {
  return static_cast<T*>(b.untyped_data());
}

// The core's storage and accumulation types for the logits' dtype (DESIGN 2.5), as a tag
// handed to fn; validation has already rejected any other dtype.
template <typename TT, typename AA>
struct Types {
  using T = TT;
  using A = AA;
};

template <typename Fn>
ffi::Error by_logits_type(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::kFloat16:
      return fn(Types<f16, float>{});
    case DType::kBFloat16:
      return fn(Types<bf16, float>{});
    case DType::kFloat32:
      return fn(Types<float, float>{});
    default:
      return fn(Types<double, double>{});
  }
}

// The reduced variants: divisor, scale, block sums and the ordered sum into the scalar loss
// (the rule is cc/core/reduction.h's, as the TensorFlow ops apply it).
template <typename Device, typename A, typename Problem, typename Run>
ffi::Error run_reduced(Device& device, const DivisorInput<A>& d, double per_row_count,
                       double scale, A* loss, Problem* p, Run run) {
  double divisor = d.without_data();
  if (d.needs_data()) {
    ffi::Error e = device.divisor(d, &divisor);
    if (e.failure()) return e;
  }
  p->scale = static_cast<A>(reduced_scale(scale, divisor, per_row_count));
  const int64_t blocks = block_count(d.n);
  ffi::Error e = device.block_sums(blocks > 0 ? blocks : 1, &p->block_sums);
  if (e.failure()) return e;
  e = run(*p);
  if (e.failure()) return e;
  // NaN * 0 would survive a zero scale; Keras gives exactly 0 there.
  return device.sum_blocks(p->block_sums, p->scale == A(0) ? 0 : blocks, loss);
}

struct SoftmaxOptions {
  int32_t variant = 0;
  int32_t loss_kind = 0;
  bool has_ignore_class = false;
  int64_t ignore_class = 0;
  bool check_weights = true;
  double label_smoothing = 0;
  double focal_gamma = 0;
  double ce_weight = 0;
  int32_t reduction = 0;
  double scale = 1;
};

template <typename Device, typename T, typename A>
ffi::Error softmax_typed(Device& device, const SoftmaxSpec& spec, const ffi::AnyBuffer& logits,
                         const ffi::AnyBuffer& labels, const ffi::AnyBuffer& weights,
                         const ffi::AnyBuffer& row_scale, ffi::AnyBuffer& loss,
                         ffi::AnyBuffer& backprop, const SoftmaxOptions& o) {
  if (Device::kHostMemory && o.check_weights && spec.weights.present) {
    ffi::Error e = ffi_error(validate_softmax_weights(
        spec, data_of<const A>(weights), static_cast<int64_t>(weights.element_count())));
    if (e.failure()) return e;
  }
  const Variant variant = static_cast<Variant>(o.variant);
  SoftmaxProblem<T, A> p;
  p.n = spec.n;
  p.c = spec.c;
  p.logits = data_of<const T>(logits);
  if (!spec.sparse) {
    p.dense = data_of<const T>(labels);
  } else if (spec.labels.dtype == DType::kInt32) {
    p.labels32 = data_of<const int32_t>(labels);
  } else {
    p.labels64 = data_of<const int64_t>(labels);
  }
  p.loss_kind = spec.loss_kind;
  p.weight_mode = spec.weight_mode;
  p.weights = spec.weights.present ? data_of<const A>(weights) : nullptr;
  p.label_smoothing = static_cast<A>(spec.label_smoothing);
  p.focal_gamma = static_cast<A>(spec.focal_gamma);
  p.ce_weight = static_cast<A>(spec.ce_weight);
  p.has_ignore_class = spec.has_ignore_class;
  p.ignore_class = spec.ignore_class;
  if (spec.row_scale.present) p.row_scale = data_of<const A>(row_scale);
  if (variant == Variant::kLoss) p.loss = data_of<A>(loss);
  if (variant != Variant::kLoss) p.backprop = data_of<T>(backprop);

  auto run = [&](const SoftmaxProblem<T, A>& q) -> ffi::Error {
    if (q.n == 0) return ffi::Error::Success();
    int64_t bad = -1;
    ffi::Error e = device.softmax(q, &bad);
    if (e.failure() || bad < 0) return e;
    return ffi::Error::InvalidArgument(invalid_label_message(spec, bad, label_at(q, bad)));
  };
  if (variant != Variant::kReduced) return run(p);
  return run_reduced(device, divisor_input(p, spec.reduction), 1.0, o.scale, data_of<A>(loss),
                     &p, run);
}

template <typename Device>
ffi::Error softmax_handler(Device& device, const ffi::AnyBuffer& logits,
                           const ffi::AnyBuffer& labels, const ffi::AnyBuffer& weights,
                           const ffi::AnyBuffer& row_scale, ffi::AnyBuffer loss,
                           ffi::AnyBuffer backprop, const SoftmaxOptions& o) {
  const Variant variant = static_cast<Variant>(o.variant);
  SoftmaxSpec spec;
  spec.loss_kind = static_cast<SoftmaxLoss>(o.loss_kind);
  spec.logits = arg_info(logits);
  spec.labels = arg_info(labels);
  spec.weights = arg_info(weights, true);
  if (variant != Variant::kLoss) spec.row_scale = arg_info(row_scale, variant == Variant::kReduced);
  spec.label_smoothing = o.label_smoothing;
  spec.focal_gamma = o.focal_gamma;
  spec.ce_weight = o.ce_weight;
  spec.has_ignore_class = o.has_ignore_class;
  spec.ignore_class = o.ignore_class;
  spec.reduction = variant == Variant::kReduced ? static_cast<Reduction>(o.reduction)
                                                : Reduction::kNone;
  ffi::Error e = ffi_error(validate_softmax(&spec));
  if (e.failure()) return e;
  return by_logits_type(spec.logits.dtype, [&](auto types) {
    using Types = decltype(types);
    return softmax_typed<Device, typename Types::T, typename Types::A>(
        device, spec, logits, labels, weights, row_scale, loss, backprop, o);
  });
}

struct SigmoidOptions {
  int32_t variant = 0;
  bool check_weights = true;
  double label_smoothing = 0;
  double focal_gamma = 0;
  int32_t reduction = 0;
  double scale = 1;
};

template <typename Device, typename T, typename A>
ffi::Error sigmoid_typed(Device& device, const SigmoidSpec& spec, const ffi::AnyBuffer& logits,
                         const ffi::AnyBuffer& labels, const ffi::AnyBuffer& pos_weight,
                         const ffi::AnyBuffer& neg_weight, const ffi::AnyBuffer& scale_input,
                         ffi::AnyBuffer& loss, ffi::AnyBuffer& backprop,
                         const SigmoidOptions& o) {
  if (Device::kHostMemory && o.check_weights) {
    for (const auto& [name, info, buffer] :
         {std::tuple{"pos_weight", spec.pos_weight, &pos_weight},
          std::tuple{"neg_weight", spec.neg_weight, &neg_weight}}) {
      if (!info.present) continue;
      ffi::Error e = ffi_error(validate_sigmoid_weight(
          name, data_of<const A>(*buffer), static_cast<int64_t>(buffer->element_count())));
      if (e.failure()) return e;
    }
  }
  const Variant variant = static_cast<Variant>(o.variant);
  SigmoidProblem<T, A> p;
  p.n = spec.n;
  p.c = spec.c;
  p.logits = data_of<const T>(logits);
  p.labels = data_of<const T>(labels);
  if (spec.pos_weight.present) {
    p.pos_weight = data_of<const A>(pos_weight);
    p.pos_weight_size = static_cast<int64_t>(pos_weight.element_count());
  }
  if (spec.neg_weight.present) {
    p.neg_weight = data_of<const A>(neg_weight);
    p.neg_weight_size = static_cast<int64_t>(neg_weight.element_count());
  }
  p.label_smoothing = static_cast<A>(spec.label_smoothing);
  p.focal_gamma = static_cast<A>(spec.focal_gamma);
  if (spec.element_scale.present) p.element_scale = data_of<const A>(scale_input);
  if (spec.row_scale.present) p.row_scale = data_of<const A>(scale_input);
  if (variant == Variant::kLoss) p.loss = data_of<A>(loss);
  if (variant != Variant::kLoss) p.backprop = data_of<T>(backprop);

  auto run = [&](const SigmoidProblem<T, A>& q) -> ffi::Error {
    if (q.n * q.c == 0) return ffi::Error::Success();
    int64_t bad = -1;
    ffi::Error e = device.sigmoid(q, &bad);
    if (e.failure() || bad < 0) return e;
    return ffi::Error::InvalidArgument(invalid_sigmoid_label_message(
        spec, bad, static_cast<double>(to_acc(q.labels[bad]))));
  };
  if (variant != Variant::kReduced) return run(p);
  // The per-row loss is the mean over the last axis.
  return run_reduced(device, divisor_input(p, spec.reduction), static_cast<double>(p.c),
                     o.scale, data_of<A>(loss), &p, run);
}

template <typename Device>
ffi::Error sigmoid_handler(Device& device, const ffi::AnyBuffer& logits,
                           const ffi::AnyBuffer& labels, const ffi::AnyBuffer& pos_weight,
                           const ffi::AnyBuffer& neg_weight, const ffi::AnyBuffer& scale_input,
                           ffi::AnyBuffer loss, ffi::AnyBuffer backprop,
                           const SigmoidOptions& o) {
  const Variant variant = static_cast<Variant>(o.variant);
  SigmoidSpec spec;
  spec.logits = arg_info(logits);
  spec.labels = arg_info(labels);
  spec.pos_weight = arg_info(pos_weight, true);
  spec.neg_weight = arg_info(neg_weight, true);
  if (variant == Variant::kGrad) spec.element_scale = arg_info(scale_input);
  if (variant == Variant::kReduced) spec.row_scale = arg_info(scale_input, true);
  spec.label_smoothing = o.label_smoothing;
  spec.focal_gamma = o.focal_gamma;
  spec.reduction = variant == Variant::kReduced ? static_cast<Reduction>(o.reduction)
                                                : Reduction::kNone;
  ffi::Error e = ffi_error(validate_sigmoid(&spec));
  if (e.failure()) return e;
  return by_logits_type(spec.logits.dtype, [&](auto types) {
    using Types = decltype(types);
    return sigmoid_typed<Device, typename Types::T, typename Types::A>(
        device, spec, logits, labels, pos_weight, neg_weight, scale_input, loss, backprop, o);
  });
}

// The FFI signature shared by every platform's registration (host.cc, cuda.cc): the
// context bindings first (added by the caller), then operands, results and attributes.
template <typename Binding>
auto bind_softmax(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int32_t>("variant")
      .template Attr<int32_t>("loss_kind")
      .template Attr<bool>("has_ignore_class")
      .template Attr<int64_t>("ignore_class")
      .template Attr<bool>("check_weights")
      .template Attr<double>("label_smoothing")
      .template Attr<double>("focal_gamma")
      .template Attr<double>("ce_weight")
      .template Attr<int32_t>("reduction")
      .template Attr<double>("scale");
}

template <typename Binding>
auto bind_sigmoid(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int32_t>("variant")
      .template Attr<bool>("check_weights")
      .template Attr<double>("label_smoothing")
      .template Attr<double>("focal_gamma")
      .template Attr<int32_t>("reduction")
      .template Attr<double>("scale");
}

// The handler bodies every platform registers: Make(context...) builds its Device.
template <typename Device, typename... Ctx>
ffi::Error softmax_entry(Ctx... ctx, ffi::AnyBuffer logits, ffi::AnyBuffer labels,
                         ffi::AnyBuffer weights, ffi::AnyBuffer row_scale,
                         ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> backprop,
                         int32_t variant, int32_t loss_kind, bool has_ignore_class,
                         int64_t ignore_class, bool check_weights, double label_smoothing,
                         double focal_gamma, double ce_weight, int32_t reduction, double scale) {
  Device device(std::move(ctx)...);
  const SoftmaxOptions o{variant,         loss_kind,   has_ignore_class, ignore_class, check_weights,
                         label_smoothing, focal_gamma, ce_weight,        reduction,    scale};
  return softmax_handler(device, logits, labels, weights, row_scale, *loss, *backprop, o);
}

template <typename Device, typename... Ctx>
ffi::Error sigmoid_entry(Ctx... ctx, ffi::AnyBuffer logits, ffi::AnyBuffer labels,
                         ffi::AnyBuffer pos_weight, ffi::AnyBuffer neg_weight,
                         ffi::AnyBuffer scale_input, ffi::Result<ffi::AnyBuffer> loss,
                         ffi::Result<ffi::AnyBuffer> backprop, int32_t variant,
                         bool check_weights, double label_smoothing, double focal_gamma,
                         int32_t reduction, double scale) {
  Device device(std::move(ctx)...);
  const SigmoidOptions o{variant, check_weights, label_smoothing, focal_gamma, reduction, scale};
  return sigmoid_handler(device, logits, labels, pos_weight, neg_weight, scale_input, *loss,
                         *backprop, o);
}

}  // namespace xla_ffi
}  // namespace costxent
