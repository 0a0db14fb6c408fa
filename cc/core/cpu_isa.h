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
// Rows of at most kSmallClasses classes can be walked kLanes at a time, transposed
// (cpu_kernels.cc TileWalk); longer ones are walked one or two at a time (RowWalk), and so
// are non-focal rows past kPlainTileClasses: there a tile's 16 x 16 transposes (in, and out
// for the gradient) cost more than a row's horizontal reductions. AMD EPYC (Zen 4), float32,
// row / tile time, loss and gradient: sparse C = 40 0.89, 48 0.78, 64 0.59-0.63, dense
// C = 48 0.57, C = 30-32 about 1 (the loss alone: C = 40 1.29, 64 0.79); focal rows, whose
// per-class terms are long, 1.1-1.6 at C = 40-64, so they stay in tiles.
constexpr int64_t kSmallClasses = 64;
constexpr int64_t kPlainTileClasses = 32;
inline bool walks_tiles(int64_t c, bool focal) {
  return c <= (focal ? kSmallClasses : kPlainTileClasses);
}
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
