// Picks the instruction-set build of the CPU kernels once, at first use.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/cpu_isa.h"

COSTXENT_DECLARE_CPU_ISA(baseline)
#if defined(COSTXENT_HAVE_X86_ISAS)
COSTXENT_DECLARE_CPU_ISA(avx2)
COSTXENT_DECLARE_CPU_ISA(avx512)
COSTXENT_DECLARE_CPU_ISA(avx512bf16)
#endif

namespace costxent {
namespace cpu {
namespace {

enum class Isa { kBaseline, kAvx2, kAvx512, kAvx512Bf16 };

// The features each build is compiled for (CMakeLists.txt); GCC's checks include the OS
// support (XSAVE state) of the AVX and AVX-512 registers.
Isa pick_isa() {
#if defined(COSTXENT_HAVE_X86_ISAS)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// COSTXENT_CPU_ISA=baseline|avx2|avx512 caps the choice (to test each build on one machine).
Isa capped(Isa best) {
  const char* cap = std::getenv("COSTXENT_CPU_ISA");
  if (cap == nullptr) return best;
  const Isa limit = std::strcmp(cap, "baseline") == 0 ? Isa::kBaseline
                    : std::strcmp(cap, "avx2") == 0   ? Isa::kAvx2
                    : std::strcmp(cap, "avx512") == 0 ? Isa::kAvx512
                                                      : best;
  return limit < best ? limit : best;
}

Isa isa() {
  static const Isa chosen = capped(pick_isa());
  return chosen;
}

}  // namespace

#if defined(COSTXENT_HAVE_X86_ISAS)
// Calls FN<T, A> of the chosen build.
#define COSTXENT_DISPATCH(FN, ...)                                     \
  (isa() == Isa::kAvx512Bf16 ? avx512bf16::FN<T, A>(__VA_ARGS__)      \
   : isa() == Isa::kAvx512   ? avx512::FN<T, A>(__VA_ARGS__)          \
   : isa() == Isa::kAvx2     ? avx2::FN<T, A>(__VA_ARGS__)            \
                             : baseline::FN<T, A>(__VA_ARGS__))
#else
// Calls FN<T, A> of the chosen build.
#define COSTXENT_DISPATCH(FN, ...) baseline::FN<T, A>(__VA_ARGS__)
#endif

// `count` scratch values per thread: for softmax, four rows of C rounded up to whole vectors
// (exp(z - max), and focal terms or expected costs, of two rows walked together); for
// sigmoid, the repeated per-class pos / neg weights and rows of positions.
template <typename A>
A* scratch(int64_t count) {
  thread_local std::vector<A> values;
  if (values.size() < static_cast<size_t>(count)) values.resize(count);
  return values.data();
}

// Vectors are at most 16 lanes in every build.
constexpr int64_t kMaxLanes = 16;

template <typename T, typename A>
int64_t softmax_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end) {
  if (begin >= end) return -1;
  return COSTXENT_DISPATCH(softmax_rows, p, begin, end, scratch<A>(4 * (p.c + kMaxLanes)));
}

template <typename T, typename A>
int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end) {
  if (begin >= end) return -1;
  return COSTXENT_DISPATCH(sigmoid_elements, p, begin, end,
                           scratch<A>(3 * sigmoid_weight_period(p.c)));
}

template <typename T, typename A>
void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin, int64_t end) {
  COSTXENT_DISPATCH(scale_rows, in, scale, out, c, begin, end);
}

template <typename T, typename A>
void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end) {
  COSTXENT_DISPATCH(scale_elements, in, scale, out, begin, end);
}

int64_t softmax_row_state_size(int64_t c, bool focal) {
  return focal || walks_tiles(c, focal) ? 0 : kRowStateSize;
}

double softmax_row_cycles(int64_t c, bool dense, bool focal) {
  // Measured orders of magnitude: ~4 cycles per class for the vectorized passes, dense
  // labels add a pass, the focal terms cost a scalar log/exp/expm1 per class.
  const double per_class = 4.0 + (dense ? 2.0 : 0.0) + (focal ? 60.0 : 0.0);
  return 50.0 + per_class * static_cast<double>(c);
}

double sigmoid_element_cycles(bool focal) { return focal ? 80.0 : 8.0; }

const char* instruction_set() {
  switch (isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2-fma";
    default:
      return "baseline";
  }
}

#define COSTXENT_INSTANTIATE(T, A)                                                  \
  template int64_t softmax_rows<T, A>(const SoftmaxProblem<T, A>&, int64_t, int64_t); \
  template int64_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>&, int64_t,       \
                                          int64_t);                                   \
  template void scale_rows<T, A>(const T*, const A*, T*, int64_t, int64_t, int64_t);  \
  template void scale_elements<T, A>(const T*, const A*, T*, int64_t, int64_t);
COSTXENT_FOR_EACH_TYPE_PAIR(COSTXENT_INSTANTIATE)
#undef COSTXENT_INSTANTIATE

}  // namespace cpu
}  // namespace costxent
