// XLA lowerings of the fused ops (cc/tf/ops.cc): each emits one typed-FFI custom call whose
// handler (handlers.h; host.cc, cuda.cc) runs the same core kernels as the TensorFlow op.
// Targets: costxent_{softmax,sigmoid}_loss{,_grad,_reduced}.
//
// The float64 options (label_smoothing, focal_gamma, ce_weight, the reduction's scale) are
// host scalars in the TensorFlow ops; here they are compile-time constants turned into
// attributes. The Python layer always passes them as constants, so XLA knows them when it
// compiles, the handler reads them without a device-to-host copy (which a CUDA handler could
// not make without a synchronisation), and a change of value is a new compilation, as a
// change of any other attribute.
//
// CostxentScaleGradient is an HLO multiply: XLA fuses it and folds it away when the upstream
// gradient is the constant 1 (Keras differentiates the summed loss).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cc/xla/targets.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace costxent {
namespace xla_ops {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;
namespace errors = ::tensorflow::errors;

using ::costxent::xla_ffi::kSigmoidTargets;
using ::costxent::xla_ffi::kSoftmaxTargets;
using ::costxent::xla_ffi::Variant;

// Reduction numbering of cc/core/spec.h.
int32_t reduction_code(const std::string& name) {
  if (name == "sum") return 1;
  if (name == "mean_with_sample_weight") return 3;
  return 2;  // sum_over_batch_size
}

std::string f64_attr(const char* name, double value) {
  return absl::StrFormat("%s = %.17e : f64", name, value);
}

std::string bool_attr(const char* name, bool value) {
  return absl::StrFormat("%s = %s", name, value ? "true" : "false");
}

// Both losses' op inputs: data operands first, then float64 options, then (kGrad, kReduced)
// the scale operand (grad_loss / sample_weight) at 6 and (kReduced) the scale at 7.
constexpr int kScaleOperand = 6;
constexpr int kScaleConstant = 7;

// The part every loss op shares: constant options, the custom call, its outputs.
class FusedLossXlaOp : public XlaOpKernel {
 public:
  FusedLossXlaOp(OpKernelConstruction* ctx, Variant variant, std::string target)
      : XlaOpKernel(ctx), variant_(variant), target_(std::move(target)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_weights", &check_weights_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("A", &acc_dtype_));
    if (variant == Variant::kReduced) {
      std::string reduction;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("reduction", &reduction));
      reduction_ = reduction_code(reduction);
    }
  }

 protected:
  // Emits the call over op inputs [0, data_inputs) plus the scale operand (an empty [0] for
  // kLoss), with the loss' own attributes `attrs`.
  void Emit(XlaOpKernelContext* ctx, int data_inputs, bool per_row_loss,
            const std::string& attrs) {
    absl::StatusOr<xla::Shape> logits = ctx->InputXlaShape(0);
    OP_REQUIRES_OK(ctx, logits.status());
    OP_REQUIRES(ctx, logits->is_static() && logits->dimensions_size() >= 1,
                errors::InvalidArgument("costxent under XLA needs logits of a static shape "
                                        "with a class axis, got ",
                                        xla::ShapeUtil::HumanString(*logits)));
    xla::PrimitiveType acc;
    OP_REQUIRES_OK(ctx, ::tensorflow::DataTypeToPrimitiveType(acc_dtype_, &acc));
    xla::XlaBuilder* b = ctx->builder();

    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < data_inputs; ++i) operands.push_back(ctx->Input(i));
    operands.push_back(variant_ == Variant::kLoss ? xla::Broadcast(xla::ConvertElementType(xla::ConstantR0<float>(b, 0), acc), {0})
                                                  : ctx->Input(kScaleOperand));
    std::vector<xla::Shape> operand_shapes;
    for (const xla::XlaOp& op : operands) {
      absl::StatusOr<xla::Shape> shape = b->GetShape(op);
      OP_REQUIRES_OK(ctx, shape.status());
      operand_shapes.push_back(xla::ShapeUtil::MakeShapeWithDescendingLayout(
          shape->element_type(), shape->dimensions()));
    }

    double scale = 1;
    if (variant_ == Variant::kReduced)
      OP_REQUIRES_OK(ctx, ctx->ConstantInputAsFloatScalar(kScaleConstant, &scale));
    const std::vector<int64_t> all(logits->dimensions().begin(), logits->dimensions().end());
    const std::vector<int64_t> lead(all.begin(), all.end() - 1);
    const std::vector<int64_t> empty = {0};
    const xla::Shape loss = xla::ShapeUtil::MakeShapeWithDescendingLayout(
        acc, variant_ == Variant::kLoss   ? (per_row_loss ? lead : all)
             : variant_ == Variant::kGrad ? empty
                                          : std::vector<int64_t>{});
    const xla::Shape backprop = xla::ShapeUtil::MakeShapeWithDescendingLayout(
        logits->element_type(), variant_ == Variant::kLoss ? empty : all);
    const std::string all_attrs = absl::StrFormat(
        "{variant = %d : i32, %s, %s, reduction = %d : i32, %s}", static_cast<int32_t>(variant_),
        bool_attr("check_weights", check_weights_), attrs, reduction_, f64_attr("scale", scale));
    xla::XlaOp call = xla::CustomCallWithLayout(
        b, target_, operands, xla::ShapeUtil::MakeTupleShape({loss, backprop}), operand_shapes,
        all_attrs, /*has_side_effect=*/false, /*output_operand_aliasing=*/{},
        /*literal=*/nullptr, xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    if (variant_ != Variant::kGrad) ctx->SetOutput(0, xla::GetTupleElement(call, 0));
    if (variant_ != Variant::kLoss)
      ctx->SetOutput(variant_ == Variant::kGrad ? 0 : 1, xla::GetTupleElement(call, 1));
  }

