// GPU launch: compiled by the host compiler with GOOGLE_CUDA=1; hands the op's CUDA stream
// to the core launchers in cc/core/cuda_kernels.cu (which include no TensorFlow header).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "cc/core/cuda.h"
#include "cc/tf/kernels.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace costxent {
namespace tf_kernels {

using GPUDevice = Eigen::GpuDevice;

namespace {

cudaStream_t stream_of(OpKernelContext* ctx) {
  return ctx->eigen_device<GPUDevice>().stream();
}

void check_launch(OpKernelContext* ctx, cudaError_t status, const char* what) {
  OP_REQUIRES(ctx, status == cudaSuccess,
              errors::Internal("costxent ", what, " CUDA launch failed: ",
                               cudaGetErrorString(status)));
}

}  // namespace

template <>
struct Launch<GPUDevice> {
  // Weights are device memory here; the Python layer checks them (validate=True).
  static constexpr bool kHostWeights = false;

  template <typename T, typename A>
  static void softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p) {
    check_launch(ctx, cuda::softmax_rows(p, stream_of(ctx)), "softmax loss");
  }

  template <typename T, typename A>
  static void sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p) {
    check_launch(ctx, cuda::sigmoid_elements(p, stream_of(ctx)), "sigmoid loss");
  }

  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t n,
                    int64_t c, bool per_row) {
    check_launch(ctx, cuda::scale_gradient(in, scale, out, n, c, per_row, stream_of(ctx)),
                 "gradient scaling");
  }
};

COSTXENT_REGISTER_ALL_TYPES(::tensorflow::DEVICE_GPU, GPUDevice)

}  // namespace tf_kernels
}  // namespace costxent

#endif  // GOOGLE_CUDA
