// CPU launch: rows sharded over TensorFlow's intra-op thread pool.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/first_invalid.h"
#include "cc/core/huge_pages.h"
#include "cc/core/scale.h"
#include "cc/tf/kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace costxent {
namespace tf_kernels {

using CPUDevice = Eigen::ThreadPoolDevice;

namespace {

// Shards [0, total) and returns the smallest index any shard reported as invalid, or -1.
template <typename Fn>
int64_t shard_and_find_first_invalid(OpKernelContext* ctx, int64_t total, double cycles_per_unit,
                                     Fn fn) {
  FirstInvalid first_invalid;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(total, static_cast<int64_t>(cycles_per_unit),
                    [&](int64_t begin, int64_t end) { first_invalid.report(fn(begin, end)); });
  return first_invalid.result();
}

// Runs fn(begin, end) over whole reduction blocks of n rows, so every block sum is computed
// by one call whatever the split; returns the smallest invalid index reported, or -1.
template <typename Fn>
int64_t shard_blocks(OpKernelContext* ctx, int64_t n, double cycles_per_row, Fn fn) {
  const int64_t blocks = block_count(n);
  return shard_and_find_first_invalid(
      ctx, blocks, cycles_per_row * static_cast<double>(kReduceBlockRows),
      [&](int64_t b0, int64_t b1) {
        const int64_t end = b1 * kReduceBlockRows < n ? b1 * kReduceBlockRows : n;
        return fn(b0 * kReduceBlockRows, end);
      });
}

}  // namespace

template <>
struct Launch<CPUDevice> {
  static constexpr bool kHostMemory = true;

  static int64_t softmax_row_state_size(int64_t c, bool focal) {
    return cpu::softmax_row_state_size(c, focal);
  }

  template <typename T, typename A>
  static int64_t softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p) {
    advise_output_pages(p);
    const double cycles = cpu::softmax_row_cycles(
        p.c, p.dense != nullptr,
        p.focal_gamma != A(0) || p.loss_kind == SoftmaxLoss::kExpectedCost);
    auto rows = [&](int64_t begin, int64_t end) { return cpu::softmax_rows(p, begin, end); };
    if (p.block_sums != nullptr) return shard_blocks(ctx, p.n, cycles, rows);
    return shard_and_find_first_invalid(ctx, p.n, cycles, rows);
  }

  template <typename T, typename A>
  static int64_t sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p) {
    advise_output_pages(p);
    const double cycles = cpu::sigmoid_element_cycles(p.focal_gamma != A(0));
    if (p.block_sums != nullptr) {
      return shard_blocks(ctx, p.n, cycles * static_cast<double>(p.c),
                          [&](int64_t begin, int64_t end) {
                            return cpu::sigmoid_elements(p, begin * p.c, end * p.c);
                          });
    }
    return shard_and_find_first_invalid(
        ctx, p.n * p.c, cycles,
        [&](int64_t begin, int64_t end) { return cpu::sigmoid_elements(p, begin, end); });
  }

  template <typename A>
  static double divisor(OpKernelContext* ctx, const DivisorInput<A>& d) {
    return blocked_divisor(d, [&](const auto& fn) { shard_blocks(ctx, d.n, 4.0, fn); });
  }

  template <typename A>
  static void sum_blocks(OpKernelContext*, const double* block_sums, int64_t count, A* loss) {
    *loss = static_cast<A>(sum_in_order(block_sums, count));
  }

  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t count) {
    if (static_cast<const void*>(out) != in) advise_huge_pages(out, sizeof(T) * count);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(count, 2, [&](int64_t begin, int64_t end) {
      scale_span(in, *scale, out, begin, end);
    });
  }
};

COSTXENT_REGISTER_ALL_TYPES(::tensorflow::DEVICE_CPU, CPUDevice)

}  // namespace tf_kernels
}  // namespace costxent
