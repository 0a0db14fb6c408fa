// Picks the instruction-set build of the CPU kernels once, at load time.
#include <cstdint>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/cpu_isa.h"

COSTXENT_DECLARE_CPU_ISA(baseline)
#if defined(COSTXENT_HAVE_AVX2)
COSTXENT_DECLARE_CPU_ISA(avx2)
#endif

namespace costxent {
namespace cpu {
namespace {

bool use_avx2() {
#if defined(COSTXENT_HAVE_AVX2)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

}  // namespace

#if defined(COSTXENT_HAVE_AVX2)
// Calls FN<T, A> of the chosen build.
#define COSTXENT_DISPATCH(FN, ...) (use_avx2() ? avx2::FN<T, A>(__VA_ARGS__) : baseline::FN<T, A>(__VA_ARGS__))
#else
// Calls FN<T, A> of the chosen build.
#define COSTXENT_DISPATCH(FN, ...) baseline::FN<T, A>(__VA_ARGS__)
#endif

// Two scratch rows of `length` values per thread: exp(z - max) and per-class focal terms or
// expected costs (softmax), or the repeated per-class pos / neg weights (sigmoid).
template <typename A>
A* scratch_rows(int64_t length) {
  thread_local std::vector<A> scratch;
  if (scratch.size() < static_cast<size_t>(2 * length)) scratch.resize(2 * length);
  return scratch.data();
}

template <typename T, typename A>
int64_t softmax_rows(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end) {
  if (begin >= end) return -1;
  return COSTXENT_DISPATCH(softmax_rows, p, begin, end, scratch_rows<A>(p.c));
}

template <typename T, typename A>
int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end) {
  if (begin >= end) return -1;
  return COSTXENT_DISPATCH(sigmoid_elements, p, begin, end,
                           scratch_rows<A>(sigmoid_weight_period(p.c)));
}

template <typename T, typename A>
void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin, int64_t end) {
  COSTXENT_DISPATCH(scale_rows, in, scale, out, c, begin, end);
}

template <typename T, typename A>
void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end) {
  COSTXENT_DISPATCH(scale_elements, in, scale, out, begin, end);
}

double softmax_row_cycles(int64_t c, bool dense, bool focal) {
  // Measured orders of magnitude: ~4 cycles per class for the vectorized passes, dense
  // labels add a pass, the focal terms cost a scalar log/exp/expm1 per class.
  const double per_class = 4.0 + (dense ? 2.0 : 0.0) + (focal ? 60.0 : 0.0);
  return 50.0 + per_class * static_cast<double>(c);
}

double sigmoid_element_cycles(bool focal) { return focal ? 80.0 : 8.0; }

const char* instruction_set() { return use_avx2() ? "avx2-fma" : "baseline"; }

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
