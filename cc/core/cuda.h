// CUDA implementation of the core kernels (cuda_kernels.cu). Host-callable launchers that
// enqueue on the caller's stream and return the launch status; they include no framework
// header, so TensorFlow, pybind11 and benchmarks share them.
//
// All pointers in the problem are device pointers. backprop may alias logits (TensorFlow
// forwards the logits buffer): a kernel reads all of a row's logits before writing any of
// its gradient. Out-of-range sparse labels give a NaN loss and gradient row (DESIGN 2.4);
// sigmoid labels outside [0, 1] give NaN elements. n == 0 launches nothing.
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

// out = in * scale[:, None] (per_row) or in * scale (element-wise), over [n, c].
template <typename T, typename A>
cudaError_t scale_gradient(const T* in, const A* scale, T* out, int64_t n, int64_t c,
                           bool per_row, cudaStream_t stream);

}  // namespace cuda
}  // namespace costxent
