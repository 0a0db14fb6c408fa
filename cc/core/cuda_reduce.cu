// See cuda_reduce.h. One block of kThreads: thread t owns the strided indices t, t + kThreads,
// ..., then a shared-memory tree combines the threads' partials in a fixed order.
#include <cstdint>

#include "cc/core/cuda_reduce.h"

namespace costxent {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__device__ double block_sum(double partial) {
  __shared__ double shared[kThreads];
  shared[threadIdx.x] = partial;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

template <typename A>
__global__ void __launch_bounds__(kThreads)
    kept_weight_sum_kernel(int64_t n, const A* sample_weight, const int32_t* labels32,
                           const int64_t* labels64, bool has_ignore_class, int64_t ignore_class,
                           double* out) {
  double partial = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    bool kept = true;
    if (has_ignore_class) {
      const int64_t y = labels32 != nullptr ? labels32[i] : labels64[i];
      kept = y != ignore_class;
    }
    if (kept) partial += sample_weight != nullptr ? static_cast<double>(sample_weight[i]) : 1.0;
  }
  const double total = block_sum(partial);
  if (threadIdx.x == 0) *out = total;
}

template <typename A>
__global__ void __launch_bounds__(kThreads)
    sum_in_order_kernel(const double* values, int64_t count, A* out) {
  double partial = 0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) partial += values[i];
  const double total = block_sum(partial);
  if (threadIdx.x == 0) *out = static_cast<A>(total);
}

}  // namespace

template <typename A>
cudaError_t kept_weight_sum(int64_t n, const A* sample_weight, const int32_t* labels32,
                            const int64_t* labels64, bool has_ignore_class, int64_t ignore_class,
                            double* out, cudaStream_t stream) {
  kept_weight_sum_kernel<A><<<1, kThreads, 0, stream>>>(n, sample_weight, labels32, labels64,
                                                       has_ignore_class, ignore_class, out);
  return cudaGetLastError();
}

template <typename A>
cudaError_t sum_in_order(const double* values, int64_t count, A* out, cudaStream_t stream) {
  sum_in_order_kernel<A><<<1, kThreads, 0, stream>>>(values, count, out);
  return cudaGetLastError();
}

#define COSTXENT_INSTANTIATE(A)                                                              \
  template cudaError_t kept_weight_sum<A>(int64_t, const A*, const int32_t*, const int64_t*,  \
                                          bool, int64_t, double*, cudaStream_t);              \
  template cudaError_t sum_in_order<A>(const double*, int64_t, A*, cudaStream_t);
COSTXENT_INSTANTIATE(float)
COSTXENT_INSTANTIATE(double)
#undef COSTXENT_INSTANTIATE

}  // namespace cuda
}  // namespace costxent
