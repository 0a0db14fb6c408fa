// TensorFlow op registrations and shape functions. Kernels: cpu_kernels.cc, gpu_kernels.cc.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace costxent {
namespace tf_ops {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// loss: [N] or the logits' shape; backprop: the logits' shape, or [0] when not computed.
Status LossAndBackpropShapes(InferenceContext* c, bool elementwise_loss) {
  ShapeHandle logits;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
  if (elementwise_loss) {
    c->set_output(0, logits);
  } else {
    c->set_output(0, c->Vector(c->Dim(logits, 0)));
  }
  bool compute_backprop = true;
  TF_RETURN_IF_ERROR(c->GetAttr("compute_backprop", &compute_backprop));
  c->set_output(1, compute_backprop ? logits : c->Vector(0));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("CostxentSoftmaxLoss")
    .Input("logits: T")
    .Input("labels: Tlabels")
    .Input("weights: A")
    .Input("options: double")
    .Output("loss: A")
    .Output("backprop: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabels: {int32, int64, half, bfloat16, float, double}")
    .Attr("A: {float, double}")
    .Attr("loss_kind: {'cross_entropy', 'expected_cost'} = 'cross_entropy'")
    .Attr("weight_mode: {'none', 'class', 'cost'} = 'none'")
    .Attr("has_ignore_class: bool = false")
    .Attr("ignore_class: int = 0")
    .Attr("compute_backprop: bool = true")
    .SetShapeFn([](InferenceContext* c) { return LossAndBackpropShapes(c, false); })
    .Doc(R"doc(
Fused softmax cross-entropy (cost-matrix / class-weighted / focal) or expected cost, and
d loss / d logits, over rows of [N, C] logits. Labels are sparse ids [N] (int32/int64) or
dense rows [N, C] of type T. weights: [0] (none), [C] class weights, or [C, C] cost matrix
M[true, predicted] (always the cost matrix for loss_kind='expected_cost').
options: [label_smoothing, focal_gamma, ce_weight] in float64 (host memory), so float64
logits get float64 options (a float attr would round them to float32).
)doc");

REGISTER_OP("CostxentSigmoidLoss")
    .Input("logits: T")
    .Input("labels: T")
    .Input("pos_weight: A")
    .Input("neg_weight: A")
    .Input("options: double")
    .Output("loss: A")
    .Output("backprop: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("A: {float, double}")
    .Attr("compute_backprop: bool = true")
    .SetShapeFn([](InferenceContext* c) { return LossAndBackpropShapes(c, true); })
    .Doc(R"doc(
Fused weighted (focal) sigmoid cross-entropy per element of [N, C] logits, and its gradient.
pos_weight / neg_weight: [0] (all ones), [1] (broadcast) or [C].
options: [label_smoothing, focal_gamma, ce_weight (unused)] in float64 (host memory).
)doc");

REGISTER_OP("CostxentScaleGradient")
    .Input("backprop: T")
    .Input("scale: A")
    .Output("output: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("A: {float, double}")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(
backprop * scale[:, None] for scale [N], or backprop * scale for scale of backprop's shape;
writes into backprop's buffer when TensorFlow allows.
)doc");

}  // namespace tf_ops
}  // namespace costxent
