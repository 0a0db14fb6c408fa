// The first invalid index that any of the threads sharing a batch reported. Each shard stops
// at its own first invalid index, so the minimum is the batch's first whatever the split:
// the error message is deterministic. An index is whatever a shard reports (rows, when the
// shards are reduction blocks), so "none" is a value no index takes, not the unit count.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>

namespace costxent {

class FirstInvalid {
 public:
  // bad: -1 (none) or an index.
  void report(int64_t bad) {
    if (bad < 0) return;
    int64_t seen = first_.load();
    while (bad < seen && !first_.compare_exchange_weak(seen, bad)) {
    }
  }
  // -1 or the smallest index reported.
  int64_t result() const {
    const int64_t first = first_.load();
    return first == kNone ? -1 : first;
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_{kNone};
};

}  // namespace costxent
