// GPU launch: compiled by the host compiler with GOOGLE_CUDA=1; hands the op's CUDA stream
// to the core launchers in cc/core/cuda_kernels.cu (which include no TensorFlow header).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "cc/core/cuda.h"
#include "cc/core/cuda_reduce.h"
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
  static constexpr bool kHostMemory = false;

  // The CUDA backward recomputes its rows.
  static int64_t softmax_row_state_size(int64_t, bool) { return 0; }

  template <typename T, typename A>
  static int64_t softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p) {
    check_launch(ctx, cuda::softmax_rows(p, stream_of(ctx)), "softmax loss");
    return -1;
  }

  template <typename T, typename A>
  static int64_t sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p) {
    check_launch(ctx, cuda::sigmoid_elements(p, stream_of(ctx)), "sigmoid loss");
    return -1;
  }

  // The row pass takes the divisor as a host scalar, so a divisor that depends on device data
  // (ignored rows, sample weights) costs one stream synchronisation here.
  template <typename A>
  static double divisor(OpKernelContext* ctx, const DivisorInput<A>& d) {
    Tensor sum;
    const ::tensorflow::Status allocated =
        ctx->allocate_temp(::tensorflow::DT_DOUBLE, TensorShape({}), &sum);
    if (!allocated.ok()) {
      ctx->SetStatus(allocated);
      return 0;
    }
    cudaStream_t stream = stream_of(ctx);
    check_launch(ctx,
                 cuda::kept_weight_sum(d.n, d.weights_read(), d.labels32, d.labels64,
                                       d.has_ignore_class, d.ignore_class,
                                       sum.flat<double>().data(), stream),
                 "reduction divisor");
    double host = 0;
    if (!ctx->status().ok()) return 0;
    check_launch(ctx,
                 cudaMemcpyAsync(&host, sum.flat<double>().data(), sizeof(double),
                                 cudaMemcpyDeviceToHost, stream),
                 "reduction divisor copy");
    if (ctx->status().ok()) check_launch(ctx, cudaStreamSynchronize(stream), "synchronize");
    return host;
  }

  template <typename A>
  static void sum_blocks(OpKernelContext* ctx, const double* block_sums, int64_t count, A* loss) {
    check_launch(ctx, cuda::sum_in_order(block_sums, count, loss, stream_of(ctx)),
                 "loss reduction");
  }

  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t count) {
    check_launch(ctx, cuda::scale_by_device_scalar(in, scale, out, count, stream_of(ctx)),
                 "gradient scaling");
  }
};

COSTXENT_REGISTER_ALL_TYPES(::tensorflow::DEVICE_GPU, GPUDevice)

}  // namespace tf_kernels
}  // namespace costxent

#endif  // GOOGLE_CUDA
