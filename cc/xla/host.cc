// "Host" handlers: the CPU kernels of cc/core/cpu.h, rows sharded over the intra-op thread
// pool XLA hands the call (the same pool TensorFlow's CPU kernels use under jit_compile).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/first_invalid.h"
#include "cc/core/huge_pages.h"
#include "cc/xla/handlers.h"
#include "xla/ffi/api/ffi.h"

namespace costxent {
namespace xla_ffi {
namespace {

// Below this much work a call runs on the calling thread: waking workers costs more.
constexpr double kMinCyclesPerShard = 100000;

// Runs fn(begin, end) over shards of [0, total) on the caller and the pool's workers and
// returns the smallest index any shard reported as invalid, or -1. Shards are claimed from
// a shared counter, and the caller works until none is left, so it only ever waits for
// shards that are already running: no deadlock when every worker is busy (or the caller
// is one). A task that starts after the last shard finds nothing to do and only touches
// the shared state it co-owns.
template <typename Fn>
int64_t parallel_first_invalid(ffi::ThreadPool& pool, int64_t total, double cycles_per_unit,
                               const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads() + 1);
  const double work = cycles_per_unit * static_cast<double>(total);
  int64_t shards = std::min<int64_t>(
      {total, threads * 4, static_cast<int64_t>(work / kMinCyclesPerShard) + 1});
  shards = std::max<int64_t>(shards, 1);
  if (shards == 1) return fn(0, total);
  struct State {
    std::atomic<int64_t> next{0};
    FirstInvalid first_invalid;
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const int64_t per_shard = (total + shards - 1) / shards;
  auto work_loop = [state, shards, per_shard, total, &fn]() {
    for (;;) {
      const int64_t shard = state->next.fetch_add(1);
      if (shard >= shards) return;
      const int64_t begin = shard * per_shard;
      const int64_t end = std::min(total, begin + per_shard);
      if (begin < end) state->first_invalid.report(fn(begin, end));
      std::lock_guard<std::mutex> lock(state->mu);
      if (++state->done == shards) state->cv.notify_all();
    }
  };
  for (int64_t t = 1; t < std::min(threads, shards); ++t) {
    auto task = work_loop;
    pool.Schedule(std::move(task));
  }
  work_loop();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == shards; });
  return state->first_invalid.result();
}

class HostDevice {
 public:
  static constexpr bool kHostMemory = true;

  explicit HostDevice(ffi::ThreadPool pool) : pool_(pool) {}

  template <typename T, typename A>
  ffi::Error softmax(const SoftmaxProblem<T, A>& p, int64_t* bad) {
    advise_output_pages(p);  // XLA's fresh result buffers
    const double cycles = cpu::softmax_row_cycles(
        p.c, p.dense != nullptr,
        p.focal_gamma != A(0) || p.loss_kind == SoftmaxLoss::kExpectedCost);
    auto rows = [&](int64_t begin, int64_t end) { return cpu::softmax_rows(p, begin, end); };
    *bad = p.block_sums != nullptr ? blocks(p.n, cycles, rows)
                                   : parallel_first_invalid(pool_, p.n, cycles, rows);
    return ffi::Error::Success();
  }

  template <typename T, typename A>
  ffi::Error sigmoid(const SigmoidProblem<T, A>& p, int64_t* bad) {
    advise_output_pages(p);
    const double cycles = cpu::sigmoid_element_cycles(p.focal_gamma != A(0));
    if (p.block_sums != nullptr) {
      *bad = blocks(p.n, cycles * static_cast<double>(p.c), [&](int64_t begin, int64_t end) {
        return cpu::sigmoid_elements(p, begin * p.c, end * p.c);
      });
    } else {
      *bad = parallel_first_invalid(pool_, p.n * p.c, cycles, [&](int64_t begin, int64_t end) {
        return cpu::sigmoid_elements(p, begin, end);
      });
    }
    return ffi::Error::Success();
  }

  template <typename A>
  ffi::Error divisor(const DivisorInput<A>& d, double* out) {
    *out = blocked_divisor(d, [&](const auto& fn) { blocks(d.n, 4.0, fn); });
    return ffi::Error::Success();
  }

  ffi::Error block_sums(int64_t count, double** out) {
    block_sums_.assign(static_cast<size_t>(count), 0.0);
    *out = block_sums_.data();
    return ffi::Error::Success();
  }

  template <typename A>
  ffi::Error sum_blocks(const double* sums, int64_t count, A* loss) {
    *loss = static_cast<A>(sum_in_order(sums, count));
    return ffi::Error::Success();
  }

 private:
  // Shards whole reduction blocks, so each block sum is computed by one call whatever the
  // split (the sums, and so the loss, never depend on threading).
  template <typename Fn>
  int64_t blocks(int64_t n, double cycles_per_row, const Fn& fn) {
    return parallel_first_invalid(
        pool_, block_count(n), cycles_per_row * static_cast<double>(kReduceBlockRows),
        [&](int64_t b0, int64_t b1) {
          return fn(b0 * kReduceBlockRows, std::min(n, b1 * kReduceBlockRows));
        });
  }

  ffi::ThreadPool pool_;
  std::vector<double> block_sums_;
};

}  // namespace

XLA_FFI_DEFINE_HANDLER(kHostSoftmax, (softmax_entry<HostDevice, ffi::ThreadPool>),
                       bind_softmax(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));
XLA_FFI_DEFINE_HANDLER(kHostSigmoid, (sigmoid_entry<HostDevice, ffi::ThreadPool>),
                       bind_sigmoid(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

Handlers host_handlers() { return {kHostSoftmax, kHostSigmoid}; }

}  // namespace xla_ffi
}  // namespace costxent
