// out[k] = in[k] * s over a span: the reduced losses' backward pass when the upstream
// gradient is not 1 (rare: loss scaling, a weighted sum of losses). One multiply and one
// rounding to T per element, memory-bound on any instruction set.
#pragma once

#include <cstdint>

#include "cc/core/numeric.h"

namespace costxent {

template <typename T, typename A>
void scale_span(const T* in, A s, T* out, int64_t begin, int64_t end) {
  for (int64_t k = begin; k < end; ++k) out[k] = from_acc<T>(to_acc(in[k]) * s);
}

}  // namespace costxent