  // An option input (label_smoothing, ...) as an attribute; XLA must know it at compile time.
  std::string OptionAttr(XlaOpKernelContext* ctx, const char* name, int index) {
    double value = 0;
    const absl::Status s = ctx->ConstantInputAsFloatScalar(index, &value);
    if (!s.ok()) ctx->SetStatus(s);
    return f64_attr(name, value);
  }

 private:
  Variant variant_;
  std::string target_;
  bool check_weights_ = true;
  ::tensorflow::DataType acc_dtype_ = ::tensorflow::DT_FLOAT;
  int32_t reduction_ = 0;
};

template <Variant V>
class SoftmaxXlaOp : public FusedLossXlaOp {
 public:
  explicit SoftmaxXlaOp(OpKernelConstruction* ctx)
      : FusedLossXlaOp(ctx, V, kSoftmaxTargets[static_cast<int>(V)]) {
    std::string loss_kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("loss_kind", &loss_kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_ignore_class", &has_ignore_class_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ignore_class", &ignore_class_));
    loss_kind_ = loss_kind == "expected_cost" ? 1 : 0;  // cc/core/problem.h's SoftmaxLoss
  }

  // Inputs: logits, labels, weights, label_smoothing, focal_gamma, ce_weight,
  // [grad_loss | sample_weight, scale].
  void Compile(XlaOpKernelContext* ctx) override {
    const std::string attrs = absl::StrFormat(
        "loss_kind = %d : i32, %s, ignore_class = %d : i64, %s, %s, %s", loss_kind_,
        bool_attr("has_ignore_class", has_ignore_class_), ignore_class_,
        OptionAttr(ctx, "label_smoothing", 3), OptionAttr(ctx, "focal_gamma", 4),
        OptionAttr(ctx, "ce_weight", 5));
    if (!ctx->status().ok()) return;
    Emit(ctx, 3, /*per_row_loss=*/true, attrs);
    // Under XLA the backward recomputes its rows (its row_state input is not read): the
    // forward's row state has no values.
    if (V == Variant::kLoss && ctx->status().ok()) {
      xla::PrimitiveType acc;
      OP_REQUIRES_OK(ctx, ::tensorflow::DataTypeToPrimitiveType(ctx->expected_output_dtype(1),
                                                                &acc));
      const ::tensorflow::TensorShape logits = ctx->InputShape(0);
      int64_t rows = 1;
      for (int d = 0; d + 1 < logits.dims(); ++d) rows *= logits.dim_size(d);
      ctx->SetOutput(1, xla::Broadcast(xla::ConvertElementType(
                                           xla::ConstantR0<float>(ctx->builder(), 0), acc),
                                       {rows, 0}));
    }
  }

 private:
  int32_t loss_kind_ = 0;
  bool has_ignore_class_ = false;
  int64_t ignore_class_ = 0;
};

template <Variant V>
class SigmoidXlaOp : public FusedLossXlaOp {
 public:
  explicit SigmoidXlaOp(OpKernelConstruction* ctx)
      : FusedLossXlaOp(ctx, V, kSigmoidTargets[static_cast<int>(V)]) {}

  // Inputs: logits, labels, pos_weight, neg_weight, label_smoothing, focal_gamma,
  // [grad_loss | sample_weight, scale].
  void Compile(XlaOpKernelContext* ctx) override {
    const std::string attrs = absl::StrFormat("%s, %s", OptionAttr(ctx, "label_smoothing", 4),
                                              OptionAttr(ctx, "focal_gamma", 5));
    if (!ctx->status().ok()) return;
    Emit(ctx, 4, /*per_row_loss=*/false, attrs);
  }
};

// backprop * scale, computed in the scale's precision and rounded once to the backprop's
// type, as the TensorFlow kernel (cc/core/scale.h).
class ScaleGradientXlaOp : public XlaOpKernel {
 public:
  explicit ScaleGradientXlaOp(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES(ctx, ctx->InputShape(1).dims() == 0,
                errors::InvalidArgument("scale must be a scalar (the upstream gradient of a "
                                        "reduced loss), got shape ",
                                        ctx->InputShape(1).DebugString()));
    const xla::PrimitiveType t = ctx->input_xla_type(0);
    const xla::PrimitiveType a = ctx->input_xla_type(1);
    xla::XlaOp product = xla::Mul(xla::ConvertElementType(ctx->Input(0), a), ctx->Input(1));
    ctx->SetOutput(0, xla::ConvertElementType(product, t));
  }
};

#define COSTXENT_REGISTER_XLA_VARIANTS(OP, KERNEL, ...)                                   \
  REGISTER_XLA_OP(Name(OP) __VA_ARGS__, KERNEL<Variant::kLoss>);                         \
  REGISTER_XLA_OP(Name(OP "Grad") __VA_ARGS__, KERNEL<Variant::kGrad>);                  \
  REGISTER_XLA_OP(Name(OP "Reduced") __VA_ARGS__.CompileTimeConstantInput("scale"),      \
                  KERNEL<Variant::kReduced>);

COSTXENT_REGISTER_XLA_VARIANTS("CostxentSoftmaxLoss", SoftmaxXlaOp,
                               .CompileTimeConstantInput("label_smoothing")
                                   .CompileTimeConstantInput("focal_gamma")
                                   .CompileTimeConstantInput("ce_weight"))
COSTXENT_REGISTER_XLA_VARIANTS("CostxentSigmoidLoss", SigmoidXlaOp,
                               .CompileTimeConstantInput("label_smoothing")
                                   .CompileTimeConstantInput("focal_gamma"))
REGISTER_XLA_OP(Name("CostxentScaleGradient"), ScaleGradientXlaOp);

}  // namespace xla_ops
}  // namespace costxent
