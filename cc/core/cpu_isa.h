// Declarations of one instruction-set build of the CPU kernels. cpu_kernels.cc is compiled
// once per instruction set, each time into its own namespace (so no inline function compiled
// with AVX2 can be picked by the linker for a baseline caller); cpu_dispatch.cc chooses one
// at load time.
#pragma once

#include <cstdint>

#include "cc/core/problem.h"

#define COSTXENT_DECLARE_CPU_ISA(ISA)                                                  \
  namespace costxent {                                                                 \
  namespace cpu {                                                                      \
  namespace ISA {                                                                      \
  template <typename T, typename A>                                                    \
  int64_t softmax_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end,      \
                       A* scratch);                                                    \
  template <typename T, typename A>                                                    \
  int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end,   \
                           A* scratch);                                                \
  template <typename T, typename A>                                                    \
  void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin,       \
                  int64_t end);                                                        \
  template <typename T, typename A>                                                    \
  void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end); \
  }                                                                                    \
  }                                                                                    \
  }

namespace costxent {
namespace cpu {
// Rows of at most kSmallClasses classes are walked kLanes at a time, transposed
// (cpu_kernels.cc TileWalk); longer ones one or two at a time (RowWalk).
constexpr int64_t kSmallClasses = 64;
// Length of the sigmoid kernel's repeated per-class weight arrays: whole rows, >= 256.
constexpr int64_t kSigmoidMinSegment = 256;
inline int64_t sigmoid_weight_period(int64_t c) {
  return c * ((kSigmoidMinSegment + c - 1) / c);
}
}  // namespace cpu
}  // namespace costxent

// The storage / accumulation type pairs every kernel is instantiated for.
#define COSTXENT_FOR_EACH_TYPE_PAIR(X) \
  X(f16, float)                        \
  X(bf16, float)                       \
  X(float, float)                      \
  X(double, double)
