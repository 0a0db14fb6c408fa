// TensorFlow op registrations and shape functions. Kernels: kernels.h, cpu_kernels.cc,
// gpu_kernels.cc. Validation happens in the kernels, through cc/core/spec.h.
//
// Each loss has three ops (DESIGN 3):
//   <Loss>          per-example loss only (evaluation, metrics, the forward of the
//                   per-example API); the softmax one also saves each row's state;
//   <Loss>Grad      the exact gradient for any upstream gradient grad_loss, recomputed from
//                   the logits (and the saved row state) in one pass: read logits, write the
//                   gradient once;
//   <Loss>Reduced   the Keras reduction folded in: a scalar loss and the gradient of that
//                   scalar, written in the same pass; its gradient is CostxentScaleGradient.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace costxent {
namespace tf_ops {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// The softmax losses' per-example shape: the logits' leading shape.
Status LeadingShape(InferenceContext* c) {
  ShapeHandle logits;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &logits));
  ShapeHandle lead;
  TF_RETURN_IF_ERROR(c->Subshape(logits, 0, -1, &lead));
  c->set_output(0, lead);
  return ::tensorflow::OkStatus();
}

Status LogitsShape(InferenceContext* c, int output) {
  c->set_output(output, c->input(0));
  return ::tensorflow::OkStatus();
}

Status ScalarAndLogitsShape(InferenceContext* c) {
  c->set_output(0, c->Scalar());
  return LogitsShape(c, 1);
}

#define COSTXENT_SOFTMAX_INPUTS                 \
  Input("logits: T")                            \
      .Input("labels: Tlabels")                 \
      .Input("weights: A")                      \
      .Input("label_smoothing: double")         \
      .Input("focal_gamma: double")             \
      .Input("ce_weight: double")

#define COSTXENT_SOFTMAX_ATTRS                                                 \
  Attr("T: {half, bfloat16, float, double}")                                   \
      .Attr("Tlabels: {int32, int64, half, bfloat16, float, double}")          \
      .Attr("A: {float, double}")                                              \
      .Attr("loss_kind: {'cross_entropy', 'expected_cost'} = 'cross_entropy'") \
      .Attr("has_ignore_class: bool = false")                                  \
      .Attr("ignore_class: int = 0")                                           \
      .Attr("check_weights: bool = true")

REGISTER_OP("CostxentSoftmaxLoss")
    .COSTXENT_SOFTMAX_INPUTS.Output("loss: A")
    .Output("row_state: A")
    .COSTXENT_SOFTMAX_ATTRS.SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(LeadingShape(c));
      c->set_output(1, c->Matrix(InferenceContext::kUnknownDim, InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Fused softmax cross-entropy (cost-matrix / class-weighted / focal) or expected cost per
example, over logits [..., C]. Labels: sparse ids [...] or [..., 1] (int32/int64), or dense
rows [..., C] of the logits' dtype. weights: [0] (none), [C] class weights, or [C, C] cost
matrix M[true, predicted] (required by loss_kind='expected_cost'). The options are float64
scalars in host memory, so float64 logits get float64 options. check_weights=false skips
the per-call finiteness / sign scan of weights the caller has validated as constants.
row_state [rows, K]: what the gradient op needs of each row to skip the passes this op made
(K = 4 where the device's kernel saves it, else 0).
)doc");

REGISTER_OP("CostxentSoftmaxLossGrad")
    .COSTXENT_SOFTMAX_INPUTS.Input("grad_loss: A")
    .Input("row_state: A")
    .Output("backprop: T")
    .COSTXENT_SOFTMAX_ATTRS.SetShapeFn([](InferenceContext* c) { return LogitsShape(c, 0); })
    .Doc(R"doc(
grad_loss[i] * d loss_i / d logits_i of CostxentSoftmaxLoss, computed and rounded once to T.
)doc");

REGISTER_OP("CostxentSoftmaxLossReduced")
    .COSTXENT_SOFTMAX_INPUTS.Input("sample_weight: A")
    .Input("scale: double")
    .Output("loss: A")
    .Output("backprop: T")
    .COSTXENT_SOFTMAX_ATTRS
    .Attr("reduction: {'sum', 'sum_over_batch_size', 'mean_with_sample_weight'}")
    .SetShapeFn(ScalarAndLogitsShape)
    .Doc(R"doc(
The Keras reduction of CostxentSoftmaxLoss: loss = scale * sum_i s_i loss_i / divisor with
s = sample_weight ([0]: ones, else the leading shape), divisor 1 ('sum'), the number of
non-ignored rows ('sum_over_batch_size') or sum of s over them ('mean_with_sample_weight');
a zero divisor gives 0. backprop = d loss / d logits. scale (host float64) is the
distribution strategy's 1 / replicas.
)doc");

#define COSTXENT_SIGMOID_INPUTS          \
  Input("logits: T")                     \
      .Input("labels: T")                \
      .Input("pos_weight: A")            \
      .Input("neg_weight: A")            \
      .Input("label_smoothing: double")  \
      .Input("focal_gamma: double")

#define COSTXENT_SIGMOID_ATTRS                \
  Attr("T: {half, bfloat16, float, double}")  \
      .Attr("A: {float, double}")             \
      .Attr("check_weights: bool = true")

REGISTER_OP("CostxentSigmoidLoss")
    .COSTXENT_SIGMOID_INPUTS.Output("loss: A")
    .COSTXENT_SIGMOID_ATTRS
    .SetShapeFn([](InferenceContext* c) { return LogitsShape(c, 0); })
    .Doc(R"doc(
Fused weighted (focal) sigmoid cross-entropy per element of logits [..., C].
pos_weight / neg_weight: [0] (all ones), [1] (broadcast) or [C].
)doc");

REGISTER_OP("CostxentSigmoidLossGrad")
    .COSTXENT_SIGMOID_INPUTS.Input("grad_loss: A")
    .Output("backprop: T")
    .COSTXENT_SIGMOID_ATTRS
    .SetShapeFn([](InferenceContext* c) { return LogitsShape(c, 0); })
    .Doc(R"doc(
grad_loss * d loss / d logits of CostxentSigmoidLoss, element-wise, rounded once to T.
)doc");

REGISTER_OP("CostxentSigmoidLossReduced")
    .COSTXENT_SIGMOID_INPUTS.Input("sample_weight: A")
    .Input("scale: double")
    .Output("loss: A")
    .Output("backprop: T")
    .COSTXENT_SIGMOID_ATTRS
    .Attr("reduction: {'sum', 'sum_over_batch_size', 'mean_with_sample_weight'}")
    .SetShapeFn(ScalarAndLogitsShape)
    .Doc(R"doc(
The Keras reduction of the per-row mean over the last axis of CostxentSigmoidLoss (as
keras.losses.BinaryCrossentropy): loss = scale * sum_i s_i mean_j loss_ij / divisor,
divisor 1, the number of rows, or sum_i s_i. backprop = d loss / d logits.
)doc");

REGISTER_OP("CostxentScaleGradient")
    .Input("backprop: T")
    .Input("scale: A")
    .Output("output: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("A: {float, double}")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(
backprop * scale for a scalar scale (the upstream gradient of a reduced loss), in place when
TensorFlow allows; when scale is exactly 1 (decided on the device) the data is not touched.
)doc");

}  // namespace tf_ops
}  // namespace costxent
