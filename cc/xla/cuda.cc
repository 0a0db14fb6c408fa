// "CUDA" handlers: the CUDA kernels of cc/core/cuda.h on the stream XLA hands the call,
// scratch from XLA's allocator. Out-of-range labels give NaN rows (DESIGN 2.4), as the
// TensorFlow GPU kernels do. Compiled only with CUDA (host compiler, no TensorFlow header).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "cc/core/cuda.h"
#include "cc/core/cuda_reduce.h"
#include "cc/xla/handlers.h"
#include "xla/ffi/api/ffi.h"

namespace costxent {
namespace xla_ffi {
namespace {

ffi::Error launched(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("costxent ") + what +
                              " CUDA launch failed: " + cudaGetErrorString(status));
}

class CudaDevice {
 public:
  // Weights are device memory here; the Python layer checks them (validate=True).
  static constexpr bool kHostMemory = false;

  CudaDevice(cudaStream_t stream, ffi::ScratchAllocator scratch)
      : stream_(stream), scratch_(std::move(scratch)) {}

  template <typename T, typename A>
  ffi::Error softmax(const SoftmaxProblem<T, A>& p, int64_t* bad) {
    *bad = -1;
    return launched(cuda::softmax_rows(p, stream_), "softmax loss");
  }

  template <typename T, typename A>
  ffi::Error sigmoid(const SigmoidProblem<T, A>& p, int64_t* bad) {
    *bad = -1;
    return launched(cuda::sigmoid_elements(p, stream_), "sigmoid loss");
  }

  // The row pass takes the divisor as a host scalar, so a divisor that depends on device
  // data (ignored rows, sample weights) costs one stream synchronisation, as in the
  // TensorFlow GPU kernel.
  template <typename A>
  ffi::Error divisor(const DivisorInput<A>& d, double* out) {
    double* sum = nullptr;
    ffi::Error e = allocate(1, &sum);
    if (e.failure()) return e;
    e = launched(cuda::kept_weight_sum(d.n, d.weights_read(), d.labels32, d.labels64,
                                       d.has_ignore_class, d.ignore_class, sum, stream_),
                 "reduction divisor");
    if (e.failure()) return e;
    e = launched(cudaMemcpyAsync(out, sum, sizeof(double), cudaMemcpyDeviceToHost, stream_),
                 "reduction divisor copy");
    if (e.failure()) return e;
    return launched(cudaStreamSynchronize(stream_), "synchronize");
  }

  ffi::Error block_sums(int64_t count, double** out) { return allocate(count, out); }

  template <typename A>
  ffi::Error sum_blocks(const double* sums, int64_t count, A* loss) {
    return launched(cuda::sum_in_order(sums, count, loss, stream_), "loss reduction");
  }

 private:
  ffi::Error allocate(int64_t count, double** out) {
    auto memory = scratch_.Allocate(sizeof(double) * static_cast<size_t>(count), 16);
    if (!memory.has_value()) return ffi::Error::Internal("costxent: no scratch memory for a reduction");
    *out = static_cast<double*>(*memory);
    return ffi::Error::Success();
  }

  cudaStream_t stream_;
  ffi::ScratchAllocator scratch_;
};

}  // namespace

XLA_FFI_DEFINE_HANDLER(
    kCudaSoftmax,
    (softmax_entry<CudaDevice, cudaStream_t, ffi::ScratchAllocator>),
    bind_softmax(ffi::Ffi::Bind()
                     .Ctx<ffi::PlatformStream<cudaStream_t>>()
                     .Ctx<ffi::ScratchAllocator>()));
XLA_FFI_DEFINE_HANDLER(
    kCudaSigmoid,
    (sigmoid_entry<CudaDevice, cudaStream_t, ffi::ScratchAllocator>),
    bind_sigmoid(ffi::Ffi::Bind()
                     .Ctx<ffi::PlatformStream<cudaStream_t>>()
                     .Ctx<ffi::ScratchAllocator>()));

Handlers cuda_handlers() { return {kCudaSoftmax, kCudaSigmoid}; }

}  // namespace xla_ffi
}  // namespace costxent
