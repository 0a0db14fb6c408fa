// CPU implementation of the core kernels: row-range functions that adapters shard over
// their own thread pools. Every function is deterministic: a row's result depends only on
// that row, never on how rows were split between threads.
#pragma once

#include <cstdint>

#include "cc/core/numeric.h"
#include "cc/core/problem.h"

namespace costxent {
namespace cpu {

// Rows [begin, end) of a softmax problem. Returns -1, or the first row whose sparse label
// is outside [0, c) and is not the ignored class (DESIGN 2.4); rows after it are not done.
template <typename T, typename A>
int64_t softmax_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end);

// Elements [begin, end) of a sigmoid problem (flat index over [n, c]). Returns -1, or the
// first element whose label is outside [0, 1]; elements after it may have been written
// (the call has failed: its outputs are not used).
template <typename T, typename A>
int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end);

// out[i, j] = in[i, j] * scale[i] for rows [begin, end) of an [n, c] matrix (out may be in).
template <typename T, typename A>
void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin, int64_t end);

// out[k] = in[k] * scale[k] for k in [begin, end) (out may be in).
template <typename T, typename A>
void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end);

// Values per row of the state a per-example forward of this problem saves for its backward:
// kRowStateSize for rows walked one or two at a time (more than 32 classes, not focal), else
// 0 (the backward recomputes the row).
int64_t softmax_row_state_size(int64_t c, bool focal);

// Rough cost of one row / element in CPU cycles, for thread-pool sharding.
double softmax_row_cycles(int64_t c, bool dense, bool focal);
double sigmoid_element_cycles(bool focal);

// The instruction set the dispatcher picked at first use: "avx512" (F, BW, DQ, VL with AVX2,
// FMA, F16C; bfloat16 gradients converted by AVX512-BF16 where the CPU has it), "avx2-fma"
// (with F16C) or "baseline".
const char* instruction_set();

}  // namespace cpu
}  // namespace costxent
