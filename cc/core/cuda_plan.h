// The CUDA softmax launch planner: which regime and shape rows of C classes get. Plain C++
// (no CUDA header), so costxent._core.launch_plan reports the plan on machines without a
// GPU; cuda_kernels.cu launches exactly what plan_softmax returns.
#pragma once

#include <cstdint>

#include "cc/core/problem.h"

namespace costxent {
namespace cuda {

// How a row is held. Every thread owns `slots` 16-byte vectors of it, anchored on the
// 16-byte boundaries of the logits:
//   kThread   one thread per row (C <= kThreadRowClasses and a little more), 32 rows a warp;
//   kWarp     `width` lanes of a warp per row (a power of two up to 32), one vector a lane;
//   kBlock    one block per row;
//   kCluster  a cluster of `clusters` blocks per row (sm_90), joined by distributed shared
//             memory;
//   kChunked  rows longer than the largest cluster (or block, without clusters): walked in
//             chunks of the group's slots, each pass re-reading the row (from L2).
// Every regime but kChunked holds the row in registers and reads it from memory once.
enum class Regime : int32_t { kThread = 0, kWarp = 1, kBlock = 2, kCluster = 3, kChunked = 4 };

constexpr int kRowBlock = 256;  // block size of the thread and warp regimes
// 512, not 1024: a 1024-thread block is held to 64 registers a thread, where the block
// kernels spilled (ptxas, sm_90); at 512 they may use 128.
constexpr int kMaxBlock = 512;
constexpr int kPortableCluster = 8;
constexpr int kMaxCluster = 16;  // Hopper's non-portable limit
constexpr int kThreadRowClasses = 8;
// Class indices are 32-bit (a slot's position in a row, which may lie past c, is 64-bit),
// hence costxent::kMaxClasses, which the validation enforces.
using costxent::kMaxClasses;

constexpr int vector_elements(int bytes) { return 16 / bytes; }
// The 16-byte vectors a row of c classes can touch, over all offsets of its first element.
constexpr int64_t row_vectors(int bytes, int64_t c) {
  return (c + 2 * vector_elements(bytes) - 2) / vector_elements(bytes);
}
// Slots of a thread that holds a whole row of kThreadRowClasses classes.
constexpr int thread_slots(int bytes) { return static_cast<int>(row_vectors(bytes, kThreadRowClasses)); }
// Slots of a block's thread: 8 row values (4 doubles).
constexpr int block_slots(int bytes) {
  return vector_elements(bytes) >= 8 ? 1 : (bytes == 8 ? 2 : 8 / vector_elements(bytes));
}

struct SoftmaxPlan {
  Regime regime;
  int threads;   // per block
  int width;     // threads per row inside a warp (kThread: 1, kWarp: 2..32; else 0)
  int clusters;  // blocks per row (1 but for kCluster and a clustered kChunked)
  int slots;     // 16-byte vectors per thread (per chunk for kChunked)
  int64_t vectors;
};

inline int64_t plan_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The plan for rows of c classes of `bytes`-byte elements, with clusters of at most
// `cluster_limit` blocks (1: none).
inline SoftmaxPlan plan_softmax_shape(int bytes, int64_t c, int cluster_limit) {
  const int64_t vectors = row_vectors(bytes, c);
  if (vectors <= thread_slots(bytes)) return {Regime::kThread, kRowBlock, 1, 1, thread_slots(bytes), vectors};
  if (vectors <= 32) {
    int width = 2;
    while (width < vectors) width *= 2;
    return {Regime::kWarp, kRowBlock, width, 1, 1, vectors};
  }
  const int slots = block_slots(bytes);
  const int64_t threads = plan_ceil_div(vectors, slots);
  auto whole_warps = [](int64_t t) { return static_cast<int>(plan_ceil_div(t, 32) * 32); };
  if (threads <= kMaxBlock) return {Regime::kBlock, whole_warps(threads), 0, 1, slots, vectors};
  if (cluster_limit <= 1) return {Regime::kChunked, kMaxBlock, 0, 1, slots, vectors};
  const int64_t wanted = plan_ceil_div(threads, kMaxBlock);
  const int clusters = static_cast<int>(wanted < cluster_limit ? wanted : cluster_limit);
  const int64_t per_block = whole_warps(plan_ceil_div(threads, clusters));
  const int block = static_cast<int>(per_block < kMaxBlock ? per_block : kMaxBlock);
  const bool resident = static_cast<int64_t>(block) * clusters * slots >= vectors;
  return {resident ? Regime::kCluster : Regime::kChunked, block, 0, clusters, slots, vectors};
}

// The largest clusters first (Hopper's 16, then the portable 8), each only where
// fits(plan) says the device can run that cluster shape; else no clusters.
template <typename Fits>
SoftmaxPlan plan_softmax(int bytes, int64_t c, Fits fits) {
  for (const int limit : {kMaxCluster, kPortableCluster}) {
    const SoftmaxPlan plan = plan_softmax_shape(bytes, c, limit);
    if (plan.clusters == 1 || fits(plan)) return plan;
  }
  return plan_softmax_shape(bytes, c, 1);
}

inline const char* regime_name(Regime r) {
  switch (r) {
    case Regime::kThread:
      return "thread";
    case Regime::kWarp:
      return "warp";
    case Regime::kBlock:
      return "block";
    case Regime::kCluster:
      return "cluster";
    default:
      return "chunked";
  }
}

}  // namespace cuda
}  // namespace costxent
