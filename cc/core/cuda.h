// CUDA implementation of the core kernels (cuda_kernels.cu). Host-callable launchers that
// enqueue on the caller's stream and return the launch status; they include no framework
// header, so TensorFlow, pybind11 and benchmarks share them.
//
// All pointers in the problem are device pointers; each output may be nullptr (not
// written), and a call with none launches nothing. backprop may alias logits (TensorFlow
// forwards the logits buffer): a kernel reads all of a row's logits before writing any of
// its gradient. Out-of-range sparse labels give a NaN loss and gradient row (DESIGN 2.4);
// sigmoid labels outside [0, 1] give NaN elements; either makes its block sum NaN.
// n == 0 launches nothing.
//
// block_sums are bit-identical run to run (no atomics). Writing them may take a scratch of
// a few hundred kilobytes at most from the device's stream-ordered memory pool
// (cudaMallocAsync on the stream, freed on it after use).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cc/core/problem.h"

namespace costxent {
namespace cuda {

template <typename T, typename A>
cudaError_t softmax_rows(const SoftmaxProblem<T, A>& p, cudaStream_t stream);

template <typename T, typename A>
cudaError_t sigmoid_elements(const SigmoidProblem<T, A>& p, cudaStream_t stream);

// out[k] = in[k] * *scale for k in [0, count), scale a device scalar (the upstream gradient
// of a reduced loss). When out == in and *scale == 1 the kernel writes nothing; that is
// decided on the device, so the call never waits for the scalar.
template <typename T, typename A>
cudaError_t scale_by_device_scalar(const T* in, const A* scale, T* out, int64_t count,
                                   cudaStream_t stream);

}  // namespace cuda
}  // namespace costxent
