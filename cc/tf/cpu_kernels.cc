// CPU launch: rows sharded over TensorFlow's intra-op thread pool.
#include <atomic>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cc/core/cpu.h"
#include "cc/tf/kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace costxent {
namespace tf_kernels {

using CPUDevice = Eigen::ThreadPoolDevice;

namespace {

// Shards [0, total) and returns the smallest index any shard reported as invalid, or -1.
// Each shard stops at its first invalid index, so the minimum is the batch's first one
// whatever the split: the error message is deterministic.
template <typename Fn>
int64_t shard_and_find_first_invalid(OpKernelContext* ctx, int64_t total, double cycles_per_unit,
                                     Fn fn) {
  std::atomic<int64_t> first_invalid{total};
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(total, static_cast<int64_t>(cycles_per_unit),
                    [&](int64_t begin, int64_t end) {
                      const int64_t bad = fn(begin, end);
                      if (bad < 0) return;
                      int64_t seen = first_invalid.load();
                      while (bad < seen && !first_invalid.compare_exchange_weak(seen, bad)) {
                      }
                    });
  const int64_t result = first_invalid.load();
  return result == total ? -1 : result;
}

// TensorFlow's CPU allocator hands out large outputs as fresh 4 KiB pages, and faulting in
// 64 MiB of them costs several times the kernel itself on a VM. Asking for transparent huge
// pages before the first write (as NumPy does for its large arrays) removes most faults;
// memory already touched is unaffected, and the call is advisory (errors are ignored).
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace

template <>
struct Launch<CPUDevice> {
  static constexpr bool kHostWeights = true;

  template <typename T, typename A>
  static void softmax(OpKernelContext* ctx, const SoftmaxProblem<T, A>& p) {
    if (p.backprop != nullptr && static_cast<const void*>(p.backprop) != p.logits)
      advise_huge_pages(p.backprop, sizeof(T) * p.n * p.c);
    const int64_t bad = shard_and_find_first_invalid(
        ctx, p.n,
        cpu::softmax_row_cycles(p.c, p.dense != nullptr,
                                p.focal_gamma != A(0) ||
                                    p.loss_kind == SoftmaxLoss::kExpectedCost),
        [&](int64_t begin, int64_t end) { return cpu::softmax_rows(p, begin, end); });
    OP_REQUIRES(ctx, bad < 0,
                errors::InvalidArgument("labels[", bad, "] = ", label_at(p, bad < 0 ? 0 : bad),
                                        " is outside the valid class range [0, ", p.c, ")"));
  }

  template <typename T, typename A>
  static void sigmoid(OpKernelContext* ctx, const SigmoidProblem<T, A>& p) {
    advise_huge_pages(p.loss, sizeof(A) * p.n * p.c);
    if (p.backprop != nullptr && static_cast<const void*>(p.backprop) != p.logits)
      advise_huge_pages(p.backprop, sizeof(T) * p.n * p.c);
    const int64_t bad = shard_and_find_first_invalid(
        ctx, p.n * p.c, cpu::sigmoid_element_cycles(p.focal_gamma != A(0)),
        [&](int64_t begin, int64_t end) { return cpu::sigmoid_elements(p, begin, end); });
    OP_REQUIRES(ctx, bad < 0,
                errors::InvalidArgument("labels[", bad / (p.c > 0 ? p.c : 1), ", ",
                                        bad % (p.c > 0 ? p.c : 1), "] = ",
                                        to_acc(p.labels[bad < 0 ? 0 : bad]),
                                        " is outside [0, 1]"));
  }

  template <typename T, typename A>
  static void scale(OpKernelContext* ctx, const T* in, const A* scale, T* out, int64_t n,
                    int64_t c, bool per_row) {
    if (out != in) advise_huge_pages(out, sizeof(T) * n * c);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    if (per_row) {
      pool->ParallelFor(n, 2 * c, [&](int64_t begin, int64_t end) {
        cpu::scale_rows(in, scale, out, c, begin, end);
      });
    } else {
      pool->ParallelFor(n * c, 2, [&](int64_t begin, int64_t end) {
        cpu::scale_elements(in, scale, out, begin, end);
      });
    }
  }
};

COSTXENT_REGISTER_ALL_TYPES(::tensorflow::DEVICE_CPU, CPUDevice)

}  // namespace tf_kernels
}  // namespace costxent
