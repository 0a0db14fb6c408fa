// Small CUDA kernels for the reduced losses (cuda_reduce.cu): the Keras divisor and the sum
// of block sums, each a single block walking its input in a fixed order, so the results are
// bitwise reproducible (no atomics).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace costxent {
namespace cuda {

// *out = sum over rows i whose label is not ignore_class (all rows when !has_ignore_class)
// of sample_weight[i] (1 when sample_weight is nullptr). Device pointers.
template <typename A>
cudaError_t kept_weight_sum(int64_t n, const A* sample_weight, const int32_t* labels32,
                            const int64_t* labels64, bool has_ignore_class, int64_t ignore_class,
                            double* out, cudaStream_t stream);

// *out = values[0] + ... + values[count - 1] in a fixed tree order, rounded to A.
template <typename A>
cudaError_t sum_in_order(const double* values, int64_t count, A* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace costxent
